package aggregate

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
	"unsafe"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// Round is one round of a rule: the only place a round is sequenced. Updates arrive one at a
// time (Add) and are validated — layout, dtypes, finiteness, weights — before anything of them
// reaches the round; the rule's stages admit and weigh them; a sum adds each on arrival in
// O(model) memory, a rule that needs every update at once keeps it (a reference, or a copy in
// the spool). Result or WriteFile closes the round: the rule's arithmetic runs chunk by chunk
// on the round's devices under its meters, the output goes to memory or to a file, the rule's
// state is committed with it as one unit, and the Report says what it cost.
//
// A rejected update leaves the round exactly as it was. A Round is safe for concurrent use;
// Adds are serialised (each one uses every core of its device).
type Round struct {
	cfg    *config
	rule   Rule
	req    Requirements
	stage  Stage
	stages []Stage
	start  time.Time

	global    *globalModel // x_t matched to the plan (Requirements.Global)
	ownGlobal *tensor.Set  // the global model the round mapped (WithGlobalFile), closed with it

	mu        sync.Mutex
	state     roundState
	plan      *plan
	refLayout tensor.Layout // the round's tensors: the global model's, or the first update's
	refName   string        // who fixed them
	clients   []*Client
	weights   weightTracker
	sum       *sumState   // KindSum, KindModSum
	whole     *wholeState // KindWhole
	acct      accounting
	broken    error               // why the round is roundBroken
	arrivals  map[string]*Arrival // begun, neither committed nor cancelled (arrival.go)
	pieces    *pieceLocks         // the sum's stripes, once an update arrives in pieces
	arrivalW  *meterWindow        // the meters since the first arrival (arrival.go)
}

type roundState uint8

const (
	roundOpen    roundState = iota
	roundClosing            // Result or WriteFile called: no more updates
	roundDone               // a result was committed
	roundClosed             // Close called
	roundBroken             // WithFailFast: an update was refused midway through its add
)

// NewRound begins a round of rule. Rules that move a global model need WithGlobal or
// WithGlobalFile; everything else about where and how the round runs is an Option.
func NewRound(ctx context.Context, rule Rule, opts ...Option) (*Round, error) {
	return newRound(ctx, rule, opts)
}

// newRound begins a round.
func newRound(ctx context.Context, rule Rule, opts []Option) (*Round, error) {
	if rule == nil {
		return nil, fmt.Errorf("%w: nil rule", ErrOption)
	}
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	r := &Round{cfg: cfg, rule: rule, req: rule.Requirements(), start: time.Now()}
	if err := r.checkConfig(); err != nil {
		return nil, err
	}
	if err := r.openGlobal(); err != nil {
		return nil, err
	}
	for _, p := range r.statePaths() {
		if err := RecoverState(p); err != nil {
			r.closeGlobal()
			return nil, err
		}
	}
	env := &Env{Device: cfg.dev()}
	if r.global != nil {
		env.Global, env.Layout, env.Chunks = r.global.set, r.plan.ref, len(r.plan.chunks)
	}
	r.stage, err = rule.Begin(ctx, env)
	if err != nil {
		r.closeGlobal()
		return nil, err
	}
	r.stages = stagesOf(r.stage)
	switch r.req.Kind {
	case KindSum, KindModSum:
		r.sum = &sumState{deferred: cfg.retained}
	case KindWhole:
		r.whole = &wholeState{}
	default:
		r.closeGlobal()
		return nil, fmt.Errorf("%w: rule %s has no kind", ErrOption, rule.Name())
	}
	return r, nil
}

// checkConfig rejects options the rule cannot use.
func (r *Round) checkConfig() error {
	name := r.rule.Name()
	hasGlobal := r.cfg.global != nil || r.cfg.globalPath != ""
	switch {
	case r.req.Global && !hasGlobal:
		return fmt.Errorf("%w: %s needs the global model the clients trained from (WithGlobal or WithGlobalFile)", ErrOption, name)
	case !r.req.Global && hasGlobal:
		return fmt.Errorf("%w: %s takes no global model", ErrOption, name)
	case r.req.Global && r.cfg.out != tensor.Invalid && r.cfg.out != tensor.F32:
		return fmt.Errorf("%w: %s writes its model in f32 (the server's master copy), not %s", ErrOption, name, r.cfg.out)
	case r.req.Global && r.cfg.dst != nil:
		return fmt.Errorf("%w: %s cannot write into an output set", ErrOption, name)
	case r.req.Kind == KindModSum && (r.cfg.out != tensor.Invalid || r.cfg.acc != tensor.Invalid || r.cfg.dst != nil):
		return fmt.Errorf("%w: %s decodes its sum to f32: no output dtype, accumulator or output set", ErrOption, name)
	}
	return r.checkExactConfig() // exact sums (exact.go)
}

