package device

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/bits"

	"github.com/wattagg/wattagg/kernels"
	"github.com/wattagg/wattagg/tensor"
)

// Exact sums. A field whose Acc is tensor.I64 is summed exactly: each term w·x·2^-Grid is
// rounded to an integer (kernels.ExactTerm) and the integers are added in two int64 limbs per
// element (kernels' exact family), so the sum is a function of the multiset of (input, weight)
// pairs alone: the same bits whatever the order of the inputs, the blocking, the workers or the
// device, and sums of disjoint inputs add up (ExactAccumulator) to the sum of all of them. The
// scale of a job, or of Emit, multiplies the sum (2^Grid·scale), not the terms.
//
// Exact fields take f32, bf16, f16 and i8 inputs and write f32, bf16 or f16. Every term must stay
// below kernels.ExactMaxTerm grid units: callers choose the grid and bound the weights so that
// inputs within ±Bound keep it there, and the devices refuse inputs beyond: a job fails with a
// *RangeError (or a *tensor.NonFiniteError for a NaN or Inf) found by the accumulation kernels
// themselves at no extra pass. An accumulator finds them only while adding (the CPU's Add fails,
// a GPU's Emit writes NaN there), when the sum is already spoilt: a caller that must keep the
// sum scans an update first (RangeChecker).

// ErrOutOfRange reports a value beyond what an exact sum was set up for: an input element beyond
// its bound, or a sum beyond what its limbs hold.
var ErrOutOfRange = errors.New("out of the exact sum's range")

// RangeError is an input element beyond the bound of its field (Source empty: the caller knows
// which input it scanned).
type RangeError struct {
	Source string
	Tensor string
	Index  int
	Value  float64
	Bound  float64
}

func (e *RangeError) Error() string {
	where := fmt.Sprintf("tensor %q", e.Tensor)
	if e.Source != "" {
		where = e.Source + ": " + where
	}
	return fmt.Sprintf("%s: element %d is %v: %v (|x| ≤ %v)", where, e.Index, e.Value, ErrOutOfRange, e.Bound)
}

func (e *RangeError) Unwrap() error { return ErrOutOfRange }

// RangeChecker is the capability of the exact sums' validation: one scan of an update that
// proves every term it brings stays within the grid.
type RangeChecker interface {
	// CheckRange scans one update (one span per field, f32, bf16, f16 or i8) and returns the
	// first element (lowest field, then lowest element) that is NaN or infinite, as a
	// *tensor.NonFiniteError, or finite beyond ±fields[t].Bound, as a *RangeError; nil when
	// every element is within. Sources are empty.
	CheckRange(ctx context.Context, fields []AccField, x []Span) error
}

// ExactAccumulator is an Accumulator of exact fields whose integer sums can be read out and added
// in: partial aggregates that are saved, loaded and merged in any grouping.
type ExactAccumulator interface {
	Accumulator
	// ReadSums copies the sums of field t into dst (2·Len words): element j's sum, in units of
	// 2^Grid, as a little-endian 128-bit two's complement integer, dst[2j] its low and dst[2j+1]
	// its high 64 bits.
	ReadSums(ctx context.Context, t int, dst []int64) error
	// AddSums adds sums in that form to field t, exactly. A total the limbs cannot hold is an
	// ErrOutOfRange error, and the field is left as it was.
	AddSums(ctx context.Context, t int, src []int64) error
}

// exactFields reports whether fields are exact (all of them); a mix is an error.
func exactFields(fields []AccField) (bool, error) {
	n := 0
	for _, f := range fields {
		if f.Acc == tensor.I64 {
			n++
		}
	}
	if n > 0 && n < len(fields) {
		return false, fmt.Errorf("%w: %d of %d fields are exact: all or none", ErrUnsupported, n, len(fields))
	}
	return n > 0, nil
}

// checkExactField checks an exact field and the dtypes of its inputs.
func checkExactField(t int, f AccField, inputs [][]Span) error {
	if !(f.Bound > 0) || math.IsInf(f.Bound, 0) {
		return fmt.Errorf("%w: field %q: an exact sum needs a positive finite bound, not %v", ErrJob, f.Name, f.Bound)
	}
	switch f.Out {
	case tensor.F32, tensor.BF16, tensor.F16:
	default:
		return fmt.Errorf("%w: field %q: an exact sum is written as f32, bf16 or f16, not %s", ErrUnsupported, f.Name, f.Out)
	}
	for i, in := range inputs {
		if dt := in[t].DType; !exactInput(dt) {
			return fmt.Errorf("%w: field %q: input %d is %s: exact sums take f32, bf16, f16 and i8", ErrUnsupported, f.Name, i, dt)
		}
	}
	return nil
}

func exactInput(dt tensor.DType) bool {
	return dt == tensor.F32 || dt == tensor.BF16 || dt == tensor.F16 || dt == tensor.I8
}

// ExactWeight is the weight the kernels apply to a term of an exact field: w (times the I8
// dequantisation scale, rounded in f64) scaled to the field's grid, exactly. Every device uses
// it, so terms are the same everywhere.
func ExactWeight(w float64, sp Span, grid int) float64 {
	if sp.DType == tensor.I8 {
		w *= float64(sp.Scale)
	}
	return math.Ldexp(w, -grid)
}

// ExactToInt128 writes the sums (hi, lo) as 128-bit integers into dst (2·len(hi) words, low word
// first): S = hi·2^52 + lo.
func ExactToInt128(hi, lo []int64, dst []int64) {
	for j := range hi {
		l, c := bits.Add64(uint64(hi[j])<<kernels.ExactLimbShift, uint64(lo[j]), 0)
		h := hi[j]>>(64-kernels.ExactLimbShift) + lo[j]>>63 + int64(c)
		dst[2*j], dst[2*j+1] = int64(l), h
	}
}

