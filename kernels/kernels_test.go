package kernels

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/wattagg/wattagg/internal/half"
)

// lengths are the element counts every kernel is tested with: all small ones, to reach every
// path of the steps and tails, and some large odd ones.
func lengths() []int {
	var ns []int
	for n := 0; n <= 70; n++ {
		ns = append(ns, n)
	}
	return append(ns, 127, 1000, 4099, 65537)
}

// ---------------------------------------------------------------------------------------------
// Element types of raw inputs and outputs.

type dtype struct {
	name string
	size int
	// get widens element j of b to float64 (exactly, through float32 for the 16-bit types).
	get func(b []byte, j int) float64
	// putBits stores the low size*8 bits of v as element j of b.
	putBits func(b []byte, j int, v uint64)
	// bits draws an element as raw bits; finite excludes NaN and ±Inf, and for i8 it is ignored.
	bits func(r *rand.Rand, finite bool) uint64
}

var (
	dtF32 = dtype{"F32", 4,
		func(b []byte, j int) float64 { return float64(ldF32(b, j)) },
		func(b []byte, j int, v uint64) { binary.LittleEndian.PutUint32(b[4*j:], uint32(v)) },
		func(r *rand.Rand, finite bool) uint64 { return uint64(randF32Bits(r, finite)) }}
	dtF64 = dtype{"F64", 8,
		func(b []byte, j int) float64 { return ldF64(b, j) },
		func(b []byte, j int, v uint64) { binary.LittleEndian.PutUint64(b[8*j:], v) },
		func(r *rand.Rand, finite bool) uint64 { return randF64Bits(r, finite) }}
	dtBF16 = dtype{"BF16", 2,
		func(b []byte, j int) float64 { return float64(ldBF16(b, j)) },
		func(b []byte, j int, v uint64) { binary.LittleEndian.PutUint16(b[2*j:], uint16(v)) },
		func(r *rand.Rand, finite bool) uint64 { return uint64(rand16Bits(r, finite, 8, 7)) }}
	dtF16 = dtype{"F16", 2,
		func(b []byte, j int) float64 { return float64(ldF16(b, j)) },
		func(b []byte, j int, v uint64) { binary.LittleEndian.PutUint16(b[2*j:], uint16(v)) },
		func(r *rand.Rand, finite bool) uint64 { return uint64(rand16Bits(r, finite, 5, 10)) }}
	dtI8 = dtype{"I8", 1,
		func(b []byte, j int) float64 { return float64(ldI8(b, j)) },
		func(b []byte, j int, v uint64) { b[j] = byte(v) },
		func(r *rand.Rand, _ bool) uint64 { return uint64(r.Uint32() & 0xff) }}
)

// randF32 draws a float32 from a mix meant to find rounding and range bugs: normals at several
// scales, huge and tiny magnitudes, subnormals, signed zeros and, unless finite, NaNs (with
// payloads, quiet and signalling) and infinities.
func randF32Bits(r *rand.Rand, finite bool) uint32 {
	switch k := r.IntN(20); {
	case k < 10:
		return math.Float32bits(float32(r.NormFloat64() * math.Pow(2, float64(r.IntN(21)-10))))
	case k < 12:
		return r.Uint32()&0x807fffff | uint32(200+r.IntN(54))<<23 // huge
	case k < 14:
		return r.Uint32()&0x807fffff | uint32(1+r.IntN(30))<<23 // tiny normal
	case k < 16:
		return r.Uint32() & 0x807fffff // subnormal or zero
	case k < 17:
		return r.Uint32() & 0x80000000 // ±0
	case k < 18 && !finite:
		return r.Uint32() | 0x7f800000 // NaN (quiet or signalling), or Inf when the mantissa is 0
	case k < 19 && !finite:
		return r.Uint32()&0x80000000 | 0x7f800000 // ±Inf
	default:
		b := r.Uint32()
		for b&0x7f800000 == 0x7f800000 {
			b = r.Uint32()
		}
		return b
	}
}

func randF64Bits(r *rand.Rand, finite bool) uint64 {
	switch k := r.IntN(20); {
	case k < 10:
		return math.Float64bits(r.NormFloat64() * math.Pow(2, float64(r.IntN(41)-20)))
	case k < 12:
		return r.Uint64()&0x800fffffffffffff | uint64(1800+r.IntN(246))<<52
	case k < 14:
		return r.Uint64()&0x800fffffffffffff | uint64(1+r.IntN(100))<<52
	case k < 16:
		return r.Uint64() & 0x800fffffffffffff
	case k < 17:
		return r.Uint64() & 0x8000000000000000
	case k < 18 && !finite:
		return r.Uint64() | 0x7ff0000000000000
	case k < 19 && !finite:
		return r.Uint64()&0x8000000000000000 | 0x7ff0000000000000
	default:
		// Values near the float32 range and its ties, for the f64 -> f32 stores.
		return math.Float64bits(float64(math.Float32frombits(randF32Bits(r, true)))) ^ uint64(r.IntN(4))<<28
	}
}

// rand16Bits draws a 16-bit float with ebits exponent and mbits mantissa bits: any bit pattern,
// subnormals and zeros more often, non-finite only when allowed.
func rand16Bits(r *rand.Rand, finite bool, ebits, mbits uint) uint16 {
	expMask := uint16(1<<ebits-1) << mbits
	for {
		b := uint16(r.Uint32())
		switch r.IntN(8) {
		case 0:
			b &^= expMask // subnormal or zero
		case 1:
			b &= 0x8000 // ±0
		}
		if !finite || b&expMask != expMask {
			return b
		}
	}
}

