package aggregate

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
)

// The sums: FedAvg, the server optimizers, the private means, fixed-bound clipping and the
// secure sum compute
//
//	result = (Σ_k a_k·x_k + b·x_t) / D,   a_k = w_k·f_k
//
// with w_k the client's weight, f_k the product of the weighers' factors (clipping), x_t the
// global model (when the rule has one), D the denominator (the total weight, or a count), and
// b = D − Σ a_k so that the result is the new model x_t + Δ, or b = −Σ a_k when a later stage
// consumes the averaged delta Δ itself (a server optimizer). A mod-sum adds u32 updates modulo
// 2^32 instead.
//
// A batch (WithRetainedUpdates) runs one device job over every update at the close, placed by
// the planner. An incremental round adds each update to an accumulator on arrival, already
// multiplied by 1/D when the round knows D in advance (WithExpected), and adds x_t last: every
// element then sees the same operations in the same order as in the batch job, so the two give
// the same bits.

// sumState is a sum's progress.
type sumState struct {
	deferred bool               // batch: the clients' spans are kept and summed at the close
	acc      device.Accumulator // incremental: the running sum
	accDev   string
	pre      float64 // what every a_k was multiplied by when added (1, or 1/D expected)
	preD     float64 // the denominator pre was computed from (0: none)

	inputs  [][]device.Span // deferred: the spans of the clients with a_k ≠ 0
	names   []string        // deferred: their sources
	a       []float64       // deferred: their a_k
	sumA    float64         // Σ a_k over the counted clients, in arrival order
	weight  float64         // Σ w_k over the counted clients
	n       int             // counted clients
	globalB bool            // incremental: b·x_t has been added
	exact   *exactTotals    // exact sums: Σ w_k and Σ a_k exactly (exact.go); a holds unscaled weights
}

// addToSum adds an admitted client: counts it, and adds a_k·x_k to the running sum (or keeps it
// for the batch job).
func (r *Round) addToSum(ctx context.Context, c *Client) error {
	s := r.sum
	a, err := r.term(c)
	if err != nil {
		return err
	}
	if a != 0 {
		if s.deferred {
			s.inputs = append(s.inputs, c.spans)
			s.names = append(s.names, c.Source)
			s.a = append(s.a, a)
		} else {
			if err := r.ensureAccumulator(ctx, c); err != nil {
				return err
			}
			if err := r.addSpans(ctx, []*Client{c}, []float64{a * s.pre}); err != nil {
				return err
			}
		}
	}
	r.summed(c, a)
	return nil
}

// term is a_k, what client c's update is weighed by in the sum: its weight times its stages'
// factor (an exact sum's capped weight, exact.go), 0 for an excluded client.
func (r *Round) term(c *Client) (float64, error) {
	if c.excluded != "" {
		return 0, nil
	}
	if r.exactSum() {
		return r.exactWeight(c)
	}
	return c.weight * c.factor, nil
}

// summed counts client c, whose a·x_c the sum now holds (or keeps for the batch job).
func (r *Round) summed(c *Client, a float64) {
	s := r.sum
	if c.excluded != "" {
		return
	}
	if a != 0 && !s.deferred {
		r.acct.addElements(s.accDev, r.plan.ref.NumParams(), c.bytes)
	}
	if r.exactSum() {
		s.exactTotals().add(r.weights.unscaled(c.weight), a)
	}
	s.sumA += a
	s.weight += c.weight
	s.n++
	if !s.deferred {
		r.progressAdd(c.bytes)
	}
}

// addSpans adds ws[i]·cs[i] to the accumulator, in one pass where the device can
// (device.GroupAccumulator), checking the values while adding where the round does
// (WithFailFast): an update found non-finite midway has been partly added, so the refusal,
// blamed on it, breaks the round.
func (r *Round) addSpans(ctx context.Context, cs []*Client, ws []float64) error {
	acc := r.sum.acc
	if r.pieces != nil { // pieces of arriving updates are being added: take the whole sum
		unlock := r.pieces.lockAll()
		defer unlock()
	}
	check := r.checksOnAdd()
	ga, ok := acc.(device.GroupAccumulator)
	if !ok { // one by one, scanned first where the round checks
		for i, c := range cs {
			if check {
				if err := r.checkFinite(ctx, c.layout, c.spans); err != nil {
					return c.blame(err)
				}
			}
			if err := acc.Add(ctx, c.spans, ws[i]); err != nil {
				return err
			}
		}
		return nil
	}
	xs := make([][]device.Span, len(cs))
	for i, c := range cs {
		xs[i] = c.spans
	}
	err := ga.AddGroup(ctx, xs, ws, check)
	var ie *device.InputError
	if errors.As(err, &ie) {
		err = cs[ie.Input].blame(ie.Err)
		r.state, r.broken = roundBroken, err
	}
	return err
}

