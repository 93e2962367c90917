package kernels

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/big"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/wattagg/wattagg/internal/half"
)

// exactAccCase is one accumulation kernel of the exact family.
type exactAccCase struct {
	name string
	in   dtype
	fn   func(k *Impl, hi, lo []int64, w []float64, x [][]byte) uint32
	abs  func(b []byte, j int) uint32 // the magnitude's bits, as maxAbs reports them
}

var exactAccCases = []exactAccCase{
	{"ExactAccF32", dtF32, (*Impl).ExactAccF32, func(b []byte, j int) uint32 { return binary.LittleEndian.Uint32(b[4*j:]) &^ (1 << 31) }},
	{"ExactAccBF16", dtBF16, (*Impl).ExactAccBF16, func(b []byte, j int) uint32 { return uint32(binary.LittleEndian.Uint16(b[2*j:]) &^ (1 << 15)) }},
	{"ExactAccF16", dtF16, (*Impl).ExactAccF16, func(b []byte, j int) uint32 { return uint32(binary.LittleEndian.Uint16(b[2*j:]) &^ (1 << 15)) }},
	{"ExactAccI8", dtI8, (*Impl).ExactAccI8, func(b []byte, j int) uint32 { return uint32(math.Abs(dtI8.get(b, j))) }},
}

// exactInput draws n elements of dt whose magnitudes stay below 2^40 (so that terms with the
// weights of exactWeight stay below ExactMaxTerm): every exponent down to the subnormals, zeros
// of both signs.
func exactInput(r *rand.Rand, dt dtype, n int) []byte {
	b := make([]byte, n*dt.size)
	for j := range n {
		for {
			v := dt.bits(r, true)
			dt.putBits(b, j, v)
			if math.Abs(dt.get(b, j)) < 0x1p40 {
				break
			}
		}
	}
	return b
}

// exactWeight draws a weight below 2^62 in magnitude: ordinary ones, powers of two, integers (the
// example counts of FedAvg), tiny ones, zero and negative ones (a global model subtracted).
func exactWeight(r *rand.Rand) float64 {
	switch r.IntN(8) {
	case 0:
		return 0
	case 1:
		return math.Ldexp(1, r.IntN(120)-60)
	case 2:
		return float64(1 + r.IntN(100000))
	case 3:
		return -r.Float64() * math.Ldexp(1, r.IntN(40))
	case 4:
		return math.Ldexp(r.Float64(), -r.IntN(1000))
	default:
		return (r.Float64() + 0.5) * math.Ldexp(1, r.IntN(80)-20)
	}
}

// guardedI64 returns an int64 slice of n elements at offset off inside a buffer of sentinels,
// filled with normalised limbs, and a check that the sentinels are intact.
func guardedI64(n, off int) ([]int64, func(*testing.T)) {
	const s = -0x5a5a5a5a5a5a5a5b
	buf := make([]int64, n+off+2*guard)
	for j := range buf {
		buf[j] = s
	}
	v := buf[guard+off : guard+off+n : guard+off+n]
	return v, func(t *testing.T) {
		t.Helper()
		for j, x := range buf {
			if (j < guard+off || j >= guard+off+n) && x != s {
				t.Fatalf("guard element %d (slice at %d, len %d) overwritten: %#x", j, guard+off, n, x)
			}
		}
	}
}

// randLimbs fills hi and lo with a normalised sum: |hi| < 2^50, lo in [-2^51, 2^51).
func randLimbs(r *rand.Rand, hi, lo []int64) {
	for j := range hi {
		hi[j] = r.Int64N(1<<51) - 1<<50
		lo[j] = r.Int64N(1<<52) - 1<<51
	}
}

