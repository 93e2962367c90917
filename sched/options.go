package sched

import (
	"fmt"

	"github.com/wattagg/wattagg/internal/optnames"
)

// Option configures Discover, Calibrate or NewPlanner: the package has one option type, and
// each option's doc says which of the three it applies to. An option given to a function it
// does not apply to is refused with an ErrOption error that names it ("WithQuick is an
// option of Calibrate; Discover does not take it"), instead of being ignored: a caller who
// passes WithDeadline to Calibrate expects a deadline somewhere.
type Option func(*options) error

// options is what the options set, for whichever function they are given to.
type options struct {
	fn   consumer // the function applying the options; an option checks that it takes it
	reg  *Registry
	disc discovery
	cal  calibration
	plan planning
}

// consumer is a bit set of the functions that take options.
type consumer uint8

const (
	forDiscover consumer = 1 << iota
	forCalibrate
	forNewPlanner
)

var consumerNames = [...]string{"Discover", "Calibrate", "NewPlanner"}

// String lists the functions of c: "Calibrate", "Calibrate and NewPlanner".
func (c consumer) String() string { return optnames.Of(uint(c), consumerNames[:]) }

// option makes the Option called name, which the functions of takes accept: given to another
// it is an ErrOption naming it, before set sees its value.
func option(name string, takes consumer, set func(*options) error) Option {
	return func(o *options) error {
		if o.fn&takes == 0 {
			return fmt.Errorf("%w: %s is an option of %v; %v does not take it", ErrOption, name, takes, o.fn)
		}
		return set(o)
	}
}

// applyOptions applies opts for the function fn over the defaults.
func applyOptions(fn consumer, opts []Option) (*options, error) {
	o := &options{fn: fn, reg: Default, plan: planning{alpha: 0.25}}
	for _, opt := range opts {
		if opt == nil {
			return nil, fmt.Errorf("%w: nil option given to %v", ErrOption, fn)
		}
		if err := opt(o); err != nil {
			return nil, err
		}
	}
	return o, nil
}

// WithRegistry takes op classes from r instead of Default. It applies to Calibrate and
// NewPlanner, which must use the same registry for the planner to find the classes calibrated.
func WithRegistry(r *Registry) Option {
	return option("WithRegistry", forCalibrate|forNewPlanner, func(o *options) error {
		if r == nil {
			return fmt.Errorf("%w: nil registry", ErrOption)
		}
		o.reg = r
		return nil
	})
}
