package kernels

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// stepCase is one optimizer kernel as a family table holds it, with FedAvgM brought to the
// 7-operand shape (it has no v).
type stepCase struct {
	name   string
	second bool
	fn     func(v *optimKernels) func(xo, mo, vo, x, d, m, v []float32, p OptimParams)
}

var stepCases = []stepCase{
	{"FedAvgM", false, func(ov *optimKernels) func(xo, mo, vo, x, d, m, v []float32, p OptimParams) {
		return func(xo, mo, _, x, d, m, _ []float32, p OptimParams) { ov.fedAvgM(xo, mo, x, d, m, p) }
	}},
	{"FedAdagrad", true, func(ov *optimKernels) func(xo, mo, vo, x, d, m, v []float32, p OptimParams) { return ov.fedAdagrad }},
	{"FedAdam", true, func(ov *optimKernels) func(xo, mo, vo, x, d, m, v []float32, p OptimParams) { return ov.fedAdam }},
	{"FedYogi", true, func(ov *optimKernels) func(xo, mo, vo, x, d, m, v []float32, p OptimParams) { return ov.fedYogi }},
}

// public is the exported method of a step case, run by k.
func (c stepCase) public(k *Impl) func(xo, mo, vo, x, d, m, v []float32, p OptimParams) {
	switch c.name {
	case "FedAvgM":
		return func(xo, mo, _, x, d, m, _ []float32, p OptimParams) { k.FedAvgMStepF32(xo, mo, x, d, m, p) }
	case "FedAdagrad":
		return k.FedAdagradStepF32
	case "FedAdam":
		return k.FedAdamStepF32
	}
	return k.FedYogiStepF32
}

// randParams draws hyperparameters: usual ones, and sometimes odd ones (β = 0, τ tiny, lr < 0).
func randParams(r *rand.Rand) OptimParams {
	p := OptimParams{LR: 0.1, Beta1: 0.9, Beta2: 0.99, Tau: 1e-3}
	switch r.IntN(4) {
	case 0:
		p = OptimParams{LR: float32(r.Float64()), Beta1: float32(r.Float64()), Beta2: float32(r.Float64()), Tau: float32(r.Float64())}
	case 1:
		p = OptimParams{LR: -0.5, Beta1: 0, Beta2: 0, Tau: 1e-9}
	}
	return p
}

// stepOperands are the inputs of one call: x, d, m anything (NaN, Inf, subnormals unless
// finite), v mostly non-negative as a second moment is.
func stepOperands(r *rand.Rand, n int, finite bool) (x, d, m, v []float32) {
	x, d, m, v = make([]float32, n), make([]float32, n), make([]float32, n), make([]float32, n)
	for j := range n {
		x[j] = math.Float32frombits(randF32Bits(r, finite))
		d[j] = math.Float32frombits(randF32Bits(r, finite))
		m[j] = math.Float32frombits(randF32Bits(r, finite))
		v[j] = math.Float32frombits(randF32Bits(r, finite))
		if r.IntN(4) != 0 {
			v[j] = float32(math.Abs(float64(v[j])))
		}
		if r.IntN(8) == 0 {
			v[j] = d[j] * d[j] // Yogi's sign(0)
		}
	}
	return x, d, m, v
}

// Aliasing modes of the x output: a buffer of its own, x itself, d itself.
var aliasModes = []string{"separate", "xo=x", "xo=d"}

func TestOptimSteps(t *testing.T) {
	for _, c := range stepCases {
		t.Run(c.name, func(t *testing.T) {
			forImpls(t, func(t *testing.T, k *Impl) { testStep(t, k, c) })
		})
	}
}

