package robust

import (
	"context"
	"fmt"
	"math"
	"slices"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/device"
)

// ClipBound is the L2 bound of norm clipping and zeroing: fixed, or adaptive (the given
// quantile of this round's update norms).
type ClipBound struct {
	fixed    float64
	quantile float64
	adaptive bool
}

// FixedBound is the bound c > 0.
func FixedBound(c float64) ClipBound { return ClipBound{fixed: c} }

// QuantileBound is the bound set each round to the q-quantile (0 < q <= 1) of the norms of the
// round's usable updates, interpolated linearly between order statistics as numpy's default
// quantile does (q = 0.5: the median norm; q = 1: the largest, so nothing is clipped).
func QuantileBound(q float64) ClipBound { return ClipBound{quantile: q, adaptive: true} }

func (b ClipBound) check(rule string) error {
	switch {
	case b.adaptive:
		if !(b.quantile > 0 && b.quantile <= 1) {
			return fmt.Errorf("%w: %s quantile %v: want 0 < q <= 1", aggregate.ErrOption, rule, b.quantile)
		}
	default:
		if !(b.fixed > 0) || math.IsInf(b.fixed, 0) {
			return fmt.Errorf("%w: %s bound %v: want a positive, finite L2 norm", aggregate.ErrOption, rule, b.fixed)
		}
	}
	return nil
}

// quantile is numpy's default (linear) quantile of v, 0 < q <= 1.
func quantile(v []float64, q float64) float64 {
	s := slices.Sorted(slices.Values(v))
	pos := q * float64(len(s)-1)
	lo := int(math.Floor(pos))
	if lo >= len(s)-1 {
		return s[len(s)-1]
	}
	return s[lo] + (pos-float64(lo))*(s[lo+1]-s[lo])
}

// NormClipping is FedAvg of norm-bounded updates: each update x_i is scaled by
// min(1, C/‖x_i‖) (clipping, as DP-FedAvg's and TFF's clipping aggregators do) or, for
// zeroing, replaced by zero when ‖x_i‖ > C (TFF's zeroing aggregator), and the weighted mean
// is taken with the weights FedAvg takes and their full sum as denominator:
// Σ w_i·c_i·x_i / Σ w_i. Updates with NaN or Inf are excluded (from the denominator too). The
// result's norm is at most C.
//
// With a fixed bound the rule is a sum: each update's norm is taken as it arrives and it is
// added scaled, in O(model) memory; composed before another rule ("norm-clip,median") it
// scales the updates that rule sees. A quantile bound needs every norm first, so the rule then
// needs every update at once. The report says which clients were clipped (or zeroed), with
// their norms, and the bound in Details.
type NormClipping struct {
	zero  bool
	bound ClipBound
}

// NewNormClipping returns norm clipping to the bound b.
func NewNormClipping(b ClipBound) (*NormClipping, error) { return newNormClipping(false, b) }

// NewNormZeroing returns norm zeroing beyond the bound b.
func NewNormZeroing(b ClipBound) (*NormClipping, error) { return newNormClipping(true, b) }

func newNormClipping(zero bool, b ClipBound) (*NormClipping, error) {
	r := &NormClipping{zero: zero, bound: b}
	if err := b.check(r.Name()); err != nil {
		return nil, err
	}
	return r, nil
}

// Name is "norm-clip" or "norm-zero".
func (r *NormClipping) Name() string {
	if r.zero {
		return "norm-zero"
	}
	return "norm-clip"
}

// Requirements: a sum with a fixed bound, every update at once with a quantile bound; NaN or
// Inf excluded; f32, f16, bf16 or i8 updates.
func (r *NormClipping) Requirements() aggregate.Requirements {
	q := wholeRequirements
	if !r.bound.adaptive {
		q.Kind = aggregate.KindSum
	}
	return q
}

// Begin begins a round.
func (r *NormClipping) Begin(context.Context, *aggregate.Env) (aggregate.Stage, error) {
	c := clipping{NormClipping: r, bound: r.bound.fixed}
	if r.bound.adaptive {
		return &quantileClipStage{c}, nil
	}
	return &clipStage{c}, nil
}

// clipping is the state of one round of clipping: the bound and how many were clipped.
type clipping struct {
	*NormClipping
	bound   float64
	clipped int
}

// clipStage clips each update by a fixed bound as it arrives (a Weigher of a sum).
type clipStage struct{ clipping }

// factor is the scale of an update of norm n: 1 within the bound, else C/n (clipping) or 0
// (zeroing).
func (s *clipping) factor(n float64) float64 {
	if n <= s.bound {
		return 1
	}
	s.clipped++
	if s.zero {
		return 0
	}
	return s.bound / n
}

// Weigh takes the update's norm, excluding it when it is not finite.
func (s *clipStage) Weigh(ctx context.Context, c *aggregate.Client) (float64, error) {
	n, err := c.Norm(ctx)
	if err != nil {
		return 0, err
	}
	n = math.Sqrt(n * n) // as the rule has always rounded the norms it reports and clips by
	if math.IsNaN(n) || math.IsInf(n, 0) {
		c.ExcludeNonFinite(ctx)
		return 0, nil
	}
	f := s.factor(n)
	c.Diag().Norm = aggregate.Ptr(n)
	c.Diag().Clipped = aggregate.Ptr(f < 1)
	return f, nil
}

func (s *clipping) Report(rep *aggregate.Report) {
	rep.Detail("bound", s.bound)
	rep.Detail("clipped", float64(s.clipped))
	if s.bound0().adaptive {
		rep.Detail("quantile", s.bound0().quantile)
	}
}

func (s *clipping) bound0() ClipBound { return s.NormClipping.bound }

// quantileClipStage clips by the quantile of the round's norms: every norm first, then one
// weighted sum (a Computer).
type quantileClipStage struct{ clipping }

func (s *quantileClipStage) Compute(ctx context.Context, in *aggregate.Inputs) error {
	rd, err := newRound(in, s.Name())
	if err != nil {
		return err
	}
	if err := rd.scanNorms(ctx); err != nil {
		return err
	}
	if err := rd.need(1, s.Name()); err != nil {
		return err
	}
	norms := make([]float64, len(rd.keep))
	for i, k := range rd.keep {
		norms[i] = *rd.clients[k].Diag().Norm
	}
	s.bound = quantile(norms, s.bound0().quantile)
	var clients []int
	var w []float64
	var total float64
	for i, k := range rd.keep {
		total += rd.clients[k].Weight()
		f := s.factor(norms[i])
		rd.clients[k].Diag().Clipped = aggregate.Ptr(f < 1)
		if f > 0 {
			clients = append(clients, k)
			w = append(w, rd.clients[k].Weight()*f)
		}
	}
	return in.Emit(ctx, func(out device.Output) (device.Stats, error) {
		return rd.weightedJob(ctx, clients, w, 1/total, out)
	})
}
