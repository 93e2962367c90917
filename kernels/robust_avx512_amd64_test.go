//go:build amd64 && !purego && !noasm && gc

package kernels

import (
	"math/rand/v2"
	"testing"
)

// On a CPU with AVX-512 the raw Gram gives the reference's bits whichever tiles fullWidth512
// chooses (the packed zmm ones or the avx2 ones), for even and odd counts from gramPackedMin,
// finite or not; and the measurement that chooses sees a zmm loop no slower than the ymm one.
func TestGramRawBothWays(t *testing.T) {
	if !hasAVX512 {
		t.Skip("no AVX-512 here")
	}
	if s := zmmFMASpeedup(); !(s > 0.5) {
		t.Fatalf("zmm FMA loop %.2fx the ymm one", s)
	}
	k, err := Lookup("avx512")
	if err != nil {
		t.Fatal(err)
	}
	saved := fullWidth512
	defer func() { fullWidth512 = saved }()
	r := rand.New(rand.NewPCG(11, 12))
	for _, full := range []bool{false, true} {
		fullWidth512 = func() bool { return full }
		for _, n := range []int{gramPackedMin, gramPackedMin + 1, gramPackedMin + 3, 130} {
			for i, l := range []int{8, 9, 16, 520, 1001} {
				checkGramRaw(t, k, r, n, l, i%2 == 0)
			}
		}
	}
}

// The centred Gram's zmm tiles over packed blocks give the reference's bits from gramPackedMin
// inputs on, for even and odd counts, over blocks of one chunk of coordinates and of several
// (the last one partial), finite or not.
func TestGramPackedChunks(t *testing.T) {
	if !hasAVX512 {
		t.Skip("no AVX-512 here")
	}
	k, err := Lookup("avx512")
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(13, 14))
	for _, n := range []int{gramPackedMin, gramPackedMin + 1, gramPackedMin + 3, 130} {
		for i, l := range []int{8, 9, 4 * gramChunk512, 4*gramChunk512 + 8, 1001, 9*4*gramChunk512 + 40} {
			checkGram(t, k, r, n, l, i%2 == 0)
		}
	}
}

// gramColCalls covers every column pair of every chunk once, in ranges of whole column groups,
// each call ending at the column group that takes its work to a share of the chunk's: at least
// 1/gramPrefetchParts of it, and few enough pair-updates (gramCallFMAs) to let the runtime
// preempt between calls.
func TestGramColCalls(t *testing.T) {
	for _, n := range []int{1, 2, 11, 12, 13, 64, 65, 128, 130, 512} {
		for _, groups := range []int{1, gramChunk512 - 1, gramChunk512, 3*gramChunk512 + 5} {
			calls := gramColCalls(n, groups, gramChunk512)
			np := (n + 1) / 2
			rows := func(cp int) int { return min(2*(cp+tilePairs512), n) }
			total := 0
			for cp := 0; cp < np; cp += tilePairs512 {
				total += rows(cp)
			}
			next := map[int]int{} // chunk start -> next column pair expected
			for _, c := range calls {
				c0, c1, g0, g1 := c[0], c[1], c[2], c[3]
				if g0%gramChunk512 != 0 || g1 != min(g0+gramChunk512, groups) {
					t.Fatalf("n=%d groups=%d: call %v: chunk not [%d, %d)", n, groups, c, g0, min(g0+gramChunk512, groups))
				}
				if c0 != next[g0] || c0%tilePairs512 != 0 || c1 <= c0 || (c1 < np && c1%tilePairs512 != 0) {
					t.Fatalf("n=%d groups=%d: call %v after column pair %d", n, groups, c, next[g0])
				}
				next[g0] = c1
				work := 0 // row groups of the call's column groups but its last
				for cp := c0; cp+tilePairs512 < c1; cp += tilePairs512 {
					work += rows(cp)
				}
				// (the pair-updates' bound, after the rounding down of the count of calls)
				if fmas := work * 2 * tilePairs512 * 4 * (g1 - g0); work*gramPrefetchParts >= total && work > 0 || 7*fmas > 8*gramCallFMAs {
					t.Fatalf("n=%d groups=%d: call %v: %d rows (%d pair-updates) before its last column group, of %d", n, groups, c, work, fmas, total)
				}
			}
			for g0 := 0; g0 < groups; g0 += gramChunk512 {
				if next[g0] != np {
					t.Fatalf("n=%d groups=%d chunk %d: column pairs up to %d, want %d", n, groups, g0, next[g0], np)
				}
			}
		}
	}
}
