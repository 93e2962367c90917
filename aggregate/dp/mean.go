package dp

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"

	"github.com/wattagg/wattagg/aggregate"
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

// Mean is central differential privacy for FedAvg, as a Rule: the Gaussian mechanism of
// DP-FedAvg (McMahan et al., 2018, "Learning Differentially Private Recurrent Language Models")
// with a fixed clipping bound ("dp-fixed"), or with the bound adapted every round toward a
// quantile of the update norms ("dp-adaptive"; Andrew et al., 2021, "Differentially Private
// Learning with Adaptive Clipping").
//
// Each round, clients train from the global model x_t (aggregate.WithGlobal) and send their
// models; the rule clips each client's delta Δ_k = x_k - x_t to L2 norm C as it arrives,
// averages, adds Gaussian noise and moves the model:
//
//	x_{t+1} = x_t + (Σ_k min(1, C/‖Δ_k‖)·Δ_k) / D + N(0, σ²),   σ = z_Δ·C / D
//
// D is the number of clients received, as Flower's server-side clipping divides by it, or, with
// WithExpectedClients, the expected number q·N: DP-FedAvg's fixed-denominator estimator, whose
// sensitivity C/D does not depend on how many clients happened to be sampled — use it when that
// number must not leak. Every client counts once: weights, if given, must be equal (a client's
// examples are its own business; num_examples metadata is ignored). The noise is drawn from
// ChaCha8 keyed by crypto/rand every round (see noise.go). Composed before a server optimizer
// ("dp-fixed,fedadam", DP-FedAdam) the noised averaged delta is the optimizer's Δ.
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
// epsilon_infinite = 1 since JSON has no infinity). Report.PerClient holds each client's delta
// norm and whether it was clipped: server-side diagnostics, not privatised; do not publish them.
//
// The rule is stateful: after a successful round its state (round, bound, accountant) moves
// on; a failed round changes nothing. With WithStateFile the new state is recorded before the
// noised model is released.
type Mean struct {
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

	statePath string

	mu     sync.Mutex
	loaded bool
	state  *PrivacyState // nil before round 1
	busy   bool
}

// Names lists the mechanisms New knows.
func Names() []string { return []string{"dp-adaptive", "dp-fixed"} }

