package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestGeneratedUpToDate regenerates the robust kernels' assembly and stubs in a copy of the
// generator module laid out as the repository is (tmp/kernels/_gen/robust, so that the command
// line recorded in the headers is the same; every generator file is copied) and fails if they
// differ from the committed kernels/robust_amd64.s and kernels/robust_stubs_amd64.go.
func TestGeneratedUpToDate(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the generator")
	}
	mod := filepath.Join(t.TempDir(), "kernels", "_gen")
	gen := filepath.Join(mod, "robust")
	if err := os.MkdirAll(gen, 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{"../go.mod": mod, "../go.sum": mod}
	srcs, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range srcs {
		if !strings.HasSuffix(f, "_test.go") {
			files[f] = gen
		}
	}
	for src, dst := range files {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, filepath.Base(src)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("go", "generate")
	cmd.Dir = gen
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go generate: %v\n%s", err, out)
	}
	for _, f := range []string{"robust_amd64.s", "robust_stubs_amd64.go"} {
		want, err := os.ReadFile(filepath.Join(mod, "..", f))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join("..", "..", f))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("kernels/%s is not what kernels/_gen/robust generates: run go generate in kernels/_gen/robust", f)
		}
	}
}

// TestSortNetworkOrder checks that sortNetwork is Batcher's network level by level (the order
// of kernels/robust_network.go, which the differential tests hold the assembly to) in another
// order that computes the same: the same comparators, and on every wire the same ones in the
// same order.
func TestSortNetworkOrder(t *testing.T) {
	for n := 1; n <= 600; n++ {
		var levels []comparator
		for _, m := range batcherMerges(n) {
			levels = append(levels, m.c)
		}
		got := sortNetwork(n)
		if len(got) != len(levels) {
			t.Fatalf("n=%d: %d comparators, Batcher's network has %d", n, len(got), len(levels))
		}
		perWire := func(net []comparator) [][]comparator {
			w := make([][]comparator, n)
			for _, c := range net {
				w[c.lo] = append(w[c.lo], c)
				w[c.hi] = append(w[c.hi], c)
			}
			return w
		}
		a, b := perWire(got), perWire(levels)
		for w := range a {
			if !slices.Equal(a[w], b[w]) {
				t.Fatalf("n=%d: wire %d meets %v, in Batcher's order %v", n, w, a[w], b[w])
			}
		}
	}
}
