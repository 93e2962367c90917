package aggregate

import "errors"

// Sentinel errors of the rules. Errors about tensors wrap the tensor package's sentinels
// (tensor.ErrLayoutMismatch, tensor.ErrNonFinite, tensor.ErrDType).
var (
	ErrNoInputs = errors.New("no updates to aggregate")
	ErrWeight   = errors.New("invalid weight")
	ErrOption   = errors.New("invalid option")
	ErrOverflow = errors.New("overflow")
)
