//go:build amd64 && !purego && !noasm && gc

package kernels

import (
	"math"
	"math/rand/v2"
	"slices"
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

// More than 512 inputs sort in runs of at most 512 on integer keys, merged pairwise: for run
// counts 2 to 16 (odd ones take a run of +Inf at some level) every order statistic has the
// reference's bits and the slab is the merged one (mergedWires), over inputs without −0 and
// NaN (ties, +Inf, subnormals; +Inf beside −Inf makes the runs' NaN check, a float sum, fire);
// one −0 or NaN anywhere sends the batch to the table-driven network, with the reference's bits
// too. Past mergeMax the table-driven network sorts.
func TestMergedSorts(t *testing.T) {
	if !hasAVX512 {
		t.Skip("no AVX-512 here")
	}
	k, err := Lookup("avx512")
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(31, 32))
	pool := []float32{0, 1, -1, 0.5, 2, 1e30, -1e30, float32(math.Inf(1)), 0x1p-149, -0x1p-149}
	for _, c := range []struct{ n, length int }{
		{513, 40}, {1000, 33}, {1024, 16}, {1025, 16}, {1600, 17}, {2100, 16}, {4097, 16}, {mergeMax, 16}, {mergeMax + 1, 16},
	} {
		n, length := c.n, c.length
		var tied []float32
		if n%2 == 1 {
			tied = pool
		}
		x := positiveZeroValues(r, n, length, tied)
		wantWires := mergedWires(n)
		if n > mergeMax {
			wantWires = n
		}
		for _, spoil := range []uint32{0, 0x80000000, 0x7fc00001} {
			if spoil != 0 {
				putF32(x[r.IntN(n)], r.IntN(16), math.Float32frombits(spoil))
				wantWires = n
			}
			tmp := make([]float32, SortScratch(n))
			if got := sortGroupsAVX512(tmp, x, 0, 1, 0); got != wantWires {
				t.Fatalf("n=%d spoiled by %#x: the slab has %d wires, want %d", n, spoil, got, wantWires)
			}
			for i, oc := range orderCases {
				p := oc.param(n, i+n)
				want := orderReference(x, length, p, oc.ref)
				dst := make([]float32, length)
				oc.run(k, dst, x, p, tmp)
				for j := range want {
					if !sameF32(dst[j], want[j]) {
						t.Fatalf("%s n=%d p=%d spoiled by %#x: element %d = %v (%#x), reference %v (%#x)",
							oc.name, n, p, spoil, j, dst[j], math.Float32bits(dst[j]), want[j], math.Float32bits(want[j]))
					}
				}
			}
		}
	}
}

// mergeKeysAVX512_L sorts what a bitonic merge sorts: two ascending runs of random keys with
// many ties, against sorting their concatenation, keys or floats out.
func TestMergeKeys(t *testing.T) {
	if !hasAVX512 {
		t.Skip("no AVX-512 here")
	}
	r := rand.New(rand.NewPCG(33, 34))
	for L, merge := range mergeKeys512 {
		for _, floats := range []bool{false, true} {
			a, b := make([]float32, 16*L), make([]float32, 16*L)
			want := make([][]int32, 16)
			for lane := range 16 {
				ka, kb := make([]int32, L), make([]int32, L)
				for i := range L {
					ka[i], kb[i] = int32(r.Uint32()>>r.IntN(32)), int32(r.Uint32()>>r.IntN(32))
				}
				slices.Sort(ka)
				slices.Sort(kb)
				for i := range L {
					a[16*i+lane] = math.Float32frombits(uint32(ka[i]))
					b[16*i+lane] = math.Float32frombits(uint32(kb[i]))
				}
				want[lane] = slices.Concat(ka, kb)
				slices.Sort(want[lane])
			}
			dst := make([]float32, 32*L)
			merge(dst, a, b, floats)
			for lane := range 16 {
				for i, key := range want[lane] {
					bits := uint32(key)
					if floats && key < 0 {
						bits ^= 0x7fffffff
					}
					if got := math.Float32bits(dst[16*i+lane]); got != bits {
						t.Fatalf("L=%d floats=%v lane %d wire %d: %#x, want %#x", L, floats, lane, i, got, bits)
					}
				}
			}
		}
	}
}
