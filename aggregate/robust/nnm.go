package robust

import (
	"cmp"
	"context"
	"fmt"
	"slices"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/device"
)

// NNM is nearest-neighbour mixing before a robust rule (Allouah, Farhadkhani, Guerraoui,
// Gupta, Pinot and Stephan, 2023, "Fixing by Mixing: A Recipe for Optimal Byzantine ML under
// Heterogeneity", AISTATS): every usable update x_i is replaced by the mean of the n−f usable
// updates nearest to it in L2 (itself included), and the rule — median, trimmed mean, Krum,
// Multi-Krum or Bulyan — runs on the mixed updates. When clients' data differ (label skew),
// honest updates are far apart and f attackers at one extreme shift every coordinate-wise
// order statistic and every Krum score; after mixing, the honest updates are averages of
// mostly honest neighbours, close to each other and to their mean, and the rules' guarantees
// hold again under heterogeneity (the paper's Theorem 1). On the digits federation (10 clients,
// Dirichlet 0.5 label skew, 3 clients scaling their update by −10) the median ended at 0.855
// held-out accuracy and the median after mixing at 0.947, against 0.964 for FedAvg without
// attack (README: the federation showcase).
//
// Mixing holds n model-sized f32 vectors (within the memory budget,
// aggregate.WithMemoryBudget) and costs a Gram pass and, on a device.Mixer (the CPU), one more
// read of every update, all n mixtures summed while each block is in cache (elsewhere one
// weighted sum per mixture: n·(n−f) update reads). Clients' weights do not enter the mixing;
// per-client distances in the report are the mixed updates' distances to the result.
type NNM struct {
	inner aggregate.Rule
	f     int
}

// mixer is a stage that mixes its inputs before it computes (the stages of the rules NNM
// takes).
type mixer interface {
	aggregate.Stage
	mixWith(f int)
}

// NewNNM returns inner (a *Median, *TrimmedMean, *Krum or *Bulyan) run on the updates mixed
// over their n−f nearest neighbours, f >= 1 the Byzantine clients tolerated.
func NewNNM(inner aggregate.Rule, f int) (*NNM, error) {
	switch inner.(type) {
	case *Median, *TrimmedMean, *Krum, *Bulyan:
	default:
		name := "nil"
		if inner != nil {
			name = inner.Name()
		}
		return nil, fmt.Errorf("%w: nnm mixes the updates before median, trimmed-mean, krum, multi-krum or bulyan, not %s", aggregate.ErrOption, name)
	}
	if f < 1 {
		return nil, fmt.Errorf("%w: nnm f=%d: want f >= 1 (the Byzantine clients tolerated)", aggregate.ErrOption, f)
	}
	return &NNM{inner: inner, f: f}, nil
}

// Name is the inner rule's name with "+nnm": "median+nnm".
func (r *NNM) Name() string { return r.inner.Name() + "+nnm" }

// Requirements are the inner rule's.
func (r *NNM) Requirements() aggregate.Requirements { return r.inner.Requirements() }

// Begin begins the inner rule's round, mixing its inputs.
func (r *NNM) Begin(ctx context.Context, env *aggregate.Env) (aggregate.Stage, error) {
	st, err := r.inner.Begin(ctx, env)
	if err != nil {
		return nil, err
	}
	m, ok := st.(mixer)
	if !ok {
		return nil, fmt.Errorf("%w: %s's stage does not mix", aggregate.ErrOption, r.inner.Name())
	}
	m.mixWith(r.f)
	return m, nil
}

// mixing is the NNM parameter of a stage: 0 for none.
type mixing struct{ nnmF int }

func (m *mixing) mixWith(f int) { m.nnmF = f }

// report adds the mixing's f to a report where there was mixing.
func (m *mixing) report(rep *aggregate.Report) {
	if m.nnmF > 0 {
		rep.Detail("nnm_f", float64(m.nnmF))
	}
}

// apply mixes rd's usable updates when the stage asks for it: afterwards rd's inputs are the
// mixed ones. free gives their memory back once the rule has emitted its result.
func (m *mixing) apply(ctx context.Context, rd *round) (free func(), err error) {
	if m.nnmF == 0 {
		return func() {}, nil
	}
	if err := rd.need(m.nnmF+1, fmt.Sprintf("nnm f=%d (n > f)", m.nnmF)); err != nil {
		return nil, err
	}
	d, _, err := rd.distances(ctx) // also leaves out the updates holding NaN or Inf
	if err != nil {
		return nil, err
	}
	if err := rd.need(m.nnmF+1, fmt.Sprintf("nnm f=%d (n > f)", m.nnmF)); err != nil {
		return nil, err
	}
	n, k := len(rd.keep), len(rd.keep)-m.nnmF
	its, free, err := rd.newIterates(n)
	if err != nil {
		return nil, err
	}
	weights := make([][]float64, n) // weights[i][p]: 1/k where kept client p is among i's nearest
	for i := range n {
		weights[i] = make([]float64, n)
		for _, p := range nearestOf(d[i], k) {
			weights[i][p] = 1 / float64(k)
		}
	}
	if err := rd.mixInto(ctx, its, weights); err != nil {
		free()
		return nil, err
	}
	mixed := make(map[int][]device.Span, n)
	for i, c := range rd.keep {
		mixed[c] = its[i].spans
	}
	rd.mixed = mixed
	return free, nil
}

// mixInto computes its[i] = Σ_p weights[i][p]·x_p over the kept clients: in one pass where the
// device mixes (device.Mixer: each update read once for all outputs), else one weighted sum per
// output (the same bits).
func (r *round) mixInto(ctx context.Context, its []*iterate, weights [][]float64) error {
	inputs := r.inputsOf(r.keep)
	if mx, ok := r.in.Device().(device.Mixer); ok {
		job := &device.MixJob{Fields: its[0].fields, Inputs: inputs, Weights: weights, Chunks: its[0].chunks}
		for _, it := range its {
			job.Outputs = append(job.Outputs, it.output())
		}
		stats, err := mx.Mix(ctx, job)
		r.in.Record(stats)
		if err != nil {
			return r.in.Overflow(err)
		}
		return nil
	}
	for i, row := range weights {
		var in [][]device.Span
		var w []float64
		for p, v := range row {
			if v != 0 {
				in, w = append(in, inputs[p]), append(w, v)
			}
		}
		if err := r.sumInto(ctx, its[i], in, w, 1); err != nil {
			return err
		}
	}
	return nil
}

// nearestOf returns the positions of the k smallest squared distances in d, nearest first
// (ties by position), in position order: the neighbours' mean is then added in arrival order.
func nearestOf(d []float64, k int) []int {
	p := make([]int, len(d))
	for i := range p {
		p[i] = i
	}
	slices.SortStableFunc(p, func(a, b int) int { return cmp.Compare(d[a], d[b]) })
	p = p[:k]
	slices.Sort(p)
	return p
}
