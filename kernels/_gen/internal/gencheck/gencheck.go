// Package gencheck checks that the committed assembly of kernels/ is what a generator program of
// kernels/_gen makes: each program's TestGeneratedUpToDate calls UpToDate.
package gencheck

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"
)

// UpToDate regenerates the files named in outputs (paths relative to kernels/) by running go
// generate for the generator program in kernels/_gen/prog ("." for the module's root program),
// in a copy of the generator module laid out as the repository is (tmp/kernels/_gen/prog, so that
// the command line recorded in the headers is the same), and fails t if any differs from the
// committed file. The test runs in the program's folder; the copy takes the module's go.mod and
// go.sum, the program's source files and the module's internal packages.
func UpToDate(t *testing.T, prog string, outputs ...string) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs the generator")
	}
	here, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	mod := filepath.Join(here, relUp(prog)) // kernels/_gen
	tmp := filepath.Join(t.TempDir(), "kernels", "_gen")
	for _, f := range []string{"go.mod", "go.sum"} {
		copyFile(t, filepath.Join(mod, f), filepath.Join(tmp, f))
	}
	srcs, err := filepath.Glob(filepath.Join(here, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range srcs {
		if !strings.HasSuffix(f, "_test.go") {
			copyFile(t, f, filepath.Join(tmp, prog, filepath.Base(f)))
		}
	}
	copyTree(t, filepath.Join(mod, "internal"), filepath.Join(tmp, "internal"))
	cmd := exec.Command("go", "generate")
	cmd.Dir = filepath.Join(tmp, prog)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go generate: %v\n%s", err, out)
	}
	for _, f := range outputs {
		want, err := os.ReadFile(filepath.Join(tmp, "..", f))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(mod, "..", f))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("kernels/%s is not what %s generates: run go generate there (or make generate)", f, path.Join("kernels/_gen", prog))
		}
	}
}

// relUp is the path from kernels/_gen/prog back to kernels/_gen.
func relUp(prog string) string {
	if prog == "." {
		return "."
	}
	return strings.Repeat("../", strings.Count(prog, "/")+1)
}

// copyTree copies the non-test Go files below src to dst.
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		copyFile(t, path, filepath.Join(dst, rel))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