// exactFromInt128 returns the normalised limbs of the 128-bit integer (l, h), or false when the
// high limb cannot hold it (|S| ≥ 2^115).
func exactFromInt128(l, h int64) (hi, lo int64, ok bool) {
	lo = int64((uint64(l)+1<<51)&(1<<52-1)) - 1<<51
	rl, b := bits.Sub64(uint64(l), uint64(lo), 0)
	rh := h - lo>>63 - int64(b)
	// S − lo is a multiple of 2^52: hi is (rh:rl) >> 52, if it fits in 64 bits.
	hi = rh<<(64-kernels.ExactLimbShift) | int64(rl>>kernels.ExactLimbShift)
	return hi, lo, rh>>(kernels.ExactLimbShift-1) == 0 || rh>>(kernels.ExactLimbShift-1) == -1
}

// ExactAddInt128 adds the 128-bit sums of src (2·len(hi) words) to the limbs (hi, lo). It
// checks every element first: if a total does not fit, it returns an ErrOutOfRange error naming
// the element and changes nothing.
func ExactAddInt128(hi, lo []int64, src []int64, name string) error {
	if len(src) != 2*len(hi) || len(lo) != len(hi) {
		return fmt.Errorf("%w: field %q: %d words of sums for %d elements", ErrJob, name, len(src), len(hi))
	}
	for pass := range 2 {
		for j := range hi {
			h, l, ok := exactFromInt128(src[2*j], src[2*j+1])
			if !ok {
				return fmt.Errorf("field %q: element %d: %w: a partial sum beyond 2^115 grid units", name, j, ErrOutOfRange)
			}
			sh, over := addInt64(hi[j], h)
			c := (lo[j] + l + 1<<51) >> 52
			sh, over2 := addInt64(sh, c)
			if over || over2 {
				return fmt.Errorf("field %q: element %d: %w: the merged sum is beyond 2^115 grid units", name, j, ErrOutOfRange)
			}
			if pass == 1 {
				hi[j], lo[j] = sh, lo[j]+l-c<<52
			}
		}
	}
	return nil
}

// addInt64 is a + b and whether it overflowed.
func addInt64(a, b int64) (int64, bool) {
	s := a + b
	return s, (a >= 0) == (b >= 0) && (s >= 0) != (a >= 0)
}

// ExactLimit is the largest magnitude within ±bound, as the exact kernels report magnitudes of
// dtype dt (for i8, of |q| with dequantisation scale scale): the bits of the largest value of dt
// that is at most bound. A NaN's bits exceed it. Every device compares with it.
func ExactLimit(dt tensor.DType, bound float64, scale float32) uint32 {
	b32 := float32(bound)
	if float64(b32) > bound {
		b32 = math.Nextafter32(b32, 0)
	}
	switch dt {
	case tensor.F32:
		return math.Float32bits(b32)
	case tensor.BF16:
		return math.Float32bits(b32) >> 16 // truncation: the largest bfloat16 not above
	case tensor.F16:
		h := tensor.F32ToF16(b32)
		if tensor.F16ToF32(h) > b32 {
			h--
		}
		return uint32(h)
	case tensor.I8:
		return uint32(min(128, math.Floor(bound/math.Abs(float64(scale)))))
	}
	return 0
}

// exactAccKernel is the kernel that adds inputs of dtype dt to exact sums.
func exactAccKernel(k *kernels.Impl, dt tensor.DType) func(hi, lo []int64, w []float64, x [][]byte) uint32 {
	switch dt {
	case tensor.F32:
		return k.ExactAccF32
	case tensor.BF16:
		return k.ExactAccBF16
	case tensor.F16:
		return k.ExactAccF16
	case tensor.I8:
		return k.ExactAccI8
	}
	return nil
}

// exactAcc1Kernel is the one-limb accumulation kernel for inputs of dt (nil if there is none).
func exactAcc1Kernel(k *kernels.Impl, dt tensor.DType) func(one []int64, w []float64, x [][]byte) uint32 {
	switch dt {
	case tensor.F32:
		return k.ExactAcc1F32
	case tensor.BF16:
		return k.ExactAcc1BF16
	case tensor.F16:
		return k.ExactAcc1F16
	case tensor.I8:
		return k.ExactAcc1I8
	}
	return nil
}

// exactStoreKernel is the kernel that writes exact sums as dt.
func exactStoreKernel(k *kernels.Impl, dt tensor.DType) func(dst []byte, hi, lo []int64, s float64) {
	switch dt {
	case tensor.F32:
		return k.ExactStoreF32
	case tensor.BF16:
		return k.ExactStoreBF16
	case tensor.F16:
		return k.ExactStoreF16
	}
	return nil
}

// PieceAccumulator is an exact accumulator that takes an update a piece at a time: a run of
// elements of one field, as the update's bytes arrive from the network, so that no whole update
// is ever held. Pieces of different updates may be added concurrently as long as they do not
// overlap (the caller locks what they share). A piece that would leave the sum meaningless is
// refused before anything is added, so a refused update can be taken out again exactly: an
// exact sum of w·x and (−w)·x is 0 term for term (ExactTerm rounds to nearest, ties to even,
// which is symmetric), so adding the pieces again with −w restores the sum's bits.
type PieceAccumulator interface {
	ExactAccumulator
	// AddPiece adds w·x to elements [lo, lo+n) of field t (x holds n elements). It first scans
	// x: an element that is NaN, infinite (*tensor.NonFiniteError) or beyond the field's bound
	// (*RangeError) refuses the piece, Index counted from the field's start, and nothing is added.
	AddPiece(ctx context.Context, t, lo int, x Span, w float64) error
}
