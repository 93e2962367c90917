package kernels

import (
	"crypto/sha256"
	"fmt"
	"hash/maphash"
	"math"
	"math/big"
	"math/rand/v2"
	"slices"
	"testing"
)

// The design measurement behind the exact family (README, design notes): the same work — 32
// weighted inputs added to an accumulator block that stays in cache — as a floating-point sum
// (today's order-dependent kernels), as fixed-point limbs (the exact family), and as binned
// summation in the manner of ReproBLAS (Demmel & Nguyen), with 2 and 3 folds per coordinate;
// and the extra work of canonical-order recomputation, which sums in an order fixed by the
// updates' contents: hashing every input (SHA-256, since clients choose their bytes, or
// maphash as a lower bound), on top of an ordinary sum.
// Binned summation needs no declared bound (each coordinate's bins follow its largest term)
// but keeps K primary and K carry words plus a bin index per coordinate, and its deposit is a
// serial chain of K extractions through each fold; it is written here in Go only, so it is
// compared with the Go reference of the fixed-point kernel as well as with the assembly.

// binnedWidth is ReproBLAS's bin width for f64 (DBWIDTH); renormalisation every 2^10 deposits
// keeps the primaries in [1.5, 1.75)·2^E, as its binned_dmrenorm does.
const (
	binnedWidth     = 40
	binnedEndurance = 1 << 10
)

// binned is one binned accumulator per coordinate: fold k of coordinate j holds
// 1.5·2^(E_j − k·W) plus what was deposited into it (primary) and a count of quarter-bins moved
// out of it (carry). E_j follows the coordinate's largest term.
type binned struct {
	k    int
	pri  [][]float64
	car  [][]int64
	top  []int32 // E_j: exponent of the base of fold 0
	cnt  int     // deposits since the last renormalisation
	mant int     // 52
}

func newBinned(k, n int) *binned {
	b := &binned{k: k, pri: make([][]float64, k), car: make([][]int64, k), top: make([]int32, n), mant: 52}
	for f := range k {
		b.pri[f] = make([]float64, n)
		b.car[f] = make([]int64, n)
	}
	for j := range n {
		b.top[j] = math.MinInt32
	}
	return b
}

// bytesPerParam is the memory of one coordinate's accumulator.
func (b *binned) bytesPerParam() int { return b.k*(8+8) + 4 }

// or1 sets the last mantissa bit, so that adding x to a primary rounds it the same way whatever
// the primary's last bit holds (ReproBLAS's deposit).
func or1(x float64) float64 { return math.Float64frombits(math.Float64bits(x) | 1) }

// raise moves coordinate j's bins up so that fold 0 can take |x| ≤ ax: existing folds shift
// down by whole bins and the lowest ones are dropped, as binned_dmdupdate does.
func (b *binned) raise(j int, ax float64) {
	_, e := math.Frexp(ax)
	// Fold 0's base 2^E has ulp 2^(E-52); it takes terms below 2^(E-2) between renormalisations.
	need := int32(e + 3)
	need = (need + binnedWidth - 1 + 1<<20*binnedWidth) / binnedWidth * binnedWidth
	need -= 1 << 20 * binnedWidth
	old := b.top[j]
	if old != math.MinInt32 && need <= old {
		return
	}
	shift := b.k
	if old != math.MinInt32 {
		shift = int((need - old) / binnedWidth)
	}
	for f := b.k - 1; f >= 0; f-- {
		if src := f - shift; src >= 0 {
			b.pri[f][j], b.car[f][j] = b.pri[src][j], b.car[src][j]
		} else {
			b.pri[f][j], b.car[f][j] = 1.5*math.Ldexp(1, int(need)-f*binnedWidth), 0
		}
	}
	b.top[j] = need
}

// deposit adds w·x_i for every input to the block [0, n).
func (b *binned) deposit(w []float64, x [][]byte) {
	for i, xi := range x {
		wi := w[i]
		for j := range b.top {
			v := float64(wi * float64(ldF32(xi, j)))
			if b.top[j] == math.MinInt32 || math.Abs(v) >= math.Ldexp(1, int(b.top[j])-2) {
				b.raise(j, math.Abs(v))
			}
			for f := 0; f < b.k-1; f++ {
				q := b.pri[f][j]
				s := q + or1(v)
				b.pri[f][j] = s
				v -= s - q
			}
			b.pri[b.k-1][j] += or1(v)
		}
		b.cnt++
		if b.cnt == binnedEndurance {
			b.renorm()
		}
	}
}

// renorm moves whole quarter-bins from each primary to its carry (binned_dmrenorm).
func (b *binned) renorm() {
	for f := range b.k {
		for j, p := range b.pri[f] {
			bits := math.Float64bits(p)
			b.car[f][j] += int64((bits>>(b.mant-2))&3) - 2
			bits &^= 1 << (b.mant - 2)
			bits |= 1 << (b.mant - 1)
			b.pri[f][j] = math.Float64frombits(bits)
		}
	}
	b.cnt = 0
}

