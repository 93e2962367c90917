// Package pyarrowtest finds a Python with pyarrow for the tests that run the README's pyarrow
// clients (tensor/arrowio, server), and extracts those clients from the README.
//
// The interpreter is the command in WATTAGG_PYARROW (scripts/pyarrow-sid.sh makes one: Debian
// unstable's python3-pyarrow in a chroot, which shares the host's loopback), else a python3 on
// the PATH that imports pyarrow.flight. Scripts get their data through arguments, stdin and
// stdout only: a chroot does not see the test's files.
package pyarrowtest

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Python returns the command (program and leading arguments) of a Python 3 that imports
// pyarrow, pyarrow.flight and numpy. It fails the test when WATTAGG_PYARROW names one that does
// not, and skips it when there is none.
func Python(t testing.TB) []string {
	t.Helper()
	const probe = "import pyarrow, pyarrow.flight, numpy"
	if env := strings.Fields(os.Getenv("WATTAGG_PYARROW")); len(env) > 0 {
		if out, err := exec.Command(env[0], append(env[1:], "-c", probe)...).CombinedOutput(); err != nil {
			t.Fatalf("WATTAGG_PYARROW=%q does not import pyarrow: %v\n%s", os.Getenv("WATTAGG_PYARROW"), err, out)
		}
		return env
	}
	if exec.Command("python3", "-c", probe).Run() == nil {
		return []string{"python3"}
	}
	t.Skip("no Python with pyarrow: set WATTAGG_PYARROW (scripts/pyarrow-sid.sh makes one; .ci/run does)")
	return nil
}

// Run runs script with py (from Python), stdin as its standard input and args as sys.argv[1:],
// and returns its standard output and error.
func Run(py []string, script string, stdin []byte, args ...string) (stdout, stderr []byte, err error) {
	cmd := exec.Command(py[0], append(append(py[1:len(py):len(py)], "-c", script), args...)...)
	cmd.Stdin = bytes.NewReader(stdin)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.Bytes(), e.Bytes(), err
}

// ReadmeBlock returns the README's ```python block that contains marker.
func ReadmeBlock(t testing.TB, readme, marker string) string {
	t.Helper()
	b, err := os.ReadFile(readme)
	if err != nil {
		t.Fatal(err)
	}
	for _, part := range strings.Split(string(b), "```python\n")[1:] {
		code, _, ok := strings.Cut(part, "```")
		if ok && strings.Contains(code, marker) {
			return code
		}
	}
	t.Fatalf("%s: no python block with %q", readme, marker)
	return ""
}
