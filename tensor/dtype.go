// Package tensor holds the data model of wattagg: element types, tensors, ordered sets of named
// tensors (one model update) and their layouts, with 64-byte aligned buffers, 16-bit float
// conversion and validation.
//
// Tensor data is raw little-endian bytes. A tensor may view memory it does not own (a mapped
// .safetensors file, an Arrow buffer); such views are only valid until their Set is closed.
package tensor

import (
	"fmt"
	"strings"
)

// DType is the element type of a tensor.
type DType uint8

// The element types wattagg reads, aggregates and writes.
const (
	Invalid DType = iota
	F32           // IEEE 754 binary32
	F64           // IEEE 754 binary64
	F16           // IEEE 754 binary16
	BF16          // bfloat16: the upper half of a binary32
	I8            // symmetric 8-bit integer; value = Tensor.Scale * q
	U32           // unsigned 32-bit integer (secure-aggregation field elements)
	I64           // signed 64-bit integer (the limbs of exact sums, saved as partial aggregates)
)

var dtypeInfo = [...]struct {
	size         int
	name, stname string
}{
	Invalid: {0, "invalid", "INVALID"},
	F32:     {4, "f32", "F32"},
	F64:     {8, "f64", "F64"},
	F16:     {2, "f16", "F16"},
	BF16:    {2, "bf16", "BF16"},
	I8:      {1, "i8", "I8"},
	U32:     {4, "u32", "U32"},
	I64:     {8, "i64", "I64"},
}

// Size is the number of bytes of one element (0 for Invalid).
func (d DType) Size() int {
	if int(d) >= len(dtypeInfo) {
		return 0
	}
	return dtypeInfo[d].size
}

// Valid reports whether d is one of the defined element types.
func (d DType) Valid() bool { return d > Invalid && int(d) < len(dtypeInfo) }

// Real reports whether elements of d encode real numbers that can be averaged: the float types
// and I8 (with its scale). U32 elements are field elements and are summed, never averaged; I64
// elements are the integer limbs of exact sums.
func (d DType) Real() bool { return d.Valid() && d != U32 && d != I64 }

// String is the lower-case name used by wattagg's flags and reports ("f32", "bf16", ...).
func (d DType) String() string {
	if !d.Valid() {
		return fmt.Sprintf("dtype(%d)", uint8(d))
	}
	return dtypeInfo[d].name
}

// SafetensorsName is the name of d in a .safetensors header ("F32", "BF16", ...).
func (d DType) SafetensorsName() string {
	if !d.Valid() {
		return ""
	}
	return dtypeInfo[d].stname
}

// ParseDType accepts the names of String and of SafetensorsName, in any case.
func ParseDType(s string) (DType, error) {
	for d := F32; int(d) < len(dtypeInfo); d++ {
		if strings.EqualFold(s, dtypeInfo[d].name) {
			return d, nil
		}
	}
	return Invalid, fmt.Errorf("%w: %q (want one of f32, f64, f16, bf16, i8, u32, i64)", ErrDType, s)
}

// MarshalText writes the String form, so DTypes read well in JSON reports.
func (d DType) MarshalText() ([]byte, error) {
	if !d.Valid() {
		return nil, fmt.Errorf("%w: %d", ErrDType, uint8(d))
	}
	return []byte(d.String()), nil
}

// UnmarshalText accepts what ParseDType accepts.
func (d *DType) UnmarshalText(b []byte) error {
	v, err := ParseDType(string(b))
	if err != nil {
		return err
	}
	*d = v
	return nil
}
