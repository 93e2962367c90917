package kernels

import (
	"bytes"
	"encoding/binary"
	"math"
	"slices"
	"testing"
)

// The fuzz targets decode their bytes as raw float bits (math.Float32frombits, raw halves), so
// NaNs with any payload, infinities, subnormals and signed zeros all appear, run every Impl on
// the same arguments and compare each with the generic one (NaNs as NaN-ness: when both operands
// of an operation are NaN the payload kept depends on operand order).

// fuzzBytes hands out the fuzz input piece by piece; past its end it gives zeros.
type fuzzBytes struct{ b []byte }

func (f *fuzzBytes) next(n int) []byte {
	out := make([]byte, n)
	f.b = f.b[copy(out, f.b):]
	return out
}

func (f *fuzzBytes) byte() int { return int(f.next(1)[0]) }

func (f *fuzzBytes) f32() float32 {
	return math.Float32frombits(binary.LittleEndian.Uint32(f.next(4)))
}

func (f *fuzzBytes) f64() float64 {
	return math.Float64frombits(binary.LittleEndian.Uint64(f.next(8)))
}

// length decodes an element count: mostly small (every tail path), sometimes a few hundred.
func (f *fuzzBytes) length() int {
	n := f.byte()
	if n >= 200 {
		n = (n-200)*8 + f.byte()%8
	}
	return n
}

func fuzzSeeds(f *testing.F) {
	f.Add([]byte{})
	f.Add(bytes.Repeat([]byte{0x00, 0x00, 0xc0, 0x7f}, 64)) // f32 quiet NaN
	f.Add(bytes.Repeat([]byte{0x01, 0x00, 0x80, 0xff}, 64)) // f32 signalling NaN
	f.Add(bytes.Repeat([]byte{0x00, 0x7c, 0x00, 0xfc}, 64)) // f16 ±Inf
	f.Add(bytes.Repeat([]byte{0x80, 0x7f, 0x01, 0x00}, 64)) // bf16 Inf, f32 subnormal
	f.Add(bytes.Repeat([]byte{0x00, 0x80, 0x3f, 0x80}, 64)) // ties
	seed := make([]byte, 1024)
	for j := range seed {
		seed[j] = byte(j*131 + j>>3)
	}
	f.Add(seed)
}

func FuzzAcc(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		fb := &fuzzBytes{data}
		k := fb.byte() % (len(accF32Cases) + len(accF64Cases))
		cnt := fb.byte() % 18 // up to two full groups of 8 and a remainder
		n := fb.length()
		off := fb.byte()
		if k < len(accF32Cases) {
			c := accF32Cases[k]
			w := make([]float32, cnt)
			for i := range w {
				w[i] = fb.f32()
			}
			acc := make([]float32, n)
			for j := range acc {
				acc[j] = fb.f32()
			}
			x := fuzzInputs(fb, c.in, cnt, n, off)
			fuzzCompare(t, acc, w, x, c.fn)
		} else {
			c := accF64Cases[k-len(accF32Cases)]
			w := make([]float64, cnt)
			for i := range w {
				w[i] = fb.f64()
			}
			acc := make([]float64, n)
			for j := range acc {
				acc[j] = fb.f64()
			}
			x := fuzzInputs(fb, c.in, cnt, n, off)
			fuzzCompare(t, acc, w, x, c.fn)
		}
	})
}

// fuzzInputs cuts cnt inputs of n elements from fb, input i at byte offset (off+i)%4.
func fuzzInputs(fb *fuzzBytes, in dtype, cnt, n, off int) [][]byte {
	x := make([][]byte, cnt)
	for i := range x {
		o := (off + i) % 4
		x[i] = append(make([]byte, o), fb.next(n*in.size)...)[o:]
	}
	return x
}

func fuzzCompare[T float32 | float64](t *testing.T, acc0, w []T, x [][]byte, fn func(k *Impl, acc, w []T, x [][]byte)) {
	want := slices.Clone(acc0)
	fn(refImpl(), want, w, x)
	for _, v := range Impls() {
		got := slices.Clone(acc0)
		fn(v, got, w, x)
		for j := range got {
			if !same(got[j], want[j]) {
				t.Fatalf("%s: n=%d inputs=%d: acc[%d] = %v (%#x), generic %v (%#x)", v, len(acc0), len(x), j,
					got[j], bitsOf(got[j]), want[j], bitsOf(want[j]))
			}
		}
	}
}

var (
	fuzzStoreF32 = storeF32Cases
	fuzzStoreF64 = storeF64Cases
)

