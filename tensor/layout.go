package tensor

import (
	"fmt"
	"slices"
)

// Field describes one tensor: name, dtype and shape.
type Field struct {
	Name  string `json:"name"`
	DType DType  `json:"dtype"`
	Shape []int  `json:"shape"`
}

// Len is the element count of the field's shape.
func (f Field) Len() int {
	n := 1
	for _, d := range f.Shape {
		n *= d
	}
	return n
}

// Layout is the ordered description of a Set.
type Layout []Field

// NumParams is the total element count.
func (l Layout) NumParams() int64 {
	var n int64
	for _, f := range l {
		n += int64(f.Len())
	}
	return n
}

// Equal reports whether l and o have the same fields in the same order.
func (l Layout) Equal(o Layout) bool {
	return slices.EqualFunc(l, o, func(a, b Field) bool {
		return a.Name == b.Name && a.DType == b.DType && slices.Equal(a.Shape, b.Shape)
	})
}

// Match checks that o holds the same tensors as l, by name, with the same shapes, and with the
// same dtypes when sameDType is set; the order may differ (writers sort tensors differently).
// It returns perm with o[perm[i]] the field named l[i].Name. A difference is an
// ErrLayoutMismatch error naming the first tensor that differs.
func (l Layout) Match(o Layout, sameDType bool) ([]int, error) {
	byName := make(map[string]int, len(o))
	for i, f := range o {
		byName[f.Name] = i
	}
	perm := make([]int, len(l))
	for i, f := range l {
		j, ok := byName[f.Name]
		if !ok {
			return nil, fmt.Errorf("%w: tensor %q is missing", ErrLayoutMismatch, f.Name)
		}
		g := o[j]
		if !slices.Equal(f.Shape, g.Shape) {
			return nil, fmt.Errorf("%w: tensor %q has shape %v, want %v", ErrLayoutMismatch, f.Name, g.Shape, f.Shape)
		}
		if sameDType && f.DType != g.DType {
			return nil, fmt.Errorf("%w: tensor %q has dtype %s, want %s", ErrLayoutMismatch, f.Name, g.DType, f.DType)
		}
		perm[i] = j
	}
	if len(o) != len(l) {
		for _, g := range o {
			if !slices.ContainsFunc(l, func(f Field) bool { return f.Name == g.Name }) {
				return nil, fmt.Errorf("%w: unexpected tensor %q", ErrLayoutMismatch, g.Name)
			}
		}
	}
	return perm, nil
}
