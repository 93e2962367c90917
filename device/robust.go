package device

import (
	"context"
	"fmt"

	"github.com/wattagg/wattagg/kernels"
	"github.com/wattagg/wattagg/tensor"
)

// Robust is the capability of a device to run the block-level operations of the
// Byzantine-robust rules (median, trimmed mean, Krum, Bulyan, geometric median, centered
// clipping). Rules type-assert a Device to Robust and fail with ErrUnsupported when it is not
// one. Every operation works on the inputs where they are (spans of mapped files included),
// coordinate block by coordinate block, and keeps only bounded scratch of its own.
//
// Semantics every implementation follows (the CPU device's kernels define them bit for bit; a
// GPU may differ in the last bits of the f64 sums, never in the order statistics):
//
//   - Inputs are real dtypes other than F64 (f32, f16, bf16, i8); 16-bit and i8 values are
//     widened to f32 exactly (i8 as float32(Scale·q)). Order statistics are taken in f32.
//   - Order statistics sort the n values of each coordinate ascending with Batcher's odd-even
//     merge sort network, each comparator choosing min(a, b) = a < b ? a : b and
//     max(a, b) = a > b ? a : b (VMINPS/VMAXPS), so NaNs and signed zeros land where that
//     network puts them; callers exclude inputs holding NaN or Inf first.
//   - Median: the middle value; for even n, lo·0.5 + hi·0.5 of the two middle values (numpy's
//     and Flower's convention, without the overflow of (lo+hi)/2).
//   - Trimmed mean: the K smallest and K largest values dropped (2K < n), the rest summed from
//     +0 in ascending order in f32 and divided by n-2K (Flower and scipy cut K = floor(β·n)).
//   - Closest mean (Bulyan): the mean of the K values nearest the median, the window of K
//     sorted values that minimises their summed distance to it, summed as the trimmed mean.
//   - Closest mean (Bulyan) when windows tie (values as far below the median as others are
//     above it at the cut-off, frequent with 16-bit inputs): the tied windows are the starts
//     lo..hi of kernels.ClosestMeanF32, and the result is the middle window's mean, or for an
//     even number of them mean(a)·0.5 + mean(b)·0.5 of the middle two. Ties resolve to neither
//     side: with the first window, as before, every tie erred low.
//   - The Gram matrix is taken of the inputs centred at each coordinate j on their mean
//     r_j = (Σ_i x_i[j]) / n in f32 arithmetic (the sum from +0 in input order; r_j = 0 where it
//     is not finite), so that f32 inputs give exact f64 differences x_i[j] − r_j and distances
//     between clients that differ slightly do not cancel.
//   - Dot products and squared distances accumulate in f64 with fused multiply-adds: element j
//     of a block goes to lane j mod 4 (Gram) or j mod 16 (distances), blocks are multiples of
//     the lane count, lanes are combined pairwise ((l0+l2)+(l1+l3), or halves lane by lane),
//     and the per-chunk sums are added in chunk order, so results do not depend on the number
//     of workers.
type Robust interface {
	// Select computes an order statistic of the inputs coordinate by coordinate and writes it,
	// converted to each field's output dtype, chunk by chunk to the job's Output. A
	// non-finite result (a trimmed mean beyond the f32 range, an output dtype too narrow) is a
	// *tensor.NonFiniteError naming the field and element.
	Select(ctx context.Context, job *SelectJob) (Stats, error)
	// Gram returns the Gram matrix of the inputs less a common point (their mean at each
	// coordinate, or 0 where the device finds the raw matrix precise enough: see GramMatrix) and
	// their squared norms, accumulated in f64 over all fields: Krum's squared distances are
	// G.SqDistance(a, b).
	Gram(ctx context.Context, fields []AccField, inputs [][]Span) (GramMatrix, Stats, error)
	// SqDistances returns ‖x_i − z‖² and ‖x_i‖² for every input i over all fields, accumulated
	// in f64 (each difference of two f32 values is exact in f64, and neither sum overflows for
	// finite inputs, so a non-finite ‖x_i‖² says input i holds a NaN or Inf). z holds one F32
	// span per field.
	SqDistances(ctx context.Context, fields []AccField, inputs [][]Span, z []Span) (dist, norm []float64, _ Stats, _ error)
}

// GramMatrix is the result of Robust.Gram over n inputs x_i, the coordinates j running over all
// fields, r_j the centre of coordinate j (see Robust).
//
// Distances come from the centred matrix because ‖a−b‖² = ‖a‖² + ‖b‖² − 2a·b cancels
// catastrophically when clients send full models that differ slightly: the rounding of the
// uncentred products is about √P·2⁻⁵³·‖x‖² over P coordinates, a percent of the distances
// between such clients, where the centred one's is relative to ‖x − r‖². Any point common to
// all inputs gives the same distances, so the centred matrix also gives each input's distance
// to a weighted mean of inputs, Σ_s w_s x_s with Σ w_s = 1:
// C[i][i] − 2Σ_s w_s C[i][s] + Σ_s Σ_t w_s w_t C[s][t].
type GramMatrix struct {
	// Centred[a][b] = Σ_j (x_a[j] − r_j)·(x_b[j] − r_j), symmetric bit for bit, for a point r
	// common to all inputs: 0 where Raw, else the inputs' mean at each coordinate. Distances do
	// not depend on r (see SqDistance); r only decides how much the sums cancel.
	Centred [][]float64
	// SqNorms[a] = Σ_j x_a[j]²: for f32, f16, bf16 and i8 values finite exactly when input a
	// holds no NaN or Inf. A non-finite input leaves the other inputs' rows finite (raw, or the
	// centre of a coordinate where some input is not finite is 0), but perhaps less precise:
	// callers exclude it and compute the matrix again without it.
	SqNorms []float64
	// Raw is whether r = 0: the device found the raw matrix's distances precise enough (the
	// CPU device: CPU.Gram; devices that always centre leave it false).
	Raw bool
}

