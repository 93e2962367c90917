package aggregate

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// ErrTooFewClients reports a round with fewer usable clients than a robust rule's parameters
// need (Krum: n > 2f+2; Bulyan: n >= 4f+3), counting only the clients left after those with
// non-finite updates were excluded.
var ErrTooFewClients = errors.New("too few clients")

// robustRound is one round of a robust rule: the validated batch, the clients the rule may use
// (those whose updates are finite), what the rule saw of each client, and the device work done
// so far. Robust rules work on the updates where they are (device spans of mapped files or
// memory, never copies), coordinate block by coordinate block.
//
// A client whose update holds a NaN or Inf is excluded, not an error: robust rules exist to
// survive Byzantine clients. Rather than a separate scan, each rule detects such clients from
// a sum of squares its first pass computes anyway (the norms the coordinate-wise jobs take
// beside the result, the Gram matrix's diagonal, the distances of centered clipping): for f32,
// f16, bf16 and i8 values a sum of squares in f64 is finite exactly when every value is.
type robustRound struct {
	*batch
	rule  string
	dev   device.Robust
	keep  []int        // the clients the rule uses, in input order
	diag  []ClientDiag // per client, in input order
	start time.Time
	stats []device.Stats
	meter *meterWindow
}

// newRobustRound validates the updates as FedAvg does (layout, dtypes, weights); every client
// is usable until excluded.
func newRobustRound(ctx context.Context, rule string, updates []*tensor.Set, weights []float64, opts []Option) (*robustRound, error) {
	start := time.Now()
	b, err := prepare(ctx, updates, weights, opts)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", rule, err)
	}
	rd, ok := b.cfg.dev.(device.Robust)
	if !ok {
		return nil, fmt.Errorf("%s: %w: device %s has no robust operations", rule, device.ErrUnsupported, b.cfg.dev.Name())
	}
	for t, f := range b.plan.fields {
		for k, in := range b.inputs {
			if in[t].DType == tensor.F64 {
				return nil, fmt.Errorf("%s: %s: %w: tensor %q is f64: robust rules take f32, f16, bf16 and i8 updates",
					rule, sourceName(updates[k], k), tensor.ErrDType, f.Name)
			}
		}
	}
	r := &robustRound{batch: b, rule: rule, dev: rd, start: start, diag: make([]ClientDiag, len(updates))}
	for k := range updates {
		r.diag[k].Source = sourceName(updates[k], k)
		r.keep = append(r.keep, k)
	}
	r.settleWeights()
	r.meter = b.cfg.startMeters()
	return r, nil
}

// scanNorms computes every usable update's norm in one pass on all cores and excludes the
// non-finite ones: for the rules that need the norms (or finite updates) before anything else.
func (r *robustRound) scanNorms(ctx context.Context) error {
	sets := make([]*tensor.Set, len(r.keep))
	for i, k := range r.keep {
		sets[i] = r.updates[k]
	}
	norms, err := Norms(ctx, sets)
	if err != nil {
		return fmt.Errorf("%s: %w", r.rule, err)
	}
	for i := range norms {
		norms[i] *= norms[i]
	}
	r.setNorms(slices.Clone(r.keep), norms)
	return nil
}

// setNorms records the squared norms of the given clients and excludes those that are not
// finite. It returns how many it excluded.
func (r *robustRound) setNorms(clients []int, sq []float64) int {
	excluded := 0
	for i, k := range clients {
		if v := sq[i]; math.IsNaN(v) || math.IsInf(v, 0) {
			r.exclude(k)
			excluded++
			continue
		}
		r.diag[k].Norm = ptr(math.Sqrt(sq[i]))
	}
	return excluded
}

// exclude leaves client k out of the round, saying where its first NaN or Inf is.
func (r *robustRound) exclude(k int) {
	r.diag[k] = ClientDiag{Source: r.diag[k].Source, Excluded: nonFiniteReason(r.plan.fields, r.inputs[k])}
	r.keep = slices.DeleteFunc(r.keep, func(i int) bool { return i == k })
	r.settleWeights()
}

// settleWeights sets every usable client's weight to its share of the usable clients' weights
// (the weights FedAvg would apply to them), and the excluded ones' to 0.
func (r *robustRound) settleWeights() {
	var total float64
	for _, k := range r.keep {
		total += r.weights[k]
	}
	for k := range r.diag {
		r.diag[k].Weight = 0
	}
	for _, k := range r.keep {
		r.diag[k].Weight = r.weights[k] / total
	}
}

