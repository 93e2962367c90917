package aggregate

import (
	"fmt"
	"math"

	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// RoundOption configures the rules that move a global model from round to round: the server
// optimizers (NewServerOptimizer) and the private means (NewPrivateMean). Options check their
// values when the rule is built; a rule given an option it has no use for (a learning rate for a
// private mean, τ for FedAvgM) refuses it rather than ignore it silently. Every error wraps
// ErrOption.
type RoundOption func(*roundConfig) error

type roundConfig struct {
	common []Option
	set    map[string]bool // options given, by name

	global     *tensor.Set
	globalPath string
	statePath  string

	// Server optimizers.
	lr, beta1, beta2, tau float64

	// Private means.
	clip, noise, sampling, delta  float64
	quantile, clipLR, countStddev float64
	expectedClients               int
	insecureSeed                  *uint64
}

func (c *roundConfig) mark(name string) {
	if c.set == nil {
		c.set = map[string]bool{}
	}
	c.set[name] = true
}

func newRoundConfig(opts []RoundOption) (*roundConfig, error) {
	c := &roundConfig{}
	for _, o := range opts {
		if err := o(c); err != nil {
			return nil, err
		}
	}
	if c.global != nil && c.globalPath != "" {
		return nil, fmt.Errorf("%w: both WithGlobal and WithGlobalFile", ErrOption)
	}
	return c, nil
}

// only rejects the options given that rule does not use.
func (c *roundConfig) only(rule string, allowed ...string) error {
	ok := map[string]bool{"common": true, "global": true, "state": true}
	for _, a := range allowed {
		ok[a] = true
	}
	for name := range c.set {
		if !ok[name] {
			return fmt.Errorf("%w: %s has no %s", ErrOption, rule, optionNames[name])
		}
	}
	return nil
}

// optionNames says what each option sets, for messages.
var optionNames = map[string]string{
	"lr": "server learning rate", "beta1": "β1", "beta2": "β2", "tau": "τ",
	"clip": "clipping bound", "noise": "noise multiplier", "sampling": "client sampling rate",
	"delta": "target δ", "quantile": "target quantile", "clipLR": "clip learning rate",
	"countStddev": "clipped-count noise", "expected": "expected client count", "seed": "noise seed",
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// WithRuleOptions passes the options of the weighted mean (device, accumulator, chunk size,
// progress, metadata) to the rule. WithOutDType may only say f32 and WithOutput is refused: the
// global model the rules produce is kept in f32.
func WithRuleOptions(opts ...Option) RoundOption {
	return func(c *roundConfig) error {
		c.common = append(c.common, opts...)
		return nil
	}
}

// WithGlobal is the current global model x_t: clients trained from it and send their models,
// and the rule subtracts it to get their deltas. It must be f32 (the server's master copy) and
// hold the clients' tensors. The rule reads it and never writes it; after a round the rule moves
// on to the model it produced.
func WithGlobal(g *tensor.Set) RoundOption {
	return func(c *roundConfig) error {
		if g == nil {
			return fmt.Errorf("%w: nil global model", ErrOption)
		}
		c.global = g
		c.mark("global")
		return nil
	}
}

// WithGlobalFile is WithGlobal with the model mapped from a .safetensors file when the rule is
// built (Close unmaps it).
func WithGlobalFile(path string) RoundOption {
	return func(c *roundConfig) error {
		if path == "" {
			return fmt.Errorf("%w: empty global model path", ErrOption)
		}
		c.globalPath = path
		c.mark("global")
		return nil
	}
}

// WithStateFile keeps the rule's state between rounds in a .safetensors file: it is loaded when
// the rule is built if it exists (a state made by another rule, with other hyperparameters or
// for another model is an ErrState error), and AggregateFile replaces it atomically after each
// successful round, after the model file. Without it the state lives in memory only (State and
// SaveState give it).
func WithStateFile(path string) RoundOption {
	return func(c *roundConfig) error {
		if path == "" {
			return fmt.Errorf("%w: empty state path", ErrOption)
		}
		c.statePath = path
		c.mark("state")
		return nil
	}
}

// WithServerLR sets the server learning rate η (≥ 0).
func WithServerLR(lr float64) RoundOption {
	return func(c *roundConfig) error {
		if !(lr >= 0) || !finite(lr) {
			return fmt.Errorf("%w: server learning rate %v: want a finite value >= 0", ErrOption, lr)
		}
		c.lr = lr
		c.mark("lr")
		return nil
	}
}

func checkBeta(name string, b float64) error {
	if !(b >= 0 && b < 1) {
		return fmt.Errorf("%w: %s %v: want a value in [0, 1)", ErrOption, name, b)
	}
	return nil
}

// WithBeta1 sets β1, the decay of the first moment (the server momentum of FedAvgM), in [0, 1).
func WithBeta1(b float64) RoundOption {
	return func(c *roundConfig) error {
		if err := checkBeta("β1", b); err != nil {
			return err
		}
		c.beta1 = b
		c.mark("beta1")
		return nil
	}
}

// WithBeta2 sets β2, the decay of the second moment (FedAdam, FedYogi), in [0, 1).
func WithBeta2(b float64) RoundOption {
	return func(c *roundConfig) error {
		if err := checkBeta("β2", b); err != nil {
			return err
		}
		c.beta2 = b
		c.mark("beta2")
		return nil
	}
}

// WithTau sets τ, the adaptivity of FedAdagrad, FedAdam and FedYogi (> 0).
func WithTau(tau float64) RoundOption {
	return func(c *roundConfig) error {
		if !(tau > 0) || !finite(tau) {
			return fmt.Errorf("%w: τ %v: want a finite value > 0", ErrOption, tau)
		}
		c.tau = tau
		c.mark("tau")
		return nil
	}
}

// WithClipBound sets the L2 bound C each client's update is clipped to (the initial bound of
// adaptive clipping), > 0.
func WithClipBound(c0 float64) RoundOption {
	return func(c *roundConfig) error {
		if !(c0 > 0) || !finite(c0) {
			return fmt.Errorf("%w: clipping bound %v: want a finite value > 0", ErrOption, c0)
		}
		c.clip = c0
		c.mark("clip")
		return nil
	}
}

// WithNoiseMultiplier sets z, the standard deviation of the Gaussian noise in units of the
// clipping bound (≥ 0; 0 adds no noise and gives no privacy).
func WithNoiseMultiplier(z float64) RoundOption {
	return func(c *roundConfig) error {
		if !(z >= 0) || !finite(z) {
			return fmt.Errorf("%w: noise multiplier %v: want a finite value >= 0", ErrOption, z)
		}
		c.noise = z
		c.mark("noise")
		return nil
	}
}

// WithSamplingRate sets q, the probability with which each client of the population takes part
// in a round (Poisson sampling), in (0, 1]; the accountant uses it for privacy amplification.
// The default, 1, claims no amplification.
func WithSamplingRate(q float64) RoundOption {
	return func(c *roundConfig) error {
		if !(q > 0 && q <= 1) {
			return fmt.Errorf("%w: sampling rate %v: want a value in (0, 1]", ErrOption, q)
		}
		c.sampling = q
		c.mark("sampling")
		return nil
	}
}

// WithTargetDelta sets the δ for which the accountant reports ε, in (0, 1).
func WithTargetDelta(delta float64) RoundOption {
	return func(c *roundConfig) error {
		if !(delta > 0 && delta < 1) {
			return fmt.Errorf("%w: δ %v: want a value in (0, 1)", ErrOption, delta)
		}
		c.delta = delta
		c.mark("delta")
		return nil
	}
}

// WithTargetQuantile sets γ, the fraction of clients adaptive clipping aims to leave unclipped,
// in (0, 1).
func WithTargetQuantile(gamma float64) RoundOption {
	return func(c *roundConfig) error {
		if !(gamma > 0 && gamma < 1) {
			return fmt.Errorf("%w: target quantile %v: want a value in (0, 1)", ErrOption, gamma)
		}
		c.quantile = gamma
		c.mark("quantile")
		return nil
	}
}

// WithClipLearningRate sets η_C, the step of adaptive clipping's geometric update
// C ← C·exp(-η_C·(b̃ - γ)), > 0.
func WithClipLearningRate(eta float64) RoundOption {
	return func(c *roundConfig) error {
		if !(eta > 0) || !finite(eta) {
			return fmt.Errorf("%w: clip learning rate %v: want a finite value > 0", ErrOption, eta)
		}
		c.clipLR = eta
		c.mark("clipLR")
		return nil
	}
}

// WithClippedCountStddev sets σ_b, the standard deviation of the noise on the count of unclipped
// clients (adaptive clipping), > 0. The default is the expected client count / 20, as Andrew et
// al. (2021) recommend.
func WithClippedCountStddev(sigma float64) RoundOption {
	return func(c *roundConfig) error {
		if !(sigma > 0) || !finite(sigma) {
			return fmt.Errorf("%w: clipped-count noise %v: want a finite value > 0", ErrOption, sigma)
		}
		c.countStddev = sigma
		c.mark("countStddev")
		return nil
	}
}

// WithExpectedClients sets the expected number of clients per round (q·N for a population of
// N) and makes the private mean divide by it instead of by the number of clients received: the
// fixed-denominator estimator of DP-FedAvg (McMahan et al., 2018), whose sensitivity does not
// depend on how many clients happened to be sampled.
func WithExpectedClients(n int) RoundOption {
	return func(c *roundConfig) error {
		if n < 1 {
			return fmt.Errorf("%w: expected client count %d: want at least 1", ErrOption, n)
		}
		c.expectedClients = n
		c.mark("expected")
		return nil
	}
}

// WithInsecureNoiseSeed makes the privacy noise a deterministic function of seed (and of the
// round and chunk size), for tests and reproducible experiments. Noise that can be reproduced
// gives NO privacy: whoever knows the seed subtracts it. Reports of such rounds carry
// Details["insecure_seed"] = 1. Without it the noise is seeded from crypto/rand every round.
func WithInsecureNoiseSeed(seed uint64) RoundOption {
	return func(c *roundConfig) error {
		c.insecureSeed = &seed
		c.mark("seed")
		return nil
	}
}

// openGlobal returns the global model the clients trained from: the Set given with WithGlobal,
// or the file of WithGlobalFile mapped (own reports that the caller must close it).
func (c *roundConfig) openGlobal(rule string) (global *tensor.Set, own bool, err error) {
	switch {
	case c.global != nil:
		return c.global, false, nil
	case c.globalPath != "":
		g, err := safetensors.Open(c.globalPath)
		if err != nil {
			return nil, false, err
		}
		return g, true, nil
	}
	return nil, false, fmt.Errorf("%w: %s needs the global model the clients trained from (WithGlobal or WithGlobalFile)", ErrOption, rule)
}
