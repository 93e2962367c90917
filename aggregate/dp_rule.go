package aggregate

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// Defaults of the private means.
const (
	// DefaultTargetDelta is the δ the accountant reports ε for unless WithTargetDelta. Choose
	// δ well below 1/(population size) for a meaningful guarantee.
	DefaultTargetDelta = 1e-5
	// Adaptive clipping (Andrew et al., 2021, Section 3): the initial bound, the clip learning
	// rate and the target quantile they use.
	DefaultInitialClip      = 0.1
	DefaultClipLearningRate = 0.2
	DefaultTargetQuantile   = 0.5
)

// PrivateMean is central differential privacy for FedAvg, as a Rule: the Gaussian mechanism of
// DP-FedAvg (McMahan et al., 2018, "Learning Differentially Private Recurrent Language Models")
// with a fixed clipping bound ("dp-fixed"), or with the bound adapted every round toward a
// quantile of the update norms ("dp-adaptive"; Andrew et al., 2021, "Differentially Private
// Learning with Adaptive Clipping").
//
// Each round, clients train from the global model x_t and send their models; the rule clips
// each client's delta Δ_k = x_k - x_t to L2 norm C, averages, adds Gaussian noise and moves the
// model:
//
//	x_{t+1} = x_t + (Σ_k min(1, C/‖Δ_k‖)·Δ_k) / D + N(0, σ²),   σ = z_Δ·C / D
//
// in one pass over the client models and x_t after one pass computing the norms. D is the
// number of clients received, as Flower's server-side clipping divides by it, or, with
// WithExpectedClients, the expected number q·N: DP-FedAvg's fixed-denominator estimator,
// whose sensitivity C/D does not depend on how many clients happened to be sampled — use it
// when that number must not leak. Every client counts once: weights, if given, must be equal
// (a client's examples are its own business; num_examples metadata is ignored). The noise is
// drawn from ChaCha8 keyed by crypto/rand every round (see dp_noise.go).
//
// With fixed clipping z_Δ = z, the noise multiplier. With adaptive clipping the rule also
// counts the clients that were not clipped, noises the count, b̃ = (Σ_k 1[‖Δ_k‖ ≤ C] +
// N(0, σ_b²)) / D, and moves the bound geometrically, C ← C·exp(-η_C·(b̃ - γ)); the two
// releases together are the Gaussian mechanism with multiplier z when the update noise is
// z_Δ = (z⁻² - (2σ_b)⁻²)^(-1/2) (their Theorem 1), so 2σ_b must exceed z.
//
// The accountant composes every round's (z, q) and the report gives ε for δ over the rounds
// so far (Details: epsilon, delta, rdp_order, rounds, noise_multiplier, sampling_rate,
// clip_bound, noise_std, and for adaptive clipping next_clip_bound, unclipped_fraction — the
// noised one — and update_noise_multiplier; without noise ε is infinite, reported as
// epsilon_infinite = 1 since JSON has no infinity). Report.PerClient holds each client's delta norm
// and whether it was clipped: server-side diagnostics, not privatised; do not publish them.
//
// Like the server optimizers, the rule is stateful: after a successful round its global model
// and state (round, bound, accountant) move on; a failed round changes nothing.
type PrivateMean struct {
	name     string
	adaptive bool
	clip0    float64 // the fixed bound, or adaptive clipping's initial one
	z, q     float64
	delta    float64
	gamma    float64
	etaC     float64
	sigmaB   float64 // 0: expected clients / 20
	expected int     // 0: divide by the clients received
	seed     *uint64
	common   []Option

	statePath string

	mu        sync.Mutex
	global    *tensor.Set
	ownGlobal bool
	state     *PrivacyState // nil before round 1
}

var _ FileRule = (*PrivateMean)(nil)

