package robust

import (
	"fmt"
	"math"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/tensor"
)

// Option sets an optional parameter of the iterative rules (GeometricMedian,
// CenteredClipping). A value out of range, or an option the rule has no use for, is an
// aggregate.ErrOption error from the constructor.
type Option func(*params) error

// params are the optional parameters; set records which were given.
type params struct {
	nu, tol      float64
	maxIter, its int
	center       *tensor.Set
	set          map[string]bool
}

func newParams(opts []Option) (*params, error) {
	p := &params{nu: DefaultSmoothing, tol: DefaultTolerance, maxIter: DefaultMaxIterations, its: 1, set: map[string]bool{}}
	for _, o := range opts {
		if o == nil {
			return nil, fmt.Errorf("%w: nil option", aggregate.ErrOption)
		}
		if err := o(p); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// only refuses the options given that rule does not take.
func (p *params) only(rule string, takes ...string) error {
	for name := range p.set {
		ok := false
		for _, t := range takes {
			ok = ok || t == name
		}
		if !ok {
			return fmt.Errorf("%w: %s has no %s", aggregate.ErrOption, rule, name)
		}
	}
	return nil
}

// Defaults of the geometric median: the RFA code's smoothing and tolerance, and ten iterations.
const (
	DefaultSmoothing     = 1e-6
	DefaultTolerance     = 1e-6
	DefaultMaxIterations = 10
)

// WithSmoothing sets the geometric median's smoothing distance ν > 0 (default 1e-6).
func WithSmoothing(nu float64) Option {
	return func(p *params) error {
		if !(nu > 0) || math.IsInf(nu, 0) {
			return fmt.Errorf("%w: geometric-median nu %v: want a positive smoothing distance", aggregate.ErrOption, nu)
		}
		p.nu, p.set["smoothing"] = nu, true
		return nil
	}
}

// WithMaxIterations sets the geometric median's most Weiszfeld iterations, >= 1 (default 10).
func WithMaxIterations(n int) Option {
	return func(p *params) error {
		if n < 1 {
			return fmt.Errorf("%w: geometric-median max iterations %d: want at least 1", aggregate.ErrOption, n)
		}
		p.maxIter, p.set["max iterations"] = n, true
		return nil
	}
}

// WithTolerance sets the geometric median's relative tolerance on its objective, >= 0
// (default 1e-6).
func WithTolerance(tol float64) Option {
	return func(p *params) error {
		if !(tol >= 0) || math.IsInf(tol, 0) {
			return fmt.Errorf("%w: geometric-median tolerance %v: want a finite tol >= 0", aggregate.ErrOption, tol)
		}
		p.tol, p.set["tolerance"] = tol, true
		return nil
	}
}

// WithIterations sets centered clipping's iterations L >= 1 (default 1).
func WithIterations(n int) Option {
	return func(p *params) error {
		if n < 1 {
			return fmt.Errorf("%w: centered-clip iterations %d: want at least 1", aggregate.ErrOption, n)
		}
		p.its, p.set["iterations"] = n, true
		return nil
	}
}

// WithCenter sets the point centered clipping starts from (default zero): the previous round's
// aggregate or momentum. It must be finite and hold the updates' tensors and shapes.
func WithCenter(c *tensor.Set) Option {
	return func(p *params) error {
		if c == nil {
			return fmt.Errorf("%w: nil centered-clip center", aggregate.ErrOption)
		}
		if err := c.CheckFinite(); err != nil {
			return fmt.Errorf("%w: centered-clip center: %w", aggregate.ErrOption, err)
		}
		p.center, p.set["center"] = c, true
		return nil
	}
}
