package dp

import (
	"fmt"
	"math"

	"github.com/wattagg/wattagg/aggregate"
)

// Option sets a parameter of a private mean. Options check their values; one the mechanism has
// no use for (a target quantile for fixed clipping) is an aggregate.ErrOption error from New.
type Option func(*config) error

type config struct {
	clip, noise, sampling, delta  float64
	quantile, clipLR, countStddev float64
	expectedClients               int
	insecureSeed                  *uint64
	statePath                     string
	set                           map[string]bool // options given, by name
}

// optionNames says what each option sets, for messages.
var optionNames = map[string]string{
	"clip": "clipping bound", "noise": "noise multiplier", "sampling": "client sampling rate",
	"delta": "target δ", "quantile": "target quantile", "clipLR": "clip learning rate",
	"countStddev": "clipped-count noise", "expected": "expected client count", "seed": "noise seed",
	"state": "state file",
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// WithStateFile keeps the mechanism's state (the rounds, the clipping bound, the accountant)
// between rounds in a .safetensors file: it is loaded when the mechanism first begins a round,
// if it exists, and every round records its new state there before its noised model is
// released (a crash can over-count the privacy spent, never under-count it).
func WithStateFile(path string) Option {
	return func(c *config) error {
		if path == "" {
			return fmt.Errorf("%w: empty state path", aggregate.ErrOption)
		}
		c.statePath = path
		c.set["state"] = true
		return nil
	}
}

// WithClipBound sets the L2 bound C each client's update is clipped to (the initial bound of
// adaptive clipping), > 0.
func WithClipBound(c0 float64) Option {
	return func(c *config) error {
		if !(c0 > 0) || !finite(c0) {
			return fmt.Errorf("%w: clipping bound %v: want a finite value > 0", aggregate.ErrOption, c0)
		}
		c.clip = c0
		c.set["clip"] = true
		return nil
	}
}

// WithNoiseMultiplier sets z, the standard deviation of the Gaussian noise in units of the
// clipping bound (≥ 0; 0 adds no noise and gives no privacy).
func WithNoiseMultiplier(z float64) Option {
	return func(c *config) error {
		if !(z >= 0) || !finite(z) {
			return fmt.Errorf("%w: noise multiplier %v: want a finite value >= 0", aggregate.ErrOption, z)
		}
		c.noise = z
		c.set["noise"] = true
		return nil
	}
}

// WithSamplingRate sets q, the probability with which each client of the population takes part
// in a round (Poisson sampling), in (0, 1]; the accountant uses it for privacy amplification.
// The default, 1, claims no amplification.
func WithSamplingRate(q float64) Option {
	return func(c *config) error {
		if !(q > 0 && q <= 1) {
			return fmt.Errorf("%w: sampling rate %v: want a value in (0, 1]", aggregate.ErrOption, q)
		}
		c.sampling = q
		c.set["sampling"] = true
		return nil
	}
}

// WithTargetDelta sets the δ for which the accountant reports ε, in (0, 1).
func WithTargetDelta(delta float64) Option {
	return func(c *config) error {
		if !(delta > 0 && delta < 1) {
			return fmt.Errorf("%w: δ %v: want a value in (0, 1)", aggregate.ErrOption, delta)
		}
		c.delta = delta
		c.set["delta"] = true
		return nil
	}
}

// WithTargetQuantile sets γ, the fraction of clients adaptive clipping aims to leave unclipped,
// in (0, 1).
func WithTargetQuantile(gamma float64) Option {
	return func(c *config) error {
		if !(gamma > 0 && gamma < 1) {
			return fmt.Errorf("%w: target quantile %v: want a value in (0, 1)", aggregate.ErrOption, gamma)
		}
		c.quantile = gamma
		c.set["quantile"] = true
		return nil
	}
}

// WithClipLearningRate sets η_C, the step of adaptive clipping's geometric update
// C ← C·exp(-η_C·(b̃ - γ)), > 0.
func WithClipLearningRate(eta float64) Option {
	return func(c *config) error {
		if !(eta > 0) || !finite(eta) {
			return fmt.Errorf("%w: clip learning rate %v: want a finite value > 0", aggregate.ErrOption, eta)
		}
		c.clipLR = eta
		c.set["clipLR"] = true
		return nil
	}
}

// WithClippedCountStddev sets σ_b, the standard deviation of the noise on the count of unclipped
// clients (adaptive clipping), > 0. The default is the expected client count / 20, as Andrew et
// al. (2021) recommend.
func WithClippedCountStddev(sigma float64) Option {
	return func(c *config) error {
		if !(sigma > 0) || !finite(sigma) {
			return fmt.Errorf("%w: clipped-count noise %v: want a finite value > 0", aggregate.ErrOption, sigma)
		}
		c.countStddev = sigma
		c.set["countStddev"] = true
		return nil
	}
}

// WithExpectedClients sets the expected number of clients per round (q·N for a population of
// N) and makes the private mean divide by it instead of by the number of clients received: the
// fixed-denominator estimator of DP-FedAvg (McMahan et al., 2018), whose sensitivity does not
// depend on how many clients happened to be sampled.
func WithExpectedClients(n int) Option {
	return func(c *config) error {
		if n < 1 {
			return fmt.Errorf("%w: expected client count %d: want at least 1", aggregate.ErrOption, n)
		}
		c.expectedClients = n
		c.set["expected"] = true
		return nil
	}
}

// WithInsecureNoiseSeed makes the privacy noise a deterministic function of seed (and of the
// round and chunk size), for tests and reproducible experiments. Noise that can be reproduced
// gives NO privacy: whoever knows the seed subtracts it. Reports of such rounds carry
// Details["insecure_seed"] = 1. Without it the noise is seeded from crypto/rand every round.
func WithInsecureNoiseSeed(seed uint64) Option {
	return func(c *config) error {
		c.insecureSeed = &seed
		c.set["seed"] = true
		return nil
	}
}