// addsInGroups reports whether AddGroup adds a group in one pass: a float sum that adds on
// arrival.
func (r *Round) addsInGroups() bool {
	return r.sum != nil && !r.sum.deferred && r.req.Kind == KindSum && !r.exactSum()
}

// addGroupLocked admits updates in order, each made one of the round's before the next is
// admitted (its layout is the round's; another update from its source is a duplicate), then
// adds those admitted in one pass. At the first refusal it adds those before and returns the
// refusal. r.mu is held.
func (r *Round) addGroupLocked(ctx context.Context, updates []*tensor.Set, weight func(k int) (float64, WeightSource, error)) error {
	start := time.Now()
	var cs []*Client
	var terms []float64
	var refused error
	for k, u := range updates {
		c, a, err := r.admitToGroup(ctx, u, func() (float64, WeightSource, error) { return weight(k) })
		if err != nil {
			refused = err
			break
		}
		cs, terms = append(cs, c), append(terms, a)
	}
	var add []*Client
	var ws []float64
	for i, c := range cs {
		if terms[i] != 0 {
			add, ws = append(add, c), append(ws, terms[i]*r.sum.pre)
		}
	}
	if len(add) > 0 {
		// Validated and made the round's: from here on nothing fails on account of an update,
		// and a failure (a fault) leaves the sum partly added, so it breaks the round.
		err := device.Guard(func() error { return r.addSpans(context.WithoutCancel(ctx), add, ws) })
		if err != nil {
			if r.state != roundBroken {
				r.state, r.broken = roundBroken, err
			}
			return err
		}
	}
	for i, c := range cs {
		r.summed(c, terms[i])
		if !r.cfg.retained {
			c.set, c.spans = nil, nil
		}
	}
	r.acct.busy += time.Since(start)
	return refused
}

// admitToGroup validates u for AddGroup and makes it one of the round's, the accumulator made
// for the first update that adds anything. It returns the client and its term a_k.
func (r *Round) admitToGroup(ctx context.Context, u *tensor.Set, weigh func() (float64, WeightSource, error)) (*Client, float64, error) {
	if u == nil {
		return nil, 0, fmt.Errorf("%w: nil update", ErrOption)
	}
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	w, from, err := weigh()
	if err != nil {
		return nil, 0, err
	}
	var c *Client
	var a float64
	err = device.Guard(func() error {
		var err error
		if c, err = r.admit(ctx, u, w, from); err != nil {
			return err
		}
		if a, err = r.term(c); err != nil || a == 0 {
			return err
		}
		return r.ensureAccumulator(ctx, c)
	})
	if err != nil {
		return nil, 0, r.faultOf(err, u)
	}
	r.record(c, from)
	return c, a, nil
}

// brokenErr explains why a round broken by WithFailFast takes no more calls.
func (r *Round) brokenErr() error {
	return fmt.Errorf("%w: the round of %s was given up at a refused update (WithFailFast): %v", ErrClosed, r.rule.Name(), r.broken)
}

// ensureAccumulator makes the plan and the accumulator at the first update of an incremental
// sum, and the pre-scale when the round knows its denominator.
func (r *Round) ensureAccumulator(ctx context.Context, first *Client) error {
	s := r.sum
	if s.acc != nil {
		return nil
	}
	if r.plan == nil {
		p, err := newPlan(first.layout, r.expectedDTypes(first), r.cfg, r.req)
		if err != nil {
			return fmt.Errorf("%s: %w", first.Source, err)
		}
		r.plan = p
	}
	dev := r.cfg.dev()
	acc, err := dev.NewAccumulator(r.plan.fields)
	if err != nil && r.req.Kind == KindModSum {
		// A device without a modular accumulator: the host CPU adds (the sums land there).
		cpu, cerr := hostCPU()
		if cerr != nil {
			return cerr
		}
		dev = cpu
		acc, err = cpu.NewAccumulator(r.plan.fields)
	}
	if err != nil {
		return err
	}
	s.acc, s.accDev, s.pre = acc, dev.Name(), 1
	if e := r.cfg.expected; e != nil && e.Weights != nil && r.req.Kind == KindSum && !r.exactSum() { // exact sums divide at the end
		var n int
		var w float64
		for _, x := range e.Weights {
			if r.req.Weights == WeightsEqual {
				x = 1
			}
			w += r.weights.scaled(x)
			n++
		}
		if d := r.denominator(n, w); d > 0 {
			s.pre, s.preD = 1/d, d
		}
	}
	return nil
}