// NewPrivateMean builds "dp-fixed" or "dp-adaptive". Both need the global model (WithGlobal,
// WithGlobalFile) and WithNoiseMultiplier; dp-fixed needs WithClipBound, dp-adaptive takes it
// as the initial bound (default 0.1) and WithTargetQuantile (0.5), WithClipLearningRate (0.2)
// and WithClippedCountStddev (expected clients / 20). WithSamplingRate (default 1: no
// amplification claimed), WithTargetDelta (1e-5), WithExpectedClients, WithStateFile and
// WithInsecureNoiseSeed apply to both.
func NewPrivateMean(name string, opts ...RoundOption) (*PrivateMean, error) {
	c, err := newRoundConfig(opts)
	if err != nil {
		return nil, err
	}
	allowed := []string{"clip", "noise", "sampling", "delta", "expected", "seed"}
	switch name {
	case "dp-fixed":
	case "dp-adaptive":
		allowed = append(allowed, "quantile", "clipLR", "countStddev")
	default:
		return nil, fmt.Errorf("%w: unknown private mean %q (want dp-fixed or dp-adaptive)", ErrOption, name)
	}
	if err := c.only(name, allowed...); err != nil {
		return nil, err
	}
	if _, err := newConfig(c.common); err != nil {
		return nil, err
	}
	r := &PrivateMean{name: name, adaptive: name == "dp-adaptive", common: c.common, statePath: c.statePath,
		clip0: c.clip, z: c.noise, q: 1, delta: DefaultTargetDelta, gamma: DefaultTargetQuantile,
		etaC: DefaultClipLearningRate, sigmaB: c.countStddev, expected: c.expectedClients, seed: c.insecureSeed}
	if !c.set["noise"] {
		return nil, fmt.Errorf("%w: %s needs a noise multiplier", ErrOption, name)
	}
	if !c.set["clip"] {
		if !r.adaptive {
			return nil, fmt.Errorf("%w: %s needs a clipping bound", ErrOption, name)
		}
		r.clip0 = DefaultInitialClip
	}
	if c.set["sampling"] {
		r.q = c.sampling
	}
	if c.set["delta"] {
		r.delta = c.delta
	}
	if c.set["quantile"] {
		r.gamma = c.quantile
	}
	if c.set["clipLR"] {
		r.etaC = c.clipLR
	}
	if r.adaptive && r.z > 0 && (r.sigmaB > 0 || r.expected > 0) {
		if _, err := r.updateMultiplier(r.expected); err != nil {
			return nil, err
		}
	}
	if err := r.open(c); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// NewDPFixedClipping is NewPrivateMean("dp-fixed", opts...).
func NewDPFixedClipping(opts ...RoundOption) (*PrivateMean, error) {
	return NewPrivateMean("dp-fixed", opts...)
}

// NewDPAdaptiveClipping is NewPrivateMean("dp-adaptive", opts...).
func NewDPAdaptiveClipping(opts ...RoundOption) (*PrivateMean, error) {
	return NewPrivateMean("dp-adaptive", opts...)
}

func (r *PrivateMean) open(c *roundConfig) error {
	var err error
	if r.global, r.ownGlobal, err = c.openGlobal(r.name); err != nil {
		return err
	}
	if r.statePath == "" {
		return nil
	}
	ok, err := fileExists(r.statePath)
	if err != nil || !ok {
		return err
	}
	st, err := LoadPrivacyState(r.statePath)
	if err != nil {
		return err
	}
	if err := r.compatible(st); err != nil {
		return fmt.Errorf("%s: %w", r.statePath, err)
	}
	r.state = st
	return nil
}

// compatible checks that st was made by this mechanism with its adaptive hyperparameters.
func (r *PrivateMean) compatible(st *PrivacyState) error {
	if st.Mechanism != r.name {
		return fmt.Errorf("%w: the state was made by %s, this rule is %s", ErrState, st.Mechanism, r.name)
	}
	if !r.adaptive {
		return nil
	}
	names := []string{"target quantile", "clip learning rate", "clipped-count noise"}
	mine := []float64{r.gamma, r.etaC, r.sigmaB}
	for i, v := range []float64{st.TargetQuantile, st.ClipLearningRate, st.CountStddev} {
		if v != mine[i] {
			return fmt.Errorf("%w: the state was made with %s %v, this rule has %v (start a new state to change it)", ErrState, names[i], v, mine[i])
		}
	}
	return nil
}

// countStddev is σ_b for a round whose denominator is d.
func (r *PrivateMean) countStddev(d int) float64 {
	if r.sigmaB > 0 {
		return r.sigmaB
	}
	return float64(d) / 20
}

// updateMultiplier is z_Δ, the multiplier of the update noise, for a round whose denominator
// is d: z for fixed clipping, (z⁻² - (2σ_b)⁻²)^(-1/2) for adaptive clipping.
func (r *PrivateMean) updateMultiplier(d int) (float64, error) {
	if !r.adaptive || r.z == 0 {
		return r.z, nil
	}
	sb := r.countStddev(d)
	if !(2*sb > r.z) {
		return 0, fmt.Errorf("%w: %s: noise multiplier %v needs a clipped-count noise above %v, have σ_b = %v (more clients, a larger σ_b or a smaller multiplier)",
			ErrOption, r.name, r.z, r.z/2, sb)
	}
	return 1 / math.Sqrt(1/(r.z*r.z)-1/(4*sb*sb)), nil
}

// Name is "dp-fixed" or "dp-adaptive".
func (r *PrivateMean) Name() string { return r.name }

// Global is the current global model.
func (r *PrivateMean) Global() *tensor.Set {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.global
}

// State is the privacy state after the last round (nil before the first); a copy.
func (r *PrivateMean) State() *PrivacyState {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.state == nil {
		return nil
	}
	return r.state.clone()
}

// Close releases the global model the rule mapped from a file.
func (r *PrivateMean) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var err error
	if r.ownGlobal && r.global != nil {
		err = r.global.Close()
	}
	r.global, r.ownGlobal = nil, false
	return err
}