// TestExactTerm checks the split against big numbers: h·2^52 + l is w·x rounded to the nearest
// integer (ties to even), except where the f64 remainder w·x − h·2^52 is itself a tie that the
// exact remainder is not (then it is the other neighbour), with |h| and |l| at most 2^51 + 1/4.
func TestExactTerm(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	type wx struct{ w, x float64 }
	var cases []wx
	for range 200000 {
		x := float64(float32((r.Float64()*2 - 1) * math.Ldexp(1, r.IntN(60)-20)))
		w := (r.Float64() + 0.5) * math.Ldexp(1, r.IntN(80)-40)
		if r.IntN(4) == 0 {
			w = float64(r.IntN(1 << 20))
		}
		if math.Abs(w*x) < 0x1p102 {
			cases = append(cases, wx{w, x})
		}
	}
	for k := range 60 { // ties at every scale, both parities
		cases = append(cases, wx{float64(k) + 0.5, 1}, wx{-float64(k) - 0.5, 1}, wx{float64(2*k + 1), 0x1p51}, wx{float64(2*k + 1), 0.5})
	}
	cases = append(cases, wx{0, 1}, wx{math.Copysign(0, -1), 1}, wx{math.Nextafter(0x1p103, 0), 1}, wx{-math.Nextafter(0x1p103, 0), 1},
		wx{0x1p51, 1}, wx{0x1p52 - 0.5, 1})
	others := 0
	for _, c := range cases {
		h, l := ExactTerm(c.w, c.x)
		if h > 1<<51 || -h > 1<<51 || l > 1<<51+1 || -l > 1<<51+1 {
			t.Fatalf("ExactTerm(%v, %v) = %d, %d: a part beyond 2^51", c.w, c.x, h, l)
		}
		got := new(big.Int).Lsh(big.NewInt(h), 52)
		got.Add(got, big.NewInt(l))
		exact := new(big.Float).SetPrec(200).SetFloat64(c.w)
		exact.Mul(exact, new(big.Float).SetFloat64(c.x))
		want := roundEven(exact)
		if got.Cmp(want) == 0 {
			continue
		}
		// The remainder rounded to f64 is a tie: the other neighbour, by at most 1.
		rem := new(big.Float).SetPrec(200).Sub(exact, new(big.Float).SetInt(new(big.Int).Lsh(big.NewInt(h), 52)))
		r64, _ := rem.Float64()
		if r64 != math.Trunc(r64)+math.Copysign(0.5, r64) || new(big.Int).Sub(got, want).CmpAbs(big.NewInt(1)) != 0 {
			t.Fatalf("ExactTerm(%v, %v) = %d·2^52 + %d = %v, want %v", c.w, c.x, h, l, got, want)
		}
		others++
	}
	t.Logf("%d of %d terms took the other neighbour of a tie of the f64 remainder", others, len(cases))
}

// roundEven is f rounded to the nearest integer, ties to even, exactly.
func roundEven(f *big.Float) *big.Int {
	i, _ := f.Int(nil) // toward zero
	rest := new(big.Float).SetPrec(f.Prec()).Sub(f, new(big.Float).SetInt(i))
	half := rest.Cmp(big.NewFloat(0.5))
	mhalf := rest.Cmp(big.NewFloat(-0.5))
	switch {
	case half > 0 || half == 0 && i.Bit(0) == 1:
		i.Add(i, big.NewInt(1))
	case mhalf < 0 || mhalf == 0 && i.Bit(0) == 1:
		i.Sub(i, big.NewInt(1))
	}
	return i
}

// TestExactAcc compares every Impl with the reference for every length, input counts that cover
// each group size of the assembly (7 inputs per pass) and several passes, offsets of the limbs and
// of the inputs, and inputs longer than needed; limbs and guards must match exactly.
func TestExactAcc(t *testing.T) {
	for _, c := range exactAccCases {
		t.Run(c.name, func(t *testing.T) {
			forImpls(t, func(t *testing.T, k *Impl) {
				r := rand.New(rand.NewPCG(2, uint64(len(c.name))))
				for _, n := range lengths() {
					counts := []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 13, 14, 15, 22}
					if n > 127 {
						counts = []int{1, 7, 9}
					}
					if n > 4099 {
						counts = []int{1, 8}
					}
					for _, cnt := range counts {
						testExactAccOnce(t, r, c, k, n, cnt)
					}
				}
			})
		})
	}
}

