// Package sched decides where aggregation work runs by what it costs. It discovers the devices
// and their energy meters, calibrates each device per op class (FLOP/s, bytes/s, J/FLOP,
// J/byte, idle watts, host-to-device cost) by running the real kernels under the meters,
// persists the result as a versioned JSON Profile, and plans: a Planner splits a job's
// coordinate blocks (device.Chunks) over the devices to minimise joules (default), time or the
// energy-delay product, under an optional deadline and power cap, and predicts the time and
// joules. After a run it compares the prediction with what the meters measured and corrects
// the profile.
//
// Discover, Calibrate and NewPlanner share one functional Option type; each option's doc says
// which of them takes it, and an option given to another is an ErrOption error naming it.
package sched

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
)

// Errors of the scheduler.
var (
	ErrOption       = errors.New("invalid scheduler option")
	ErrOpClass      = errors.New("invalid op class")
	ErrUnknownOp    = errors.New("unknown op class")
	ErrProfile      = errors.New("invalid energy profile")
	ErrNoProfile    = errors.New("no energy profile")
	ErrUncalibrated = errors.New("not calibrated")
)

// Counts is the work of an op class per element (coordinate) of the model.
type Counts struct {
	FLOPs float64 `json:"flops"` // arithmetic operations
	// Bytes is the memory traffic of the device that runs it: every input read once and the
	// output written once.
	Bytes float64 `json:"bytes"`
	// Transfer is what crosses between host memory and a GPU when the inputs live in host
	// memory (inputs in, result back).
	Transfer float64 `json:"transfer_bytes"`
}

// Workload is the shape of one job of an op class.
type Workload struct {
	Clients  int          `json:"clients"`
	Elements int64        `json:"elements"` // coordinates of the model
	In       tensor.DType `json:"in"`       // the inputs' dtype
	Out      tensor.DType `json:"out"`      // the output's dtype
}

// Runner runs one prepared workload. The calibrator meters and times Run only.
type Runner interface {
	Run(ctx context.Context) (device.Stats, error)
	Close() error
}

// OpClass is a kind of block operation that the planner places and the calibrator measures:
// the weighted sum of FedAvg, and later median/selection, Gram matrices (Krum), optimizer
// steps, secure sums.
type OpClass struct {
	Name string
	Doc  string
	// Counts gives the work per element of a workload (FLOPs may grow with the clients: Krum's
	// pairwise distances are quadratic).
	Counts func(w Workload) Counts
	// Prepare builds a representative workload on dev with its inputs in host memory, and
	// returns the Runner that runs it.
	Prepare func(dev device.Device, w Workload) (Runner, error)
	// DTypes are the input dtypes a full calibration measures (the first is the reference).
	DTypes []tensor.DType
	// Clients is the client count calibration uses (default 16).
	Clients int
}

// Registry holds the op classes by name.
type Registry struct {
	mu    sync.Mutex
	ops   map[string]OpClass
	order []string
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{ops: map[string]OpClass{}} }

// Register adds an op class. Names are unique, Counts and Prepare are required.
func (r *Registry) Register(op OpClass) error {
	switch {
	case op.Name == "":
		return fmt.Errorf("%w: empty name", ErrOpClass)
	case op.Counts == nil || op.Prepare == nil:
		return fmt.Errorf("%w: %q needs Counts and Prepare", ErrOpClass, op.Name)
	case len(op.DTypes) == 0:
		return fmt.Errorf("%w: %q calibrates no dtype", ErrOpClass, op.Name)
	case op.Clients < 0:
		return fmt.Errorf("%w: %q: %d clients", ErrOpClass, op.Name, op.Clients)
	}
	if op.Clients == 0 {
		op.Clients = 16
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.ops[op.Name]; dup {
		return fmt.Errorf("%w: %q registered twice", ErrOpClass, op.Name)
	}
	r.ops[op.Name] = op
	r.order = append(r.order, op.Name)
	return nil
}

// Lookup returns the op class called name.
func (r *Registry) Lookup(name string) (OpClass, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	op, ok := r.ops[name]
	if !ok {
		return OpClass{}, fmt.Errorf("%w: %q (known: %v)", ErrUnknownOp, name, r.order)
	}
	return op, nil
}

// Names lists the op classes in registration order.
func (r *Registry) Names() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.order)
}

// Default is the registry of the op classes wattagg implements. Rule packages register theirs
// at init.
var Default = NewRegistry()

func init() {
	if err := Default.Register(weightedSumClass()); err != nil {
		panic(err)
	}
}