func testStep(t *testing.T, k *Impl, c stepCase) {
	r := rand.New(rand.NewPCG(7, uint64(len(c.name))))
	fn, ref := c.public(k), c.public(refImpl())
	for _, n := range lengths() {
		for _, off := range []int{0, 1, 3, 7} {
			if n > 1000 && off != 3 {
				continue
			}
			for _, alias := range aliasModes {
				if n > 1000 && alias != "separate" {
					continue
				}
				p := randParams(r)
				x0, d0, m0, v0 := stepOperands(r, n, r.IntN(3) != 0)
				// The reference, on copies.
				wx, wm, wv := slices.Clone(x0), slices.Clone(m0), slices.Clone(v0)
				ref(wx, wm, wv, slices.Clone(x0), slices.Clone(d0), slices.Clone(m0), slices.Clone(v0), p)

				// k, on guarded buffers at offset off.
				x, checkX := guardedF32(n, off)
				d, checkD := guardedF32(n, (off+1)%8)
				m, checkM := guardedF32(n, (off+2)%8)
				v, checkV := guardedF32(n, (off+3)%8)
				copy(x, x0)
				copy(d, d0)
				copy(m, m0)
				copy(v, v0)
				var xo []float32
				checkXo := func(*testing.T) {}
				switch alias {
				case "separate":
					xo, checkXo = guardedF32(n, (off+5)%8)
				case "xo=x":
					xo = x
				case "xo=d":
					xo = d
				}
				fn(xo, m, v, x, d, m, v, p)
				for _, check := range []func(*testing.T){checkX, checkD, checkM, checkV, checkXo} {
					check(t)
				}
				where := fmt.Sprintf("n=%d off=%d %s p=%+v", n, off, alias, p)
				compareF32(t, where+": x'", xo, wx)
				compareF32(t, where+": m'", m, wm)
				if c.second {
					compareF32(t, where+": v'", v, wv)
				} else if !slices.EqualFunc(v, v0, sameF32) {
					t.Fatalf("%s: FedAvgM wrote v", where)
				}
				// Inputs that are not outputs are unchanged.
				if alias != "xo=x" {
					compareF32(t, where+": x (input)", x, x0)
				}
				if alias != "xo=d" {
					compareF32(t, where+": d (input)", d, d0)
				}
			}
		}
	}
}

func compareF32(t *testing.T, what string, got, want []float32) {
	t.Helper()
	for j := range want {
		if !sameF32(got[j], want[j]) {
			t.Fatalf("%s[%d] = %v (%#x), reference %v (%#x)", what, j, got[j], math.Float32bits(got[j]), want[j], math.Float32bits(want[j]))
		}
	}
}

// TestOptimReferenceMath checks the reference loops themselves against the update rules written
// in float64 (Reddi et al., 2021, Algorithm 2), one rounding step at a time: each output is
// compared with the float64 rule applied to the f32 inputs and to the f32 outputs before it,
// within a few f32 roundings of the magnitudes involved (cancellation cannot hide behind it).
func TestOptimReferenceMath(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	p := OptimParams{LR: 0.05, Beta1: 0.9, Beta2: 0.99, Tau: 1e-3}
	b1, b2, lr, tau := float64(p.Beta1), float64(p.Beta2), float64(p.LR), float64(p.Tau)
	const ulp = 1.0 / (1 << 23)
	check := func(name, what string, got float32, want, mag float64) {
		t.Helper()
		if d := math.Abs(float64(got) - want); d > 4*ulp*mag {
			t.Fatalf("%s: %s = %v, float64 rule %v (error %.3g of magnitude %.3g)", name, what, got, want, d, mag)
		}
	}
	for range 1000 {
		x := float64(float32(r.NormFloat64()))
		d := float64(float32(r.NormFloat64() * 1e-2))
		m := float64(float32(r.NormFloat64() * 1e-2))
		v := float64(float32(math.Abs(r.NormFloat64()) * 1e-4))
		for _, c := range stepCases {
			xo, mo, vo := []float32{0}, []float32{0}, []float32{0}
			c.fn(&optimGeneric)(xo, mo, vo, []float32{float32(x)}, []float32{float32(d)}, []float32{float32(m)}, []float32{float32(v)}, p)
			m1, v1 := float64(mo[0]), float64(vo[0])
			if !c.second {
				check(c.name, "m'", mo[0], b1*m+d, math.Abs(b1*m)+math.Abs(d))
				check(c.name, "x'", xo[0], x+lr*m1, math.Abs(x)+math.Abs(lr*m1))
				continue
			}
			check(c.name, "m'", mo[0], b1*m+(1-b1)*d, math.Abs(b1*m)+math.Abs((1-b1)*d))
			var wv, mag float64
			switch c.name {
			case "FedAdagrad":
				wv, mag = v+d*d, v+d*d
			case "FedAdam":
				wv, mag = b2*v+(1-b2)*d*d, b2*v+(1-b2)*d*d
			case "FedYogi":
				s := 0.0
				if v > d*d {
					s = 1
				} else if v < d*d {
					s = -1
				}
				wv, mag = v-(1-b2)*d*d*s, v+(1-b2)*d*d
			}
			check(c.name, "v'", vo[0], wv, mag)
			step := lr * m1 / (math.Sqrt(v1) + tau)
			check(c.name, "x'", xo[0], x+step, math.Abs(x)+2*math.Abs(step))
		}
	}
}

