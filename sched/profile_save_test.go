package sched

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wattagg/wattagg/tensor"
)

var errInjected = errors.New("injected failure")

// faultyFS is the real file system failing at one step: "create", "write" (half the bytes
// written), "crash" (half the bytes written, then the process dies: a panic, so that nothing
// cleans up), "sync", "close", "rename" or "syncdir".
type faultyFS struct {
	osFS
	at string
}

type faultyFile struct {
	*os.File
	at string
}

func (f faultyFS) CreateTemp(dir, pattern string) (tempFile, error) {
	if f.at == "create" {
		return nil, errInjected
	}
	tf, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return nil, err
	}
	return &faultyFile{File: tf, at: f.at}, nil
}

func (f faultyFS) Rename(oldpath, newpath string) error {
	if f.at == "rename" {
		return errInjected
	}
	return os.Rename(oldpath, newpath)
}

func (f faultyFS) SyncDir(dir string) error {
	if f.at == "syncdir" {
		return errInjected
	}
	return f.osFS.SyncDir(dir)
}

func (f *faultyFile) Write(b []byte) (int, error) {
	switch f.at {
	case "write":
		n, _ := f.File.Write(b[:len(b)/2])
		return n, errInjected
	case "crash":
		f.File.Write(b[:len(b)/2])
		f.File.Close() // as the kernel does for a dead process
		panic(errInjected)
	}
	return f.File.Write(b)
}

func (f *faultyFile) Sync() error {
	if f.at == "sync" {
		return errInjected
	}
	return f.File.Sync()
}

func (f *faultyFile) Close() error {
	err := f.File.Close()
	if f.at == "close" {
		return errInjected
	}
	return err
}

func saveCrashing(p *Profile, path string, fsys replaceFS) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = r.(error)
		}
	}()
	return p.save(path, fsys)
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// Whatever step of a save fails, even a crash half-way through writing, the old profile is
// intact; a failure the process survives leaves no temporary file behind.
func TestSaveFailureLeavesTheOldProfile(t *testing.T) {
	for _, at := range []string{"create", "write", "crash", "sync", "close", "rename"} {
		path, before, mtime := savedProfile(t, estimateCPU(0))
		next := estimateCPU(1e-4)
		next.Devices[0].Ops[OpKey(WeightedSum, tensor.F32)].TimeCorrection = 3
		err := saveCrashing(next, path, faultyFS{at: at})
		if !errors.Is(err, errInjected) {
			t.Fatalf("%s: %v", at, err)
		}
		if at != "crash" && !errors.Is(err, ErrProfile) {
			t.Fatalf("%s: %v does not wrap ErrProfile", at, err)
		}
		checkUntouched(t, path, before, mtime)
		if _, err := LoadProfile(path); err != nil {
			t.Fatalf("%s: the old profile no longer loads: %v", at, err)
		}
		names := dirNames(t, filepath.Dir(path))
		switch {
		case at == "crash" && (len(names) != 2 || !strings.HasPrefix(names[0], ".profile.json.tmp-")):
			t.Fatalf("crash: files %v: want the profile and the torn temporary file", names)
		case at != "crash" && (len(names) != 1 || names[0] != "profile.json"):
			t.Fatalf("%s: files %v: want the profile alone", at, names)
		}
		// The next save succeeds over the debris.
		if err := next.Save(path); err != nil {
			t.Fatalf("%s: save after the failure: %v", at, err)
		}
		got, err := LoadProfile(path)
		if err != nil || got.Devices[0].Ops[OpKey(WeightedSum, tensor.F32)].TimeCorrection != 3 {
			t.Fatalf("%s: after the retry: %v", at, err)
		}
	}
}

// A failed directory sync is reported: the new profile is in place but its rename may not
// survive a power cut.
func TestSaveReportsAFailedDirectorySync(t *testing.T) {
	path, _, _ := savedProfile(t, estimateCPU(0))
	next := estimateCPU(2e-4)
	if err := next.save(path, faultyFS{at: "syncdir"}); !errors.Is(err, errInjected) || !errors.Is(err, ErrProfile) {
		t.Fatalf("%v", err)
	}
	got, err := LoadProfile(path)
	if err != nil || got.Devices[0].Ops[OpKey(WeightedSum, tensor.F32)].LatencySec != 2e-4 {
		t.Fatalf("%v", err)
	}
}

func TestSaveCreatesTheDirectoryAndSkipsIdenticalBytes(t *testing.T) {
	path, before, mtime := savedProfile(t, estimateCPU(0)) // in a directory Save created
	if err := estimateCPU(0).Save(path); err != nil {
		t.Fatal(err)
	}
	checkUntouched(t, path, before, mtime)
	if names := dirNames(t, filepath.Dir(path)); len(names) != 1 {
		t.Fatalf("files %v", names)
	}
	if err := estimateCPU(1e-3).Save(path); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.ModTime().Before(time.Now().Add(-time.Minute)) {
		t.Fatal("a changed profile was not written")
	}
}
