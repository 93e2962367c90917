package optim

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
	"unsafe"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/kernels"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

func f32Bytes(v []float32) []byte {
	if len(v) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(v))), 4*len(v))
}

// kind describes one server optimizer: its device step, which of (lr, β1, β2, τ) it uses and
// their defaults.
type kind struct {
	rule     device.OptimRule
	uses     [4]bool
	defaults [4]float64
}

// The defaults are those of Reddi et al. (2021) for β1, β2 and τ (their recommended τ = 1e-3),
// Flower's server learning rates (1 for FedAvgM, 0.1 for FedAdagrad and FedAdam, 0.01 for
// FedYogi) and the usual server momentum 0.9 (Hsu et al., 2019).
var kinds = map[string]kind{
	"fedavgm":    {device.OptimFedAvgM, [4]bool{true, true, false, false}, [4]float64{1, 0.9, 0, 0}},
	"fedadagrad": {device.OptimFedAdagrad, [4]bool{true, true, false, true}, [4]float64{0.1, 0.9, 0, 1e-3}},
	"fedadam":    {device.OptimFedAdam, [4]bool{true, true, true, true}, [4]float64{0.1, 0.9, 0.99, 1e-3}},
	"fedyogi":    {device.OptimFedYogi, [4]bool{true, true, true, true}, [4]float64{0.01, 0.9, 0.99, 1e-3}},
}

// Names lists the server optimizers New knows.
func Names() []string { return []string{"fedadagrad", "fedadam", "fedavgm", "fedyogi"} }

// Optimizer is a server optimizer of adaptive federated optimization (Reddi et al., 2021,
// "Adaptive Federated Optimization", Algorithm 2) or server momentum (FedAvgM), as a Rule.
//
// Each round, clients train from the global model x_t (aggregate.WithGlobal) and send their
// models; the engine averages their deltas, Δ = Σ_k w_k·x_k / Σ_k w_k − x_t (one pass over
// the client models and x_t, accumulated in f64), and the optimizer applies one fused step per
// coordinate (device.OptimJob) to each chunk while it is in cache:
//
//	FedAvgM:    m = β1·m + Δ;                                   x_{t+1} = x_t + η·m
//	FedAdagrad: m = β1·m + (1-β1)·Δ;  v = v + Δ²;                       x_{t+1} = x_t + η·m/(√v + τ)
//	FedAdam:    m = β1·m + (1-β1)·Δ;  v = β2·v + (1-β2)·Δ²;             x_{t+1} = x_t + η·m/(√v + τ)
//	FedYogi:    m = β1·m + (1-β1)·Δ;  v = v - (1-β2)·Δ²·sign(v - Δ²);   x_{t+1} = x_t + η·m/(√v + τ)
//
// in f32, without bias correction, from m = 0 and v = τ² (Algorithm 2 asks for v_{-1} ≥ τ²;
// Flower starts from v = 0, which differs by τ² in the first rounds' denominators). With
// FedAvgM, β1 = 0 and η = 1 the rule is FedAvg.
//
// The rule is stateful: after a successful round its state (m, v, the round count) moves on; a
// failed round changes nothing. Rounds are serialised. The model each round produces is the next
// round's global model: the caller passes it with aggregate.WithGlobal.
type Optimizer struct {
	name      string
	kind      kind
	vals      [4]float64 // lr, β1, β2, τ; 0 for those the rule does not use
	statePath string

	mu     sync.Mutex
	loaded bool   // the state file was read
	state  *State // nil before round 1
	// retired is the in-memory state the last round replaced: the next in-memory round writes
	// its moments there (double buffering: the current state stays intact until a round
	// succeeds, and no fresh pages are touched in the steady state).
	retired *State
	busy    bool // a round has begun and not ended
	closed  bool
}

// New builds the server optimizer name ("fedavgm", "fedadagrad", "fedadam", "fedyogi").
// WithServerLR, WithBeta1, WithBeta2 and WithTau override the defaults of the ones the optimizer
// uses (FedAvgM: η and β1, its momentum; FedAdagrad: η, β1, τ; FedAdam and FedYogi: all four).
func New(name string, opts ...Option) (*Optimizer, error) {
	k, ok := kinds[name]
	if !ok {
		return nil, fmt.Errorf("%w: unknown server optimizer %q (want fedavgm, fedadagrad, fedadam or fedyogi)", aggregate.ErrOption, name)
	}
	c := &config{}
	for _, o := range opts {
		if o == nil {
			return nil, fmt.Errorf("%w: nil option", aggregate.ErrOption)
		}
		if err := o(c); err != nil {
			return nil, err
		}
	}
	o := &Optimizer{name: name, kind: k, statePath: c.statePath}
	for i := range o.vals {
		switch {
		case c.set[i] && !k.uses[i]:
			return nil, fmt.Errorf("%w: %s has no %s", aggregate.ErrOption, name, hyperNames[i])
		case c.set[i]:
			o.vals[i] = c.vals[i]
		case k.uses[i]:
			o.vals[i] = k.defaults[i]
		}
	}
	return o, nil
}