func testExactAccOnce(t *testing.T, r *rand.Rand, c exactAccCase, k *Impl, n, cnt int) {
	t.Helper()
	off, xoff := r.IntN(8), r.IntN(8)*c.in.size+r.IntN(4)
	hi, checkHi := guardedI64(n, off)
	lo, checkLo := guardedI64(n, (off+3)%8)
	randLimbs(r, hi, lo)
	wantHi, wantLo := slices.Clone(hi), slices.Clone(lo)
	w := make([]float64, cnt)
	x := make([][]byte, cnt)
	for i := range x {
		w[i] = exactWeight(r)
		if c.in.name == "I8" {
			w[i] = math.Ldexp(w[i], -8) // i8 values are below 2^7
		}
		buf := make([]byte, xoff+(n+3)*c.in.size)
		copy(buf[xoff:], exactInput(r, c.in, n+r.IntN(3))) // the view at xoff holds bounded values
		x[i] = buf[xoff:]
	}
	in := cloneAll(x)
	wantMax := c.fn(refImpl(), wantHi, wantLo, w, x)
	gotMax := c.fn(k, hi, lo, w, x)
	var plainMax uint32 // the largest magnitude, plainly
	for i := range x {
		for j := range n {
			plainMax = max(plainMax, c.abs(x[i], j))
		}
	}
	if gotMax != plainMax || wantMax != plainMax {
		t.Fatalf("n=%d inputs=%d: maxAbs %#x, reference %#x, want %#x", n, cnt, gotMax, wantMax, plainMax)
	}
	for j := range n {
		if hi[j] != wantHi[j] || lo[j] != wantLo[j] {
			t.Fatalf("n=%d inputs=%d: element %d is (%d, %d), want (%d, %d)", n, cnt, j, hi[j], lo[j], wantHi[j], wantLo[j])
		}
		if lo[j] < -1<<51 || lo[j] >= 1<<51 {
			t.Fatalf("n=%d inputs=%d: element %d: lo %d not normalised", n, cnt, j, lo[j])
		}
	}
	for i := range x {
		if !slices.Equal(x[i], in[i]) {
			t.Fatalf("input %d modified", i)
		}
	}
	checkHi(t)
	checkLo(t)
}

func cloneAll(x [][]byte) [][]byte {
	out := make([][]byte, len(x))
	for i := range x {
		out[i] = slices.Clone(x[i])
	}
	return out
}

// TestExactAccOrderIndependent is the family's reason to be: the same terms in any order, cut
// into calls of any sizes, run by any Impl, give the same limbs, and the limbs hold the exact sum
// of the terms rounded one by one (checked with big integers).
func TestExactAccOrderIndependent(t *testing.T) {
	impls := Impls()
	for _, c := range exactAccCases {
		t.Run(c.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(3, uint64(len(c.name))))
			const n, inputs = 37, 150
			w := make([]float64, inputs)
			x := make([][]byte, inputs)
			for i := range x {
				w[i] = exactWeight(r)
				x[i] = exactInput(r, c.in, n)
			}
			want := make([]*big.Int, n)
			for j := range want {
				want[j] = new(big.Int)
				for i := range x {
					h, l := ExactTerm(w[i], c.in.get(x[i], j))
					want[j].Add(want[j], new(big.Int).Add(new(big.Int).Lsh(big.NewInt(h), 52), big.NewInt(l)))
				}
			}
			for trial := range 20 {
				perm := r.Perm(inputs)
				hi, lo := make([]int64, n), make([]int64, n)
				for s := 0; s < inputs; {
					e := min(inputs, s+1+r.IntN(40))
					pw, px := make([]float64, 0, e-s), make([][]byte, 0, e-s)
					for _, p := range perm[s:e] {
						pw, px = append(pw, w[p]), append(px, x[p])
					}
					c.fn(impls[r.IntN(len(impls))], hi, lo, pw, px)
					s = e
				}
				for j := range n {
					got := new(big.Int).Lsh(big.NewInt(hi[j]), 52)
					got.Add(got, big.NewInt(lo[j]))
					if got.Cmp(want[j]) != 0 {
						t.Fatalf("trial %d: element %d holds %v, want %v", trial, j, got, want[j])
					}
				}
			}
		})
	}
}

