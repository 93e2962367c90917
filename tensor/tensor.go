package tensor

import (
	"encoding/binary"
	"fmt"
	"math"
	"unsafe"
)

// Tensor is a named, shaped array of one dtype over raw little-endian bytes. The bytes are
// either owned (allocated by New, aligned) or a view of memory owned by someone else (FromBytes,
// a mapped file).
type Tensor struct {
	Name  string
	DType DType
	Shape []int
	// Scale dequantises I8 tensors: the value of element i is Scale * q[i]. It is 1 for every
	// other dtype.
	Scale float32
	data  []byte
}

// MaxAlloc bounds what New allocates (1 TiB): beyond it Go's allocator would abort the
// program instead of returning an error.
const MaxAlloc = 1 << 40

// New allocates a zeroed tensor in an aligned buffer.
func New(name string, dt DType, shape ...int) (*Tensor, error) {
	n, err := numElements(dt, shape)
	if err != nil {
		return nil, fmt.Errorf("tensor %q: %w", name, err)
	}
	if n > MaxAlloc/dt.Size() {
		return nil, fmt.Errorf("tensor %q: %w: %v of %s is more than 1 TiB", name, ErrShape, shape, dt)
	}
	return &Tensor{Name: name, DType: dt, Shape: append([]int(nil), shape...), Scale: 1,
		data: AlignedBytes(n * dt.Size())}, nil
}

// FromBytes makes a tensor that views data (no copy). len(data) must equal the element count of
// shape times the dtype size.
func FromBytes(name string, dt DType, shape []int, data []byte) (*Tensor, error) {
	n, err := numElements(dt, shape)
	if err != nil {
		return nil, fmt.Errorf("tensor %q: %w", name, err)
	}
	if want := n * dt.Size(); len(data) != want {
		return nil, fmt.Errorf("tensor %q: %w: shape %v of %s needs %d bytes, have %d",
			name, ErrShape, shape, dt, want, len(data))
	}
	return &Tensor{Name: name, DType: dt, Shape: append([]int(nil), shape...), Scale: 1, data: data}, nil
}

// FromF32 makes an F32 tensor that views v (no copy).
func FromF32(name string, shape []int, v []float32) (*Tensor, error) {
	return FromBytes(name, F32, shape, asBytes(v))
}

// FromF64 makes an F64 tensor that views v (no copy).
func FromF64(name string, shape []int, v []float64) (*Tensor, error) {
	return FromBytes(name, F64, shape, asBytes(v))
}

// MaxElements bounds the element count of one tensor (2^48), far above any real model and far
// below overflow of byte offsets.
const MaxElements = 1 << 48

func numElements(dt DType, shape []int) (int, error) {
	if !dt.Valid() {
		return 0, fmt.Errorf("%w: %d", ErrDType, uint8(dt))
	}
	n := 1
	for _, d := range shape {
		if d < 0 {
			return 0, fmt.Errorf("%w: negative dimension in %v", ErrShape, shape)
		}
		if d != 0 && n > MaxElements/d {
			return 0, fmt.Errorf("%w: %v has more than 2^48 elements", ErrShape, shape)
		}
		n *= d
	}
	return n, nil
}

// Len is the number of elements.
func (t *Tensor) Len() int {
	if s := t.DType.Size(); s > 0 {
		return len(t.data) / s
	}
	return 0
}

// Bytes returns the raw little-endian data (no copy).
func (t *Tensor) Bytes() []byte { return t.data }

// Field describes the tensor without its data.
func (t *Tensor) Field() Field {
	return Field{Name: t.Name, DType: t.DType, Shape: t.Shape}
}

// F32 returns the data as []float32 without copying.
func (t *Tensor) F32() ([]float32, error) { return typedView[float32](t, F32) }

// F64 returns the data as []float64 without copying.
func (t *Tensor) F64() ([]float64, error) { return typedView[float64](t, F64) }

// U16 returns the raw bits of an F16 or BF16 tensor without copying.
func (t *Tensor) U16() ([]uint16, error) {
	if t.DType != F16 && t.DType != BF16 {
		return nil, fmt.Errorf("tensor %q: %w: U16 view of %s", t.Name, ErrDType, t.DType)
	}
	return typedView[uint16](t, t.DType)
}

