package safetensors

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wattagg/wattagg/tensor"
)

// The crash tests re-execute the test binary as a child process (as Go's os/exec tests do)
// and kill it with a real SIGKILL: the child's locks die with it, as they would in a crash.
const (
	childEnv = "WATTAGG_SAFETENSORS_CHILD" // "write" or "group:STEP"
	dirEnv   = "WATTAGG_SAFETENSORS_DIR"
)

func TestMain(m *testing.M) {
	switch mode := os.Getenv(childEnv); {
	case mode == "write":
		childWrite(os.Getenv(dirEnv))
	case strings.HasPrefix(mode, "group:"):
		childGroup(os.Getenv(dirEnv), strings.TrimPrefix(mode, "group:"))
	}
	os.Exit(m.Run())
}

// childWrite starts writing dir/out.safetensors, writes half of it, says where its temporary
// file is, and waits to be killed.
func childWrite(dir string) {
	w, err := Create(filepath.Join(dir, "out.safetensors"), tensor.Layout{{Name: "x", DType: tensor.F32, Shape: []int{1 << 18}}}, nil)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	if _, err := w.WriteAt(make([]byte, 1<<19), 0); err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	fmt.Println("ready", w.tmp)
	time.Sleep(time.Minute)
	os.Exit(3) // not killed
}

// groupFiles are the members of the crash tests' group, in commit order; the last one lives in
// a subdirectory, so that pins and recovery across directories are exercised.
var groupFiles = []string{"model.safetensors", "state.safetensors", "sub/ledger.safetensors"}

// groupSet is version v of group file name (0: the old one); fatal reports an error (t.Fatal
// in a test, an exit in a child).
func groupSet(fatal func(...any), name string, v int) *tensor.Set {
	x, err := tensor.FromF32("v", []int{3}, []float32{float32(v), float32(len(name)), 7})
	if err != nil {
		fatal(err)
	}
	s, err := tensor.NewSet(x)
	if err != nil {
		fatal(err)
	}
	s.Metadata["version"] = fmt.Sprint(v)
	return s
}

// groupWriters are the writers of version v of the group files in dir, data written.
func groupWriters(fatal func(...any), dir string, v int) []*Writer {
	var ws []*Writer
	for _, name := range groupFiles {
		s := groupSet(fatal, name, v)
		w, err := Create(filepath.Join(dir, name), s.Layout(), s.Metadata)
		if err != nil {
			fatal(err)
		}
		if _, err := w.WriteAt(s.At(0).Bytes(), 0); err != nil {
			fatal(err)
		}
		ws = append(ws, w)
	}
	return ws
}

// childFatal is a child's fatal: print and exit 2.
func childFatal(v ...any) {
	fmt.Println(append([]any{"error"}, v...)...)
	os.Exit(2)
}

// childGroup commits version 1 of the group files in dir and kills itself with SIGKILL right
// after step.
func childGroup(dir, step string) {
	groupHook = func(s string) {
		if s == step {
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			time.Sleep(time.Minute)
		}
	}
	if err := CommitGroup(filepath.Join(dir, "group.journal"), groupWriters(childFatal, dir, 1)...); err != nil {
		childFatal(err)
	}
	os.Exit(3) // the step never came
}

// child starts the test binary in the given child mode on dir.
func child(t *testing.T, mode, dir string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+mode, dirEnv+"="+dir)
	cmd.Stderr = os.Stderr
	return cmd
}

// killedBySIGKILL checks that cmd's process ended by SIGKILL.
func killedBySIGKILL(t *testing.T, err error, out string) {
	t.Helper()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("child: %v, output %q", err, out)
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child ended with %v, not SIGKILL; output %q", err, out)
	}
}

// A writer killed with SIGKILL mid-write leaves a full-size temporary file. CleanStale keeps it
// while the writer lives (its flock is held), and the next Create in the directory removes it
// once the writer is dead.
func TestStaleTempAfterSIGKILL(t *testing.T) {
	dir := t.TempDir()
	cmd := child(t, "write", dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "ready ") {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("child said %q, %v", line, err)
	}
	tmp := strings.TrimSpace(strings.TrimPrefix(line, "ready "))
	fi, err := os.Stat(tmp)
	if err != nil || fi.Size() != 4096+1<<20 {
		t.Errorf("child's temporary file: %v, %v; want %d bytes", fi, err, 4096+1<<20)
	}

	// Alive: nothing is removed, neither by CleanStale nor by a Create beside it.
	removed, err := CleanStale(dir)
	if err != nil || len(removed) != 0 {
		t.Errorf("CleanStale with the writer alive removed %q, %v", removed, err)
	}
	w, err := Create(filepath.Join(dir, "other.safetensors"), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tmp); err != nil {
		t.Errorf("Create beside a live writer removed its file: %v", err)
	}
	w.Abort()

	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killedBySIGKILL(t, cmd.Wait(), line)
	if _, err := os.Stat(tmp); err != nil {
		t.Fatalf("the killed writer left no temporary file: %v", err)
	}
	// Dead: the next Create removes it; its own file is then the only temporary one.
	w, err = Create(filepath.Join(dir, "other.safetensors"), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tmp); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stale temporary file still there after Create: %v", err)
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	checkNoTemp(t, dir, "other.safetensors")
}

