package robust

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
)

// requirements of the rules that need every update at once.
var wholeRequirements = aggregate.Requirements{
	Kind:             aggregate.KindWhole,
	ExcludeNonFinite: true,
	DTypes:           []tensor.DType{tensor.F32, tensor.F16, tensor.BF16, tensor.I8},
}

// round is one robust rule's computation over a round's inputs: the clients it may still use
// and the device work. Robust rules work on the updates where they are (device spans of mapped
// files or memory, never copies), coordinate block by coordinate block.
type round struct {
	in      *aggregate.Inputs
	rule    string
	dev     device.Robust
	clients []*aggregate.Client
	keep    []int                 // the clients the rule uses, by index, in arrival order
	mixed   map[int][]device.Span // NNM: the mixed update of each kept client (nnm.go)
}

func newRound(in *aggregate.Inputs, rule string) (*round, error) {
	rd, ok := in.Device().(device.Robust)
	if !ok {
		return nil, fmt.Errorf("%s: %w: device %s has no robust operations", rule, device.ErrUnsupported, in.Device().Name())
	}
	r := &round{in: in, rule: rule, dev: rd, clients: in.Clients()}
	for k, c := range r.clients {
		if c.Excluded() == "" {
			r.keep = append(r.keep, k)
		}
	}
	return r, nil
}

// weightsOf is the weight of each kept client as a share of the kept clients' weights (the
// weights FedAvg would apply to them).
func (r *round) weightsOf() []float64 {
	var total float64
	for _, k := range r.keep {
		total += r.clients[k].Weight()
	}
	w := make([]float64, len(r.keep))
	for i, k := range r.keep {
		w[i] = r.clients[k].Weight() / total
	}
	return w
}

// scanNorms computes every usable update's norm in one pass and excludes the non-finite ones:
// for the rules that need the norms (or finite updates) before anything else.
func (r *round) scanNorms(ctx context.Context) error {
	red, err := r.in.Reducer()
	if err != nil {
		return err
	}
	cs := slices.Clone(r.keep)
	sq, st, err := red.SqNorms(ctx, r.in.Fields(), r.inputsOf(cs), nil)
	r.in.Record(st)
	if err != nil {
		return fmt.Errorf("%s: %w", r.rule, err)
	}
	for i := range sq {
		n := math.Sqrt(sq[i])
		sq[i] = n * n // as the rules have always rounded the norms they report and clip by
	}
	r.setNorms(cs, sq)
	return nil
}

// setNorms records the squared norms of the given clients and excludes those that are not
// finite. It returns how many it excluded.
func (r *round) setNorms(clients []int, sq []float64) int {
	excluded := 0
	for i, k := range clients {
		if v := sq[i]; math.IsNaN(v) || math.IsInf(v, 0) {
			r.exclude(k)
			excluded++
			continue
		}
		r.clients[k].Diag().Norm = aggregate.Ptr(math.Sqrt(sq[i]))
	}
	return excluded
}

// exclude leaves client k out of the round, saying where its first NaN or Inf is.
func (r *round) exclude(k int) {
	c := r.clients[k]
	reason := "its norm overflows" // unreachable for the dtypes robust rules take
	if red, err := r.in.Reducer(); err == nil {
		if err := red.CheckFinite(context.Background(), r.in.Fields(), c.Spans()); err != nil {
			reason = err.Error()
		}
	}
	*c.Diag() = aggregate.ClientDiag{Source: c.Source}
	c.Exclude(reason)
	r.keep = slices.DeleteFunc(r.keep, func(i int) bool { return i == k })
}

// errRetry stops an emit whose job ran with clients found non-finite on the way: the result is
// discarded (a file is aborted) and the rule runs again without them.
var errRetry = errors.New("non-finite clients found: run again without them")

// need fails unless at least min clients are usable.
func (r *round) need(min int, why string) error {
	if len(r.keep) >= min {
		return nil
	}
	excluded := len(r.clients) - len(r.keep)
	return fmt.Errorf("%s: %w: %s needs at least %d clients, have %d (%d excluded for NaN or Inf)",
		r.rule, aggregate.ErrTooFewClients, why, min, len(r.keep), excluded)
}

// inputsOf returns the device spans of the given clients (their mixed updates after NNM).
func (r *round) inputsOf(clients []int) [][]device.Span {
	x := make([][]device.Span, len(clients))
	for i, k := range clients {
		if m, ok := r.mixed[k]; ok {
			x[i] = m
		} else {
			x[i] = r.clients[k].Spans()
		}
	}
	return x
}

// progress reports a pass over the given clients.
func (r *round) progress(clients []int) func(int64) {
	cs := make([]*aggregate.Client, len(clients))
	for i, k := range clients {
		cs[i] = r.clients[k]
	}
	return r.in.Progress(cs)
}

// selectJob runs an order statistic of the given clients into out, with their distances to the
// result and their norms (nil slices: not wanted).
func (r *round) selectJob(ctx context.Context, op device.SelectOp, k int, clients []int, out device.Output, sqDist, sqNorm []float64) (device.Stats, error) {
	job := &device.SelectJob{
		Fields:   r.in.Fields(),
		Inputs:   r.inputsOf(clients),
		Op:       op,
		K:        k,
		Chunks:   r.in.Chunks(),
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
// that enough remain. It returns the clients it ran on.
func (r *round) selectRound(ctx context.Context, op device.SelectOp, clients func() []int, k func(n int) int, need func() error) ([]int, error) {
	for {
		if err := need(); err != nil {
			return nil, err
		}
		cs := clients()
		sq, nsq := make([]float64, len(cs)), make([]float64, len(cs))
		err := r.in.Emit(ctx, func(out device.Output) (device.Stats, error) {
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
				return stats, r.in.Overflow(err)
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
			return nil, err
		}
		r.setDistances(cs, sq)
		return cs, nil
	}
}

// weightedJob runs Σ_i w_i·x_i·scale over the given clients into out (the device's blocked
// weighted sum, in each tensor's accumulator dtype).
func (r *round) weightedJob(ctx context.Context, clients []int, w []float64, scale float64, out device.Output) (device.Stats, error) {
	job := &device.SumJob{
		Fields:   r.in.Fields(),
		Inputs:   r.inputsOf(clients),
		Weights:  w,
		Scale:    scale,
		Chunks:   r.in.Chunks(),
		Output:   out,
		Progress: r.progress(clients),
	}
	stats, err := r.in.Device().WeightedSum(ctx, job)
	if err != nil {
		return stats, r.in.Overflow(err)
	}
	return stats, nil
}

// setDistances records the distance of each of the given clients to the aggregate from squared
// distances (rounding can leave a tiny negative square, which is 0).
func (r *round) setDistances(clients []int, sq []float64) {
	for i, k := range clients {
		r.clients[k].Diag().Distance = aggregate.Ptr(math.Sqrt(max(0, sq[i])))
	}
}
