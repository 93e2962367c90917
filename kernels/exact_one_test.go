package kernels

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// exactAcc1Case is a one-limb accumulation kernel, beside the two-limb one of the same input
// dtype.
type exactAcc1Case struct {
	two exactAccCase
	fn  func(k *Impl, one []int64, w []float64, x [][]byte) uint32
}

var exactAcc1Cases = []exactAcc1Case{
	{exactAccCases[0], (*Impl).ExactAcc1F32},
	{exactAccCases[1], (*Impl).ExactAcc1BF16},
	{exactAccCases[2], (*Impl).ExactAcc1F16},
	{exactAccCases[3], (*Impl).ExactAcc1I8},
}

// TestExactAcc1 compares every Impl's one-limb accumulation with a plain loop over ExactTerm
// (wrapping int64 adds) for every length, input counts that cover each group size of the
// assembly and several passes, offsets of the limb and of the inputs, and starting sums over the
// whole int64 range (so that sums wrap); it also checks that the limb is the integer the
// two-limb kernels hold, hi·2^52 + lo modulo 2^64, and the guards and maxAbs.
func TestExactAcc1(t *testing.T) {
	for _, c := range exactAcc1Cases {
		t.Run(c.two.name, func(t *testing.T) {
			forImpls(t, func(t *testing.T, k *Impl) {
				r := rand.New(rand.NewPCG(3, uint64(len(c.two.name))))
				for _, n := range lengths() {
					counts := []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 13, 14, 15, 22}
					if n > 127 {
						counts = []int{1, 7, 9}
					}
					if n > 4099 {
						counts = []int{1, 8}
					}
					for _, cnt := range counts {
						testExactAcc1Once(t, r, c.two, c.fn, k, n, cnt)
					}
				}
			})
		})
	}
}

func testExactAcc1Once(t *testing.T, r *rand.Rand, c exactAccCase, fn func(k *Impl, one []int64, w []float64, x [][]byte) uint32,
	k *Impl, n, cnt int) {
	t.Helper()
	off, xoff := r.IntN(8), r.IntN(8)*c.in.size+r.IntN(4)
	one, check := guardedI64(n, off)
	for j := range one {
		one[j] = int64(r.Uint64())
	}
	start := slices.Clone(one)
	w := make([]float64, cnt)
	x := make([][]byte, cnt)
	for i := range x {
		w[i] = exactWeight(r)
		if c.in.name == "I8" {
			w[i] = math.Ldexp(w[i], -8)
		}
		buf := make([]byte, xoff+(n+3)*c.in.size)
		copy(buf[xoff:], exactInput(r, c.in, n+r.IntN(3)))
		x[i] = buf[xoff:]
	}
	in := cloneAll(x)
	gotMax := fn(k, one, w, x)

	want := slices.Clone(start) // plainly: every term rounded by ExactTerm, added with wrapping
	var plainMax uint32
	for i := range x {
		for j := range n {
			h, l := ExactTerm(w[i], c.in.get(x[i], j))
			want[j] += h<<52 + l
			plainMax = max(plainMax, c.abs(x[i], j))
		}
	}
	if gotMax != plainMax {
		t.Fatalf("n=%d inputs=%d: maxAbs %#x, want %#x", n, cnt, gotMax, plainMax)
	}
	hi, lo := make([]int64, n), make([]int64, n) // the two-limb kernels' sum of the same terms
	c.fn(refImpl(), hi, lo, w, x)
	for j := range n {
		if one[j] != want[j] {
			t.Fatalf("n=%d inputs=%d: element %d is %d, want %d", n, cnt, j, one[j], want[j])
		}
		if two := start[j] + hi[j]<<52 + lo[j]; one[j] != two {
			t.Fatalf("n=%d inputs=%d: element %d is %d, two limbs hold %d", n, cnt, j, one[j], two)
		}
	}
	for i := range x {
		if !slices.Equal(x[i], in[i]) {
			t.Fatalf("input %d modified", i)
		}
	}
	check(t)
}

// TestExactAcc1Wraps checks the modular arithmetic at the edges: terms that carry a sum past
// 2^63 and back give the exact sum, on every Impl.
func TestExactAcc1Wraps(t *testing.T) {
	forImpls(t, func(t *testing.T, k *Impl) {
		const n = 67
		one := make([]int64, n)
		for j := range one {
			one[j] = math.MaxInt64 - int64(j)
		}
		x := make([]byte, 4*n)
		for j := range n {
			dtF32.putBits(x, j, uint64(math.Float32bits(float32(j+1))))
		}
		w := []float64{0x1p40, -0x1p40}
		k.ExactAcc1F32(one, w[:1], [][]byte{x}) // beyond 2^63: wraps
		for j := range one {
			if one[j] >= 0 {
				t.Fatalf("element %d: %d did not wrap", j, one[j])
			}
		}
		k.ExactAcc1F32(one, w[1:], [][]byte{x}) // and back
		for j := range one {
			if want := math.MaxInt64 - int64(j); one[j] != want {
				t.Fatalf("element %d: %d, want %d", j, one[j], want)
			}
		}
	})
}

// BenchmarkExactAcc1 is the server's shape: one f32 input of 1 MiB into sums that live in
// memory (a 25M-element limb), beside the two-limb kernel on the same input.
func BenchmarkExactAcc1(b *testing.B) {
	const elems, piece = 25 << 20, 1 << 18
	x := benchData(dtF32, 4*piece)
	w := []float64{0x1p20}
	for _, k := range Impls() {
		if k.Name() == "generic" {
			continue
		}
		b.Run(fmt.Sprintf("limbs=one/impl=%s", k), func(b *testing.B) {
			one := make([]int64, elems)
			touch(one)
			b.SetBytes(4 * piece)
			at := 0
			for b.Loop() {
				k.ExactAcc1F32(one[at:at+piece], w, [][]byte{x})
				at = (at + piece) % elems
			}
		})
		b.Run(fmt.Sprintf("limbs=two/impl=%s", k), func(b *testing.B) {
			hi, lo := make([]int64, elems), make([]int64, elems)
			touch(hi)
			touch(lo)
			b.SetBytes(4 * piece)
			at := 0
			for b.Loop() {
				k.ExactAccF32(hi[at:at+piece], lo[at:at+piece], w, [][]byte{x})
				at = (at + piece) % elems
			}
		})
	}
}

// touch writes every page of s, so that a benchmark does not time first touches.
func touch(s []int64) {
	for j := 0; j < len(s); j += 512 {
		s[j] = 1
	}
}
