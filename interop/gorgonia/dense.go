package gorgonia

import (
	"fmt"
	"unsafe"

	gt "gorgonia.org/tensor"

	"github.com/wattagg/wattagg/tensor"
)

// Dense returns t as a gorgonia Dense of the same shape whose backing array is t's data: no
// element is copied, so writes through either are seen by the other. F32 tensors become
// Float32 Dense values and F64 ones Float64; other dtypes are tensor.ErrDType errors (gorgonia
// has no bf16, f16 or scaled i8: convert them first). A tensor without elements is a
// tensor.ErrShape error, because gorgonia cannot address an empty backing array.
func Dense(t *tensor.Tensor) (*gt.Dense, error) {
	if t.Len() == 0 {
		return nil, fmt.Errorf("tensor %q: %w: %v has no elements, which gorgonia cannot hold", t.Name, tensor.ErrShape, t.Shape)
	}
	shape := append([]int(nil), t.Shape...)
	switch t.DType {
	case tensor.F32:
		v, err := t.F32()
		if err != nil {
			return nil, err
		}
		return gt.New(gt.WithShape(shape...), gt.WithBacking(v)), nil
	case tensor.F64:
		v, err := t.F64()
		if err != nil {
			return nil, err
		}
		return gt.New(gt.WithShape(shape...), gt.WithBacking(v)), nil
	}
	return nil, fmt.Errorf("tensor %q: %w: gorgonia view of %s (f32 and f64 only)", t.Name, tensor.ErrDType, t.DType)
}

// FromDense returns a tensor named name that views d's backing array (no copy). d must be a
// contiguous row-major Float32 or Float64 block: a transposed, strided or masked view is an
// ErrNotContiguous error (materialise it first), another dtype a tensor.ErrDType error. The
// tensor is valid as long as d's memory is: do not return d to gorgonia's pool while it is in
// use.
func FromDense(name string, d *gt.Dense) (*tensor.Tensor, error) {
	if d == nil {
		return nil, fmt.Errorf("tensor %q: %w: nil dense", name, tensor.ErrShape)
	}
	shape := []int(d.Shape())
	n := d.Shape().TotalSize()
	if n == 0 && !d.IsScalar() {
		return nil, fmt.Errorf("tensor %q: %w: dense of shape %v has no elements", name, tensor.ErrShape, d.Shape())
	}
	if d.RequiresIterator() {
		return nil, fmt.Errorf("tensor %q: %w", name, ErrNotContiguous)
	}
	// A scalar's Data is the value, not a slice: a rank-1 shallow clone shares the backing
	// array and gives the slice.
	v := d
	if d.IsScalar() {
		shape, n = nil, 1
		v = d.ShallowClone()
		if err := v.Reshape(1); err != nil {
			return nil, fmt.Errorf("tensor %q: %w: %v", name, tensor.ErrShape, err)
		}
	}
	if v.DataSize() < n {
		return nil, fmt.Errorf("tensor %q: %w: dense of shape %v holds %d elements", name, tensor.ErrShape, d.Shape(), v.DataSize())
	}
	var b []byte
	var dt tensor.DType
	switch data := v.Data().(type) {
	case []float32:
		b, dt = bytesOf(data[:n]), tensor.F32
	case []float64:
		b, dt = bytesOf(data[:n]), tensor.F64
	default:
		return nil, fmt.Errorf("tensor %q: %w: dense of %v (Float32 and Float64 only)", name, tensor.ErrDType, d.Dtype())
	}
	return tensor.FromBytes(name, dt, shape, b)
}

func bytesOf[T float32 | float64](v []T) []byte {
	var zero T
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(v))), len(v)*int(unsafe.Sizeof(zero)))
}