// Rule is the round's rule.
func (r *Round) Rule() Rule { return r.rule }

// Clients is the number of updates added so far.
func (r *Round) Clients() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.clients)
}

// TotalWeight is the sum of the weights added so far.
func (r *Round) TotalWeight() float64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.weights.unscaled(r.weights.total)
}

// Add adds weight·u to the round (the rule decides what weights mean: FedAvg applies them,
// a private mean counts every client once and needs them equal). Everything about u is checked
// before it reaches the round, so a rejected update leaves the round exactly as it was; once
// accepted, its addition completes even if ctx is cancelled. Rules that need every update at
// once keep u: a reference with WithRetainedUpdates (u must then stay valid until the round is
// closed), else a copy in the spool.
func (r *Round) Add(ctx context.Context, u *tensor.Set, weight float64) error {
	return r.add(ctx, u, weight, WeightsGiven)
}

// AddByExamples adds u weighted by its num_examples metadata, or by 1 when it has none; within
// one round, updates with and without num_examples are not mixed (weighting one update 1 beside
// others weighted by hundreds of examples would be silently wrong).
func (r *Round) AddByExamples(ctx context.Context, u *tensor.Set) error {
	if u == nil {
		return fmt.Errorf("%w: nil update", ErrOption)
	}
	w, from, err := examplesWeight(u)
	if err != nil {
		return err
	}
	return r.add(ctx, u, w, from)
}

// examplesWeight is u's num_examples, or 1 when it has none.
func examplesWeight(u *tensor.Set) (float64, WeightSource, error) {
	w, ok, err := WeightOf(u)
	if err != nil || !ok {
		return 1, WeightsUniform, err
	}
	return w, WeightsNumExamples, nil
}

// AddGroup adds updates as Add (weights[k] each) or, when weights is nil, AddByExamples would
// one after the other, with the same bits, but a float sum that adds on arrival adds them in one
// pass over its accumulator (device.GroupAccumulator): a group of k reads and writes the sum
// once instead of k times. Updates are validated in order; at the first one refused, those
// before it are added and its error returned, and the rest are not added. Where a group gains
// nothing (a batch, an exact sum, a whole-set rule) the updates are added one by one.
func (r *Round) AddGroup(ctx context.Context, updates []*tensor.Set, weights []float64) error {
	if weights != nil && len(weights) != len(updates) {
		return fmt.Errorf("%w: %d weights for %d updates", ErrWeight, len(weights), len(updates))
	}
	weight := func(k int) (float64, WeightSource, error) {
		if weights != nil {
			return weights[k], WeightsGiven, nil
		}
		return examplesWeight(updates[k])
	}
	return r.metered(func() error {
		if !r.addsInGroups() {
			return r.addEach(ctx, updates, weight)
		}
		return r.addGroupLocked(ctx, updates, weight)
	})
}

func (r *Round) add(ctx context.Context, u *tensor.Set, weight float64, from WeightSource) error {
	return r.metered(func() error {
		return r.addOne(ctx, u, func() (float64, WeightSource, error) { return weight, from, nil })
	})
}

// addAll adds a batch's updates under one meter window (a window per update read the meters
// 64 times for 32 files: 2-3 ms of /proc/stat before any work). weight gives update k's weight
// and its source.
func (r *Round) addAll(ctx context.Context, updates []*tensor.Set, weight func(k int) (float64, WeightSource, error)) error {
	return r.metered(func() error { return r.addEach(ctx, updates, weight) })
}