// NewFedAvgM is New("fedavgm", opts...).
func NewFedAvgM(opts ...Option) (*Optimizer, error) { return New("fedavgm", opts...) }

// NewFedAdagrad is New("fedadagrad", opts...).
func NewFedAdagrad(opts ...Option) (*Optimizer, error) { return New("fedadagrad", opts...) }

// NewFedAdam is New("fedadam", opts...).
func NewFedAdam(opts ...Option) (*Optimizer, error) { return New("fedadam", opts...) }

// NewFedYogi is New("fedyogi", opts...).
func NewFedYogi(opts ...Option) (*Optimizer, error) { return New("fedyogi", opts...) }

// Name is the optimizer's name ("fedadam", ...).
func (o *Optimizer) Name() string { return o.name }

// Requirements: a sum with a global model, stepping from the averaged delta.
func (o *Optimizer) Requirements() aggregate.Requirements {
	return aggregate.Requirements{Kind: aggregate.KindSum, Global: true, ConsumesDelta: true}
}

// StatePaths is the state file (WithStateFile), for the engine's crash recovery.
func (o *Optimizer) StatePaths() []string { return []string{o.statePath} }

// Round is the number of rounds applied so far (by this optimizer and the state it continued).
func (o *Optimizer) Round() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.round()
}

func (o *Optimizer) round() int {
	if o.state == nil {
		return 0
	}
	return o.state.Round
}

// State is the optimizer state after the last round (nil before the first). It stays valid
// until the next round or Close (in-memory rounds reuse the buffers of the state before).
func (o *Optimizer) State() *State {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.state
}

// SaveState writes the current state to path atomically.
func (o *Optimizer) SaveState(path string) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.state == nil {
		return fmt.Errorf("%w: %s has applied no round yet: nothing to save", aggregate.ErrState, o.name)
	}
	return o.state.WriteFile(path)
}

// Close releases the state (its mapping or memory). The optimizer cannot be used afterwards.
func (o *Optimizer) Close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.closed = true
	err := errors.Join(o.state.Close(), o.retired.Close())
	o.state, o.retired = nil, nil
	return err
}

// load reads the state file the first time a round begins (the engine has finished any commit
// a crash interrupted).
func (o *Optimizer) load() error {
	if o.loaded || o.statePath == "" {
		o.loaded = true
		return nil
	}
	ok, err := fileExists(o.statePath)
	if err != nil {
		return err
	}
	if !ok {
		o.loaded = true
		return nil // a missing state file starts from round 1
	}
	st, err := LoadState(o.statePath)
	if err != nil {
		return err
	}
	if err := st.compatible(o); err != nil {
		st.Close()
		return fmt.Errorf("%s: %w", o.statePath, err)
	}
	o.state, o.loaded = st, true
	return nil
}