// expectedDTypes lists, per tensor, the dtypes the round expects (WithExpected), or the first
// update's.
func (r *Round) expectedDTypes(first *Client) func(t int) []tensor.DType {
	var ls []tensor.Layout
	if e := r.cfg.expected; e != nil {
		ls = e.Layouts
	}
	return func(t int) []tensor.DType {
		dts := []tensor.DType{first.dtypes[t]}
		for _, l := range ls {
			for _, f := range l {
				if f.Name == first.layout[t].Name {
					dts = append(dts, f.DType)
				}
			}
		}
		return dts
	}
}

// denominator is D for n counted clients of total weight w.
func (r *Round) denominator(n int, w float64) float64 {
	for _, st := range r.stages {
		if d, ok := st.(Denominator); ok {
			return d.Denominator(n, w)
		}
	}
	return w
}

// closeSum computes the sum's result into out.
func (r *Round) closeSum(ctx context.Context, out *sink) error {
	if err := r.ensureSumPlan(ctx); err != nil {
		return err
	}
	d, err := r.finishSum(ctx, out)
	if err != nil {
		return err
	}
	b, err := r.globalWeight(ctx, d)
	if err != nil {
		return err
	}
	post, err := r.sumOutput(ctx, out)
	if err != nil {
		return err
	}
	stats, err := r.runSum(ctx, b, d, post)
	r.recordSum(stats)
	if err != nil {
		return err
	}
	r.cfg.inputsRead()
	return out.finish(ctx)
}

// ensureSumPlan makes the plan of a batch at the close, and the plan and the accumulator of an
// incremental sum that has added nothing.
func (r *Round) ensureSumPlan(ctx context.Context) error {
	if r.sum.deferred && r.plan == nil {
		p, err := newPlan(r.refLayout, r.dtypesOf(nil), r.cfg, r.req)
		if err != nil {
			return err
		}
		r.plan = p
	}
	if r.plan == nil { // incremental, every client weighed 0
		return r.ensureAccumulator(ctx, r.firstCounted())
	}
	return nil
}

// finishSum tells the Finisher stages the sum's totals, hands them to out and returns the
// denominator D, which a sum must have positive.
func (r *Round) finishSum(ctx context.Context, out *sink) (float64, error) {
	s := r.sum
	weight := s.weight
	if r.exactSum() {
		weight = s.exactTotals().weight() // the exact total, rounded once
	}
	d := r.denominator(s.n, weight)
	info := &SumInfo{Layout: r.refLayout, Clients: r.clients, Weight: weight, Denominator: d}
	for _, st := range r.stages {
		if f, ok := st.(Finisher); ok {
			if err := f.Finish(ctx, info); err != nil {
				return 0, err
			}
		}
	}
	out.info = info
	if r.req.Kind == KindSum && !(d > 0) {
		return 0, fmt.Errorf("%s: %w: the sum's denominator is %v", r.rule.Name(), ErrWeight, d)
	}
	return d, nil
}

// globalWeight is b, the weight the global model x_t enters the sum with: D − Σ a_k (the new
// model), −Σ a_k when a later stage consumes the averaged delta, 0 when the sum has no global
// model.
func (r *Round) globalWeight(ctx context.Context, d float64) (float64, error) {
	if r.global == nil || r.req.Kind != KindSum {
		return 0, nil
	}
	if r.exactSum() { // from the exact Σ a_k, rounded once (exact.go)
		return r.exactGlobalWeight(ctx, d)
	}
	if r.req.ConsumesDelta {
		return -r.sum.sumA, nil
	}
	return d - r.sum.sumA, nil
}

// sumOutput opens out for the sum's result, behind the chunk stages.
func (r *Round) sumOutput(ctx context.Context, out *sink) (device.Output, error) {
	dst, err := out.open(r.plan)
	if err != nil {
		return nil, err
	}
	return r.postOutput(ctx, out, dst)
}

// runSum computes the sum into out: the batch job of a mod-sum or of a weighted sum scaled by
// 1/D, or the emit of an incremental sum.
func (r *Round) runSum(ctx context.Context, b, d float64, out device.Output) (device.Stats, error) {
	switch {
	case r.sum.deferred && r.req.Kind == KindModSum:
		return r.modSumJob(ctx, out)
	case r.sum.deferred:
		return r.sumJob(ctx, b, 1/d, out)
	default:
		return r.emitSum(ctx, b, d, out)
	}
}

