package main

import (
	"slices"
	"testing"

	"github.com/wattagg/wattagg/kernels/_gen/internal/gencheck"
)

// TestGeneratedUpToDate fails if kernels/robust_amd64.s and kernels/robust_stubs_amd64.go are not
// what this program generates.
func TestGeneratedUpToDate(t *testing.T) {
	gencheck.UpToDate(t, "robust", "robust_amd64.s", "robust_stubs_amd64.go")
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
