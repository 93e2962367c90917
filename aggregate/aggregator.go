package aggregate

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/energy"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// Aggregator is streaming FedAvg: updates are added one at a time as they arrive, and memory
// stays O(model) — the running sum and nothing else — whatever their number.
//
// Add validates an update completely (layout, dtypes, finiteness) before touching the sum, so a
// rejected update leaves the aggregate exactly as it was. Result and WriteFile may be called at
// any time and do not change the sum. An Aggregator is safe for concurrent use; Adds are
// serialised (each one uses every core).
type Aggregator struct {
	cfg config

	mu       sync.Mutex
	plan     *plan
	refName  string // Source of the update that fixed the layout
	acc      device.Accumulator
	clients  int
	total    float64
	weights  []float64
	dtypes   []map[tensor.DType]bool // per tensor: dtypes seen
	bytesIn  int64
	busy     time.Duration
	addStats device.Stats
	energy   []energy.Measurement // the meters over every Add (WithMeters)
	meterErr error
}

// NewAggregator returns an empty Aggregator. The first update added fixes the layout and the
// accumulator dtypes.
func NewAggregator(opts ...Option) (*Aggregator, error) {
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	return &Aggregator{cfg: cfg}, nil
}

// Clients is the number of updates added.
func (a *Aggregator) Clients() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.clients
}

// TotalWeight is the sum of the weights added.
func (a *Aggregator) TotalWeight() float64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.total
}

// Add adds weight·u to the aggregate. Weight must be positive and finite (WeightOf reads an
// update's num_examples). Once an update is validated, its accumulation completes even if ctx
// is cancelled, so the sum is never half-updated.
func (a *Aggregator) Add(ctx context.Context, u *tensor.Set, weight float64) error {
	start := time.Now()
	who := sourceName(u, a.Clients())
	if err := checkWeight(weight, who); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()

	p, refName := a.plan, a.refName
	if p == nil {
		ref := u.Layout()
		var err error
		if p, err = newPlan(ref, func(t int) []tensor.DType { return []tensor.DType{ref[t].DType} }, a.cfg); err != nil {
			return fmt.Errorf("%s: %w", who, err)
		}
		refName = who
	}
	perm, err := p.ref.Match(u.Layout(), !a.cfg.mixed)
	if err != nil {
		return fmt.Errorf("%s: %w (as in %s)", who, err, refName)
	}
	x := make([]device.Span, len(perm))
	for t, j := range perm {
		x[t] = device.SpanOf(u.At(j))
		f := p.fields[t]
		if !x[t].DType.Real() {
			return fmt.Errorf("%s: %w: tensor %q is %s: FedAvg averages real values", who, tensor.ErrDType, f.Name, x[t].DType)
		}
		if x[t].DType == tensor.F64 && f.Acc == tensor.F32 {
			return fmt.Errorf("%s: %w: tensor %q is f64 but the aggregate accumulates it in f32", who, tensor.ErrLayoutMismatch, f.Name)
		}
	}
	if err := device.CheckFinite(p.fields, x); err != nil {
		if nf, ok := err.(*tensor.NonFiniteError); ok {
			nf.Source = who
		}
		return err
	}

	// Validated: from here on nothing fails on account of the update.
	if a.acc == nil {
		acc, err := a.cfg.dev.NewAccumulator(p.fields)
		if err != nil {
			return err
		}
		a.plan, a.refName, a.acc = p, refName, acc
		a.dtypes = make([]map[tensor.DType]bool, len(p.fields))
		for t := range a.dtypes {
			a.dtypes[t] = map[tensor.DType]bool{}
		}
	}
	win := a.cfg.startMeters()
	err = a.acc.Add(context.WithoutCancel(ctx), x, weight)
	a.meter(win)
	if err != nil {
		return err
	}
	a.clients++
	a.total += weight
	a.weights = append(a.weights, weight)
	for t := range x {
		a.dtypes[t][x[t].DType] = true
	}
	n := u.NumBytes()
	a.bytesIn += n
	a.addStats.Elements += p.ref.NumParams()
	a.addStats.BytesRead += n
	a.busy += time.Since(start)
	return nil
}

// Result returns the weighted mean of the updates added so far as a new Set.
func (a *Aggregator) Result(ctx context.Context) (*tensor.Set, *Report, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.result(ctx, time.Now())
}