// recordSum accounts the device passes of the sum: the planner's shares where it placed the
// job, stats otherwise.
func (r *Round) recordSum(stats device.Stats) {
	if pl := r.acct.placed; pl != nil && len(pl.stats) > 0 {
		for _, st := range pl.stats { // one share per device the planner used
			r.acct.record(st)
		}
	} else {
		r.acct.record(stats)
	}
}

// firstCounted is the first client that is not excluded.
func (r *Round) firstCounted() *Client {
	for _, c := range r.clients {
		if c.excluded == "" {
			return c
		}
	}
	return r.clients[0]
}

// dtypesOf lists, per tensor, the dtypes of the round's clients (every one when only is nil).
func (r *Round) dtypesOf(only func(*Client) bool) func(t int) []tensor.DType {
	return func(t int) []tensor.DType {
		var dts []tensor.DType
		for _, c := range r.clients {
			if c.dtypes != nil && (only == nil || only(c)) {
				dts = append(dts, c.dtypes[t])
			}
		}
		return dts
	}
}

// sumJob runs the batch: one weighted sum over every client with a_k ≠ 0 and b·x_t, scaled by
// 1/D, on the planned devices.
func (r *Round) sumJob(ctx context.Context, b, scale float64, out device.Output) (device.Stats, error) {
	s := r.sum
	inputs, weights, names := s.inputs, s.a, s.names
	if b != 0 {
		inputs = append(slices.Clone(inputs), r.global.spans)
		weights = append(slices.Clone(weights), b)
		names = append(slices.Clone(names), globalName(r.global.set))
	}
	job := &device.SumJob{
		Fields:   r.plan.fields,
		Inputs:   inputs,
		Weights:  weights,
		Scale:    scale,
		Chunks:   r.plan.chunks,
		Output:   out,
		Progress: r.progressJob(inputs),
	}
	stats, err := r.execute(ctx, job)
	if err != nil {
		return stats, r.blame(r.blameRange(err, inputs, names), inputs, names)
	}
	return stats, nil
}

// modSumJob runs the batch of a mod-sum: Σ x_k mod 2^32 on the device, or the host CPU.
func (r *Round) modSumJob(ctx context.Context, out device.Output) (device.Stats, error) {
	summer, ok := r.cfg.dev().(device.ModSummer)
	if !ok {
		cpu, err := hostCPU()
		if err != nil {
			return device.Stats{}, err
		}
		summer = cpu
	}
	return summer.ModSum(ctx, r.plan.fields, r.sum.inputs, r.plan.chunks, out)
}

// emitSum closes an incremental sum: b·x_t is added last (once, even if an emit is retried),
// and the accumulator is written out scaled by what the pre-scale left of 1/D.
func (r *Round) emitSum(ctx context.Context, b, d float64, out device.Output) (device.Stats, error) {
	s := r.sum
	if b != 0 && !s.globalB {
		if err := s.acc.Add(ctx, r.global.spans, b*s.pre); err != nil {
			return device.Stats{}, err
		}
		s.globalB = true
	}
	scale := 1.0
	if r.req.Kind == KindSum {
		scale = (1 / d) / s.pre
		if s.preD == d {
			scale = 1
		}
	}
	stats, err := s.acc.Emit(ctx, scale, r.plan.chunks, out)
	if err != nil {
		return stats, r.overflow(err)
	}
	return stats, nil
}

// progressJob reports a job's input bytes to WithProgress.
func (r *Round) progressJob(inputs [][]device.Span) func(int64) {
	fn := r.cfg.progress
	if fn == nil {
		return nil
	}
	var total int64
	for _, in := range inputs {
		for _, sp := range in {
			total += int64(len(sp.Data))
		}
	}
	var done atomic.Int64 // jobs report from several goroutines
	return func(n int64) { fn(done.Add(n), total) }
}

// progressAdd reports an incremental round's progress: bytes added against the expected total.
func (r *Round) progressAdd(n int64) {
	fn := r.cfg.progress
	if fn == nil {
		return
	}
	r.acct.added += n
	total := r.acct.added
	if e := r.cfg.expected; e != nil && e.Layouts != nil {
		var t int64
		for _, l := range e.Layouts {
			for _, f := range l {
				t += int64(f.Len()) * int64(f.DType.Size())
			}
		}
		total = max(total, t)
	}
	fn(r.acct.added, total)
}