// Aggregate runs one private round in memory and returns the new global model.
func (r *PrivateMean) Aggregate(ctx context.Context, updates []*tensor.Set, weights []float64) (*tensor.Set, *Report, error) {
	return r.run(ctx, "", updates, weights)
}

// AggregateFile runs one private round and writes the new global model to path and, with
// WithStateFile, the new state, both atomically, the model first; on failure neither changes.
func (r *PrivateMean) AggregateFile(ctx context.Context, path string, updates []*tensor.Set, weights []float64) (*Report, error) {
	if path == "" {
		return nil, fmt.Errorf("%w: empty output path", ErrOption)
	}
	_, rep, err := r.run(ctx, path, updates, weights)
	return rep, err
}

func (r *PrivateMean) run(ctx context.Context, path string, updates []*tensor.Set, weights []float64) (*tensor.Set, *Report, error) {
	start := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.global == nil {
		return nil, nil, fmt.Errorf("%w: %s is closed", ErrOption, r.name)
	}
	for k, w := range weights {
		if w != weights[0] {
			return nil, nil, fmt.Errorf("%w: %s counts every client once: weights must be equal (weight %d is %v, weight 1 is %v)",
				ErrWeight, r.name, k+1, w, weights[0])
		}
	}
	mr, err := newModelRound(ctx, r.name, updates, weights, r.global, r.common)
	if err != nil {
		return nil, nil, err
	}
	n := len(updates)
	d := n
	if r.expected > 0 {
		d = r.expected
	}
	zU, err := r.updateMultiplier(d)
	if err != nil {
		return nil, nil, err
	}
	norms, err := mr.deltaNorms(ctx)
	if err != nil {
		return nil, nil, err
	}
	for k, nk := range norms {
		if math.IsNaN(nk) || math.IsInf(nk, 0) {
			if err := device.CheckFinite(mr.b.plan.fields, mr.b.inputs[k]); err != nil {
				if nf, ok := err.(*tensor.NonFiniteError); ok {
					nf.Source = sourceName(updates[k], k)
				}
				return nil, nil, err
			}
			return nil, nil, fmt.Errorf("%s: %w: the norm of its delta is %v", sourceName(updates[k], k), ErrOverflow, nk)
		}
	}

	prev := r.state
	round := 1
	clip := r.clip0
	if prev != nil {
		round = prev.Round + 1
		if r.adaptive {
			clip = prev.ClipBound
		}
	}
	scales := make([]float64, n)
	var scaleSum float64
	unclipped := 0
	rep := mr.b.report(0)
	rep.PerClient = make([]ClientDiag, n)
	for k, nk := range norms {
		scales[k] = 1
		if nk > clip {
			scales[k] = clip / nk
		} else {
			unclipped++
		}
		scaleSum += scales[k]
		norm, clipped := nk, nk > clip
		rep.PerClient[k] = ClientDiag{Source: sourceName(updates[k], k), Weight: 1 / float64(n), Norm: &norm, Clipped: &clipped}
	}
	sigma := zU * clip / float64(d)

	master := rand.NewChaCha8(roundSeed(r.seed, round))
	countNoise := newNormals(masterKey(master)).next() // drawn first, whatever the mechanism
	keys := chunkKeys(master, len(mr.b.plan.chunks))
	post := func(c int, pieces []piece) error {
		// One stream per chunk, consumed piece by piece in order: the same noise whoever runs
		// the chunk.
		st := newNormals(keys[c])
		for _, p := range pieces {
			if sigma > 0 {
				st.addNoise(p.x, sigma)
			}
			if err := mr.finiteCheck("model", p.pc, p.x); err != nil {
				return err
			}
		}
		return nil
	}
	outs, err := mr.outputs(path, r.modelMeta(mr, round), nil, "", nil, nil, post)
	if err != nil {
		return nil, nil, err
	}
	stats, err := mr.sum(ctx, scales, float64(d)-scaleSum, 1/float64(d), outs.out)
	if err := outs.finish(ctx, err); err != nil {
		return nil, nil, err
	}

	next := &PrivacyState{Mechanism: r.name, Round: round, ClipBound: clip}
	if prev != nil {
		next.Accountant = Accountant{steps: prev.Accountant.Steps()}
	}
	if r.adaptive {
		next.TargetQuantile, next.ClipLearningRate, next.CountStddev = r.gamma, r.etaC, r.sigmaB
	}
	if err := next.Accountant.Compose(r.z, r.q, 1); err != nil {
		return nil, nil, err
	}
	var noisedFraction, sb float64
	if r.adaptive {
		sb = r.countStddev(d)
		if r.z == 0 {
			sb = 0 // no privacy asked: the count is exact
		}
		noisedFraction = (float64(unclipped) + sb*countNoise) / float64(d)
		next.ClipBound = clip * math.Exp(-r.etaC*(noisedFraction-r.gamma))
	}
	eps, order, err := next.Accountant.Epsilon(r.delta)
	if err != nil {
		return nil, nil, err
	}
	if path != "" && r.statePath != "" {
		if err := next.WriteFile(r.statePath); err != nil {
			return nil, nil, fmt.Errorf("the model was written but its privacy state was not, the round's privacy cost is unrecorded: %w", err)
		}
	}

	// Committed: move on.
	model := outs.model
	if path != "" {
		if model, err = safetensors.Open(path); err != nil {
			return nil, nil, err
		}
	} else {
		for k, v := range r.modelMeta(mr, round) {
			model.Metadata[k] = v
		}
	}
	if r.ownGlobal {
		r.global.Close()
	}
	r.global, r.ownGlobal, r.state = model, path != "", next

	rep.Rule = r.name
	rep.Output = path
	rep.BytesWritten = outs.written()
	rep.BytesRead = 2*mr.b.bytesIn + 2*mr.global.NumBytes() // the norms' pass and the sum's
	rep.WeightsFrom = WeightsUniform
	for k := range rep.Weights {
		rep.Weights[k] = 1 / float64(n)
	}
	rep.Details = map[string]float64{
		"epsilon": eps, "delta": r.delta, "rdp_order": order, "rounds": float64(next.Accountant.Rounds()),
		"noise_multiplier": r.z, "sampling_rate": r.q, "clip_bound": clip, "noise_std": sigma,
		"denominator": float64(d),
	}
	if r.adaptive {
		rep.Details["next_clip_bound"] = next.ClipBound
		rep.Details["unclipped_fraction"] = noisedFraction
		rep.Details["update_noise_multiplier"] = zU
		rep.Details["count_noise_std"] = sb
	}
	if r.seed != nil {
		rep.Details["insecure_seed"] = 1
	}
	if math.IsInf(eps, 1) { // no noise, no privacy: JSON has no infinity
		delete(rep.Details, "epsilon")
		delete(rep.Details, "rdp_order")
		rep.Details["epsilon_infinite"] = 1
	}
	rep.finish(time.Since(start).Seconds(), []device.Stats{stats})
	if path != "" {
		return nil, rep, nil
	}
	return model, rep, nil
}

func (r *PrivateMean) modelMeta(mr *modelRound, round int) map[string]string {
	m := mr.b.metadata()
	m["wattagg.rule"] = r.name
	m[stateRoundKey] = strconv.Itoa(round)
	delete(m, NumExamplesKey)
	return m
}

// masterKey draws a 32-byte key from the master stream.
func masterKey(master *rand.ChaCha8) [32]byte {
	var k [32]byte
	master.Read(k[:])
	return k
}
