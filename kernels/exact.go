package kernels

import (
	"encoding/binary"
	"math"

	"github.com/wattagg/wattagg/internal/half"
)

// The exact family: weighted sums whose bits do not depend on the order of their terms. Each
// term w·x is rounded to an integer by fused multiply-adds (ExactTerm: a function of w and x
// alone), and the integers are added exactly. Integer addition is
// associative, so a sum is the same whatever the order of its terms, the blocking, the core
// count or the device, and two sums of disjoint terms add up to the sum of all of them.
// Callers choose the unit of the integers (the grid) by scaling the weights by a power of two.
//
// A sum S is held in two int64 limbs, S = hi·2^ExactLimbShift + lo, normalised so that lo lies
// in [-2^51, 2^51). A term |w·x| < 2^103 splits into h·2^52 + l, |h|, |l| ≤ 2^51, with two
// fused multiply-adds and magic constants, and the limbs take h and l as they come: no carry crosses
// lanes, and the kernels normalise once per group of inputs. That makes the exact sum cost a
// few more vector operations per term than a floating-point one, with a 16-byte accumulator.
// The family is registered like the others (generator kernels/_gen/exact, files exact*.go).

// ExactLimbShift is the weight of the high limb of an exact sum: S = hi·2^52 + lo.
const ExactLimbShift = 52

// ExactMaxTerm bounds the terms of an exact sum: |w·x| < ExactMaxTerm (2^103).
const ExactMaxTerm = 0x1p103

// ExactMaxInputs bounds len(x) of one accumulation call: the low limb absorbs that many terms of
// at most 2^51 each without overflowing before it is normalised.
const ExactMaxInputs = 1024

// The magic constants: p + exactMagicHi rounds p to a multiple of 2^52 (|p| < 2^103) and
// leaves p/2^52 in the low mantissa bits; r + exactMagicLo rounds r to an integer (|r| ≤ 2^51).
const (
	exactMagicHi = 0x1.8p104
	exactMagicLo = 0x1.8p52
)

var (
	exactMagicHiBits = math.Float64bits(exactMagicHi)
	exactMagicLoBits = math.Float64bits(exactMagicLo)
)

// exactKernels is one implementation of the exact family.
type exactKernels struct {
	name string

	accF32, accBF16, accF16, accI8 func(hi, lo []int64, w []float64, x [][]byte) uint32

	acc1F32, acc1BF16, acc1F16, acc1I8 func(one []int64, w []float64, x [][]byte) uint32

	storeF32, storeBF16, storeF16 func(dst []byte, hi, lo []int64, s float64)

	beyondF32, beyondBF16, beyondF16 func(x []byte, bound float32) bool
}

var exactGeneric = exactKernels{
	name: "generic",

	accF32: func(hi, lo []int64, w []float64, x [][]byte) uint32 {
		return exactAccGeneric(hi, lo, w, x, ldF32, absF32, 0)
	},
	accBF16: func(hi, lo []int64, w []float64, x [][]byte) uint32 {
		return exactAccGeneric(hi, lo, w, x, ldBF16, abs16, 0)
	},
	accF16: func(hi, lo []int64, w []float64, x [][]byte) uint32 {
		return exactAccGeneric(hi, lo, w, x, ldF16, abs16, 0)
	},
	accI8: func(hi, lo []int64, w []float64, x [][]byte) uint32 {
		return exactAccGeneric(hi, lo, w, x, ldI8, absI8, 0)
	},

	acc1F32: func(one []int64, w []float64, x [][]byte) uint32 {
		return exactAcc1Generic(one, w, x, ldF32, absF32, 0)
	},
	acc1BF16: func(one []int64, w []float64, x [][]byte) uint32 {
		return exactAcc1Generic(one, w, x, ldBF16, abs16, 0)
	},
	acc1F16: func(one []int64, w []float64, x [][]byte) uint32 {
		return exactAcc1Generic(one, w, x, ldF16, abs16, 0)
	},
	acc1I8: func(one []int64, w []float64, x [][]byte) uint32 {
		return exactAcc1Generic(one, w, x, ldI8, absI8, 0)
	},

	storeF32:  func(dst []byte, hi, lo []int64, s float64) { exactStoreF32Generic(dst, hi, lo, s, 0) },
	storeBF16: func(dst []byte, hi, lo []int64, s float64) { exactStoreBF16Generic(dst, hi, lo, s, 0) },
	storeF16:  func(dst []byte, hi, lo []int64, s float64) { exactStoreF16Generic(dst, hi, lo, s, 0) },

	beyondF32:  func(x []byte, b float32) bool { return beyondGeneric(x, 4, ldF32, b) },
	beyondBF16: func(x []byte, b float32) bool { return beyondGeneric(x, 2, ldBF16, b) },
	beyondF16:  func(x []byte, b float32) bool { return beyondGeneric(x, 2, ldF16, b) },
}

