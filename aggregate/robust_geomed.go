package aggregate

import (
	"context"
	"fmt"
	"math"
	"slices"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
)

// iterate is a model-sized f32 vector an iterative rule keeps (the geometric median's estimate,
// centered clipping's center): the only copies robust rules make, bounded by the memory budget.
type iterate struct {
	fields []device.AccField // the plan's fields with f32 output
	chunks []device.Chunk
	data   [][]byte // per field
	spans  []device.Span
}

// newIterates allocates count zeroed iterates, failing when they would not fit the memory
// budget (WithMemoryBudget).
func (r *robustRound) newIterates(count int) ([]*iterate, error) {
	params := r.plan.ref.NumParams()
	if need := int64(count) * 4 * params; need > r.cfg.memBudget {
		return nil, fmt.Errorf("%s: %w: %d model-sized f32 iterates need %d bytes, more than the memory budget of %d bytes",
			r.rule, ErrOption, count, need, r.cfg.memBudget)
	}
	fields := make([]device.AccField, len(r.plan.fields))
	offsets := make([]int64, len(fields))
	var size int64
	for t, f := range r.plan.fields {
		f.Out = tensor.F32
		fields[t] = f
		offsets[t] = size
		size += 4 * int64(f.Len)
	}
	chunks, err := device.CutChunks(fields, offsets, r.cfg.chunkBytes)
	if err != nil {
		return nil, err
	}
	its := make([]*iterate, count)
	for i := range its {
		arena := tensor.AlignedBytes(int(size))
		it := &iterate{fields: fields, chunks: chunks, data: make([][]byte, len(fields)), spans: make([]device.Span, len(fields))}
		for t, f := range fields {
			b := arena[offsets[t] : offsets[t]+4*int64(f.Len)]
			it.data[t] = b
			it.spans[t] = device.Span{DType: tensor.F32, Data: b, Scale: 1}
		}
		its[i] = it
	}
	return its, nil
}

func (it *iterate) output() device.Output {
	return &memOutput{dst: it.data, fields: it.fields, chunks: it.chunks}
}

// sumInto computes Σ_i w_i·x_i·scale over inputs (device spans, clients or iterates) into it.
func (r *robustRound) sumInto(ctx context.Context, it *iterate, inputs [][]device.Span, w []float64, scale float64) error {
	job := &device.SumJob{Fields: it.fields, Inputs: inputs, Weights: w, Scale: scale, Chunks: it.chunks, Output: it.output()}
	stats, err := r.cfg.dev.WeightedSum(ctx, job)
	r.stats = append(r.stats, stats)
	if err != nil {
		return r.overflow(err)
	}
	return nil
}

// distTo returns ‖x_k − z‖ for the usable clients, excluding first those whose norm is not
// finite (their distances are dropped: the others' do not depend on them).
func (r *robustRound) distTo(ctx context.Context, z *iterate) ([]float64, error) {
	cs := slices.Clone(r.keep)
	sq, nsq, stats, err := r.dev.SqDistances(ctx, r.plan.fields, r.inputsOf(cs), z.spans)
	r.stats = append(r.stats, stats)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", r.rule, err)
	}
	r.setNorms(cs, nsq)
	var dist []float64
	for i, k := range cs {
		if slices.Contains(r.keep, k) {
			dist = append(dist, math.Sqrt(max(0, sq[i])))
		}
	}
	return dist, nil
}

// emitIterate writes an iterate as the result, converted to the output dtypes.
func (r *robustRound) emitIterate(ctx context.Context, path string, z *iterate) (*tensor.Set, int64, error) {
	return r.emit(ctx, path, func(out device.Output) (device.Stats, error) {
		job := &device.SumJob{Fields: r.plan.fields, Inputs: [][]device.Span{z.spans}, Weights: []float64{1},
			Scale: 1, Chunks: r.plan.chunks, Output: out}
		stats, err := r.cfg.dev.WeightedSum(ctx, job)
		if err != nil {
			return stats, r.overflow(err)
		}
		return stats, nil
	})
}

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
	opts    []Option
}

var _ FileRule = (*GeometricMedian)(nil)