// TestExactStore compares every Impl's stores with the reference, for every length, offsets and
// scales, over limbs from zero to beyond 2^53 in the high limb.
func TestExactStore(t *testing.T) {
	cases := []struct {
		name string
		out  dtype
		fn   func(k *Impl, dst []byte, hi, lo []int64, s float64)
	}{
		{"ExactStoreF32", dtF32, (*Impl).ExactStoreF32},
		{"ExactStoreBF16", dtBF16, (*Impl).ExactStoreBF16},
		{"ExactStoreF16", dtF16, (*Impl).ExactStoreF16},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			forImpls(t, func(t *testing.T, k *Impl) {
				r := rand.New(rand.NewPCG(4, uint64(len(c.name))))
				for _, n := range lengths() {
					for range 3 {
						off := r.IntN(8)
						hi, lo := make([]int64, n+off)[off:], make([]int64, n)
						for j := range hi {
							switch r.IntN(4) {
							case 0:
								hi[j] = r.Int64() >> r.IntN(64) // any magnitude, both signs
							case 1:
								hi[j] = 0
							default:
								hi[j] = r.Int64N(1<<40) - 1<<39
							}
							lo[j] = r.Int64N(1<<52) - 1<<51
						}
						s := math.Ldexp(r.Float64()+0.5, -r.IntN(140))
						if r.IntN(2) == 0 {
							s = -s
						}
						want := make([]byte, n*c.out.size)
						got := make([]byte, n*c.out.size+c.out.size*off)[c.out.size*off:]
						c.fn(refImpl(), want, hi, lo, s)
						c.fn(k, got, hi, lo, s)
						for j := range n {
							if !sameElem(c.out, got, want, j) {
								t.Fatalf("n=%d: element %d (hi %d, lo %d, scale %v): %v, want %v", n, j, hi[j], lo[j], s, c.out.get(got, j), c.out.get(want, j))
							}
						}
					}
				}
			})
		})
	}
}

// TestExactStoreValue checks the reference's rounding: float64(hi)·2^52 + float64(lo), times s, is
// the correctly rounded f64 of each step (big floats), so the stored f32 is within one ulp of
// S·s.
func TestExactStoreValue(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 5))
	for range 100000 {
		hi, lo := r.Int64N(1<<52)-1<<51, r.Int64N(1<<52)-1<<51
		s := math.Ldexp(r.Float64()+0.5, -r.IntN(100))
		exact := new(big.Float).SetPrec(300).SetInt(new(big.Int).Lsh(big.NewInt(hi), 52))
		exact.Add(exact, new(big.Float).SetInt64(lo))
		exact.Mul(exact, new(big.Float).SetFloat64(s))
		want, _ := exact.Float32()
		dst := make([]byte, 4)
		ExactStoreF32(dst, []int64{hi}, []int64{lo}, s)
		got := dtF32.get(dst, 0)
		if ulps := math.Abs(float64(math.Float32bits(float32(got))) - float64(math.Float32bits(want))); ulps > 1 {
			t.Fatalf("hi %d lo %d scale %v: %v, correctly rounded %v", hi, lo, s, got, want)
		}
	}
}

// TestBeyond compares every Impl's range checks with the reference, with one value beyond the
// bound (or NaN, or Inf) at each position of short slices and at random ones of long slices.
func TestBeyond(t *testing.T) {
	cases := []struct {
		in dtype
		fn func(k *Impl, x []byte, b float32) bool
	}{
		{dtF32, (*Impl).BeyondF32}, {dtBF16, (*Impl).BeyondBF16}, {dtF16, (*Impl).BeyondF16},
	}
	for _, c := range cases {
		t.Run("Beyond"+c.in.name, func(t *testing.T) {
			forImpls(t, func(t *testing.T, k *Impl) {
				r := rand.New(rand.NewPCG(6, uint64(c.in.size)))
				for _, n := range lengths() {
					const bound = 3.5
					x := make([]byte, n*c.in.size+r.IntN(4)*c.in.size)[:n*c.in.size]
					for j := range n {
						c.in.putBits(x, j, bits16or32(c.in, float32(r.Float64()*6.9-3.45)))
					}
					if got, want := c.fn(k, x, bound), c.fn(refImpl(), x, bound); got != want || got {
						t.Fatalf("n=%d: in range: %v, reference %v", n, got, want)
					}
					positions := []int{}
					for j := range min(n, 70) {
						positions = append(positions, j)
					}
					if n > 70 {
						positions = append(positions, n-1, r.IntN(n), n/2)
					}
					for _, j := range positions {
						for _, v := range []float32{bound * 1.01, -bound * 2, float32(math.NaN()), float32(math.Inf(-1))} {
							y := slices.Clone(x)
							c.in.putBits(y, j, bits16or32(c.in, v))
							if !c.fn(k, y, bound) || !c.fn(refImpl(), y, bound) {
								t.Fatalf("n=%d: %v at %d not found", n, v, j)
							}
						}
					}
				}
			})
		})
	}
}