func FuzzStore(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		fb := &fuzzBytes{data}
		k := fb.byte() % (len(fuzzStoreF32) + len(fuzzStoreF64))
		n := fb.length()
		off := fb.byte() % 4
		if k < len(fuzzStoreF32) {
			c := fuzzStoreF32[k]
			s := fb.f32()
			src := make([]float32, n)
			for j := range src {
				src[j] = fb.f32()
			}
			fuzzCompareStore(t, c.out, src, s, off, c.fn)
		} else {
			c := fuzzStoreF64[k-len(fuzzStoreF32)]
			s := fb.f64()
			src := make([]float64, n)
			for j := range src {
				src[j] = fb.f64()
			}
			fuzzCompareStore(t, c.out, src, s, off, c.fn)
		}
	})
}

func fuzzCompareStore[T float32 | float64](t *testing.T, out dtype, src []T, s T, off int, fn func(*Impl, []byte, []T, T)) {
	want := make([]byte, len(src)*out.size)
	fn(refImpl(), want, src, s)
	for _, v := range Impls() {
		got := make([]byte, off+len(want))[off:]
		fn(v, got, src, s)
		for j := range src {
			if !sameElem(out, got, want, j) {
				t.Fatalf("%s: n=%d s=%v: element %d (%v): % x, generic % x", v, len(src), s, j, src[j],
					got[j*out.size:(j+1)*out.size], want[j*out.size:(j+1)*out.size])
			}
		}
	}
}

func FuzzReduce(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		fb := &fuzzBytes{data}
		c := reduceCases[fb.byte()%len(reduceCases)]
		off := fb.byte() % 8
		x := append(make([]byte, off), fb.b...)[off:]
		var want [Lanes]float64
		c.fn(refImpl().core)(&want, x)
		for _, v := range Impls() {
			var got [Lanes]float64
			c.fn(v.core)(&got, x)
			for k := range got {
				if !sameF64(got[k], want[k]) {
					t.Fatalf("%s %s: len(x)=%d: partial %d = %v, generic %v", v, c.name, len(x), k, got[k], want[k])
				}
			}
		}
	})
}

func FuzzNonFinite(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		fb := &fuzzBytes{data}
		k := fb.byte() % (len(nonFiniteCases) + 1)
		off := fb.byte() % 8
		keep := fb.byte()
		x := append(make([]byte, off), fb.b...)[off:]
		if k < len(nonFiniteCases) && keep < 0xf0 {
			// Make every element finite but the one at keep (if any), to reach long scans.
			c := nonFiniteCases[k]
			for j := range len(x) / c.size {
				if j != keep {
					putElem(x, c.size, j, getElem(x, c.size, j)&^(c.exp&-c.exp))
				}
			}
		}
		for _, v := range Impls() {
			if k == len(nonFiniteCases) {
				if got, want := v.XorFold(x), refImpl().XorFold(x); got != want {
					t.Fatalf("%s: XorFold(len %d) = %#x, generic %#x", v, len(x), got, want)
				}
				continue
			}
			c := nonFiniteCases[k]
			if got, want := c.fn(v, x), c.fn(refImpl(), x); got != want {
				t.Fatalf("%s %s: len(x)=%d: %v, generic %v", v, c.name, len(x), got, want)
			}
		}
	})
}

func getElem(b []byte, size, j int) uint64 {
	switch size {
	case 2:
		return uint64(binary.LittleEndian.Uint16(b[2*j:]))
	case 4:
		return uint64(binary.LittleEndian.Uint32(b[4*j:]))
	default:
		return binary.LittleEndian.Uint64(b[8*j:])
	}
}

