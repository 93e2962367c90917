package safetensors

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/wattagg/wattagg/tensor"
)

// setupGroup writes the old group files in a fresh directory (with its sub/).
func setupGroup(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range groupFiles {
		if err := WriteFile(filepath.Join(dir, name), groupSet(t.Fatal, name, 0)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func checkVersions(t *testing.T, dir string, want int) {
	t.Helper()
	for _, name := range groupFiles {
		if v := readVersion(t, dir, name); v != want {
			t.Errorf("%s is version %d, want %d", name, v, want)
		}
	}
	if got := listAll(t, dir); !slices.Equal(got, groupFiles) {
		t.Errorf("left in the directory: %q, want %q", got, groupFiles)
	}
}

func TestCommitGroup(t *testing.T) {
	dir := setupGroup(t)
	var steps []string
	groupHook = func(s string) { steps = append(steps, s) }
	defer func() { groupHook = nil }()
	ws := groupWriters(t.Fatal, dir, 1)
	if err := ws[1].Sync(); err != nil { // a writer synced beforehand is fine
		t.Fatal(err)
	}
	if err := CommitGroup(filepath.Join(dir, "j"), ws...); err != nil {
		t.Fatal(err)
	}
	checkVersions(t, dir, 1)
	if want := []string{"synced", "journal synced", "journal", "renamed 0", "renamed 1", "renamed 2", "done"}; !slices.Equal(steps, want) {
		t.Errorf("steps %q, want %q", steps, want)
	}
	for _, w := range ws {
		if err := w.Commit(); !errors.Is(err, os.ErrClosed) {
			t.Errorf("Commit after CommitGroup: %v", err)
		}
		if err := w.Abort(); err != nil {
			t.Errorf("Abort after CommitGroup: %v", err)
		}
	}
	if err := RecoverGroup(filepath.Join(dir, "j")); err != nil {
		t.Errorf("RecoverGroup with nothing pending: %v", err)
	}
}

// A writer that cannot be synced aborts the whole group before the commit point.
func TestCommitGroupFailsBeforeJournal(t *testing.T) {
	dir := setupGroup(t)
	ws := groupWriters(t.Fatal, dir, 1)
	s := groupSet(t.Fatal, "extra.safetensors", 1)
	bad, err := Create(filepath.Join(dir, "extra.safetensors"), s.Layout(), nil)
	if err != nil {
		t.Fatal(err)
	}
	err = CommitGroup(filepath.Join(dir, "j"), append(ws, bad)...)
	checkError(t, err, ErrIncomplete, filepath.Join(dir, "extra.safetensors"), "", "0 of 12 bytes written")
	checkVersions(t, dir, 0)
	for _, w := range append(ws, bad) {
		if _, err := w.WriteAt([]byte{1}, 0); !errors.Is(err, os.ErrClosed) {
			t.Errorf("WriteAt after a failed CommitGroup: %v", err)
		}
	}
}

func TestCommitGroupBadArguments(t *testing.T) {
	dir := setupGroup(t)
	ws := groupWriters(t.Fatal, dir, 1)
	defer func() {
		for _, w := range ws {
			w.Abort()
		}
	}()
	s := groupSet(t.Fatal, "model.safetensors", 1)
	again, err := Create(filepath.Join(dir, "model.safetensors"), s.Layout(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Abort()
	j := filepath.Join(dir, "j")
	for _, c := range []struct {
		name string
		ws   []*Writer
		msg  string
	}{
		{"none", nil, "no writers"},
		{"nil", []*Writer{ws[0], nil}, "writer 1 is nil or given twice"},
		{"twice", []*Writer{ws[0], ws[1], ws[0]}, "writer 2 is nil or given twice"},
		{"same destination", []*Writer{ws[0], again}, "writers 0 and 1 both write"},
	} {
		err := CommitGroup(j, c.ws...)
		if !errors.Is(err, ErrJournal) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: %v, want ErrJournal saying %q", c.name, err, c.msg)
		}
	}
	// Nothing was done: the writers still work.
	if err := CommitGroup(j, ws...); err != nil {
		t.Fatal(err)
	}
	again.Abort()
	checkVersions(t, dir, 1)
}

func TestSyncThenCommit(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s.safetensors")
	s := groupSet(t.Fatal, "s.safetensors", 4)
	w, err := Create(path, s.Layout(), s.Metadata)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Sync(); !errors.Is(err, ErrIncomplete) {
		t.Fatalf("Sync of an unwritten file: %v", err)
	}
	checkNoTemp(t, dir) // a failed Sync aborts
	w, err = Create(path, s.Layout(), s.Metadata)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteAt(s.At(0).Bytes(), 0); err != nil {
		t.Fatal(err)
	}
	if err := w.Sync(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Sync published the file: %v", err)
	}
	if _, err := w.WriteAt([]byte{0}, 0); !errors.Is(err, os.ErrClosed) {
		t.Errorf("WriteAt after Sync: %v", err)
	}
	if err := w.Sync(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("second Sync: %v", err)
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	if v := readVersion(t, dir, "s.safetensors"); v != 4 {
		t.Errorf("version %d, want 4", v)
	}
	checkNoTemp(t, dir, "s.safetensors")
}

// writeJournalFile writes a journal by hand.
func writeJournalFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestRecoverGroupBadJournal(t *testing.T) {
	dir := t.TempDir()
	j := filepath.Join(dir, "j")
	for _, c := range []struct{ name, text string }{
		{"not JSON", "{"},
		{"other format", `{"format":"x","renames":[{"from":"/a/.b","to":"/a/b"}]}`},
		{"no renames", `{"format":"wattagg.group-journal.v1","renames":[]}`},
		{"relative", `{"format":"wattagg.group-journal.v1","renames":[{"from":".b","to":"b"}]}`},
		{"across directories", `{"format":"wattagg.group-journal.v1","renames":[{"from":"/a/.b","to":"/c/b"}]}`},
	} {
		writeJournalFile(t, j, c.text)
		if err := RecoverGroup(j); !errors.Is(err, ErrJournal) {
			t.Errorf("%s: %v, want ErrJournal", c.name, err)
		}
		if _, err := os.Stat(j); err != nil {
			t.Errorf("%s: the journal was not kept: %v", c.name, err)
		}
	}
	// A temporary file that is gone while its destination is another file: cannot complete.
	old := filepath.Join(dir, "old.safetensors")
	if err := WriteFile(old, groupSet(t.Fatal, "old", 0)); err != nil {
		t.Fatal(err)
	}
	writeJournalFile(t, j, `{"format":"wattagg.group-journal.v1","renames":[{"from":"`+dir+`/.old.safetensors.wattagg-tmp-x","to":"`+old+`","dev":1,"ino":1}]}`)
	if err := RecoverGroup(j); !errors.Is(err, ErrJournal) || !strings.Contains(err.Error(), "is not the file it held") {
		t.Errorf("lost temporary file: %v", err)
	}
	if err := RecoverGroup(filepath.Join(dir, "none")); err != nil {
		t.Errorf("no journal: %v", err)
	}
	if err := RecoverGroup(filepath.Join(dir, "no-such-dir", "j")); err != nil {
		t.Errorf("no journal directory: %v", err)
	}
	if err := os.Mkdir(filepath.Join(dir, "fifo-dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := RecoverGroup(filepath.Join(dir, "fifo-dir")); !errors.Is(err, ErrNotRegular) {
		t.Errorf("journal that is a directory: %v", err)
	}
}

// A temporary file with a pin to a journal that does not list it, or to none, is stale.
func TestCleanStalePins(t *testing.T) {
	dir := t.TempDir()
	layout := tensor.Layout{{Name: "x", DType: tensor.I8, Shape: []int{1}}}
	w, err := Create(filepath.Join(dir, "a.safetensors"), layout, nil)
	if err != nil {
		t.Fatal(err)
	}
	tmp := w.tmp
	w.release() // the writer "dies": its lock is gone, its file stays
	if err := os.Symlink(filepath.Join(dir, "j"), tmp+pinSuffix); err != nil {
		t.Fatal(err)
	}
	writeJournalFile(t, filepath.Join(dir, "j"), `{"format":"wattagg.group-journal.v1","renames":[{"from":"`+dir+`/.other","to":"`+dir+`/other"}]}`)
	// An orphan pin, and names like ours on things that are not our files.
	if err := os.Symlink("nowhere", filepath.Join(dir, ".b"+tempMarker+"abc"+pinSuffix)); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, ".c"+tempMarker+"abc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ".d"+tempMarker+"ABC"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	removed, err := CleanStale(dir)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(removed)
	want := []string{filepath.Join(dir, ".b"+tempMarker+"abc"+pinSuffix), tmp, tmp + pinSuffix}
	slices.Sort(want)
	if !slices.Equal(removed, want) {
		t.Errorf("removed %q, want %q", removed, want)
	}
	checkNoTemp(t, dir, ".c"+tempMarker+"abc", ".d"+tempMarker+"ABC", "j")
}

func TestTempKind(t *testing.T) {
	for name, want := range map[string]int{
		".a.safetensors.wattagg-tmp-1x9": 1, ".a.wattagg-tmp-1x9.pin": 2, "a.wattagg-tmp-1": 0,
		".a.wattagg-tmp-": 0, ".a.wattagg-tmp-.pin": 0, ".a.wattagg-tmp-1X": 0, ".a.tmp-1": 0,
		".wattagg-tmp-1": 0, "..wattagg-tmp-1": 1,
	} {
		if got := tempKind(name); got != want {
			t.Errorf("tempKind(%q) = %d, want %d", name, got, want)
		}
	}
}