// SelectSumError bounds the relative error of a SelectJob's SqDist and SqNorm: those of the
// CPU's f32 runs, (kernels.DistRun/kernels.Lanes + 3)·2^-24, about 2.1e-6. They are the
// clients' diagnostics of a pass that is compute-bound on the CPU, where sums in f64 took 40%
// of the median's time (README, "Distances in the order statistics' pass").
const SelectSumError = float64(kernels.DistRun/kernels.Lanes+3) * 0x1p-24

// SqDistance returns ‖x_a − x_b‖² from the centred matrix, clamped at 0 (rounding can make a
// tiny negative).
func (g *GramMatrix) SqDistance(a, b int) float64 {
	if a == b {
		return 0
	}
	return max(0, g.Centred[a][a]+g.Centred[b][b]-2*g.Centred[a][b])
}

// SelectOp is the order statistic a SelectJob computes.
type SelectOp uint8

// The order statistics of Select.
const (
	Median      SelectOp = iota + 1 // the middle value, or the mean of the two middle ones
	TrimmedMean                     // the mean without the K smallest and K largest values
	ClosestMean                     // the mean of the K values closest to the median (Bulyan)
)

func (op SelectOp) String() string {
	switch op {
	case Median:
		return "median"
	case TrimmedMean:
		return "trimmed mean"
	case ClosestMean:
		return "closest mean"
	}
	return fmt.Sprintf("select op %d", uint8(op))
}

// SelectJob is one coordinate-wise order statistic over many inputs.
type SelectJob struct {
	// Fields are the tensors: Len and Out are used; Acc is ignored (order statistics are taken
	// in f32).
	Fields []AccField
	Inputs [][]Span // Inputs[i][t]: input i's data for field t
	Op     SelectOp
	// K is the values cut from each end (TrimmedMean, 2K < n) or the values averaged around the
	// median (ClosestMean, 1 <= K <= n); Median ignores it.
	K      int
	Chunks []Chunk
	Output Output
	// SqDist and SqNorm, when not nil (one element per input), receive ‖x_i − r‖² and ‖x_i‖²
	// for every input, where r is the f32 result before conversion to the output dtype: each
	// client's distance to the aggregate and its norm, computed while the block of inputs is
	// still in cache, each within SelectSumError of its exact value, relatively (the CPU sums
	// them as kernels.SqDistNormF32Runs does). A non-finite SqNorm says that input holds a NaN
	// or Inf (which the job does not check): the caller can run the job first and exclude such
	// inputs afterwards.
	SqDist, SqNorm []float64
	// Progress, if set, is called after each chunk with the input bytes it consumed.
	Progress func(bytes int64)
}

// Validate checks that the job's lengths and parameters agree, so that kernels are safe to call.
func (j *SelectJob) Validate() error {
	n := len(j.Inputs)
	if n == 0 {
		return fmt.Errorf("%w: %s of no inputs", ErrJob, j.Op)
	}
	switch j.Op {
	case Median:
	case TrimmedMean:
		if j.K < 0 || 2*j.K >= n {
			return fmt.Errorf("%w: trimmed mean cutting %d of %d values from each end", ErrJob, j.K, n)
		}
	case ClosestMean:
		if j.K < 1 || j.K > n {
			return fmt.Errorf("%w: closest mean of %d of %d values", ErrJob, j.K, n)
		}
	default:
		return fmt.Errorf("%w: %s", ErrJob, j.Op)
	}
	if j.SqDist != nil && len(j.SqDist) != n || j.SqNorm != nil && len(j.SqNorm) != n {
		return fmt.Errorf("%w: %d distances and %d norms for %d inputs", ErrJob, len(j.SqDist), len(j.SqNorm), n)
	}
	for i, in := range j.Inputs {
		if err := checkRobustSpans(j.Fields, in); err != nil {
			return fmt.Errorf("input %d: %w", i, err)
		}
	}
	for _, f := range j.Fields {
		switch f.Out {
		case tensor.F32, tensor.F64, tensor.F16, tensor.BF16:
		default:
			return fmt.Errorf("%w: field %q: output dtype %s", ErrUnsupported, f.Name, f.Out)
		}
	}
	return checkChunks(j.Fields, j.Chunks)
}

// checkRobustSpans is checkSpans for the robust operations, which take f32, f16, bf16 and i8.
func checkRobustSpans(fields []AccField, x []Span) error {
	if err := checkSpans(fields, x); err != nil {
		return err
	}
	for t, f := range fields {
		if x[t].DType == tensor.F64 {
			return fmt.Errorf("%w: field %q: robust rules take f32, f16, bf16 and i8 inputs, not f64", ErrUnsupported, f.Name)
		}
	}
	return nil
}