// FuzzExactAcc: the exact sums of every implementation give the reference's limbs and largest
// magnitude bit for bit, and the one-limb sums the same integers modulo 2^64, for any limbs, inputs, alignments and counts of inputs (up to three
// groups and a remainder: the last group, full or not, finishes the limbs). Inputs and weights
// are kept to the family's contract (terms below ExactMaxTerm: magnitudes below 2^40, weights
// below 2^60), as the callers' bound check keeps them.
func FuzzExactAcc(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		fb := &fuzzBytes{data}
		c1 := exactAcc1Cases[fb.byte()%len(exactAcc1Cases)] // the two-limb case and its one-limb kernel
		c := c1.two
		cnt := fb.byte() % 23
		n := fb.length()
		off := fb.byte()
		w := make([]float64, cnt)
		for i := range w {
			if w[i] = fb.f64(); !(math.Abs(w[i]) < 0x1p60) {
				w[i] = float64(fb.byte()) - 128
			}
			if c.in.name == "I8" {
				w[i] = math.Ldexp(w[i], -8)
			}
		}
		hi, lo := make([]int64, n), make([]int64, n)
		for j := range hi {
			hi[j] = int64(binary.LittleEndian.Uint64(fb.next(8))) >> 13 // |hi| < 2^50
			lo[j] = int64(binary.LittleEndian.Uint64(fb.next(8))) >> 12 // |lo| < 2^51
		}
		x := fuzzInputs(fb, c.in, cnt, n, off)
		for _, xi := range x {
			for j := range n {
				if v := c.in.get(xi, j); !(math.Abs(v) < 0x1p40) {
					c.in.putBits(xi, j, 0)
				}
			}
		}
		wantHi, wantLo := slices.Clone(hi), slices.Clone(lo)
		wantMax := c.fn(refImpl(), wantHi, wantLo, w, x)
		for _, k := range Impls() {
			gotHi, gotLo := slices.Clone(hi), slices.Clone(lo)
			if gotMax := c.fn(k, gotHi, gotLo, w, x); gotMax != wantMax {
				t.Fatalf("%s %s: %d inputs of %d: largest magnitude %#x, reference %#x", k.Name(), c.name, cnt, n, gotMax, wantMax)
			}
			for j := range n {
				if gotHi[j] != wantHi[j] || gotLo[j] != wantLo[j] {
					t.Fatalf("%s %s: %d inputs of %d: element %d is (%d, %d), reference (%d, %d)", k.Name(), c.name, cnt, n, j, gotHi[j], gotLo[j], wantHi[j], wantLo[j])
				}
			}
		}
		// The one-limb kernels on the same terms, from the same sums as one int64: the integer
		// the two limbs hold, modulo 2^64, with the same largest magnitude.
		for _, k := range Impls() {
			one := make([]int64, n)
			for j := range one {
				one[j] = hi[j]<<ExactLimbShift + lo[j]
			}
			if gotMax := c1.fn(k, one, w, x); gotMax != wantMax {
				t.Fatalf("%s one-limb %s: %d inputs of %d: largest magnitude %#x, reference %#x", k.Name(), c.name, cnt, n, gotMax, wantMax)
			}
			for j := range n {
				if want := wantHi[j]<<ExactLimbShift + wantLo[j]; one[j] != want {
					t.Fatalf("%s one-limb %s: %d inputs of %d: element %d is %d, two limbs hold %d", k.Name(), c.name, cnt, n, j, one[j], want)
				}
			}
		}
	})
}

// FuzzSqDistRuns checks SqDistNormF32Runs of every variant against the reference loop of its
// documentation: any bit patterns (the f64 partials) or, when the first byte is odd, values
// whose squares f32 holds (the f32 runs), over several runs and every tail.
func FuzzSqDistRuns(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		fb := &fuzzBytes{data}
		moderate := fb.byte()%2 == 1
		cnt := fb.byte() % 10
		n := fb.length() * (1 + fb.byte()%4)
		x := fuzzInputs(fb, dtF32, cnt, n, fb.byte())
		z := make([]float32, n)
		for j := range z {
			z[j] = fb.f32()
		}
		if moderate {
			tame := func(v float32) float32 {
				if a := math.Abs(float64(v)); a > 0x1p40 || a < 0x1p-40 || a != a {
					return float32(int32(math.Float32bits(v))>>12) * 0x1p-10
				}
				return v
			}
			for _, xi := range x {
				for j := range n {
					putF32(xi, j, tame(ldF32(xi, j)))
				}
			}
			for j := range z {
				z[j] = tame(z[j])
			}
		}
		want, wantN := make([][Lanes]float64, cnt), make([][Lanes]float64, cnt)
		for q := range want {
			distRunsReference(&want[q], &wantN[q], x[q], z)
		}
		for _, k := range Impls() {
			pd, pn := make([][Lanes]float64, cnt), make([][Lanes]float64, cnt)
			k.SqDistNormF32Runs(pd, pn, x, z)
			for q := range pd {
				for l := range Lanes {
					if !sameF64(pd[q][l], want[q][l]) || !sameF64(pn[q][l], wantN[q][l]) {
						t.Fatalf("%s: %d inputs of %d: input %d lane %d = %v, %v; reference %v, %v",
							k, cnt, n, q, l, pd[q][l], pn[q][l], want[q][l], wantN[q][l])
					}
				}
			}
		}
	})
}
