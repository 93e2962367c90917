// Package half converts between binary32 and the 16-bit float formats (IEEE binary16 and
// bfloat16) one value at a time. It is shared by tensor and kernels, which sit on the same floor
// and may not import each other.
package half

import "math"

// F16ToF32 converts an IEEE binary16 to binary32 exactly (subnormals, infinities and NaN
// payloads included), as the F16C instruction VCVTPH2PS does.
func F16ToF32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	man := uint32(h) & 0x3ff
	switch exp {
	case 0:
		// Zero or subnormal: man * 2^-24, exact in binary32.
		f := float32(man) * (1.0 / (1 << 24))
		return math.Float32frombits(math.Float32bits(f) | sign)
	case 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | man<<13)
	default:
		return math.Float32frombits(sign | (exp+112)<<23 | man<<13)
	}
}

// F32ToF16 converts binary32 to binary16 rounding to nearest, ties to even, as VCVTPS2PH with
// rounding control 0 does: overflow gives infinity, tiny values give subnormals or signed zero,
// NaNs stay NaN (quieted, upper payload bits kept).
func F32ToF16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	b &= 0x7fffffff
	switch {
	case b > 0x7f800000: // NaN
		return sign | 0x7e00 | uint16(b>>13)&0x3ff
	case b >= 0x477ff000: // >= 65520: rounds to infinity (65504 is the largest finite)
		return sign | 0x7c00
	case b >= 0x38800000: // >= 2^-14: a normal binary16
		r := b - 112<<23 // rebias the exponent from 127 to 15
		r += 0xfff + (r>>13)&1
		return sign | uint16(r>>13)
	case b >= 0x33000000: // [2^-25, 2^-14): a subnormal, or the smallest normal after rounding
		e := b >> 23
		m := b&0x7fffff | 0x800000
		s := 126 - e // value / 2^-24 = m >> s
		k := m >> s
		rem := m & (1<<s - 1)
		half := uint32(1) << (s - 1)
		if rem > half || rem == half && k&1 == 1 {
			k++
		}
		return sign | uint16(k)
	default: // below 2^-25 (or exactly half of the smallest subnormal): rounds to zero
		return sign
	}
}

// BF16ToF32 converts a bfloat16 to binary32 exactly.
func BF16ToF32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// F32ToBF16 converts binary32 to bfloat16 rounding to nearest, ties to even; NaNs stay NaN
// (quieted), overflow gives infinity.
func F32ToBF16(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 {
		return uint16(b>>16) | 0x40
	}
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}
