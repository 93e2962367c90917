package aggregate

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/kernels"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// optimKind describes one server optimizer: its device step, which of (lr, β1, β2, τ) it uses
// and their defaults.
type optimKind struct {
	rule     device.OptimRule
	uses     [4]bool
	defaults [4]float64
}

// The defaults are those of Reddi et al. (2021) for β1, β2 and τ (their recommended τ = 1e-3),
// Flower's server learning rates (1 for FedAvgM, 0.1 for FedAdagrad and FedAdam, 0.01 for
// FedYogi) and the usual server momentum 0.9 (Hsu et al., 2019).
var optimKinds = map[string]optimKind{
	"fedavgm":    {device.OptimFedAvgM, [4]bool{true, true, false, false}, [4]float64{1, 0.9, 0, 0}},
	"fedadagrad": {device.OptimFedAdagrad, [4]bool{true, true, false, true}, [4]float64{0.1, 0.9, 0, 1e-3}},
	"fedadam":    {device.OptimFedAdam, [4]bool{true, true, true, true}, [4]float64{0.1, 0.9, 0.99, 1e-3}},
	"fedyogi":    {device.OptimFedYogi, [4]bool{true, true, true, true}, [4]float64{0.01, 0.9, 0.99, 1e-3}},
}

// ServerOptimizer is a server optimizer of adaptive federated optimization (Reddi et al., 2021,
// "Adaptive Federated Optimization", Algorithm 2) or server momentum (FedAvgM), as a Rule.
//
// Each round, clients train from the global model x_t and send their models; the rule computes
// the averaged delta Δ = Σ_k w_k·x_k / Σ_k w_k - x_t (one pass over the client models and x_t,
// accumulated in f64) and applies one fused step per coordinate (device.OptimJob):
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
// The rule is stateful: after a successful round the model it produced becomes its global model
// and its state (m, v, the round count) moves on, so calling Aggregate round after round runs
// the optimizer. A failed round changes nothing. The Set Aggregate returns is also the rule's
// global model for the next round: do not modify or Close it. Rounds are serialised.
type ServerOptimizer struct {
	name                  string
	kind                  optimKind
	lr, beta1, beta2, tau float64
	common                []Option
	statePath             string

	mu        sync.Mutex
	global    *tensor.Set
	ownGlobal bool // the rule mapped it and closes it
	state     *OptimizerState
	// retired is the in-memory state the last round replaced: the next in-memory round writes
	// its moments there (double buffering: the current state stays intact until a round
	// succeeds, and no fresh pages are touched in the steady state).
	retired *OptimizerState
}

var _ FileRule = (*ServerOptimizer)(nil)

// NewServerOptimizer builds the server optimizer name ("fedavgm", "fedadagrad", "fedadam",
// "fedyogi"). It needs the global model (WithGlobal or WithGlobalFile); WithServerLR,
// WithBeta1, WithBeta2 and WithTau override the defaults of the ones the optimizer uses
// (FedAvgM: η and β1, its momentum; FedAdagrad: η, β1, τ; FedAdam and FedYogi: all four).
// WithStateFile continues from a saved state and saves the new one after each AggregateFile.
func NewServerOptimizer(name string, opts ...RoundOption) (*ServerOptimizer, error) {
	kind, ok := optimKinds[name]
	if !ok {
		return nil, fmt.Errorf("%w: unknown server optimizer %q (want fedavgm, fedadagrad, fedadam or fedyogi)", ErrOption, name)
	}
	c, err := newRoundConfig(opts)
	if err != nil {
		return nil, err
	}
	allowed := []string{"lr", "beta1", "beta2", "tau"}
	var use []string
	for i, a := range allowed {
		if kind.uses[i] {
			use = append(use, a)
		}
	}
	if err := c.only(name, use...); err != nil {
		return nil, err
	}
	if _, err := newConfig(c.common); err != nil {
		return nil, err
	}
	r := &ServerOptimizer{name: name, kind: kind, common: c.common, statePath: c.statePath}
	vals := kind.defaults
	for i, given := range []float64{c.lr, c.beta1, c.beta2, c.tau} {
		if c.set[allowed[i]] {
			vals[i] = given
		}
	}
	r.lr, r.beta1, r.beta2, r.tau = vals[0], vals[1], vals[2], vals[3]
	if err := r.open(c); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// NewFedAvgM is NewServerOptimizer("fedavgm", opts...).
func NewFedAvgM(opts ...RoundOption) (*ServerOptimizer, error) {
	return NewServerOptimizer("fedavgm", opts...)
}

// NewFedAdagrad is NewServerOptimizer("fedadagrad", opts...).
func NewFedAdagrad(opts ...RoundOption) (*ServerOptimizer, error) {
	return NewServerOptimizer("fedadagrad", opts...)
}

// NewFedAdam is NewServerOptimizer("fedadam", opts...).
func NewFedAdam(opts ...RoundOption) (*ServerOptimizer, error) {
	return NewServerOptimizer("fedadam", opts...)
}

// NewFedYogi is NewServerOptimizer("fedyogi", opts...).
func NewFedYogi(opts ...RoundOption) (*ServerOptimizer, error) {
	return NewServerOptimizer("fedyogi", opts...)
}

// open maps the global model and loads the state, checking that they belong together.
func (r *ServerOptimizer) open(c *roundConfig) error {
	var err error
	if r.global, r.ownGlobal, err = c.openGlobal(r.name); err != nil {
		return err
	}
	if r.statePath == "" {
		return nil
	}
	ok, err := fileExists(r.statePath)
	if err != nil || !ok {
		return err // a missing state file starts from round 1
	}
	st, err := LoadOptimizerState(r.statePath)
	if err != nil {
		return err
	}
	r.state = st
	if err := st.compatible(r); err != nil {
		return fmt.Errorf("%s: %w", r.statePath, err)
	}
	if _, err := st.M.Layout().Match(r.global.Layout(), false); err != nil {
		return fmt.Errorf("%s: %w: %w (the global model is %s)", r.statePath, ErrState, err, globalName(r.global))
	}
	return nil
}

// Name is the optimizer's name ("fedadam", ...).
func (r *ServerOptimizer) Name() string { return r.name }

// Round is the number of rounds applied so far (by this rule and the state it continued).
func (r *ServerOptimizer) Round() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.round()
}