// bits16or32 is v in dt's encoding (rounded to nearest even).
func bits16or32(dt dtype, v float32) uint64 {
	switch dt.name {
	case "BF16":
		return uint64(half.F32ToBF16(v))
	case "F16":
		return uint64(half.F32ToF16(v))
	}
	return uint64(math.Float32bits(v))
}

// BenchmarkExactAcc is the exact sum's shape of real use: 32 f32 inputs over a cache-resident
// block of limbs; compare with BenchmarkFedAvg's f32 and f64 accumulations.
func BenchmarkExactAcc(b *testing.B) {
	const inputs, block = 32, 16 << 10
	for _, size := range []int{block, 1 << 20} {
		x := make([][]byte, inputs)
		w := make([]float64, inputs)
		for i := range x {
			x[i] = benchData(dtF32, 4*size)
			w[i] = math.Ldexp(1, 60)
		}
		for _, k := range Impls() {
			if k.Name() == "generic" && size > block {
				continue // minutes
			}
			b.Run(fmt.Sprintf("elems=%d/impl=%s", size, k), func(b *testing.B) {
				hi, lo := make([]int64, block), make([]int64, block)
				xs := make([][]byte, inputs)
				b.SetBytes(int64(inputs * 4 * size))
				for b.Loop() {
					for s := 0; s < size; s += block {
						for i := range xs {
							xs[i] = x[i][4*s:]
						}
						k.ExactAccF32(hi, lo, w, xs)
					}
				}
			})
		}
	}
}

// TestExactAccMaxAbsNonFinite checks that a NaN or an infinity anywhere among the inputs shows in
// maxAbs above every finite magnitude, for every Impl, length and position: what lets a caller
// refuse a sum whose terms it cannot trust without scanning the inputs again.
func TestExactAccMaxAbsNonFinite(t *testing.T) {
	cases := []struct {
		c       exactAccCase
		bad     []uint64
		finites uint32 // the largest finite magnitude's bits
	}{
		{exactAccCases[0], []uint64{0x7fc00000, 0xff800000, 0x7f800001}, 0x7f7fffff},
		{exactAccCases[1], []uint64{0x7fc0, 0xff80}, 0x7f7f},
		{exactAccCases[2], []uint64{0x7e00, 0xfc00}, 0x7bff},
	}
	for _, tc := range cases {
		forImpls(t, func(t *testing.T, k *Impl) {
			r := rand.New(rand.NewPCG(7, uint64(tc.c.in.size)))
			for _, n := range []int{1, 7, 8, 9, 31, 32, 33, 100} {
				for _, cnt := range []int{1, 3, 8} {
					x := make([][]byte, cnt)
					w := make([]float64, cnt)
					for i := range x {
						x[i] = exactInput(r, tc.c.in, n)
						w[i] = 1
					}
					i, j := r.IntN(cnt), r.IntN(n)
					tc.c.in.putBits(x[i], j, tc.bad[r.IntN(len(tc.bad))])
					hi, lo := make([]int64, n), make([]int64, n)
					if m := tc.c.fn(k, hi, lo, w, x); m <= tc.finites {
						t.Fatalf("%s n=%d inputs=%d: a non-finite element at %d of input %d: maxAbs %#x", tc.c.name, n, cnt, j, i, m)
					}
				}
			}
		})
	}
}
