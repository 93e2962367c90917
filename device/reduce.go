package device

import (
	"context"
	"fmt"

	"github.com/wattagg/wattagg/tensor"
)

// Reducer is the capability of the whole-update reductions a round runs as updates arrive:
// the finiteness scan that validates an update and the squared norms that clipping rules scale
// updates by. Rules reach them through the round engine, which uses the round's device when it
// is a Reducer and the host CPU otherwise, so --workers and the device choice reach them like
// every other operation.
type Reducer interface {
	// CheckFinite scans one update (one span per field, any real dtype) and returns a
	// *tensor.NonFiniteError for its first NaN or Inf (lowest field, then lowest element), with
	// Source empty, or nil.
	CheckFinite(ctx context.Context, fields []AccField, x []Span) error
	// SqNorms returns, for every input, Σ over fields and elements of (x_i − ref)², or of x_i²
	// when ref is nil, accumulated in f64 (I8 inputs scaled). ref holds one F32 span per field.
	// The blocking and summation order are fixed (see the CPU's implementation), so the result
	// does not depend on the number of workers. A non-finite result says the input holds a NaN
	// or Inf (or, for f64 inputs, values whose squares overflow).
	SqNorms(ctx context.Context, fields []AccField, inputs [][]Span, ref []Span) ([]float64, Stats, error)
}

// checkNormJob checks the lengths and dtypes of a SqNorms job so that kernels are safe to call.
func checkNormJob(fields []AccField, inputs [][]Span, ref []Span) error {
	for i, in := range inputs {
		if err := checkSpans(fields, in); err != nil {
			return fmt.Errorf("input %d: %w", i, err)
		}
	}
	if ref == nil {
		return nil
	}
	if len(ref) != len(fields) {
		return fmt.Errorf("%w: %d reference spans for %d fields", ErrJob, len(ref), len(fields))
	}
	for t, f := range fields {
		if ref[t].DType != tensor.F32 || len(ref[t].Data) != 4*f.Len {
			return fmt.Errorf("%w: field %q: the reference must be %d f32 elements, have %d bytes of %s",
				ErrJob, f.Name, f.Len, len(ref[t].Data), ref[t].DType)
		}
	}
	return nil
}
