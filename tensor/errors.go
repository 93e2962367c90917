package tensor

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error of this package (and of the packages built on it) wraps one of
// them, so callers can branch with errors.Is while users read a sentence naming what and where.
var (
	ErrDType          = errors.New("unsupported dtype")
	ErrShape          = errors.New("invalid shape")
	ErrShapeMismatch  = errors.New("shape mismatch")
	ErrLayoutMismatch = errors.New("layout mismatch")
	ErrDuplicateName  = errors.New("duplicate tensor name")
	ErrNotFound       = errors.New("tensor not found")
	ErrNonFinite      = errors.New("non-finite value")
	ErrUnaligned      = errors.New("data not aligned for a typed view")
	ErrClosed         = errors.New("set is closed")
)

// NonFiniteError says where the first NaN or Inf of a tensor is. It wraps ErrNonFinite.
type NonFiniteError struct {
	Source string  // where the Set came from (a file name, a client id); may be empty
	Tensor string  // tensor name
	Index  int     // element index (flat, row-major)
	Value  float64 // the value found (NaN, +Inf or -Inf)
}

func (e *NonFiniteError) Error() string {
	where := fmt.Sprintf("tensor %q", e.Tensor)
	if e.Source != "" {
		where = e.Source + ": " + where
	}
	return fmt.Sprintf("%s: %v %v at element %d", where, ErrNonFinite, e.Value, e.Index)
}

func (e *NonFiniteError) Unwrap() error { return ErrNonFinite }