// readVersion is the version of group file name in dir, or -1 if it is missing.
func readVersion(t *testing.T, dir, name string) int {
	t.Helper()
	path := filepath.Join(dir, name)
	s, err := Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return -1
	}
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var v int
	fmt.Sscan(s.Metadata["version"], &v)
	if got, want := s.At(0).Float64s(), groupSet(t.Fatal, name, v).At(0).Float64s(); !slices.Equal(got, want) {
		t.Errorf("%s: data %v, want %v of version %d", path, got, want, v)
	}
	return v
}

// listAll lists every file under dir, relative, without the directories.
func listAll(t *testing.T, dir string) []string {
	t.Helper()
	var names []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			names = append(names, rel)
		}
		return err
	})
	return names
}

// A group commit killed with SIGKILL at each step: after RecoverGroup (and CleanStale in the
// other directory), every file is old or every file is new, and nothing else is left. A
// CleanStale between the crash and the recovery must not break the group.
func TestGroupCommitCrash(t *testing.T) {
	for _, c := range []struct {
		step string
		want int // version after recovery
	}{
		{"synced", 0}, {"journal synced", 0}, {"journal", 1}, {"renamed 0", 1}, {"renamed 1", 1}, {"renamed 2", 1}, {"done", 1},
	} {
		t.Run(c.step, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
				t.Fatal(err)
			}
			for _, name := range groupFiles {
				if err := WriteFile(filepath.Join(dir, name), groupSet(t.Fatal, name, 0)); err != nil {
					t.Fatal(err)
				}
			}
			cmd := child(t, "group:"+c.step, dir)
			out, err := cmd.Output()
			killedBySIGKILL(t, err, string(out))
			journal := filepath.Join(dir, "group.journal")

			// Someone cleans before the owner recovers: pinned files survive it.
			for _, d := range []string{dir, filepath.Join(dir, "sub")} {
				if _, err := CleanStale(d); err != nil {
					t.Fatal(err)
				}
			}
			if err := RecoverGroup(journal); err != nil {
				t.Fatal(err)
			}
			if _, err := CleanStale(filepath.Join(dir, "sub")); err != nil {
				t.Fatal(err)
			}
			for _, name := range groupFiles {
				if v := readVersion(t, dir, name); v != c.want {
					t.Errorf("%s is version %d, want %d: a mix", name, v, c.want)
				}
			}
			if got := listAll(t, dir); !slices.Equal(got, []string{"model.safetensors", "state.safetensors", "sub/ledger.safetensors"}) {
				t.Errorf("left in the directory: %q", got)
			}
			if err := RecoverGroup(journal); err != nil {
				t.Errorf("second RecoverGroup: %v", err)
			}
		})
	}
}

// Without a CleanStale before it, RecoverGroup alone completes a committed group whose member
// files sit in two directories, and a crash before the commit point is undone by it in the
// journal's directory.
func TestGroupCommitCrashRecoverOnly(t *testing.T) {
	for _, c := range []struct {
		step string
		want int
	}{{"synced", 0}, {"renamed 0", 1}} {
		t.Run(c.step, func(t *testing.T) {
			dir := t.TempDir()
			os.Mkdir(filepath.Join(dir, "sub"), 0o755)
			cmd := child(t, "group:"+c.step, dir)
			out, err := cmd.Output()
			killedBySIGKILL(t, err, string(out))
			if err := RecoverGroup(filepath.Join(dir, "group.journal")); err != nil {
				t.Fatal(err)
			}
			want := -1 // no old files this time
			if c.want == 1 {
				want = 1
			}
			for _, name := range groupFiles[:2] {
				if v := readVersion(t, dir, name); v != want {
					t.Errorf("%s is version %d, want %d", name, v, want)
				}
			}
			got := listAll(t, dir)
			if c.want == 1 {
				if !slices.Equal(got, []string{"model.safetensors", "state.safetensors", "sub/ledger.safetensors"}) {
					t.Errorf("left: %q", got)
				}
				return
			}
			// The member in sub/ is stale but outside the journal's directory: the next Create
			// there removes it, and its pin.
			if len(got) != 2 || tempKind(filepath.Base(got[0])) != 1 || got[1] != got[0]+pinSuffix || filepath.Dir(got[0]) != "sub" {
				t.Fatalf("left: %q, want one temporary file in sub and its pin", got)
			}
			w, err := Create(filepath.Join(dir, "sub", "x.safetensors"), nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			w.Abort()
			if got := listAll(t, dir); len(got) != 0 {
				t.Errorf("left after a Create in sub: %q", got)
			}
		})
	}
}