// I8 returns the quantised values of an I8 tensor without copying.
func (t *Tensor) I8() ([]int8, error) { return typedView[int8](t, I8) }

// U32 returns the data of a U32 tensor without copying.
func (t *Tensor) U32() ([]uint32, error) { return typedView[uint32](t, U32) }

func typedView[T float32 | float64 | uint16 | int8 | uint32](t *Tensor, want DType) ([]T, error) {
	if t.DType != want {
		return nil, fmt.Errorf("tensor %q: %w: %s view of %s", t.Name, ErrDType, want, t.DType)
	}
	var zero T
	size := int(unsafe.Sizeof(zero))
	if len(t.data) == 0 {
		return []T{}, nil
	}
	if !IsAligned(t.data, size) {
		return nil, fmt.Errorf("tensor %q: %w: %s data at an odd address", t.Name, ErrUnaligned, t.DType)
	}
	return unsafe.Slice((*T)(unsafe.Pointer(unsafe.SliceData(t.data))), len(t.data)/size), nil
}

func asBytes[T float32 | float64 | uint16 | uint32](v []T) []byte {
	if len(v) == 0 {
		return []byte{}
	}
	var zero T
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(v))), len(v)*int(unsafe.Sizeof(zero)))
}

// Value decodes element i as a float64 (I8 scaled, U32 and I64 as integers). It is for tests
// and inspection; the kernels package decodes in bulk.
func (t *Tensor) Value(i int) float64 {
	b := t.data
	switch t.DType {
	case F32:
		return float64(math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:])))
	case F64:
		return math.Float64frombits(binary.LittleEndian.Uint64(b[8*i:]))
	case F16:
		return float64(F16ToF32(binary.LittleEndian.Uint16(b[2*i:])))
	case BF16:
		return float64(BF16ToF32(binary.LittleEndian.Uint16(b[2*i:])))
	case I8:
		return float64(t.Scale) * float64(int8(b[i]))
	case U32:
		return float64(binary.LittleEndian.Uint32(b[4*i:]))
	case I64:
		return float64(int64(binary.LittleEndian.Uint64(b[8*i:])))
	}
	panic("tensor: Value of invalid dtype")
}

// Float64s returns a decoded copy of all elements (see Value).
func (t *Tensor) Float64s() []float64 {
	out := make([]float64, t.Len())
	for i := range out {
		out[i] = t.Value(i)
	}
	return out
}

// Clone returns a deep copy in an owned, aligned buffer.
func (t *Tensor) Clone() *Tensor {
	c := *t
	c.Shape = append([]int(nil), t.Shape...)
	c.data = AlignedBytes(len(t.data))
	copy(c.data, t.data)
	return &c
}

// CheckFinite returns a *NonFiniteError for the first NaN or Inf, or nil. Integer dtypes are
// always finite.
func (t *Tensor) CheckFinite() error {
	i := FirstNonFinite(t.DType, t.data)
	if i < 0 {
		return nil
	}
	return &NonFiniteError{Tensor: t.Name, Index: i, Value: t.Value(i)}
}

// FirstNonFinite returns the index of the first NaN or Inf element of data (raw bytes of dt),
// or -1. It is the plain reference; kernels.AnyNonFinite is the fast scan.
func FirstNonFinite(dt DType, data []byte) int {
	switch dt {
	case F32:
		for i := 0; i+4 <= len(data); i += 4 {
			if binary.LittleEndian.Uint32(data[i:])&0x7f800000 == 0x7f800000 {
				return i / 4
			}
		}
	case F64:
		for i := 0; i+8 <= len(data); i += 8 {
			if binary.LittleEndian.Uint64(data[i:])&0x7ff0000000000000 == 0x7ff0000000000000 {
				return i / 8
			}
		}
	case F16:
		for i := 0; i+2 <= len(data); i += 2 {
			if binary.LittleEndian.Uint16(data[i:])&0x7c00 == 0x7c00 {
				return i / 2
			}
		}
	case BF16:
		for i := 0; i+2 <= len(data); i += 2 {
			if binary.LittleEndian.Uint16(data[i:])&0x7f80 == 0x7f80 {
				return i / 2
			}
		}
	}
	return -1
}
