package tensor

import "github.com/wattagg/wattagg/internal/half"

// F16ToF32 converts an IEEE binary16 to binary32 exactly (subnormals, infinities and NaN
// payloads included), as the F16C instruction VCVTPH2PS does.
func F16ToF32(h uint16) float32 { return half.F16ToF32(h) }

// F32ToF16 converts binary32 to binary16 rounding to nearest, ties to even, as VCVTPS2PH with
// rounding control 0 does: overflow gives infinity, tiny values give subnormals or signed zero,
// NaNs stay NaN (quieted, upper payload bits kept).
func F32ToF16(f float32) uint16 { return half.F32ToF16(f) }

// BF16ToF32 converts a bfloat16 to binary32 exactly.
func BF16ToF32(h uint16) float32 { return half.BF16ToF32(h) }

// F32ToBF16 converts binary32 to bfloat16 rounding to nearest, ties to even; NaNs stay NaN
// (quieted), overflow gives infinity.
func F32ToBF16(f float32) uint16 { return half.F32ToBF16(f) }