// NewGeometricMedian returns the smoothed Weiszfeld geometric median with smoothing nu > 0,
// at most maxIter >= 1 iterations and relative tolerance tol >= 0 on the objective.
func NewGeometricMedian(nu float64, maxIter int, tol float64, opts ...Option) (*GeometricMedian, error) {
	if !(nu > 0) || math.IsInf(nu, 0) {
		return nil, fmt.Errorf("%w: geometric-median nu %v: want a positive smoothing distance", ErrOption, nu)
	}
	if maxIter < 1 {
		return nil, fmt.Errorf("%w: geometric-median max iterations %d: want at least 1", ErrOption, maxIter)
	}
	if !(tol >= 0) || math.IsInf(tol, 0) {
		return nil, fmt.Errorf("%w: geometric-median tolerance %v: want a finite tol >= 0", ErrOption, tol)
	}
	if _, err := newConfig(opts); err != nil {
		return nil, err
	}
	return &GeometricMedian{nu: nu, tol: tol, maxIter: maxIter, opts: opts}, nil
}

// Name is "geomed".
func (*GeometricMedian) Name() string { return "geomed" }

// Aggregate computes the geometric median in memory.
func (r *GeometricMedian) Aggregate(ctx context.Context, updates []*tensor.Set, weights []float64) (*tensor.Set, *Report, error) {
	return r.run(ctx, "", updates, weights)
}

// AggregateFile writes the geometric median to path as .safetensors.
func (r *GeometricMedian) AggregateFile(ctx context.Context, path string, updates []*tensor.Set, weights []float64) (*Report, error) {
	_, rep, err := r.run(ctx, path, updates, weights)
	return rep, err
}

func (r *GeometricMedian) run(ctx context.Context, path string, updates []*tensor.Set, weights []float64) (*tensor.Set, *Report, error) {
	rd, err := newRobustRound(ctx, r.Name(), updates, weights, r.opts)
	if err != nil {
		return nil, nil, err
	}
	// The weighted mean the iteration starts from needs finite updates: check first.
	if err := rd.scanNorms(ctx); err != nil {
		return nil, nil, err
	}
	if err := rd.need(1, r.Name()); err != nil {
		return nil, nil, err
	}
	its, err := rd.newIterates(2)
	if err != nil {
		return nil, nil, err
	}
	z, next := its[0], its[1]
	inputs := rd.inputsOf(rd.keep)
	alpha := make([]float64, len(rd.keep))
	for i, k := range rd.keep {
		alpha[i] = rd.diag[k].Weight
	}
	if err := rd.sumInto(ctx, z, inputs, alpha, 1); err != nil {
		return nil, nil, err
	}
	dist, err := rd.distTo(ctx, z)
	if err != nil {
		return nil, nil, err
	}
	obj := objective(alpha, dist)
	beta := make([]float64, len(alpha))
	iters, residual := 0, math.NaN()
	for iters < r.maxIter {
		if err := ctx.Err(); err != nil {
			return nil, nil, err
		}
		var total float64
		for i := range beta {
			beta[i] = alpha[i] / max(r.nu, dist[i])
			total += beta[i]
		}
		if err := rd.sumInto(ctx, next, inputs, beta, 1/total); err != nil {
			return nil, nil, err
		}
		if dist, err = rd.distTo(ctx, next); err != nil {
			return nil, nil, err
		}
		z, next = next, z
		iters++
		prev := obj
		obj = objective(alpha, dist)
		residual = 0
		if obj > 0 {
			residual = math.Abs(prev-obj) / obj
		}
		if residual < r.tol {
			break
		}
	}
	set, written, err := rd.emitIterate(ctx, path, z)
	if err != nil {
		return nil, nil, err
	}
	for i, k := range rd.keep {
		rd.diag[k].Distance = ptr(dist[i])
	}
	details := map[string]float64{"iterations": float64(iters), "residual": residual, "objective": obj,
		"nu": r.nu, "tol": r.tol, "max_iter": float64(r.maxIter)}
	return set, rd.report(path, written, details), nil
}

func objective(alpha, dist []float64) float64 {
	var g float64
	for i, a := range alpha {
		g += a * dist[i]
	}
	return g
}