// New builds "dp-fixed" or "dp-adaptive". Both need WithNoiseMultiplier; dp-fixed needs
// WithClipBound, dp-adaptive takes it as the initial bound (default 0.1) and
// WithTargetQuantile (0.5), WithClipLearningRate (0.2) and WithClippedCountStddev (expected
// clients / 20). WithSamplingRate (default 1: no amplification claimed), WithTargetDelta
// (1e-5), WithExpectedClients, WithStateFile and WithInsecureNoiseSeed apply to both.
func New(name string, opts ...Option) (*Mean, error) {
	c := &config{set: map[string]bool{}}
	for _, o := range opts {
		if o == nil {
			return nil, fmt.Errorf("%w: nil option", aggregate.ErrOption)
		}
		if err := o(c); err != nil {
			return nil, err
		}
	}
	allowed := map[string]bool{"clip": true, "noise": true, "sampling": true, "delta": true, "expected": true, "seed": true, "state": true}
	switch name {
	case "dp-fixed":
	case "dp-adaptive":
		allowed["quantile"], allowed["clipLR"], allowed["countStddev"] = true, true, true
	default:
		return nil, fmt.Errorf("%w: unknown private mean %q (want dp-fixed or dp-adaptive)", aggregate.ErrOption, name)
	}
	for o := range c.set {
		if !allowed[o] {
			return nil, fmt.Errorf("%w: %s has no %s", aggregate.ErrOption, name, optionNames[o])
		}
	}
	m := &Mean{name: name, adaptive: name == "dp-adaptive", statePath: c.statePath,
		clip0: c.clip, z: c.noise, q: 1, delta: DefaultTargetDelta, gamma: DefaultTargetQuantile,
		etaC: DefaultClipLearningRate, sigmaB: c.countStddev, expected: c.expectedClients, seed: c.insecureSeed}
	if !c.set["noise"] {
		return nil, fmt.Errorf("%w: %s needs a noise multiplier", aggregate.ErrOption, name)
	}
	if !c.set["clip"] {
		if !m.adaptive {
			return nil, fmt.Errorf("%w: %s needs a clipping bound", aggregate.ErrOption, name)
		}
		m.clip0 = DefaultInitialClip
	}
	if c.set["sampling"] {
		m.q = c.sampling
	}
	if c.set["delta"] {
		m.delta = c.delta
	}
	if c.set["quantile"] {
		m.gamma = c.quantile
	}
	if c.set["clipLR"] {
		m.etaC = c.clipLR
	}
	if m.adaptive && m.z > 0 && (m.sigmaB > 0 || m.expected > 0) {
		if _, err := m.updateMultiplier(m.expected); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// NewFixedClipping is New("dp-fixed", opts...).
func NewFixedClipping(opts ...Option) (*Mean, error) { return New("dp-fixed", opts...) }

// NewAdaptiveClipping is New("dp-adaptive", opts...).
func NewAdaptiveClipping(opts ...Option) (*Mean, error) { return New("dp-adaptive", opts...) }

// Name is "dp-fixed" or "dp-adaptive".
func (m *Mean) Name() string { return m.name }

// Requirements: a sum with a global model, every client counted once.
func (m *Mean) Requirements() aggregate.Requirements {
	return aggregate.Requirements{Kind: aggregate.KindSum, Weights: aggregate.WeightsEqual, Global: true}
}

// StatePaths is the state file (WithStateFile), for the engine's crash recovery.
func (m *Mean) StatePaths() []string { return []string{m.statePath} }

// State is the privacy state after the last round (nil before the first); a copy.
func (m *Mean) State() *PrivacyState {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.state == nil {
		return nil
	}
	return m.state.clone()
}

// countStddev is σ_b for a round whose denominator is d.
func (m *Mean) countStddev(d int) float64 {
	if m.sigmaB > 0 {
		return m.sigmaB
	}
	return float64(d) / 20
}

// updateMultiplier is z_Δ, the multiplier of the update noise, for a round whose denominator
// is d: z for fixed clipping, (z⁻² - (2σ_b)⁻²)^(-1/2) for adaptive clipping.
func (m *Mean) updateMultiplier(d int) (float64, error) {
	if !m.adaptive || m.z == 0 {
		return m.z, nil
	}
	sb := m.countStddev(d)
	if !(2*sb > m.z) {
		return 0, fmt.Errorf("%w: %s: noise multiplier %v needs a clipped-count noise above %v, have σ_b = %v (more clients, a larger σ_b or a smaller multiplier)",
			aggregate.ErrOption, m.name, m.z, m.z/2, sb)
	}
	return 1 / math.Sqrt(1/(m.z*m.z)-1/(4*sb*sb)), nil
}

// compatible checks that st was made by this mechanism with its adaptive hyperparameters.
func (m *Mean) compatible(st *PrivacyState) error {
	if st.Mechanism != m.name {
		return fmt.Errorf("%w: the state was made by %s, this rule is %s", aggregate.ErrState, st.Mechanism, m.name)
	}
	if !m.adaptive {
		return nil
	}
	names := []string{"target quantile", "clip learning rate", "clipped-count noise"}
	mine := []float64{m.gamma, m.etaC, m.sigmaB}
	for i, v := range []float64{st.TargetQuantile, st.ClipLearningRate, st.CountStddev} {
		if v != mine[i] {
			return fmt.Errorf("%w: the state was made with %s %v, this rule has %v (start a new state to change it)", aggregate.ErrState, names[i], v, mine[i])
		}
	}
	return nil
}

// load reads the state file the first time a round begins.
func (m *Mean) load() error {
	if m.loaded || m.statePath == "" {
		m.loaded = true
		return nil
	}
	if _, err := os.Stat(m.statePath); errors.Is(err, fs.ErrNotExist) {
		m.loaded = true
		return nil
	}
	st, err := LoadPrivacyState(m.statePath)
	if err != nil {
		return err
	}
	if err := m.compatible(st); err != nil {
		return fmt.Errorf("%s: %w", m.statePath, err)
	}
	m.state, m.loaded = st, true
	return nil
}

// Begin begins a round: the bound and the round's noise keys.
func (m *Mean) Begin(ctx context.Context, env *aggregate.Env) (aggregate.Stage, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.busy {
		return nil, fmt.Errorf("%w: %s is in another round: rounds of a stateful rule are serialised", aggregate.ErrOption, m.name)
	}
	if err := m.load(); err != nil {
		return nil, err
	}
	s := &privateRound{m: m, round: 1, clip: m.clip0}
	if prev := m.state; prev != nil {
		s.round = prev.Round + 1
		if m.adaptive {
			s.clip = prev.ClipBound
		}
	}
	master := rand.NewChaCha8(roundSeed(m.seed, s.round))
	s.countNoise = newNormals(masterKey(master)).next() // drawn first, whatever the mechanism
	s.keys = chunkKeys(master, env.Chunks)
	m.busy = true
	return s, nil
}

// privateRound is one round of a private mean.
type privateRound struct {
	m          *Mean
	round      int
	clip       float64
	countNoise float64
	keys       [][32]byte
	unclipped  int
	d          int
	zU, sigma  float64
	next       *PrivacyState
	details    map[string]float64
}

// Weigh clips the client's delta: the factor min(1, C/‖x_k − x_t‖).
func (s *privateRound) Weigh(ctx context.Context, c *aggregate.Client) (float64, error) {
	nk, err := c.DeltaNorm(ctx)
	if err != nil {
		return 0, err
	}
	if math.IsNaN(nk) || math.IsInf(nk, 0) {
		return 0, c.NonFinite(ctx, "the norm of its delta", nk)
	}
	f := 1.0
	if nk > s.clip {
		f = s.clip / nk
	} else {
		s.unclipped++
	}
	c.Diag().Norm = aggregate.Ptr(nk)
	c.Diag().Clipped = aggregate.Ptr(nk > s.clip)
	return f, nil
}

// Denominator is the expected clients, or the clients received.
func (s *privateRound) Denominator(clients int, _ float64) float64 {
	if s.m.expected > 0 {
		return float64(s.m.expected)
	}
	return float64(clients)
}

// Finish fixes the noise of the round once the denominator is known.
func (s *privateRound) Finish(_ context.Context, info *aggregate.SumInfo) error {
	s.d = int(info.Denominator)
	zU, err := s.m.updateMultiplier(s.d)
	if err != nil {
		return err
	}
	s.zU = zU
	s.sigma = zU * s.clip / float64(s.d)
	return nil
}

// Sides: none.
func (s *privateRound) Sides() *aggregate.Sides { return nil }

// Process adds the noise to a chunk: one ChaCha8 stream per chunk, consumed piece by piece in
// order, so the noise is the same whoever runs the chunk.
func (s *privateRound) Process(_ context.Context, c *aggregate.Chunk) error {
	st := newNormals(s.keys[c.Index])
	for i := range c.Pieces {
		p := &c.Pieces[i]
		if s.sigma > 0 {
			st.addNoise(p.X, s.sigma)
		}
		if err := aggregate.CheckFinite(s.m.name, "model", p, p.X); err != nil {
			return err
		}
	}
	return nil
}

// Annotate records the round in the result.
func (s *privateRound) Annotate(md map[string]string) { md[aggregate.RoundKey] = strconv.Itoa(s.round) }

// Prepare accounts the round: the accountant composes it, adaptive clipping moves its bound,
// and, with a state file, the new state is written for the engine to publish before the model.
func (s *privateRound) Prepare(context.Context, *aggregate.Outcome) ([]*safetensors.Writer, error) {
	m := s.m
	next := &PrivacyState{Mechanism: m.name, Round: s.round, ClipBound: s.clip}
	if prev := m.state; prev != nil {
		next.Accountant = Accountant{steps: prev.Accountant.Steps()}
	}
	if m.adaptive {
		next.TargetQuantile, next.ClipLearningRate, next.CountStddev = m.gamma, m.etaC, m.sigmaB
	}
	if err := next.Accountant.Compose(m.z, m.q, 1); err != nil {
		return nil, err
	}
	var noisedFraction, sb float64
	if m.adaptive {
		sb = m.countStddev(s.d)
		if m.z == 0 {
			sb = 0 // no privacy asked: the count is exact
		}
		noisedFraction = (float64(s.unclipped) + sb*s.countNoise) / float64(s.d)
		next.ClipBound = s.clip * math.Exp(-m.etaC*(noisedFraction-m.gamma))
	}
	eps, order, err := next.Accountant.Epsilon(m.delta)
	if err != nil {
		return nil, err
	}
	s.next = next
	s.details = map[string]float64{
		"epsilon": eps, "delta": m.delta, "rdp_order": order, "rounds": float64(next.Accountant.Rounds()),
		"noise_multiplier": m.z, "sampling_rate": m.q, "clip_bound": s.clip, "noise_std": s.sigma,
		"denominator": float64(s.d),
	}
	if m.adaptive {
		s.details["next_clip_bound"] = next.ClipBound
		s.details["unclipped_fraction"] = noisedFraction
		s.details["update_noise_multiplier"] = s.zU
		s.details["count_noise_std"] = sb
	}
	if m.seed != nil {
		s.details["insecure_seed"] = 1
	}
	if math.IsInf(eps, 1) { // no noise, no privacy: JSON has no infinity
		delete(s.details, "epsilon")
		delete(s.details, "rdp_order")
		s.details["epsilon_infinite"] = 1
	}
	if m.statePath == "" {
		return nil, nil
	}
	w, err := next.writer(m.statePath)
	if err != nil {
		return nil, fmt.Errorf("%s: the privacy state cannot be recorded, so the noised model is not released: %w", m.name, err)
	}
	return []*safetensors.Writer{w}, nil
}

// Commit moves the mechanism on to the state recorded.
func (s *privateRound) Commit(*aggregate.Outcome) error {
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	s.m.state, s.m.busy = s.next, false
	return nil
}

// Abort ends a failed round: nothing moves.
func (s *privateRound) Abort() {
	s.m.mu.Lock()
	s.m.busy = false
	s.m.mu.Unlock()
}

// Report gives ε and the mechanism's figures.
func (s *privateRound) Report(rep *aggregate.Report) {
	for k, v := range s.details {
		rep.Detail(k, v)
	}
}

// masterKey draws a 32-byte key from the master stream.
func masterKey(master *rand.ChaCha8) [32]byte {
	var k [32]byte
	master.Read(k[:])
	return k
}