// randBytes returns n elements of dt drawn with dt.bits.
func randBytes(r *rand.Rand, dt dtype, n int, finite bool) []byte {
	b := make([]byte, n*dt.size)
	for j := range n {
		dt.putBits(b, j, dt.bits(r, finite))
	}
	return b
}

// randWeight draws a weight: mostly normals, sometimes 0, -0, 1, a power of two, a subnormal.
func randWeight(r *rand.Rand) float64 {
	switch r.IntN(12) {
	case 0:
		return 0
	case 1:
		return math.Copysign(0, -1)
	case 2:
		return 1
	case 3:
		return math.Ldexp(1, r.IntN(20)-10)
	case 4:
		return float64(math.Float32frombits(r.Uint32() & 0x807fffff)) // f32 subnormal
	default:
		return r.NormFloat64()
	}
}

// sameF32 reports whether a and b are the same bits or both NaN (NaN payloads may differ between
// the reference and the hardware when both operands of an operation are NaN).
func sameF32(a, b float32) bool {
	return math.Float32bits(a) == math.Float32bits(b) || a != a && b != b
}

func sameF64(a, b float64) bool {
	return math.Float64bits(a) == math.Float64bits(b) || a != a && b != b
}

// sameElem compares element j of a and b as dt: same bits, or both NaN.
func sameElem(dt dtype, a, b []byte, j int) bool {
	for k := range dt.size {
		if a[dt.size*j+k] != b[dt.size*j+k] {
			x, y := dt.get(a, j), dt.get(b, j)
			return dt.name != "I8" && x != x && y != y
		}
	}
	return true
}

// Sentinels around every buffer a kernel writes: signalling NaNs with a payload no kernel
// produces, so that any write to them shows.
const (
	guard     = 16 // elements (or bytes) of guard on each side
	sentinel  = 0xa5
	sentinel4 = 0x7f8a5a5a
	sentinel8 = 0x7ff5a5a5a5a5a5a5
)

// guardedF32 returns a slice of n elements at offset off (elements) inside a buffer whose other
// elements are sentinels, and a check that the sentinels are intact.
func guardedF32(n, off int) ([]float32, func(t *testing.T)) {
	buf := make([]float32, n+off+2*guard)
	for j := range buf {
		buf[j] = math.Float32frombits(sentinel4)
	}
	s := buf[guard+off : guard+off+n : guard+off+n]
	return s, func(t *testing.T) {
		t.Helper()
		for j, v := range buf {
			if (j < guard+off || j >= guard+off+n) && math.Float32bits(v) != sentinel4 {
				t.Fatalf("guard element %d (slice at %d, len %d) overwritten: %#x", j, guard+off, n, math.Float32bits(v))
			}
		}
	}
}

func guardedF64(n, off int) ([]float64, func(t *testing.T)) {
	buf := make([]float64, n+off+2*guard)
	for j := range buf {
		buf[j] = math.Float64frombits(sentinel8)
	}
	s := buf[guard+off : guard+off+n : guard+off+n]
	return s, func(t *testing.T) {
		t.Helper()
		for j, v := range buf {
			if (j < guard+off || j >= guard+off+n) && math.Float64bits(v) != sentinel8 {
				t.Fatalf("guard element %d (slice at %d, len %d) overwritten: %#x", j, guard+off, n, math.Float64bits(v))
			}
		}
	}
}

func guardedBytes(n, off int) ([]byte, func(t *testing.T)) {
	buf := make([]byte, n+off+2*guard)
	for j := range buf {
		buf[j] = sentinel
	}
	s := buf[guard+off : guard+off+n : guard+off+n]
	return s, func(t *testing.T) {
		t.Helper()
		for j, v := range buf {
			if (j < guard+off || j >= guard+off+n) && v != sentinel {
				t.Fatalf("guard byte %d (slice at %d, len %d) overwritten: %#x", j, guard+off, n, v)
			}
		}
	}
}

// placed copies b to byte offset off of a fresh buffer with random bytes around it, so that
// inputs start at any alignment and a kernel reading past them reads garbage, not zeros.
func placed(r *rand.Rand, b []byte, off int) []byte {
	buf := make([]byte, off+len(b)+64)
	for j := range buf {
		buf[j] = byte(r.Uint32())
	}
	copy(buf[off:], b)
	return buf[off : off+len(b)]
}

func TestHalfReference(t *testing.T) {
	// The references the stores are compared with: spot checks of half's rounding that do not
	// depend on any implementation.
	for _, c := range []struct {
		f    float32
		f16  uint16
		bf16 uint16
	}{
		{1, 0x3c00, 0x3f80},
		{65504, 0x7bff, 0x4780},
		{65520, 0x7c00, 0x4780},
		{float32(math.Inf(-1)), 0xfc00, 0xff80},
		{math.Float32frombits(0x3f808000), 0x3c04, 0x3f80}, // bf16 tie, even below
		{math.Float32frombits(0x3f818000), 0x3c0c, 0x3f82}, // bf16 tie, odd below: up
		{math.Float32frombits(0x33000000), 0x0000, 0x3300}, // 2^-25: f16 tie to zero
		{math.Float32frombits(0x33000001), 0x0001, 0x3300},
		{math.Float32frombits(0xffc00001), 0xfe00, 0xffc0},
		{math.Float32frombits(0x7f800001), 0x7e00, 0x7fc0}, // signalling NaN is quieted
	} {
		if got := half.F32ToF16(c.f); got != c.f16 {
			t.Errorf("F32ToF16(%#x) = %#x, want %#x", math.Float32bits(c.f), got, c.f16)
		}
		if got := half.F32ToBF16(c.f); got != c.bf16 {
			t.Errorf("F32ToBF16(%#x) = %#x, want %#x", math.Float32bits(c.f), got, c.bf16)
		}
	}
}