var _ = register(exactFamily, "generic", true, &exactGeneric)

// ExactAccF32 adds the weighted f32 inputs to the exact sums (hi, lo), rounding every term to an
// integer, and returns the largest magnitude among the input elements it read, as the bits of an
// f32 with the sign cleared (a NaN's are above every number's). It is
//
//	for i := range x {
//		for j := range hi {
//			h, l := ExactTerm(w[i], float64(x[i][j])) // w·x rounded to an integer
//			hi[j] += h
//			lo[j] += l
//			maxAbs = max(maxAbs, math.Float32bits(x[i][j])&0x7fffffff)
//		}
//	}
//	ExactNormalize(hi, lo)
//
// hi and lo have the same length and are normalised on entry; every |w[i]·x[i][j]| must be
// below ExactMaxTerm and len(x) at most ExactMaxInputs. A caller that bounds its inputs compares
// maxAbs with its bound's bits: an element beyond the bound (or NaN, or Inf) may have made a
// term beyond ExactMaxTerm, and the sums are then meaningless. The sums are a function of the
// multiset of terms: the same bits in any order, blocking or grouping of the inputs.
func ExactAccF32(hi, lo []int64, w []float64, x [][]byte) (maxAbs uint32) {
	return def.ExactAccF32(hi, lo, w, x)
}

// ExactAccF32 is the package-level ExactAccF32 run by k.
func (k *Impl) ExactAccF32(hi, lo []int64, w []float64, x [][]byte) uint32 {
	return k.exact.accF32(hi, lo, w, x)
}

// ExactAccBF16 is ExactAccF32 for bfloat16 inputs (widened exactly); maxAbs is the largest
// magnitude as the bits of a bfloat16 with the sign cleared (bits & 0x7fff).
func ExactAccBF16(hi, lo []int64, w []float64, x [][]byte) (maxAbs uint32) {
	return def.ExactAccBF16(hi, lo, w, x)
}

// ExactAccBF16 is the package-level ExactAccBF16 run by k.
func (k *Impl) ExactAccBF16(hi, lo []int64, w []float64, x [][]byte) uint32 {
	return k.exact.accBF16(hi, lo, w, x)
}

// ExactAccF16 is ExactAccF32 for binary16 inputs (widened exactly); maxAbs is the largest
// magnitude as the bits of a binary16 with the sign cleared (bits & 0x7fff).
func ExactAccF16(hi, lo []int64, w []float64, x [][]byte) (maxAbs uint32) {
	return def.ExactAccF16(hi, lo, w, x)
}

// ExactAccF16 is the package-level ExactAccF16 run by k.
func (k *Impl) ExactAccF16(hi, lo []int64, w []float64, x [][]byte) uint32 {
	return k.exact.accF16(hi, lo, w, x)
}

// ExactAccI8 is ExactAccF32 for int8 inputs; fold each input's dequantisation scale into its
// weight (w[i] = weight · scale, rounded in f64). maxAbs is the largest |q| (128 for -128).
func ExactAccI8(hi, lo []int64, w []float64, x [][]byte) (maxAbs uint32) {
	return def.ExactAccI8(hi, lo, w, x)
}

// ExactAccI8 is the package-level ExactAccI8 run by k.
func (k *Impl) ExactAccI8(hi, lo []int64, w []float64, x [][]byte) uint32 {
	return k.exact.accI8(hi, lo, w, x)
}

// ExactAcc1F32 is ExactAccF32 for a sum kept in one int64 per element, S itself, rather than two
// limbs: it is
//
//	for i := range x {
//		for j := range one {
//			h, l := ExactTerm(w[i], float64(x[i][j]))
//			one[j] += h<<ExactLimbShift + l // wrapping
//			maxAbs = max(maxAbs, math.Float32bits(x[i][j])&0x7fffffff)
//		}
//	}
//
// The limb holds the sum modulo 2^64: exact whenever the caller's grid keeps the final sum
// below 2^63 in magnitude (a transient beyond it cancels exactly), and then the same integer as
// two limbs hold. A term costs what it costs with two limbs, the accumulator half the memory
// and traffic, and no normalising pass. The bounds on w·x and len(x) are ExactAccF32's.
func ExactAcc1F32(one []int64, w []float64, x [][]byte) (maxAbs uint32) {
	return def.ExactAcc1F32(one, w, x)
}

// ExactAcc1F32 is the package-level ExactAcc1F32 run by k.
func (k *Impl) ExactAcc1F32(one []int64, w []float64, x [][]byte) uint32 {
	return k.exact.acc1F32(one, w, x)
}

