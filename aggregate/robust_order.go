package aggregate

import (
	"context"
	"fmt"
	"math"
	"slices"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
)

// Median is the coordinate-wise median (Yin et al., 2018, "Byzantine-Robust Distributed
// Learning: Towards Optimal Statistical Rates"; Flower's FedMedian): every coordinate of the
// result is the median of that coordinate over the clients, the mean of the two middle values
// for an even count, as numpy and Flower take it. Weights are ignored (every client counts
// once), as in Flower. With fewer than half the clients Byzantine, every coordinate of the
// result lies within the range of the honest clients' values of that coordinate.
//
// Clients whose update holds a NaN or Inf are excluded (Report.PerClient says why); each
// client's distance to the result is reported. The median is computed in f32 (16-bit and i8
// updates are widened exactly) and streams to a file chunk by chunk.
type Median struct{ opts []Option }

var _ FileRule = (*Median)(nil)

// NewMedian checks opts and returns the median rule.
func NewMedian(opts ...Option) (*Median, error) {
	if _, err := newConfig(opts); err != nil {
		return nil, err
	}
	return &Median{opts: opts}, nil
}

// Name is "median".
func (*Median) Name() string { return "median" }

// Aggregate computes the median in memory.
func (r *Median) Aggregate(ctx context.Context, updates []*tensor.Set, weights []float64) (*tensor.Set, *Report, error) {
	return orderStatistic(ctx, r.Name(), device.Median, nil, 0, "", updates, weights, r.opts)
}

// AggregateFile writes the median to path as .safetensors without holding it in memory.
func (r *Median) AggregateFile(ctx context.Context, path string, updates []*tensor.Set, weights []float64) (*Report, error) {
	_, rep, err := orderStatistic(ctx, r.Name(), device.Median, nil, 0, path, updates, weights, r.opts)
	return rep, err
}

// TrimmedMean is the coordinate-wise trimmed mean (Yin et al., 2018; Flower's FedTrimmedAvg,
// scipy's trim_mean): per coordinate, the floor(β·n) smallest and floor(β·n) largest values are
// cut and the rest averaged. n counts the clients left after those with NaN or Inf updates are
// excluded. Weights are ignored, as in Flower. When at most floor(β·n) clients are Byzantine,
// every coordinate of the result lies within the range of the honest values of that coordinate.
//
// The kept values are summed in f32 in ascending order; the rule streams to a file.
type TrimmedMean struct {
	beta float64
	opts []Option
}

var _ FileRule = (*TrimmedMean)(nil)

// NewTrimmedMean returns the trimmed mean cutting the fraction beta (0 <= beta < 0.5) of the
// values from each end of every coordinate.
func NewTrimmedMean(beta float64, opts ...Option) (*TrimmedMean, error) {
	if !(beta >= 0 && beta < 0.5) {
		return nil, fmt.Errorf("%w: trimmed-mean beta %v: want 0 <= beta < 0.5 (the fraction cut from each end)", ErrOption, beta)
	}
	if _, err := newConfig(opts); err != nil {
		return nil, err
	}
	return &TrimmedMean{beta: beta, opts: opts}, nil
}

// Name is "trimmed-mean".
func (*TrimmedMean) Name() string { return "trimmed-mean" }

// Trim is the number of values cut from each end of a coordinate of n clients: floor(β·n).
func (r *TrimmedMean) Trim(n int) int { return int(math.Floor(r.beta * float64(n))) }

// Aggregate computes the trimmed mean in memory.
func (r *TrimmedMean) Aggregate(ctx context.Context, updates []*tensor.Set, weights []float64) (*tensor.Set, *Report, error) {
	return orderStatistic(ctx, r.Name(), device.TrimmedMean, r.Trim, r.beta, "", updates, weights, r.opts)
}

// AggregateFile writes the trimmed mean to path as .safetensors without holding it in memory.
func (r *TrimmedMean) AggregateFile(ctx context.Context, path string, updates []*tensor.Set, weights []float64) (*Report, error) {
	_, rep, err := orderStatistic(ctx, r.Name(), device.TrimmedMean, r.Trim, r.beta, path, updates, weights, r.opts)
	return rep, err
}

// orderStatistic runs a coordinate-wise rule over the usable clients: one pass for the norms
// (and finiteness), one for the statistic and the distances to it.
func orderStatistic(ctx context.Context, rule string, op device.SelectOp, trim func(n int) int, beta float64,
	path string, updates []*tensor.Set, weights []float64, opts []Option) (*tensor.Set, *Report, error) {
	r, err := newRobustRound(ctx, rule, updates, weights, opts)
	if err != nil {
		return nil, nil, err
	}
	details := map[string]float64{}
	kOf := func(n int) int { return 0 }
	if trim != nil {
		kOf = trim
		details["beta"] = beta
	}
	set, written, used, err := r.selectRound(ctx, path, op, func() []int { return slices.Clone(r.keep) }, kOf,
		func() error { return r.need(1, rule) })
	if err != nil {
		return nil, nil, err
	}
	if trim != nil {
		details["trimmed_per_end"] = float64(trim(len(used)))
	}
	return set, r.report(path, written, details), nil
}
