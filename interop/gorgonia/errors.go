package gorgonia

import "errors"

// ErrNotContiguous is returned for a Dense whose elements are not laid out in row-major order
// in one block (a transposed or strided view, or a masked tensor): its backing cannot be
// viewed as a tensor without reordering it, which would be a copy.
var ErrNotContiguous = errors.New("dense is not a contiguous row-major block")