// ExactAcc1BF16 is ExactAcc1F32 for bfloat16 inputs; maxAbs as ExactAccBF16's.
func ExactAcc1BF16(one []int64, w []float64, x [][]byte) (maxAbs uint32) {
	return def.ExactAcc1BF16(one, w, x)
}

// ExactAcc1BF16 is the package-level ExactAcc1BF16 run by k.
func (k *Impl) ExactAcc1BF16(one []int64, w []float64, x [][]byte) uint32 {
	return k.exact.acc1BF16(one, w, x)
}

// ExactAcc1F16 is ExactAcc1F32 for binary16 inputs; maxAbs as ExactAccF16's.
func ExactAcc1F16(one []int64, w []float64, x [][]byte) (maxAbs uint32) {
	return def.ExactAcc1F16(one, w, x)
}

// ExactAcc1F16 is the package-level ExactAcc1F16 run by k.
func (k *Impl) ExactAcc1F16(one []int64, w []float64, x [][]byte) uint32 {
	return k.exact.acc1F16(one, w, x)
}

// ExactAcc1I8 is ExactAcc1F32 for int8 inputs, as ExactAccI8.
func ExactAcc1I8(one []int64, w []float64, x [][]byte) (maxAbs uint32) {
	return def.ExactAcc1I8(one, w, x)
}

// ExactAcc1I8 is the package-level ExactAcc1I8 run by k.
func (k *Impl) ExactAcc1I8(one []int64, w []float64, x [][]byte) uint32 {
	return k.exact.acc1I8(one, w, x)
}

// ExactStoreF32 writes the exact sums scaled by s as f32. It is
//
//	for j := range hi {
//		v := float64(hi[j])*0x1p52 + float64(lo[j]) // the sum, rounded once (|hi| < 2^53)
//		dst[j] = float32(v * s)
//	}
//
// Each step is one correctly rounded f64 operation (the sum is exact in hi·2^52 and rounded once
// when |hi| < 2^53, which the callers' bounds keep), so the value is the same on every device
// and within one f32 ulp of S·s.
func ExactStoreF32(dst []byte, hi, lo []int64, s float64) { def.ExactStoreF32(dst, hi, lo, s) }

// ExactStoreF32 is the package-level ExactStoreF32 run by k.
func (k *Impl) ExactStoreF32(dst []byte, hi, lo []int64, s float64) { k.exact.storeF32(dst, hi, lo, s) }

// ExactStoreBF16 is ExactStoreF32 followed by half.F32ToBF16.
func ExactStoreBF16(dst []byte, hi, lo []int64, s float64) { def.ExactStoreBF16(dst, hi, lo, s) }

// ExactStoreBF16 is the package-level ExactStoreBF16 run by k.
func (k *Impl) ExactStoreBF16(dst []byte, hi, lo []int64, s float64) {
	k.exact.storeBF16(dst, hi, lo, s)
}

// ExactStoreF16 is ExactStoreF32 followed by half.F32ToF16.
func ExactStoreF16(dst []byte, hi, lo []int64, s float64) { def.ExactStoreF16(dst, hi, lo, s) }

// ExactStoreF16 is the package-level ExactStoreF16 run by k.
func (k *Impl) ExactStoreF16(dst []byte, hi, lo []int64, s float64) {
	k.exact.storeF16(dst, hi, lo, s)
}

// BeyondF32 reports whether some f32 element of x is NaN or has |x| > bound: the range check of
// an exact sum, which also catches every NaN and Inf (bound is finite). It is
//
//	for j := range x {
//		if !(abs(x[j]) <= bound) {
//			return true
//		}
//	}
//	return false
func BeyondF32(x []byte, bound float32) bool { return def.BeyondF32(x, bound) }

// BeyondF32 is the package-level BeyondF32 run by k.
func (k *Impl) BeyondF32(x []byte, bound float32) bool { return k.exact.beyondF32(x, bound) }

// BeyondBF16 is BeyondF32 for bfloat16 elements (widened exactly).
func BeyondBF16(x []byte, bound float32) bool { return def.BeyondBF16(x, bound) }

// BeyondBF16 is the package-level BeyondBF16 run by k.
func (k *Impl) BeyondBF16(x []byte, bound float32) bool { return k.exact.beyondBF16(x, bound) }

// BeyondF16 is BeyondF32 for binary16 elements (widened exactly).
func BeyondF16(x []byte, bound float32) bool { return def.BeyondF16(x, bound) }

// BeyondF16 is the package-level BeyondF16 run by k.
func (k *Impl) BeyondF16(x []byte, bound float32) bool { return k.exact.beyondF16(x, bound) }