func TestModSumU32(t *testing.T) {
	forImpls(t, func(t *testing.T, k *Impl) {
		r := rand.New(rand.NewPCG(11, 12))
		for _, n := range lengths() {
			for _, cnt := range []int{0, 1, 2, 3, 7, 8, 9, 17} {
				if n > 1000 && cnt != 9 {
					continue
				}
				acc0 := make([]uint32, n)
				for j := range acc0 {
					acc0[j] = r.Uint32()
				}
				x := make([][]byte, cnt)
				for i := range x {
					b := make([]byte, 4*n)
					for j := 0; j < len(b); j += 4 {
						binary.LittleEndian.PutUint32(b[j:], r.Uint32())
					}
					x[i] = placed(r, b, (i+n)%4) // inputs at any alignment
				}
				// Plain reference: sums in uint64, reduced at the end.
				want := make([]uint32, n)
				for j := range want {
					s := uint64(acc0[j])
					for i := range x {
						s += uint64(binary.LittleEndian.Uint32(x[i][4*j:]))
					}
					want[j] = uint32(s)
				}
				acc, check := guardedU32(n, (n+cnt)%8)
				copy(acc, acc0)
				k.ModSumU32(acc, x)
				check(t)
				if !slices.Equal(acc, want) {
					t.Fatalf("n=%d inputs=%d: ModSumU32 differs from the reference", n, cnt)
				}
			}
		}
	})
}

func guardedU32(n, off int) ([]uint32, func(t *testing.T)) {
	buf := make([]uint32, n+off+2*guard)
	for j := range buf {
		buf[j] = sentinel4
	}
	s := buf[guard+off : guard+off+n : guard+off+n]
	return s, func(t *testing.T) {
		t.Helper()
		for j, v := range buf {
			if (j < guard+off || j >= guard+off+n) && v != sentinel4 {
				t.Fatalf("guard element %d (slice at %d, len %d) overwritten: %#x", j, guard+off, n, v)
			}
		}
	}
}

// TestModSumEdges reads inputs that end at, or start just after, an inaccessible page: a kernel
// that reads a byte too many or too few faults.
func TestModSumEdges(t *testing.T) {
	forImpls(t, func(t *testing.T, k *Impl) {
		for _, n := range []int{1, 7, 8, 9, 31, 32, 33, 1000} {
			for _, atEnd := range []bool{true, false} {
				b := edgeBytes(t, 4*n, atEnd)
				for j := range b {
					b[j] = byte(j)
				}
				acc := make([]uint32, n)
				k.ModSumU32(acc, [][]byte{b, b})
				for j := range acc {
					if want := 2 * binary.LittleEndian.Uint32(b[4*j:]); acc[j] != want {
						t.Fatalf("n=%d atEnd=%v: acc[%d] = %#x, want %#x", n, atEnd, j, acc[j], want)
					}
				}
			}
		}
	})
}

func FuzzOptimStep(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		fb := &fuzzBytes{data}
		c := stepCases[fb.byte()%len(stepCases)]
		alias := aliasModes[fb.byte()%len(aliasModes)]
		p := OptimParams{LR: fb.f32(), Beta1: fb.f32(), Beta2: fb.f32(), Tau: fb.f32()}
		n := fb.length()
		in := make([][]float32, 4)
		for k := range in {
			in[k] = make([]float32, n)
			for j := range in[k] {
				in[k][j] = fb.f32()
			}
		}
		run := func(ov *optimKernels) [3][]float32 {
			x, d, m, v := slices.Clone(in[0]), slices.Clone(in[1]), slices.Clone(in[2]), slices.Clone(in[3])
			xo := make([]float32, n)
			switch alias {
			case "xo=x":
				xo = x
			case "xo=d":
				xo = d
			}
			c.fn(ov)(xo, m, v, x, d, m, v, p)
			return [3][]float32{xo, m, v}
		}
		want := run(&optimGeneric)
		for _, im := range Impls() {
			got := run(im.optim)
			for k := range got {
				for j := range got[k] {
					if !sameF32(got[k][j], want[k][j]) {
						t.Fatalf("%s %s %s p=%+v n=%d: output %d[%d] = %v, generic %v", im, c.name, alias, p, n, k, j, got[k][j], want[k][j])
					}
				}
			}
		}
	})
}

func FuzzModSum(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		fb := &fuzzBytes{data}
		cnt := fb.byte() % 18
		n := fb.length()
		off := fb.byte()
		acc0 := make([]uint32, n)
		for j := range acc0 {
			acc0[j] = binary.LittleEndian.Uint32(fb.next(4))
		}
		x := fuzzInputs(fb, dtF32, cnt, n, off)
		want := slices.Clone(acc0)
		optimGeneric.modSumU32(want, x)
		for _, k := range Impls() {
			got := slices.Clone(acc0)
			k.ModSumU32(got, x)
			if !slices.Equal(got, want) {
				t.Fatalf("%s: n=%d inputs=%d: differs from generic", k, n, cnt)
			}
		}
	})
}
