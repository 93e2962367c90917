package optim

import (
	"fmt"
	"math"

	"github.com/wattagg/wattagg/aggregate"
)

// Option sets a hyperparameter or the state file of a server optimizer. Options check their
// values; one the optimizer has no use for (τ for FedAvgM) is an aggregate.ErrOption error
// from New rather than ignored silently.
type Option func(*config) error

type config struct {
	vals      [4]float64 // lr, β1, β2, τ
	set       [4]bool
	statePath string
}

// The hyperparameters, in the order of config.vals.
var hyperNames = [4]string{"server learning rate", "β1", "β2", "τ"}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

func (c *config) put(i int, v float64) error {
	c.vals[i], c.set[i] = v, true
	return nil
}

// WithServerLR sets the server learning rate η (≥ 0).
func WithServerLR(lr float64) Option {
	return func(c *config) error {
		if !(lr >= 0) || !finite(lr) {
			return fmt.Errorf("%w: server learning rate %v: want a finite value >= 0", aggregate.ErrOption, lr)
		}
		return c.put(0, lr)
	}
}

func checkBeta(name string, b float64) error {
	if !(b >= 0 && b < 1) {
		return fmt.Errorf("%w: %s %v: want a value in [0, 1)", aggregate.ErrOption, name, b)
	}
	return nil
}

// WithBeta1 sets β1, the decay of the first moment (the server momentum of FedAvgM), in [0, 1).
func WithBeta1(b float64) Option {
	return func(c *config) error {
		if err := checkBeta("β1", b); err != nil {
			return err
		}
		return c.put(1, b)
	}
}

// WithBeta2 sets β2, the decay of the second moment (FedAdam, FedYogi), in [0, 1).
func WithBeta2(b float64) Option {
	return func(c *config) error {
		if err := checkBeta("β2", b); err != nil {
			return err
		}
		return c.put(2, b)
	}
}

// WithTau sets τ, the adaptivity of FedAdagrad, FedAdam and FedYogi (> 0).
func WithTau(tau float64) Option {
	return func(c *config) error {
		if !(tau > 0) || !finite(tau) {
			return fmt.Errorf("%w: τ %v: want a finite value > 0", aggregate.ErrOption, tau)
		}
		return c.put(3, tau)
	}
}

// WithStateFile keeps the optimizer's state between rounds in a .safetensors file: it is loaded
// when the optimizer first begins a round, if it exists (a state made by another optimizer,
// with other hyperparameters or for another model is an aggregate.ErrState error), and a round
// whose result goes to a file replaces it with the result, as one unit (a crash leaves the old
// model and state or the new ones, never a mix). Without it the state lives in memory only
// (State and SaveState give it).
func WithStateFile(path string) Option {
	return func(c *config) error {
		if path == "" {
			return fmt.Errorf("%w: empty state path", aggregate.ErrOption)
		}
		c.statePath = path
		return nil
	}
}