// metered runs fn under r.mu, if the round takes updates, in one meter window: validation costs
// energy too, whether an update is kept or not.
func (r *Round) metered(fn func() error) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.acceptingUpdates(); err != nil {
		return err
	}
	win := r.cfg.startMeters()
	defer r.acct.meter(win)
	return fn()
}

// addEach adds updates one by one (r.mu held), stopping at the first refused.
func (r *Round) addEach(ctx context.Context, updates []*tensor.Set, weight func(k int) (float64, WeightSource, error)) error {
	for k, u := range updates {
		if err := r.addOne(ctx, u, func() (float64, WeightSource, error) { return weight(k) }); err != nil {
			return err
		}
	}
	return nil
}

// addOne adds u under r.mu with the weight weigh gives it.
func (r *Round) addOne(ctx context.Context, u *tensor.Set, weigh func() (float64, WeightSource, error)) error {
	if u == nil {
		return fmt.Errorf("%w: nil update", ErrOption)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	w, from, err := weigh()
	if err != nil {
		return err
	}
	return r.addLocked(ctx, u, w, from)
}

// addLocked validates u and adds it to the round; r.mu is held and the round accepts updates.
func (r *Round) addLocked(ctx context.Context, u *tensor.Set, weight float64, from WeightSource) error {
	start := time.Now()
	var c *Client
	err := device.Guard(func() error {
		var err error
		if c, err = r.admit(ctx, u, weight, from); err != nil {
			return err
		}
		// Validated: from here on nothing fails on account of the update.
		if r.sum != nil {
			return r.addToSum(context.WithoutCancel(ctx), c)
		}
		return r.keep(context.WithoutCancel(ctx), c)
	})
	if err != nil {
		return r.faultOf(err, u)
	}
	r.record(c, from)
	if !r.cfg.retained {
		c.set, c.spans = nil, nil // the caller may close the update once Add returns
	}
	r.acct.busy += time.Since(start)
	return nil
}

// record makes admitted client c one of the round's.
func (r *Round) record(c *Client, from WeightSource) {
	if r.refLayout == nil {
		r.refLayout, r.refName = c.layout, c.Source
	}
	r.clients = append(r.clients, c)
	r.weights.add(c, from)
	r.acct.bytesIn += c.bytes
}

func (r *Round) acceptingUpdates() error {
	switch r.state {
	case roundOpen:
		return nil
	case roundClosed:
		return fmt.Errorf("%w: the round of %s was closed", ErrClosed, r.rule.Name())
	case roundBroken:
		return r.brokenErr()
	}
	return fmt.Errorf("%w: the round of %s has been closed into its result: add updates to a new round", ErrClosed, r.rule.Name())
}

// Result closes the round into a Set in memory (into the WithOutput set, if given) and returns
// it with its report. The Set's memory is the round's allocator's: Close it when done. If it
// fails the round can be closed again (no update can be added any more).
func (r *Round) Result(ctx context.Context) (*tensor.Set, *Report, error) {
	return r.close(ctx, "")
}

// WriteFile closes the round into a .safetensors file at path, written chunk by chunk while the
// next chunks are computed (no model-sized buffer beyond what the rule itself keeps), durably
// and atomically together with the rule's state files: either all appear or none changes.
func (r *Round) WriteFile(ctx context.Context, path string) (*Report, error) {
	if path == "" {
		return nil, fmt.Errorf("%w: empty output path", ErrOption)
	}
	_, rep, err := r.close(ctx, path)
	return rep, err
}

func (r *Round) close(ctx context.Context, path string) (*tensor.Set, *Report, error) {
	start := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	switch r.state {
	case roundDone:
		return nil, nil, fmt.Errorf("%w: the round of %s already produced its result", ErrClosed, r.rule.Name())
	case roundClosed:
		return nil, nil, fmt.Errorf("%w: the round of %s was closed", ErrClosed, r.rule.Name())
	case roundBroken:
		return nil, nil, r.brokenErr()
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	if err := r.closePieces(); err != nil {
		return nil, nil, err
	}
	r.state = roundClosing
	if r.counted() == 0 {
		return nil, nil, r.noInputs()
	}
	out := newSink(r, path)
	win := r.cfg.startMeters()
	err := device.Guard(func() error {
		if r.sum != nil {
			return r.closeSum(ctx, out)
		}
		return r.closeWhole(ctx, out)
	})
	if err == nil {
		err = r.commit(ctx, out)
	}
	r.acct.meter(win)
	if err != nil {
		err = r.explainFault(err)
		out.abort()
		return nil, nil, err
	}
	r.state = roundDone
	rep := r.report(out, time.Since(start))
	return out.set, rep, nil // released by commit
}

// faultOf explains a fault while update u was added: in u (not yet among the clients), or in
// what the round already holds.
func (r *Round) faultOf(err error, u *tensor.Set) error {
	var fe *device.FaultError
	if !errors.As(err, &fe) {
		return err
	}
	for _, t := range u.Tensors() {
		b := t.Bytes()
		if len(b) > 0 {
			base := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
			if fe.Addr >= base && fe.Addr < base+uintptr(len(b)) {
				return fmt.Errorf("%s: %w: byte %d of tensor %q could not be read: the file changed (was it truncated?) while the round read it",
					sourceName(u, len(r.clients)), device.ErrFault, fe.Addr-base, t.Name)
			}
		}
	}
	return r.explainFault(err)
}

// noInputs explains a round with nothing to aggregate.
func (r *Round) noInputs() error {
	if n := len(r.clients); n > 0 {
		return fmt.Errorf("%s: %w: all %d updates were excluded (NaN or Inf)", r.rule.Name(), ErrNoInputs, n)
	}
	return ErrNoInputs
}

// counted is the number of clients the result aggregates (excluded ones are not).
func (r *Round) counted() int {
	n := 0
	for _, c := range r.clients {
		if c.excluded == "" {
			n++
		}
	}
	return n
}

// SumBytes is the memory the round's running sums hold now (Report.SumBytes): 0 before the
// first update, in a batch round and once closed, -1 on a device that does not tell.
func (r *Round) SumBytes() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sum == nil || r.sum.acc == nil {
		return 0
	}
	return device.SumBytes(r.sum.acc)
}

// Close releases what the round holds (its accumulator, spool, mapped global model) and aborts
// the rule's uncommitted state. It is safe to call more than once; a Result already returned
// stays valid.
func (r *Round) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.state == roundClosed {
		return nil
	}
	if r.state != roundDone {
		stageList(r.stages).abort()
	}
	r.state = roundClosed
	if r.pieces != nil { // wait out a piece being added; none is added after this
		unlock := r.pieces.lockAll()
		r.pieces.closed = true
		defer unlock()
		r.arrivalW.stop() // nothing to report: the round ends without a result
		r.arrivalW = nil
	}
	var errs []error
	if r.sum != nil && r.sum.acc != nil {
		errs = append(errs, r.sum.acc.Close())
		r.sum.acc = nil
	}
	if r.whole != nil {
		errs = append(errs, r.whole.close())
	}
	for _, c := range r.clients {
		c.spans, c.set = nil, nil
	}
	r.closeGlobal()
	return errors.Join(errs...)
}

