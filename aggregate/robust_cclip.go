package aggregate

import (
	"context"
	"fmt"
	"math"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
)

// CenteredClipping is centered clipping (Karimireddy, He and Jaggi, 2021, "Learning from
// History for Byzantine Robust Optimization"): from a center v (the previous round's aggregate
// or momentum, or zero), repeat L times
//
//	v = v + (1/n) Σ_i (x_i − v)·min(1, τ/‖x_i − v‖)
//
// Weights are ignored (every client counts 1/n, as in the paper); n counts the clients left
// after updates with NaN or Inf are excluded. Each step moves v by at most τ, and the f
// Byzantine clients move it by at most f·τ/n: when no honest update is clipped, one step
// lands within f·τ/n of v + (n_h/n)(x̄_h − v), x̄_h the honest mean.
//
// Each iteration is two passes over the updates (the distances to v, then the clipped sum),
// plus one for the distances to the result that the report gives; v is kept in f32 (two
// model-sized iterates, within the memory budget).
type CenteredClipping struct {
	tau    float64
	iters  int
	center *tensor.Set
	opts   []Option
}

var _ FileRule = (*CenteredClipping)(nil)

// NewCenteredClipping returns centered clipping with radius tau > 0 and iters >= 1 iterations,
// starting from center (nil: from zero). The center must have the updates' tensors and shapes.
func NewCenteredClipping(tau float64, iters int, center *tensor.Set, opts ...Option) (*CenteredClipping, error) {
	if !(tau > 0) || math.IsInf(tau, 0) {
		return nil, fmt.Errorf("%w: centered-clip tau %v: want a positive, finite clipping radius", ErrOption, tau)
	}
	if iters < 1 {
		return nil, fmt.Errorf("%w: centered-clip iterations %d: want at least 1", ErrOption, iters)
	}
	if center != nil {
		if err := center.CheckFinite(); err != nil {
			return nil, fmt.Errorf("%w: centered-clip center: %w", ErrOption, err)
		}
	}
	if _, err := newConfig(opts); err != nil {
		return nil, err
	}
	return &CenteredClipping{tau: tau, iters: iters, center: center, opts: opts}, nil
}

// Name is "centered-clip".
func (*CenteredClipping) Name() string { return "centered-clip" }

// Aggregate computes the result in memory.
func (r *CenteredClipping) Aggregate(ctx context.Context, updates []*tensor.Set, weights []float64) (*tensor.Set, *Report, error) {
	return r.run(ctx, "", updates, weights)
}

// AggregateFile writes the result to path as .safetensors.
func (r *CenteredClipping) AggregateFile(ctx context.Context, path string, updates []*tensor.Set, weights []float64) (*Report, error) {
	_, rep, err := r.run(ctx, path, updates, weights)
	return rep, err
}

func (r *CenteredClipping) run(ctx context.Context, path string, updates []*tensor.Set, weights []float64) (*tensor.Set, *Report, error) {
	rd, err := newRobustRound(ctx, r.Name(), updates, weights, r.opts)
	if err != nil {
		return nil, nil, err
	}
	if err := rd.need(1, r.Name()); err != nil {
		return nil, nil, err
	}
	its, err := rd.newIterates(2)
	if err != nil {
		return nil, nil, err
	}
	v, next := its[0], its[1]
	if r.center != nil {
		perm, err := rd.plan.ref.Match(r.center.Layout(), false)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: center: %w", rd.rule, err)
		}
		c := make([]device.Span, len(perm))
		for t, j := range perm {
			c[t] = device.SpanOf(r.center.At(j))
			if !c[t].DType.Real() {
				return nil, nil, fmt.Errorf("%s: center: %w: tensor %q is %s", rd.rule, tensor.ErrDType, rd.plan.fields[t].Name, c[t].DType)
			}
		}
		if err := rd.sumInto(ctx, v, [][]device.Span{c}, []float64{1}, 1); err != nil {
			return nil, nil, err
		}
	}
	// The first distances also give the norms, which exclude non-finite updates before any
	// of them reaches v.
	var n int
	var inputs [][]device.Span
	var clipped []bool
	for it := range r.iters {
		dist, err := rd.distTo(ctx, v)
		if err != nil {
			return nil, nil, err
		}
		if it == 0 {
			if err := rd.need(1, r.Name()); err != nil {
				return nil, nil, err
			}
			n = len(rd.keep)
			inputs = rd.inputsOf(rd.keep)
			clipped = make([]bool, n)
		}
		// v' = Σ (c_i/n)·x_i + (1 − Σ c_i/n)·v: one weighted sum, v among the inputs.
		w := make([]float64, 0, n+1)
		in := make([][]device.Span, 0, n+1)
		var s float64
		for i, d := range dist {
			c := 1.0
			if d > r.tau {
				c = r.tau / d
				clipped[i] = true
			}
			if u := c / float64(n); u > 0 {
				w = append(w, u)
				in = append(in, inputs[i])
				s += u
			}
		}
		if rest := 1 - s; rest > 1e-12 {
			w = append(w, rest)
			in = append(in, v.spans)
		}
		if err := rd.sumInto(ctx, next, in, w, 1); err != nil {
			return nil, nil, err
		}
		v, next = next, v
	}
	dist, err := rd.distTo(ctx, v)
	if err != nil {
		return nil, nil, err
	}
	set, written, err := rd.emitIterate(ctx, path, v)
	if err != nil {
		return nil, nil, err
	}
	count := 0
	for i, k := range rd.keep {
		rd.diag[k].Distance = ptr(dist[i])
		rd.diag[k].Clipped = ptr(clipped[i])
		if clipped[i] {
			count++
		}
	}
	details := map[string]float64{"tau": r.tau, "iterations": float64(r.iters), "clipped": float64(count)}
	if r.center == nil {
		details["center_zero"] = 1
	}
	return set, rd.report(path, written, details), nil
}
