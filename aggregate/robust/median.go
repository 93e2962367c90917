package robust

import (
	"context"
	"slices"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/device"
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
// updates are widened exactly) in one pass that also takes the norms and distances (those within
// device.SelectSumError, about 2·10⁻⁶, relatively: summed in f32 runs).
type Median struct{}

// NewMedian returns the median rule.
func NewMedian() *Median { return &Median{} }

// Name is "median".
func (*Median) Name() string { return "median" }

// Requirements: every update at once; NaN or Inf excluded; f32, f16, bf16 or i8 updates.
func (*Median) Requirements() aggregate.Requirements { return wholeRequirements }

// Begin begins a round.
func (m *Median) Begin(context.Context, *aggregate.Env) (aggregate.Stage, error) {
	return &orderStage{rule: m.Name(), op: device.Median}, nil
}

// orderStage computes a coordinate-wise order statistic: one pass for the statistic, the norms
// and the distances (again without the clients it found non-finite, if any).
type orderStage struct {
	mixing
	rule    string
	op      device.SelectOp
	trim    func(n int) int // TrimmedMean: values cut from each end of n
	beta    float64
	trimmed int
}

func (s *orderStage) Compute(ctx context.Context, in *aggregate.Inputs) error {
	r, err := newRound(in, s.rule)
	if err != nil {
		return err
	}
	free, err := s.apply(ctx, r)
	if err != nil {
		return err
	}
	defer free()
	kOf := func(int) int { return 0 }
	if s.trim != nil {
		kOf = s.trim
	}
	used, err := r.selectRound(ctx, s.op, func() []int { return slices.Clone(r.keep) }, kOf,
		func() error { return r.need(1, s.rule) })
	if err != nil {
		return err
	}
	if s.trim != nil {
		s.trimmed = s.trim(len(used))
	}
	return nil
}

func (s *orderStage) Report(rep *aggregate.Report) {
	s.report(rep)
	if s.trim != nil {
		rep.Detail("beta", s.beta)
		rep.Detail("trimmed_per_end", float64(s.trimmed))
	}
}