// ExactTerm rounds the product w·x (|w·x| < ExactMaxTerm) to an integer and splits it into
// h·2^52 + l with |h| ≤ 2^51 and |l| ≤ 2^51 (plus a quarter). A fused multiply-add of the
// magic constant 1.5·2^104 rounds the exact product to a multiple of 2^52, leaving the multiple
// in the low bits of the sum's mantissa; a second one takes the remainder w·x − h·2^52 (rounded
// to f64 once: it is below 2^51, so its ulp is at most 1/4), and 1.5·2^52 rounds that to an
// integer, ties to even. h is exactly w·x rounded to a multiple of 2^52; h·2^52 + l is w·x rounded
// to the nearest integer unless the f64 remainder is itself a tie, which then goes to even. Every
// kernel of the family (and the CUDA kernels) computes a term with exactly these operations.
func ExactTerm(w, x float64) (h, l int64) {
	s := math.FMA(w, x, exactMagicHi)
	h = int64(math.Float64bits(s) - exactMagicHiBits)
	r := math.FMA(w, x, -(s - exactMagicHi))
	l = int64(math.Float64bits(r+exactMagicLo) - exactMagicLoBits)
	return h, l
}

// ExactNormalize moves whole multiples of 2^52 from lo to hi, so that every lo[j] lies in
// [-2^51, 2^51) and hi[j]·2^52 + lo[j] is unchanged. The pair is then the unique representation
// of its sum, which is what makes the limbs' bits (not only their value) independent of the
// order of the terms.
func ExactNormalize(hi, lo []int64) { exactNormalizeFrom(hi, lo, 0) }

func exactNormalizeFrom(hi, lo []int64, from int) {
	for j := from; j < len(hi); j++ {
		c := (lo[j] + 1<<51) >> 52
		hi[j] += c
		lo[j] -= c << 52
	}
}

// The reference loops, from element from on (the assembly's tail handlers).

func exactAccGeneric(hi, lo []int64, w []float64, x [][]byte, ld func([]byte, int) float32,
	abs func([]byte, int) uint32, from int) uint32 {
	var m uint32
	for i, xi := range x {
		wi := w[i]
		for j := from; j < len(hi); j++ {
			h, l := ExactTerm(wi, float64(ld(xi, j)))
			hi[j] += h
			lo[j] += l
			m = max(m, abs(xi, j))
		}
	}
	exactNormalizeFrom(hi, lo, from)
	return m
}

func exactAcc1Generic(one []int64, w []float64, x [][]byte, ld func([]byte, int) float32,
	abs func([]byte, int) uint32, from int) uint32 {
	var m uint32
	for i, xi := range x {
		wi := w[i]
		for j := from; j < len(one); j++ {
			h, l := ExactTerm(wi, float64(ld(xi, j)))
			one[j] += h<<ExactLimbShift + l
			m = max(m, abs(xi, j))
		}
	}
	return m
}

// The magnitudes of elements as the bits of their dtype with the sign cleared.

func absF32(b []byte, j int) uint32 { return binary.LittleEndian.Uint32(b[4*j:]) & 0x7fffffff }
func abs16(b []byte, j int) uint32  { return uint32(binary.LittleEndian.Uint16(b[2*j:]) & 0x7fff) }
func absI8(b []byte, j int) uint32 {
	if q := int8(b[j]); q < 0 {
		return uint32(-int32(q))
	} else {
		return uint32(q)
	}
}

// exactValue is the sum hi·2^52 + lo rounded to f64 and scaled by s, each step rounded once.
func exactValue(hi, lo int64, s float64) float64 {
	v := float64(float64(hi)*0x1p52) + float64(lo)
	return float64(v * s)
}

func exactStoreF32Generic(dst []byte, hi, lo []int64, s float64, from int) {
	for j := from; j < len(hi); j++ {
		binary.LittleEndian.PutUint32(dst[4*j:], math.Float32bits(float32(exactValue(hi[j], lo[j], s))))
	}
}

func exactStoreBF16Generic(dst []byte, hi, lo []int64, s float64, from int) {
	for j := from; j < len(hi); j++ {
		binary.LittleEndian.PutUint16(dst[2*j:], half.F32ToBF16(float32(exactValue(hi[j], lo[j], s))))
	}
}

func exactStoreF16Generic(dst []byte, hi, lo []int64, s float64, from int) {
	for j := from; j < len(hi); j++ {
		binary.LittleEndian.PutUint16(dst[2*j:], half.F32ToF16(float32(exactValue(hi[j], lo[j], s))))
	}
}

func beyondGeneric(x []byte, size int, ld func([]byte, int) float32, bound float32) bool {
	for j := 0; j < len(x)/size; j++ {
		if v := ld(x, j); !(v <= bound && -v <= bound) {
			return true
		}
	}
	return false
}