func (r *ServerOptimizer) round() int {
	if r.state == nil {
		return 0
	}
	return r.state.Round
}

// Global is the current global model: the one the next round's clients train from.
func (r *ServerOptimizer) Global() *tensor.Set {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.global
}

// State is the optimizer state after the last round (nil before the first). It stays valid
// until the next round or Close (in-memory rounds reuse the buffers of the state before).
func (r *ServerOptimizer) State() *OptimizerState {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.state
}

// SaveState writes the current state to path atomically.
func (r *ServerOptimizer) SaveState(path string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.state == nil {
		return fmt.Errorf("%w: %s has applied no round yet: nothing to save", ErrState, r.name)
	}
	return r.state.WriteFile(path)
}

// Close releases the files the rule mapped (the global model given by path, the loaded state).
func (r *ServerOptimizer) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	if r.ownGlobal && r.global != nil {
		errs = append(errs, r.global.Close())
	}
	r.global, r.ownGlobal = nil, false
	errs = append(errs, r.state.Close())
	r.state, r.retired = nil, nil
	return errors.Join(errs...)
}

// Aggregate runs one round in memory and returns the new global model.
func (r *ServerOptimizer) Aggregate(ctx context.Context, updates []*tensor.Set, weights []float64) (*tensor.Set, *Report, error) {
	return r.run(ctx, "", updates, weights)
}

// AggregateFile runs one round and writes the new global model to path and, with
// WithStateFile, the new state to the state file, both atomically: the model file is committed
// first, then the state file; on failure neither changes.
func (r *ServerOptimizer) AggregateFile(ctx context.Context, path string, updates []*tensor.Set, weights []float64) (*Report, error) {
	if path == "" {
		return nil, fmt.Errorf("%w: empty output path", ErrOption)
	}
	_, rep, err := r.run(ctx, path, updates, weights)
	return rep, err
}

func (r *ServerOptimizer) params() kernels.OptimParams {
	return kernels.OptimParams{LR: float32(r.lr), Beta1: float32(r.beta1), Beta2: float32(r.beta2), Tau: float32(r.tau)}
}

// optimizerOf is the fused optimizer step for the chunks dev's sum hands over. Those chunks are
// in host memory, so a device whose memory is the host's (the CPU) steps them itself and any
// other gets the host CPU's step: a GPU would copy every chunk there and back for a step that
// is bound by memory bandwidth on either side. The GPU's Optimizer serves resident data.
func optimizerOf(dev device.Device) (device.Optimizer, error) {
	if o, ok := dev.(device.Optimizer); ok && dev.Info().Kind == "cpu" {
		return o, nil
	}
	cpu, err := defaultCPU()
	if err != nil {
		return nil, err
	}
	return cpu.(device.Optimizer), nil
}