// result is Result with a.mu held.
func (a *Aggregator) result(ctx context.Context, start time.Time) (*tensor.Set, *Report, error) {
	if a.clients == 0 {
		return nil, nil, ErrNoInputs
	}
	set, out, err := newResultSet(a.plan)
	if err != nil {
		return nil, nil, err
	}
	win := a.cfg.startMeters()
	stats, err := a.acc.Emit(ctx, 1/a.total, a.plan.chunks, out)
	emitted, merr := win.stop()
	if err != nil {
		return nil, nil, a.overflow(err)
	}
	if set, err = quantiseResult(set, a.plan); err != nil {
		return nil, nil, err
	}
	for k, v := range a.metadata() {
		set.Metadata[k] = v
	}
	rep := a.report(set.NumBytes(), stats, time.Since(start))
	a.account(rep, emitted, merr)
	return set, rep, nil
}

// WriteFile writes the weighted mean of the updates added so far to path as .safetensors,
// chunk by chunk (no model-sized buffer beyond the sum itself), atomically.
func (a *Aggregator) WriteFile(ctx context.Context, path string) (*Report, error) {
	start := time.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.clients == 0 {
		return nil, ErrNoInputs
	}
	if a.plan.quantised() {
		// i8 scales depend on the whole result: convert in memory first.
		set, rep, err := a.result(ctx, start)
		if err != nil {
			return nil, err
		}
		if err := safetensors.WriteFile(path, set); err != nil {
			return nil, err
		}
		rep.Output = path
		return rep, nil
	}
	w, err := safetensors.Create(path, a.plan.fileLayout(), a.metadata())
	if err != nil {
		return nil, err
	}
	win := a.cfg.startMeters()
	stats, err := writeChunks(ctx, w, a.plan, a.cfg, func(out device.Output) (device.Stats, error) {
		return a.acc.Emit(ctx, 1/a.total, a.plan.chunks, out)
	})
	emitted, merr := win.stop()
	if err != nil {
		return nil, a.overflow(err)
	}
	rep := a.report(a.plan.size, stats, time.Since(start))
	a.account(rep, emitted, merr)
	rep.Output = path
	return rep, nil
}

// overflow explains a non-finite result: every update was checked finite when added, so the
// sum or its conversion overflowed.
func (a *Aggregator) overflow(err error) error {
	if nf, ok := err.(*tensor.NonFiniteError); ok {
		return overflowError(a.plan, nf)
	}
	return err
}

// Reset empties the aggregate for a new round, keeping its layout and memory.
func (a *Aggregator) Reset() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.acc != nil {
		a.acc.Reset()
	}
	a.clients, a.total, a.weights, a.bytesIn, a.busy, a.addStats = 0, 0, nil, 0, 0, device.Stats{}
	a.energy, a.meterErr = nil, nil
	for _, m := range a.dtypes {
		clear(m)
	}
}

// Close releases the sum's memory.
func (a *Aggregator) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.acc == nil {
		return nil
	}
	err := a.acc.Close()
	a.acc, a.plan = nil, nil
	return err
}

func (a *Aggregator) metadata() map[string]string {
	m := map[string]string{}
	for k, v := range a.cfg.metadata {
		m[k] = v
	}
	m["wattagg.rule"] = "fedavg"
	m["wattagg.clients"] = strconv.Itoa(a.clients)
	return m
}

func (a *Aggregator) report(written int64, emit device.Stats, emitTime time.Duration) *Report {
	r := &Report{Rule: "fedavg", Clients: a.clients, TotalWeight: a.total, WeightsFrom: WeightsGiven,
		BytesRead: a.bytesIn, BytesWritten: written}
	a.plan.describe(r, func(t int) []tensor.DType {
		return slices.Sorted(maps.Keys(a.dtypes[t]))
	})
	r.Weights = make([]float64, len(a.weights))
	for k, w := range a.weights {
		r.Weights[k] = w / a.total
	}
	stats := a.addStats
	stats.Device = emit.Device
	stats.Add(emit)
	stats.Elements = emit.Elements
	r.finish((a.busy + emitTime).Seconds(), []device.Stats{stats})
	return r
}
