package tensor

import (
	"math"
	"math/rand/v2"
	"testing"
)

// f16Value is the value of binary16 h from its definition: (-1)^s * 2^(e-15) * (1 + m/1024)
// for normal numbers, (-1)^s * 2^-14 * m/1024 for subnormals. NaN is reported separately.
func f16Value(h uint16) (v float64, nan bool) {
	sign := 1.0
	if h&0x8000 != 0 {
		sign = -1
	}
	e, m := int(h>>10)&0x1f, float64(h&0x3ff)
	switch {
	case e == 0x1f && m != 0:
		return 0, true
	case e == 0x1f:
		return math.Inf(int(sign)), false
	case e == 0:
		return sign * math.Ldexp(m/1024, -14), false
	}
	return sign * math.Ldexp(1+m/1024, e-15), false
}

func TestF16ToF32Exhaustive(t *testing.T) {
	for i := range 1 << 16 {
		h := uint16(i)
		got := F16ToF32(h)
		want, nan := f16Value(h)
		if nan {
			b := math.Float32bits(got)
			// NaN stays NaN with its sign and its payload in the top mantissa bits.
			if !math.IsNaN(float64(got)) || b>>31 != uint32(h>>15) || b&0x7fffff != uint32(h&0x3ff)<<13 {
				t.Errorf("F16ToF32(%#04x) = %#08x, want NaN with sign and payload kept", h, b)
			}
			continue
		}
		if float64(got) != want || math.Signbit(float64(got)) != math.Signbit(want) {
			t.Errorf("F16ToF32(%#04x) = %v, want %v", h, got, want)
		}
	}
}

func TestF16RoundTripExhaustive(t *testing.T) {
	for i := range 1 << 16 {
		h := uint16(i)
		got := F32ToF16(F16ToF32(h))
		if _, nan := f16Value(h); nan {
			// Quieted: the quiet bit set, sign and upper payload kept.
			if want := h | 0x0200; got != want {
				t.Errorf("F32ToF16(F16ToF32(NaN %#04x)) = %#04x, want %#04x", h, got, want)
			}
			continue
		}
		if got != h {
			t.Errorf("F32ToF16(F16ToF32(%#04x)) = %#04x", h, got)
		}
	}
}

// roundToFormat rounds x to nearest, ties to even, in a binary format with p significand bits
// (the implicit one included), minimum normal exponent emin, and largest finite value
// largest; past it, infinity. It works in float64, where every step here is exact.
func roundToFormat(x float64, p, emin int, largest float64) float64 {
	if x == 0 || math.IsInf(x, 0) {
		return x
	}
	_, exp := math.Frexp(x) // |x| = frac * 2^exp, frac in [0.5, 1)
	e := max(exp-1, emin)   // the binade of x, or the subnormal one
	ulp := math.Ldexp(1, e-(p-1))
	r := math.RoundToEven(x/ulp) * ulp
	if math.Abs(r) > largest {
		return math.Inf(int(math.Copysign(1, x)))
	}
	if r == 0 {
		return math.Copysign(0, x)
	}
	return r
}

var (
	maxF16  = 65504.0
	maxBF16 = math.Float64frombits(0x47efe00000000000) // (2 - 2^-7) * 2^127
)

// roundingCases are the edges of both conversions; the tests add random bit patterns.
func roundingCases() []float32 {
	next := func(x float32) float32 { return math.Nextafter32(x, float32(math.Inf(1))) }
	prev := func(x float32) float32 { return math.Nextafter32(x, float32(math.Inf(-1))) }
	p2 := func(e int) float32 { return float32(math.Ldexp(1, e)) }
	c := []float32{
		0, float32(math.Copysign(0, -1)), 1, -1,
		65504, 65519.99, prev(65520), 65520, next(65520), 65536, 1e6, -65520,
		p2(-24), p2(-25), next(p2(-25)), prev(p2(-25)), p2(-26), 1.5 * p2(-24), 2.5 * p2(-24), 3 * p2(-25),
		p2(-14), prev(p2(-14)), p2(-14) - p2(-25), p2(-14) - p2(-26), p2(-15),
		1 + p2(-11), 1 + 3*p2(-11), next(1 + p2(-11)), prev(1 + p2(-11)), // binary16 ties
		1 + p2(-8), 1 + 3*p2(-8), next(1 + p2(-8)), prev(1 + p2(-8)), // bfloat16 ties
		math.MaxFloat32, -math.MaxFloat32, prev(math.MaxFloat32),
		float32(maxBF16), next(float32(maxBF16)), float32(maxBF16) + float32(math.Ldexp(1, 119)),
		math.SmallestNonzeroFloat32, -math.SmallestNonzeroFloat32, // float32 denormals
		math.Float32frombits(0x007fffff), math.Float32frombits(0x00008000), math.Float32frombits(0x00018000),
		math.Float32frombits(0x00008001), math.Float32frombits(0x007f8000), math.Float32frombits(0x007fc000),
		float32(math.Inf(1)), float32(math.Inf(-1)),
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 3 << 20 {
		c = append(c, math.Float32frombits(rng.Uint32()))
	}
	// Values near the binary16 range, where random bit patterns rarely land.
	for range 1 << 20 {
		c = append(c, math.Float32frombits(0x33000000+rng.Uint32N(0x47800000-0x33000000))*float32(1-2*int(rng.Uint32N(2))))
	}
	return c
}

func TestF32ToF16Rounding(t *testing.T) {
	for _, x := range roundingCases() {
		h := F32ToF16(x)
		if math.IsNaN(float64(x)) {
			if v, nan := f16Value(h); !nan || h>>15 != uint16(math.Float32bits(x)>>31) {
				t.Fatalf("F32ToF16(NaN %#08x) = %#04x (%v), want a NaN of the same sign", math.Float32bits(x), h, v)
			}
			continue
		}
		got, _ := f16Value(h)
		want := roundToFormat(float64(x), 11, -14, maxF16)
		if got != want || math.Signbit(got) != math.Signbit(want) {
			t.Fatalf("F32ToF16(%v = %#08x) = %#04x = %v, want %v", x, math.Float32bits(x), h, got, want)
		}
	}
}

func TestF32ToBF16Rounding(t *testing.T) {
	for _, x := range roundingCases() {
		h := F32ToBF16(x)
		got := float64(BF16ToF32(h))
		if math.IsNaN(float64(x)) {
			if !math.IsNaN(got) || h>>15 != uint16(math.Float32bits(x)>>31) {
				t.Fatalf("F32ToBF16(NaN %#08x) = %#04x, want a NaN of the same sign", math.Float32bits(x), h)
			}
			continue
		}
		want := roundToFormat(float64(x), 8, -126, maxBF16)
		if got != want || math.Signbit(got) != math.Signbit(want) {
			t.Fatalf("F32ToBF16(%v = %#08x) = %#04x = %v, want %v", x, math.Float32bits(x), h, got, want)
		}
	}
}

func TestBF16ToF32(t *testing.T) {
	for i := range 1 << 16 {
		h := uint16(i)
		if got := math.Float32bits(BF16ToF32(h)); got != uint32(h)<<16 {
			t.Fatalf("BF16ToF32(%#04x) = %#08x", h, got)
		}
	}
}