// errRetry stops an emit whose job ran with clients found non-finite on the way: the result
// is discarded (a file is aborted) and the rule runs again without them.
var errRetry = errors.New("non-finite clients found: run again without them")

// nonFiniteReason names the first NaN or Inf of an update.
func nonFiniteReason(fields []device.AccField, x []device.Span) string {
	if err := device.CheckFinite(fields, x); err != nil {
		return err.Error()
	}
	return "its norm overflows" // unreachable for the dtypes robust rules take
}

func ptr[T any](v T) *T { return &v }

// need fails unless at least min clients are usable.
func (r *robustRound) need(min int, why string) error {
	if len(r.keep) >= min {
		return nil
	}
	excluded := len(r.updates) - len(r.keep)
	return fmt.Errorf("%s: %w: %s needs at least %d clients, have %d (%d excluded for NaN or Inf)",
		r.rule, ErrTooFewClients, why, min, len(r.keep), excluded)
}

// inputsOf returns the device spans of the given clients.
func (r *robustRound) inputsOf(clients []int) [][]device.Span {
	x := make([][]device.Span, len(clients))
	for i, k := range clients {
		x[i] = r.inputs[k]
	}
	return x
}

// bytesOf is the input bytes of the given clients.
func (r *robustRound) bytesOf(clients []int) int64 {
	var n int64
	for _, k := range clients {
		n += r.updates[k].NumBytes()
	}
	return n
}

// progress wraps the configured progress callback for a job over the given clients.
func (r *robustRound) progress(clients []int) func(int64) {
	fn := r.cfg.progress
	if fn == nil {
		return nil
	}
	total := r.bytesOf(clients)
	var done atomic.Int64 // jobs report from several goroutines
	return func(n int64) { fn(done.Add(n), total) }
}

// metadata is what the output carries: the caller's metadata and how it was made.
func (r *robustRound) metadata() map[string]string {
	m := map[string]string{}
	for k, v := range r.cfg.metadata {
		m[k] = v
	}
	m["wattagg.rule"] = r.rule
	m["wattagg.clients"] = strconv.Itoa(len(r.keep))
	if ex := len(r.updates) - len(r.keep); ex > 0 {
		m["wattagg.excluded"] = strconv.Itoa(ex)
	}
	return m
}

// emit runs compute (a device job writing the result to an Output, chunk by chunk) into a new
// Set (path "") or into the file at path, written as WeightedMeanFile writes: pipelined, atomic,
// nothing left behind on error. It returns the Set (nil for a file) and the bytes written.
func (r *robustRound) emit(ctx context.Context, path string, compute func(device.Output) (device.Stats, error)) (*tensor.Set, int64, error) {
	inMemory := func() (*tensor.Set, error) {
		set, out, err := r.output()
		if err != nil {
			return nil, err
		}
		stats, err := compute(out)
		r.stats = append(r.stats, stats)
		if err != nil {
			return nil, err
		}
		if set, err = quantiseResult(set, r.plan); err != nil {
			return nil, err
		}
		for k, v := range r.metadata() {
			set.Metadata[k] = v
		}
		return set, nil
	}
	switch {
	case path == "":
		set, err := inMemory()
		if err != nil {
			return nil, 0, err
		}
		return set, set.NumBytes(), nil
	case r.plan.quantised():
		// i8 scales depend on the whole result: compute it in memory first.
		set, err := inMemory()
		if err != nil {
			return nil, 0, err
		}
		if err := safetensors.WriteFile(path, set); err != nil {
			return nil, 0, err
		}
		return nil, set.NumBytes(), nil
	}
	w, err := safetensors.Create(path, r.plan.fileLayout(), r.metadata())
	if err != nil {
		return nil, 0, err
	}
	stats, err := writeChunks(ctx, w, r.plan, r.cfg, compute)
	r.stats = append(r.stats, stats)
	if err != nil {
		return nil, 0, err
	}
	return nil, r.plan.size, nil
}

// overflow explains a non-finite result of finite inputs (a trimmed mean beyond the f32 range,
// an output dtype too narrow for the aggregate).
func (r *robustRound) overflow(err error) error {
	var nf *tensor.NonFiniteError
	if !errors.As(err, &nf) || nf.Source != "" {
		return err
	}
	return fmt.Errorf("%s: %w", r.rule, overflowError(r.plan, nf))
}