func (r *ServerOptimizer) run(ctx context.Context, path string, updates []*tensor.Set, weights []float64) (*tensor.Set, *Report, error) {
	start := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.global == nil {
		return nil, nil, fmt.Errorf("%w: %s is closed", ErrOption, r.name)
	}
	mr, err := newModelRound(ctx, r.name, updates, weights, r.global, r.common)
	if err != nil {
		return nil, nil, err
	}
	p := mr.b.plan
	mIn, vIn, err := r.state.views(p)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", r.stateName(), err)
	}
	stepper, err := optimizerOf(mr.b.cfg.dev)
	if err != nil {
		return nil, nil, err
	}
	second := r.kind.rule.SecondMoment()
	prefixes := []string{MomentPrefix}
	if second {
		prefixes = append(prefixes, SecondMomentPrefix)
	}
	next := &OptimizerState{Rule: r.name, Round: r.round() + 1}
	var used [4]float64 // the hyperparameters the rule uses; the others stay 0 in the state
	for i, v := range []float64{r.lr, r.beta1, r.beta2, r.tau} {
		if r.kind.uses[i] {
			used[i] = v
		}
	}
	next.LR, next.Beta1, next.Beta2, next.Tau = used[0], used[1], used[2], used[3]
	kp := r.params()
	tau2 := kp.Tau * kp.Tau
	deltaSq := make([]float64, len(p.chunks)) // per chunk, summed in chunk order: deterministic
	step := func(c int, pc device.Piece, x []float32, sides [][]float32) error {
		t, lo, hi := pc.Field, pc.Lo, pc.Hi
		deltaSq[c] += kernels.SumSquaresF32(f32Bytes(x))
		s := &device.OptimJob{Rule: r.kind.rule, LR: kp.LR, Beta1: kp.Beta1, Beta2: kp.Beta2, Tau: kp.Tau,
			X: mr.gx[t][lo:hi], D: x, XOut: x, MOut: sides[0]}
		if second {
			s.VOut = sides[1]
		}
		if mIn == nil { // round 1: m = 0, v = τ², built in the outputs and updated in place
			clear(s.MOut)
			s.M = s.MOut
			if second {
				for j := range s.VOut {
					s.VOut[j] = tau2
				}
				s.V = s.VOut
			}
		} else {
			s.M = mIn[t][lo:hi]
			if second {
				s.V = vIn[t][lo:hi]
			}
		}
		if _, err := stepper.Optimize(ctx, s); err != nil {
			return err
		}
		if err := mr.finiteCheck("model", pc, s.XOut); err != nil {
			return err
		}
		if err := mr.finiteCheck("first moment", pc, s.MOut); err != nil {
			return err
		}
		if second {
			return mr.finiteCheck("second moment", pc, s.VOut)
		}
		return nil
	}
	post := func(c int, pieces []piece) error {
		for _, p := range pieces {
			if err := step(c, p.pc, p.x, p.sides); err != nil {
				return err
			}
		}
		return nil
	}
	meta := mr.b.metadata()
	meta["wattagg.rule"] = r.name
	meta[stateRoundKey] = strconv.Itoa(next.Round)
	statePath := ""
	if path != "" {
		statePath = r.statePath
	}
	var recycle []*tensor.Set
	if statePath == "" && r.retired != nil {
		recycle = []*tensor.Set{r.retired.M, r.retired.V}
	}
	outs, err := mr.outputs(path, meta, prefixes, statePath, next.metadata(), recycle, post)
	if err != nil {
		return nil, nil, err
	}
	stats, err := mr.sum(ctx, mr.b.weights, -mr.b.total, 1/mr.b.total, outs.out)
	if err := outs.finish(ctx, err); err != nil {
		return nil, nil, err
	}

	// Committed: move the rule on to the new model and state (mapped from the files written).
	model := outs.model
	if path != "" {
		if model, err = safetensors.Open(path); err != nil {
			return nil, nil, err
		}
	} else {
		for k, v := range meta {
			model.Metadata[k] = v
		}
	}
	if statePath != "" {
		st, err := LoadOptimizerState(statePath)
		if err != nil {
			if path != "" {
				model.Close()
			}
			return nil, nil, err
		}
		next = st
	} else {
		next.M = outs.state[0]
		if second {
			next.V = outs.state[1]
		}
	}
	readState := int64(0)
	if mIn != nil {
		readState = int64(len(prefixes)) * p.size
	}
	r.retired = nil
	if r.state != nil && r.state.closer == nil && statePath == "" {
		r.retired = r.state // in memory, made by this rule: its buffers serve the next round
	} else {
		r.state.Close()
	}
	if r.ownGlobal {
		r.global.Close()
	}
	r.state, r.global, r.ownGlobal = next, model, path != ""

	rep := mr.b.report(outs.written())
	rep.Rule = r.name
	rep.Output = path
	rep.BytesRead += r.globalBytes(mr) + readState
	var dsq float64
	for _, s := range deltaSq {
		dsq += s
	}
	rep.Details = map[string]float64{"round": float64(next.Round), "server_lr": r.lr, "beta1": r.beta1, "delta_norm": math.Sqrt(dsq)}
	if r.kind.uses[2] {
		rep.Details["beta2"] = r.beta2
	}
	if r.kind.uses[3] {
		rep.Details["tau"] = r.tau
	}
	rep.PerClient = make([]ClientDiag, len(updates))
	for k, u := range updates {
		rep.PerClient[k] = ClientDiag{Source: sourceName(u, k), Weight: rep.Weights[k]}
	}
	rep.finish(time.Since(start).Seconds(), []device.Stats{stats})
	if path != "" {
		return nil, rep, nil
	}
	return model, rep, nil
}

func (r *ServerOptimizer) globalBytes(mr *modelRound) int64 {
	var n int64
	for _, s := range mr.gspans {
		n += int64(len(s.Data))
	}
	return n
}

func (r *ServerOptimizer) stateName() string {
	if r.statePath != "" {
		return r.statePath
	}
	return r.name + " state"
}
