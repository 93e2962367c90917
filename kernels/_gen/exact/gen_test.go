package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestGeneratedUpToDate regenerates the assembly and stubs in a copy of the generator module laid
// out as the repository is (tmp/kernels/_gen/exact, so that the command line recorded in the
// headers is the same) and fails if they differ from the committed kernels/exact_amd64.s and
// kernels/exact_stubs_amd64.go.
func TestGeneratedUpToDate(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the generator")
	}
	gen := filepath.Join(t.TempDir(), "kernels", "_gen")
	if err := os.MkdirAll(filepath.Join(gen, "exact"), 0o755); err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range append(files, "../go.mod", "../go.sum") {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(gen, "exact", f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("go", "generate")
	cmd.Dir = filepath.Join(gen, "exact")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go generate: %v\n%s", err, out)
	}
	for _, f := range []string{"exact_amd64.s", "exact_stubs_amd64.go"} {
		want, err := os.ReadFile(filepath.Join(gen, "..", f))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join("..", "..", f))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("kernels/%s is not what kernels/_gen/exact generates: run go generate in kernels/_gen/exact (or make generate)", f)
		}
	}
}
