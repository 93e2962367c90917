package robust

import (
	"context"
	"fmt"
	"math"

	"github.com/wattagg/wattagg/aggregate"
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
}

// NewCenteredClipping returns centered clipping with radius tau > 0; WithIterations (default 1)
// and WithCenter (default zero) set the rest.
func NewCenteredClipping(tau float64, opts ...Option) (*CenteredClipping, error) {
	if !(tau > 0) || math.IsInf(tau, 0) {
		return nil, fmt.Errorf("%w: centered-clip tau %v: want a positive, finite clipping radius", aggregate.ErrOption, tau)
	}
	p, err := newParams(opts)
	if err != nil {
		return nil, err
	}
	if err := p.only("centered-clip", "iterations", "center"); err != nil {
		return nil, err
	}
	return &CenteredClipping{tau: tau, iters: p.its, center: p.center}, nil
}

// Name is "centered-clip".
func (*CenteredClipping) Name() string { return "centered-clip" }

// Requirements: every update at once; NaN or Inf excluded; f32, f16, bf16 or i8 updates.
func (*CenteredClipping) Requirements() aggregate.Requirements { return wholeRequirements }

// Begin begins a round.
func (r *CenteredClipping) Begin(context.Context, *aggregate.Env) (aggregate.Stage, error) {
	return &cclipStage{CenteredClipping: r}, nil
}

type cclipStage struct {
	*CenteredClipping
	clipped int
}

func (s *cclipStage) Report(rep *aggregate.Report) {
	rep.Detail("tau", s.tau)
	rep.Detail("iterations", float64(s.iters))
	rep.Detail("clipped", float64(s.clipped))
	if s.center == nil {
		rep.Detail("center_zero", 1)
	}
}

func (s *cclipStage) Compute(ctx context.Context, in *aggregate.Inputs) error {
	rd, err := newRound(in, "centered-clip")
	if err != nil {
		return err
	}
	if err := rd.need(1, rd.rule); err != nil {
		return err
	}
	its, free, err := rd.newIterates(2)
	if err != nil {
		return err
	}
	defer free()
	v, next := its[0], its[1]
	if s.center != nil {
		if err := rd.startFrom(ctx, v, s.center); err != nil {
			return err
		}
	}
	// The first distances also give the norms, which exclude non-finite updates before any
	// of them reaches v.
	var inputs [][]device.Span
	var clipped []bool
	for it := range s.iters {
		dist, err := rd.distTo(ctx, v)
		if err != nil {
			return err
		}
		if it == 0 {
			if err := rd.need(1, rd.rule); err != nil {
				return err
			}
			inputs = rd.inputsOf(rd.keep)
			clipped = make([]bool, len(rd.keep))
		}
		if err := s.step(ctx, rd, v, next, inputs, dist, clipped); err != nil {
			return err
		}
		v, next = next, v
	}
	dist, err := rd.distTo(ctx, v)
	if err != nil {
		return err
	}
	if err := rd.emitIterate(ctx, v); err != nil {
		return err
	}
	for i, k := range rd.keep {
		rd.clients[k].Diag().Distance = aggregate.Ptr(dist[i])
		rd.clients[k].Diag().Clipped = aggregate.Ptr(clipped[i])
		if clipped[i] {
			s.clipped++
		}
	}
	return nil
}

// step computes one iteration into next: v' = Σ (c_i/n)·x_i + (1 − Σ c_i/n)·v, one weighted
// sum with v among the inputs, c_i = min(1, τ/‖x_i − v‖); it marks the clients it clipped.
func (s *cclipStage) step(ctx context.Context, rd *round, v, next *iterate, inputs [][]device.Span, dist []float64, clipped []bool) error {
	n := len(inputs)
	w := make([]float64, 0, n+1)
	xs := make([][]device.Span, 0, n+1)
	var sum float64
	for i, d := range dist {
		c := 1.0
		if d > s.tau {
			c = s.tau / d
			clipped[i] = true
		}
		if u := c / float64(n); u > 0 {
			w = append(w, u)
			xs = append(xs, inputs[i])
			sum += u
		}
	}
	if rest := 1 - sum; rest > 1e-12 {
		w = append(w, rest)
		xs = append(xs, v.spans)
	}
	return rd.sumInto(ctx, next, xs, w, 1)
}

// startFrom copies the center into v, matched to the round's tensors.
func (r *round) startFrom(ctx context.Context, v *iterate, center *tensor.Set) error {
	perm, err := r.in.Layout().Match(center.Layout(), false)
	if err != nil {
		return fmt.Errorf("%s: center: %w", r.rule, err)
	}
	c := make([]device.Span, len(perm))
	for t, j := range perm {
		c[t] = device.SpanOf(center.At(j))
		if !c[t].DType.Real() {
			return fmt.Errorf("%s: center: %w: tensor %q is %s", r.rule, tensor.ErrDType, center.At(j).Name, c[t].DType)
		}
	}
	return r.sumInto(ctx, v, [][]device.Span{c}, []float64{1}, 1)
}
