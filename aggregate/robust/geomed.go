package robust

import (
	"context"
	"math"

	"github.com/wattagg/wattagg/aggregate"
)

// GeometricMedian is the geometric median of the updates computed by the smoothed Weiszfeld
// algorithm of RFA (Pillutla, Kakade and Harchaoui, 2022, "Robust Aggregation for Federated
// Learning"): from the weighted mean z, repeat
//
//	β_i = α_i / max(ν, ‖z − x_i‖);  z = Σ β_i·x_i / Σ β_i
//
// until the objective g(z) = Σ α_i‖z − x_i‖ changes by less than tol·g(z) or maxIter
// iterations have run (the stopping rule of the RFA code). α are the clients' weights as
// FedAvg takes them, normalised over the clients left after updates with NaN or Inf are
// excluded. With a fraction θ < 1/2 of the weight Byzantine and the honest updates within r of
// a point μ, the geometric median lies within 2(1−θ)r/(1−2θ) of μ.
//
// Each iteration is two passes over the updates (the weighted sum, then the distances to it);
// the estimate is kept in f32 (two model-sized iterates, within the memory budget), the sums
// in each tensor's accumulator dtype and the distances in f64. The report gives the iterations
// run, the final residual |Δg|/g and objective in Details, and every client's distance to the
// result.
type GeometricMedian struct {
	nu, tol float64
	maxIter int
}

// NewGeometricMedian returns the smoothed Weiszfeld geometric median; WithSmoothing,
// WithMaxIterations and WithTolerance override the defaults.
func NewGeometricMedian(opts ...Option) (*GeometricMedian, error) {
	p, err := newParams(opts)
	if err != nil {
		return nil, err
	}
	if err := p.only("geomed", "smoothing", "max iterations", "tolerance"); err != nil {
		return nil, err
	}
	return &GeometricMedian{nu: p.nu, tol: p.tol, maxIter: p.maxIter}, nil
}

// Name is "geomed".
func (*GeometricMedian) Name() string { return "geomed" }

// Requirements: every update at once; NaN or Inf excluded; f32, f16, bf16 or i8 updates.
func (*GeometricMedian) Requirements() aggregate.Requirements { return wholeRequirements }

// Begin begins a round.
func (r *GeometricMedian) Begin(context.Context, *aggregate.Env) (aggregate.Stage, error) {
	return &geomedStage{GeometricMedian: r, residual: math.NaN()}, nil
}

type geomedStage struct {
	*GeometricMedian
	iters         int
	residual, obj float64
}

func (s *geomedStage) Report(rep *aggregate.Report) {
	for k, v := range map[string]float64{"iterations": float64(s.iters), "residual": s.residual, "objective": s.obj,
		"nu": s.nu, "tol": s.tol, "max_iter": float64(s.maxIter)} {
		rep.Detail(k, v)
	}
}

func (s *geomedStage) Compute(ctx context.Context, in *aggregate.Inputs) error {
	rd, err := newRound(in, "geomed")
	if err != nil {
		return err
	}
	// The weighted mean the iteration starts from needs finite updates: check first.
	if err := rd.scanNorms(ctx); err != nil {
		return err
	}
	if err := rd.need(1, "geomed"); err != nil {
		return err
	}
	its, free, err := rd.newIterates(2)
	if err != nil {
		return err
	}
	defer free()
	z, dist, err := s.weiszfeld(ctx, rd, its[0], its[1])
	if err != nil {
		return err
	}
	if err := rd.emitIterate(ctx, z); err != nil {
		return err
	}
	for i, k := range rd.keep {
		rd.clients[k].Diag().Distance = aggregate.Ptr(dist[i])
	}
	return nil
}

// weiszfeld runs the smoothed Weiszfeld iteration from the weighted mean, in the iterates z and
// next (taking turns), and returns the estimate and the usable clients' distances to it.
func (s *geomedStage) weiszfeld(ctx context.Context, rd *round, z, next *iterate) (*iterate, []float64, error) {
	inputs := rd.inputsOf(rd.keep)
	alpha := rd.weightsOf()
	if err := rd.sumInto(ctx, z, inputs, alpha, 1); err != nil {
		return nil, nil, err
	}
	dist, err := rd.distTo(ctx, z)
	if err != nil {
		return nil, nil, err
	}
	s.obj = objective(alpha, dist)
	beta := make([]float64, len(alpha))
	for s.iters < s.maxIter {
		if err := ctx.Err(); err != nil {
			return nil, nil, err
		}
		total := smoothedWeights(beta, alpha, dist, s.nu)
		if err := rd.sumInto(ctx, next, inputs, beta, 1/total); err != nil {
			return nil, nil, err
		}
		if dist, err = rd.distTo(ctx, next); err != nil {
			return nil, nil, err
		}
		z, next = next, z
		s.iters++
		if s.converged(alpha, dist) {
			break
		}
	}
	return z, dist, nil
}

// smoothedWeights sets β_i = α_i / max(ν, d_i) and returns Σ β_i.
func smoothedWeights(beta, alpha, dist []float64, nu float64) float64 {
	var total float64
	for i := range beta {
		beta[i] = alpha[i] / max(nu, dist[i])
		total += beta[i]
	}
	return total
}

// converged records the objective at the new estimate and the residual |Δg|/g, and reports
// whether the residual is below the tolerance.
func (s *geomedStage) converged(alpha, dist []float64) bool {
	prev := s.obj
	s.obj = objective(alpha, dist)
	s.residual = 0
	if s.obj > 0 {
		s.residual = math.Abs(prev-s.obj) / s.obj
	}
	return s.residual < s.tol
}

func objective(alpha, dist []float64) float64 {
	var g float64
	for i, a := range alpha {
		g += a * dist[i]
	}
	return g
}
