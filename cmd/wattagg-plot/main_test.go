package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/wattagg/wattagg/internal/clitest"
)

func TestMain(m *testing.M) {
	clitest.Main(main)
	os.Exit(m.Run())
}

// The plots are drawn beside each report and their paths printed; bad arguments are one line
// on stderr and a non-zero status, writing nothing.
func TestPlotReports(t *testing.T) {
	dir := t.TempDir()
	var reports []string
	for _, s := range []string{"robust", "energy"} {
		b, err := os.ReadFile(filepath.Join("..", "..", "bench", "charts", "testdata", s+".json"))
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, s+".json")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		reports = append(reports, p)
	}
	stdout, stderr, code := clitest.Run(t, nil, reports...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var want []string
	for _, f := range []string{"robust-clients.png", "robust-params.png", "robust-ratio.png", "energy-joules.png"} {
		want = append(want, filepath.Join(dir, f))
	}
	if got := strings.Fields(stdout); !slices.Equal(got, want) {
		t.Fatalf("printed %q, want %q", got, want)
	}
	for _, p := range want {
		if fi, err := os.Stat(p); err != nil || fi.Size() == 0 {
			t.Errorf("%s: %v", p, err)
		}
	}
	for _, c := range []struct {
		args []string
		code int
		msg  string
	}{
		{nil, 2, "wattagg-plot needs at least one SUITE.json"},
		{[]string{filepath.Join(dir, "none.json")}, 1, "none.json: no such file or directory"},
		{[]string{filepath.Join("..", "..", "go.mod")}, 1, "go.mod: bench: bad report"},
	} {
		_, stderr, code := clitest.Run(t, nil, c.args...)
		if line := strings.TrimSpace(stderr); code != c.code || strings.Contains(line, "\n") || !strings.Contains(line, c.msg) {
			t.Errorf("%v: exit %d, stderr %q: want %d and one line with %q", c.args, code, stderr, c.code, c.msg)
		}
	}
}
