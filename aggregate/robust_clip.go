package aggregate

import (
	"context"
	"fmt"
	"math"
	"slices"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
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
			return fmt.Errorf("%w: %s quantile %v: want 0 < q <= 1", ErrOption, rule, b.quantile)
		}
	default:
		if !(b.fixed > 0) || math.IsInf(b.fixed, 0) {
			return fmt.Errorf("%w: %s bound %v: want a positive, finite L2 norm", ErrOption, rule, b.fixed)
		}
	}
	return nil
}

// of returns the bound for a round with the given norms.
func (b ClipBound) of(norms []float64) float64 {
	if !b.adaptive {
		return b.fixed
	}
	return quantile(norms, b.quantile)
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
// The norms come from the pass that checks finiteness; the mean is one more pass and streams
// to a file. The report says which clients were clipped (or zeroed), with their norms, and
// the bound in Details.
type NormClipping struct {
	zero  bool
	bound ClipBound
	opts  []Option
}

var _ FileRule = (*NormClipping)(nil)

// NewNormClipping returns norm clipping to the bound b.
func NewNormClipping(b ClipBound, opts ...Option) (*NormClipping, error) {
	return newNormClipping(false, b, opts)
}

// NewNormZeroing returns norm zeroing beyond the bound b.
func NewNormZeroing(b ClipBound, opts ...Option) (*NormClipping, error) {
	return newNormClipping(true, b, opts)
}

func newNormClipping(zero bool, b ClipBound, opts []Option) (*NormClipping, error) {
	r := &NormClipping{zero: zero, bound: b, opts: opts}
	if err := b.check(r.Name()); err != nil {
		return nil, err
	}
	if _, err := newConfig(opts); err != nil {
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

// Aggregate computes the result in memory.
func (r *NormClipping) Aggregate(ctx context.Context, updates []*tensor.Set, weights []float64) (*tensor.Set, *Report, error) {
	return r.run(ctx, "", updates, weights)
}

// AggregateFile writes the result to path as .safetensors without holding it in memory.
func (r *NormClipping) AggregateFile(ctx context.Context, path string, updates []*tensor.Set, weights []float64) (*Report, error) {
	_, rep, err := r.run(ctx, path, updates, weights)
	return rep, err
}

func (r *NormClipping) run(ctx context.Context, path string, updates []*tensor.Set, weights []float64) (*tensor.Set, *Report, error) {
	rd, err := newRobustRound(ctx, r.Name(), updates, weights, r.opts)
	if err != nil {
		return nil, nil, err
	}
	if err := rd.scanNorms(ctx); err != nil {
		return nil, nil, err
	}
	if err := rd.need(1, r.Name()); err != nil {
		return nil, nil, err
	}
	norms := make([]float64, len(rd.keep))
	for i, k := range rd.keep {
		norms[i] = *rd.diag[k].Norm
	}
	bound := r.bound.of(norms)
	var clients []int
	var w []float64
	var total float64
	count := 0
	for i, k := range rd.keep {
		total += rd.weights[k]
		c := 1.0
		if norms[i] > bound {
			count++
			c = 0
			if !r.zero {
				c = bound / norms[i]
			}
		}
		rd.diag[k].Clipped = ptr(c < 1)
		if c > 0 {
			clients = append(clients, k)
			w = append(w, rd.weights[k]*c)
		}
	}
	set, written, err := rd.emit(ctx, path, func(out device.Output) (device.Stats, error) {
		return rd.weightedJob(ctx, clients, w, 1/total, out)
	})
	if err != nil {
		return nil, nil, err
	}
	details := map[string]float64{"bound": bound, "clipped": float64(count)}
	if r.bound.adaptive {
		details["quantile"] = r.bound.quantile
	}
	return set, rd.report(path, written, details), nil
}
