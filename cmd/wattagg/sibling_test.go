package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/wattagg/wattagg/internal/cli"
	"github.com/wattagg/wattagg/internal/clitest"
)

// buildBoth builds wattagg and wattagg-server side by side, as `make build` and go install lay
// them out.
func buildBoth(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", dir+"/", "github.com/wattagg/wattagg/cmd/wattagg", "github.com/wattagg/wattagg/cmd/wattagg-server")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return dir
}

var (
	plotOnce sync.Once
	plotDir  string
	plotErr  error
)

// plotter builds wattagg-plot once for the package's tests and returns the variable that
// names it, for the commands that draw plots (the test binary that runs as wattagg has no
// sibling beside it).
func plotter(t *testing.T) string {
	t.Helper()
	plotOnce.Do(func() {
		if plotDir, plotErr = os.MkdirTemp("", "wattagg-plot-"); plotErr != nil {
			return
		}
		out, err := exec.Command("go", "build", "-o", plotDir+"/", "github.com/wattagg/wattagg/cmd/wattagg-plot").CombinedOutput()
		if err != nil {
			plotErr = fmt.Errorf("go build wattagg-plot: %v\n%s", err, out)
		}
	})
	if plotErr != nil {
		t.Fatal(plotErr)
	}
	return cli.PlotEnv + "=" + filepath.Join(plotDir, cli.PlotBinary)
}

// The server commands of wattagg run wattagg-server in its place: found beside wattagg or named
// by $WATTAGG_SERVER; flags, --help, output and exit status are the server binary's. Without
// it, one line says where it was looked for and how to get it.
func TestServerCommandsRunTheSibling(t *testing.T) {
	if testing.Short() {
		t.Skip("builds both binaries")
	}
	dir := buildBoth(t)
	exe := filepath.Join(dir, "wattagg")
	for _, c := range []struct {
		args []string
		code int
		want string // in stdout for status 0, else in stderr
	}{
		{[]string{"serve", "--help"}, 0, "serve runs rounds of the configured rule"},
		{[]string{"bench", "serve", "--help"}, 0, "bench serve runs this binary's server"},
		{[]string{"pull", "--help"}, 0, "--round"},
		{[]string{"push", "--server", "http://127.0.0.1:1", "x.safetensors"}, 2, "--round N is required"},
		{[]string{"serve"}, 2, "serve needs --config FILE"},
		{[]string{"serve", "--no-such-flag"}, 2, "unknown flag: --no-such-flag"},
	} {
		stdout, stderr, code := clitest.RunBinary(t, exe, []string{cli.ServerEnv + "="}, c.args...)
		got := stdout
		if c.code != 0 {
			got = stderr
		}
		if code != c.code || !strings.Contains(got, c.want) {
			t.Errorf("wattagg %s: exit %d, want %d with %q in\nstdout %s\nstderr %s", strings.Join(c.args, " "), code, c.code, c.want, stdout, stderr)
		}
	}
	// Named by the environment, the sibling may live anywhere; a wrong name is one clear line.
	_, stderr, code := clitest.Run(t, []string{cli.ServerEnv + "=" + filepath.Join(dir, "wattagg-server")}, "serve", "--help")
	if code != 0 {
		t.Fatalf("$WATTAGG_SERVER: exit %d: %s", code, stderr)
	}
	_, stderr, code = clitest.Run(t, []string{cli.ServerEnv + "=" + filepath.Join(dir, "nothing-here")}, "serve", "--config", "x.json")
	if line := strings.TrimSpace(stderr); code != 1 || strings.Contains(line, "\n") || !strings.Contains(line, "$WATTAGG_SERVER="+filepath.Join(dir, "nothing-here")) {
		t.Fatalf("missing sibling: exit %d, stderr %q: want 1 and one line naming $WATTAGG_SERVER", code, stderr)
	}
}