// Begin begins a round: the state's moments are checked against the global model's layout.
func (o *Optimizer) Begin(ctx context.Context, env *aggregate.Env) (aggregate.Stage, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	switch {
	case o.closed:
		return nil, fmt.Errorf("%w: %s is closed", aggregate.ErrClosed, o.name)
	case o.busy:
		return nil, fmt.Errorf("%w: %s is in another round: rounds of a stateful rule are serialised", aggregate.ErrOption, o.name)
	}
	if err := o.load(); err != nil {
		return nil, err
	}
	mIn, vIn, err := o.state.views(env.Layout)
	if err != nil {
		name := o.name + " state"
		if o.statePath != "" {
			name = o.statePath
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	stepper, err := stepperOf(env.Device)
	if err != nil {
		return nil, err
	}
	s := &step{o: o, mIn: mIn, vIn: vIn, stepper: stepper, deltaSq: make([]float64, env.Chunks),
		next: &State{Rule: o.name, Round: o.round() + 1, LR: o.vals[0], Beta1: o.vals[1], Beta2: o.vals[2], Tau: o.vals[3]}}
	for _, f := range env.Layout {
		s.size += 4 * int64(f.Len())
	}
	o.busy = true
	return s, nil
}

// stepperOf is the fused optimizer step for the chunks the sum hands over. Those chunks are in
// host memory, so a device whose memory is the host's (the CPU) steps them itself and any other
// gets the host CPU's step: a GPU would copy every chunk there and back for a step that is
// bound by memory bandwidth on either side.
func stepperOf(dev device.Device) (device.Optimizer, error) {
	if o, ok := dev.(device.Optimizer); ok && dev.Info().Kind == "cpu" {
		return o, nil
	}
	return device.NewCPU()
}

// step is one round of an optimizer: the moments it reads and what it writes.
type step struct {
	o        *Optimizer
	mIn, vIn [][]float32 // the current moments by field (nil before round 1)
	stepper  device.Optimizer
	deltaSq  []float64 // per chunk, summed in chunk order: deterministic
	next     *State
	size     int64 // bytes of the model
}

func (s *step) params() kernels.OptimParams {
	v := s.o.vals
	return kernels.OptimParams{LR: float32(v[0]), Beta1: float32(v[1]), Beta2: float32(v[2]), Tau: float32(v[3])}
}

// Sides are the moments: m and, but for FedAvgM, v.
func (s *step) Sides() *aggregate.Sides {
	sd := &aggregate.Sides{Prefixes: []string{MomentPrefix}, Metadata: s.next.metadata()}
	if s.o.kind.rule.SecondMoment() {
		sd.Prefixes = append(sd.Prefixes, SecondMomentPrefix)
	}
	sd.Path = s.o.statePath // written there when the round's result goes to a file
	if r := s.o.retired; r != nil {
		sd.Recycle = []*tensor.Set{r.M, r.V} // an in-memory result's moments go there
	}
	return sd
}

// Process steps every piece of a chunk of Δ: the model replaces Δ in place, the moments go to
// the sides.
func (s *step) Process(ctx context.Context, c *aggregate.Chunk) error {
	kp := s.params()
	second := s.o.kind.rule.SecondMoment()
	tau2 := kp.Tau * kp.Tau
	for i := range c.Pieces {
		p := &c.Pieces[i]
		t, lo, hi := p.Field, p.Lo, p.Hi
		s.deltaSq[c.Index] += kernels.SumSquaresF32(f32Bytes(p.X))
		j := &device.OptimJob{Rule: s.o.kind.rule, OptimParams: kp,
			X: p.Global, D: p.X, XOut: p.X, MOut: p.Sides[0]}
		if second {
			j.VOut = p.Sides[1]
		}
		if s.mIn == nil { // round 1: m = 0, v = τ², built in the outputs and updated in place
			clear(j.MOut)
			j.M = j.MOut
			if second {
				for k := range j.VOut {
					j.VOut[k] = tau2
				}
				j.V = j.VOut
			}
		} else {
			j.M = s.mIn[t][lo:hi]
			if second {
				j.V = s.vIn[t][lo:hi]
			}
		}
		if _, err := s.stepper.Optimize(ctx, j); err != nil {
			return err
		}
		if err := aggregate.CheckFinite(s.o.name, "model", p, j.XOut); err != nil {
			return err
		}
		if err := aggregate.CheckFinite(s.o.name, "first moment", p, j.MOut); err != nil {
			return err
		}
		if second {
			if err := aggregate.CheckFinite(s.o.name, "second moment", p, j.VOut); err != nil {
				return err
			}
		}
	}
	return nil
}

// Annotate records the round in the result.
func (s *step) Annotate(m map[string]string) { m[aggregate.RoundKey] = strconv.Itoa(s.next.Round) }

// Prepare has nothing to add: the engine writes the moments' state file with the result.
func (s *step) Prepare(context.Context, *aggregate.Outcome) ([]*safetensors.Writer, error) {
	return nil, nil
}

// Commit moves the optimizer on to the new moments: the state file just published, mapped, or
// the in-memory sides (the state before becomes the buffers of the next in-memory round).
func (s *step) Commit(out *aggregate.Outcome) error {
	o := s.o
	o.mu.Lock()
	defer o.mu.Unlock()
	o.busy = false
	next := s.next
	file := out.Sides == nil // the moments went to the state file, published with the result
	if file {
		st, err := LoadState(o.statePath)
		if err != nil {
			return err
		}
		next = st
	} else {
		next.M = out.Sides[0]
		if len(out.Sides) > 1 {
			next.V = out.Sides[1]
		}
	}
	old := o.state
	o.state = next
	if r := o.retired; r != nil && r.M != next.M { // not recycled into the new moments
		r.Close()
	}
	o.retired = nil
	if old != nil && old.closer == nil && !file {
		o.retired = old // in memory, made by this optimizer: its buffers serve the next round
	} else {
		old.Close()
	}
	return nil
}

// Abort ends a round that failed: nothing moves.
func (s *step) Abort() {
	s.o.mu.Lock()
	s.o.busy = false
	s.o.mu.Unlock()
}

// Report gives the hyperparameters, the round and the norm of Δ.
func (s *step) Report(rep *aggregate.Report) {
	var dsq float64
	for _, v := range s.deltaSq {
		dsq += v
	}
	rep.Detail("round", float64(s.next.Round))
	rep.Detail("server_lr", s.o.vals[0])
	rep.Detail("beta1", s.o.vals[1])
	rep.Detail("delta_norm", math.Sqrt(dsq))
	if s.o.kind.uses[2] {
		rep.Detail("beta2", s.o.vals[2])
	}
	if s.o.kind.uses[3] {
		rep.Detail("tau", s.o.vals[3])
	}
	if s.mIn != nil {
		rep.BytesRead += int64(len(s.Sides().Prefixes)) * s.size
	}
}