// openGlobal maps the global model (WithGlobalFile) or takes the given one, and fixes the
// round's layout from it.
func (r *Round) openGlobal() error {
	g := r.cfg.global
	if r.cfg.globalPath != "" {
		var err error
		if g, err = safetensors.Open(r.cfg.globalPath); err != nil {
			return err
		}
		r.ownGlobal = g
	}
	if g == nil {
		return nil
	}
	p, err := newPlan(g.Layout(), func(int) []tensor.DType { return []tensor.DType{tensor.F32} }, r.cfg, r.req)
	if err != nil {
		r.closeGlobal()
		return fmt.Errorf("%s: %w", globalName(g), err)
	}
	gm, err := matchGlobal(g, p)
	if err != nil {
		r.closeGlobal()
		return err
	}
	r.plan, r.refLayout, r.refName, r.global = p, p.ref, globalName(g), gm
	return nil
}

func (r *Round) closeGlobal() {
	if r.ownGlobal != nil {
		r.ownGlobal.Close()
		r.ownGlobal = nil
	}
	r.global = nil
}

// reducer is the device that scans and takes norms: the round's device, or the host CPU.
func (r *Round) reducer() (device.Reducer, error) {
	if d, ok := r.cfg.dev().(device.Reducer); ok {
		return d, nil
	}
	return hostCPU()
}