// selectJob runs an order statistic of the given clients into out, with their distances to the
// result and their norms (nil slices: not wanted).
func (r *robustRound) selectJob(ctx context.Context, op device.SelectOp, k int, clients []int, out device.Output, sqDist, sqNorm []float64) (device.Stats, error) {
	job := &device.SelectJob{
		Fields:   r.plan.fields,
		Inputs:   r.inputsOf(clients),
		Op:       op,
		K:        k,
		Chunks:   r.plan.chunks,
		Output:   out,
		SqDist:   sqDist,
		SqNorm:   sqNorm,
		Progress: r.progress(clients),
	}
	return r.dev.Select(ctx, job)
}

// selectRound runs an order statistic over clients(): optimistically on every usable client,
// and again without those the job found non-finite (their norms are not finite, or the result
// is not: then a scan finds them). k gives the job's K for the clients it runs on; need checks
// that enough remain. It returns the result, the bytes written and the clients it ran on.
func (r *robustRound) selectRound(ctx context.Context, path string, op device.SelectOp, clients func() []int, k func(n int) int,
	need func() error) (*tensor.Set, int64, []int, error) {
	for {
		if err := need(); err != nil {
			return nil, 0, nil, err
		}
		cs := clients()
		sq, nsq := make([]float64, len(cs)), make([]float64, len(cs))
		set, written, err := r.emit(ctx, path, func(out device.Output) (device.Stats, error) {
			stats, err := r.selectJob(ctx, op, k(len(cs)), cs, out, sq, nsq)
			var nf *tensor.NonFiniteError
			switch {
			case errors.As(err, &nf):
				// A NaN or Inf input can make the result non-finite before the norms are
				// complete: scan the inputs; if all are finite, the result overflowed.
				before := len(r.keep)
				if serr := r.scanNorms(ctx); serr != nil {
					return stats, serr
				}
				if len(r.keep) < before {
					return stats, errRetry
				}
				return stats, r.overflow(err)
			case err != nil:
				return stats, err
			}
			if r.setNorms(cs, nsq) > 0 {
				return stats, errRetry
			}
			return stats, nil
		})
		if errors.Is(err, errRetry) {
			continue
		}
		if err != nil {
			return nil, 0, nil, err
		}
		r.setDistances(cs, sq)
		return set, written, cs, nil
	}
}

// weightedJob runs Σ_i w_i·x_i·scale over the given clients into out (the CPU's blocked
// weighted sum, in each tensor's accumulator dtype).
func (r *robustRound) weightedJob(ctx context.Context, clients []int, w []float64, scale float64, out device.Output) (device.Stats, error) {
	job := &device.SumJob{
		Fields:   r.plan.fields,
		Inputs:   r.inputsOf(clients),
		Weights:  w,
		Scale:    scale,
		Chunks:   r.plan.chunks,
		Output:   out,
		Progress: r.progress(clients),
	}
	stats, err := r.cfg.dev.WeightedSum(ctx, job)
	if err != nil {
		return stats, r.overflow(err)
	}
	return stats, nil
}

// report assembles the round's report: the batch's figures (bytes read are the input bytes,
// once, whatever the number of passes the rule made), the weights the rule saw, per-client
// diagnostics and the rule's own details.
func (r *robustRound) report(path string, written int64, details map[string]float64) *Report {
	rep := r.batch.report(written)
	rep.Rule = r.rule
	rep.Output = path
	for k := range rep.Weights {
		rep.Weights[k] = r.diag[k].Weight
	}
	rep.PerClient = r.diag
	if details == nil {
		details = map[string]float64{}
	}
	details["excluded"] = float64(len(r.updates) - len(r.keep))
	rep.Details = details
	rep.finish(time.Since(r.start).Seconds(), perDevice(r.stats))
	ms, merr := r.meter.stop()
	rep.setEnergy(ms, merr, nil, nil)
	return rep
}

// setDistances records the distance of each of the given clients to the aggregate from squared
// distances (rounding can leave a tiny negative square, which is 0).
func (r *robustRound) setDistances(clients []int, sq []float64) {
	for i, k := range clients {
		r.diag[k].Distance = ptr(math.Sqrt(max(0, sq[i])))
	}
}

// perDevice sums the stats of the round's passes device by device, in order of first use: the
// report has one share per device, not one per pass.
func perDevice(stats []device.Stats) []device.Stats {
	var out []device.Stats
	for _, st := range stats {
		i := slices.IndexFunc(out, func(o device.Stats) bool { return o.Device == st.Device })
		if i < 0 {
			out = append(out, device.Stats{Device: st.Device})
			i = len(out) - 1
		}
		out[i].Add(st)
	}
	return out
}