// value is coordinate j's sum, exactly.
func (b *binned) value(j int) *big.Float {
	sum := new(big.Float).SetPrec(4096)
	if b.top[j] == math.MinInt32 {
		return sum
	}
	for f := range b.k {
		base := math.Ldexp(1, int(b.top[j])-f*binnedWidth)
		t := new(big.Float).SetPrec(4096).SetFloat64(b.pri[f][j])
		t.Sub(t, new(big.Float).SetFloat64(1.5*base))
		c := new(big.Float).SetPrec(4096).SetInt64(b.car[f][j])
		c.Mul(c, new(big.Float).SetFloat64(0.25*base))
		sum.Add(sum, t.Add(t, c))
	}
	return sum
}

// TestBinnedPrototypeOrderIndependent checks the prototype measured below does what it is
// measured for: the same bits for the same terms in another order.
func TestBinnedPrototypeOrderIndependent(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	const n, inputs = 64, 40
	w := make([]float64, inputs)
	x := make([][]byte, inputs)
	for i := range x {
		w[i] = math.Ldexp(r.Float64()+0.5, r.IntN(20)-10)
		x[i] = make([]byte, 4*n)
		for j := range n {
			dtF32.putBits(x[i], j, uint64(math.Float32bits(float32(r.NormFloat64()*math.Ldexp(1, r.IntN(30)-15)))))
		}
	}
	a, b := newBinned(3, n), newBinned(3, n)
	a.deposit(w, x)
	perm := r.Perm(inputs)
	pw, px := make([]float64, inputs), make([][]byte, inputs)
	for i, p := range perm {
		pw[i], px[i] = w[p], x[p]
	}
	b.deposit(pw, px)
	for j := range n {
		if a.value(j).Cmp(b.value(j)) != 0 {
			t.Fatalf("coordinate %d: %v in one order, %v in another", j, a.value(j), b.value(j))
		}
	}
}

// BenchmarkExactDesigns times 32 inputs of a 4Ki-element block (inputs and accumulator in
// cache: the arithmetic alone) for each design; ns/term is the cost of one weighted term and
// acc-B/param the accumulator's bytes per coordinate.
func BenchmarkExactDesigns(b *testing.B) {
	const n, inputs = 4 << 10, 32
	r := rand.New(rand.NewPCG(1, 2))
	x := make([][]byte, inputs)
	w := make([]float64, inputs)
	w32 := make([]float32, inputs)
	for i := range x {
		x[i] = slices.Clone(benchData(dtF32, 4*n))
		w[i] = r.Float64() + 0.5
		w32[i] = float32(w[i])
	}
	report := func(b *testing.B, accBytes int) {
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/(n*inputs), "ns/term")
		b.ReportMetric(float64(accBytes), "acc-B/param")
	}
	for _, k := range Impls() {
		b.Run(fmt.Sprintf("design=float-f32/impl=%s", k), func(b *testing.B) {
			acc := make([]float32, n)
			for b.Loop() {
				k.AccF32FromF32(acc, w32, x)
			}
			report(b, 4)
		})
		b.Run(fmt.Sprintf("design=float-f64/impl=%s", k), func(b *testing.B) {
			acc := make([]float64, n)
			for b.Loop() {
				k.AccF64FromF32(acc, w, x)
			}
			report(b, 8)
		})
		b.Run(fmt.Sprintf("design=fixed-limbs/impl=%s", k), func(b *testing.B) {
			hi, lo := make([]int64, n), make([]int64, n)
			sw := make([]float64, inputs)
			for i := range sw {
				sw[i] = math.Ldexp(w[i], 60) // terms below 2^103: weights and |x| < 2^40
			}
			for b.Loop() {
				k.ExactAccF32(hi, lo, sw, x)
			}
			report(b, 16)
		})
	}
	for _, h := range []string{"sha256", "maphash"} {
		b.Run(fmt.Sprintf("design=canonical-hash-%s/impl=generic", h), func(b *testing.B) {
			seed := maphash.MakeSeed()
			for b.Loop() {
				for _, xi := range x {
					if h == "sha256" {
						sha256.Sum256(xi)
					} else {
						maphash.Bytes(seed, xi)
					}
				}
			}
			report(b, 0)
		})
	}
	for _, folds := range []int{2, 3} {
		b.Run(fmt.Sprintf("design=binned-k%d/impl=generic", folds), func(b *testing.B) {
			acc := newBinned(folds, n)
			for b.Loop() {
				acc.deposit(w, x)
			}
			report(b, acc.bytesPerParam())
		})
	}
}
