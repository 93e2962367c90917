package aggregate

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/big"
	"slices"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
)

// Exact sums (WithExactSum) make a sum's result a function of the multiset of (update, weight)
// pairs alone: the same bits whatever the arrival order, the core count, the device, the split of
// the model over devices or the grouping of the clients into partial aggregates (Partial).
//
// Each term a_k·x_k is rounded to a grid of 2^G per tensor and added as an integer
// (device.AccField with Acc I64: two int64 limbs per parameter, which the CPU holds in one, 8
// bytes, wherever the sums stay within 2^62 grid units and in 16 bytes elsewhere; one limb
// always, on a coarser grid, with ExactSum.OneLimb). The grid depends on
// what the round declares, never on what arrives: a bound B on every value (ExactSum.Bound,
// ExactSum.TensorBounds) and a cap T on the total weight (ExactSum.MaxWeight) give
//
//	G = ⌈log2 B⌉ + ⌈log2 T⌉ − 101,
//
// so that every term stays below 2^101 grid units and any sum of them far below what the limbs
// hold (2^115). Values beyond ±B, NaN and Inf are refused (ErrOutOfRange, naming the update,
// tensor and element; a NaN or Inf as tensor.ErrNonFinite), as are weights that would take the
// round's total beyond T. The weights are kept as given (the engine's power-of-two scaling
// cancels exactly) and totalled exactly, so the denominator and a global model's weight are
// rounded once from exact totals; the result is (S·2^G + …)/D computed as float64(S)·2^G·(1/D),
// within one f32 ulp of that value.

// ErrOutOfRange reports a value, weight or partial sum beyond what a round's exact sums were set
// up for (device.ErrOutOfRange).
var ErrOutOfRange = device.ErrOutOfRange

// The defaults of WithExactSum.
const (
	// DefaultExactBound bounds every value of an update: 2^16, beyond any weight or gradient of
	// a model trained in f32, and still a grid of 2^-45 at the default cap on the weights.
	DefaultExactBound = 1 << 16
	// DefaultExactMaxWeight caps the total weight of a round's clients: 2^40 examples.
	DefaultExactMaxWeight = 1 << 40
)

// exactTermBits is how far below the limbs' capacity the largest term sits: with values within
// the bound and weights within the cap, a term is below 2^101 grid units (the kernels take up to
// 2^103), and a round's sum below 2^103 (the limbs hold 2^115).
const exactTermBits = 101

// oneLimbTermBits is exactTermBits for one limb (ExactSum.OneLimb): the clients' sum is below
// 2^61 grid units, a global model's term too, and their total, rounding included, below the
// 2^63 an int64 holds.
const oneLimbTermBits = 61

// ExactSum is what a round's exact sums are set up for (WithExactSum); a zero field takes its
// default.
type ExactSum struct {
	// Bound bounds every value of every tensor: |x| ≤ Bound (default DefaultExactBound). A
	// smaller bound is a finer grid.
	Bound float64
	// TensorBounds bound the values of the named tensors, overriding Bound for them.
	TensorBounds map[string]float64
	// MaxWeight caps the total weight of a round's clients, and the weight a global model
	// enters the sum with (default DefaultExactMaxWeight). A smaller cap is a finer grid.
	MaxWeight float64
	// OneLimb keeps a round's running sums in one int64 per parameter instead of two (8 bytes
	// instead of 16: what an incremental round, such as a server's, holds for the whole
	// round). The grid is then 2^(⌈log2 Bound⌉ + ⌈log2 MaxWeight⌉ − 61), 40 bits coarser than
	// two limbs' (−101): with the defaults 2^-5, useless, so a round that sets it declares a
	// tight bound and weight cap (2^4 and 2^20: a grid of 2^-37). A mean over a total weight D
	// is then within n·2^(grid−1)/D of its exact value for n updates. Order independence is
	// unchanged; the CPU keeps one-limb sums, a GPU refuses them.
	OneLimb bool
}

type exactConfig struct {
	bound     float64
	bounds    map[string]float64
	maxWeight float64
	oneLimb   bool
}

// WithExactSum makes the round's sums exact (see the comment at the top of exact.go): the same
// bits whatever the order of the updates, the devices and the partial aggregates they went
// through. It applies to FedAvg, the server optimizers and the private means, in batch and
// incremental rounds; a secure sum is exact already (its modular sum), and rules that need every
// update at once (median, Krum, ...) refuse it. Updates must be f32, bf16, f16 or i8, the output
// f32, bf16, f16 or i8. A bound or cap that is not a positive finite number is an ErrOption.
func WithExactSum(set ExactSum) Option {
	return func(c *config) error {
		e := &exactConfig{bound: DefaultExactBound, maxWeight: DefaultExactMaxWeight, oneLimb: set.OneLimb}
		if set.Bound != 0 {
			if err := checkPositive("exact-sum bound", set.Bound); err != nil {
				return err
			}
			e.bound = set.Bound
		}
		if set.MaxWeight != 0 {
			if err := checkPositive("exact-sum weight cap", set.MaxWeight); err != nil {
				return err
			}
			e.maxWeight = set.MaxWeight
		}
		for name, b := range set.TensorBounds {
			if err := checkPositive(fmt.Sprintf("exact-sum bound of %q", name), b); err != nil {
				return err
			}
			if e.bounds == nil {
				e.bounds = map[string]float64{}
			}
			e.bounds[name] = b
		}
		c.exact = e
		return nil
	}
}

func checkPositive(what string, v float64) error {
	if !(v > 0) || math.IsInf(v, 0) || v > math.MaxFloat32 {
		return fmt.Errorf("%w: %s %v: want a positive finite number", ErrOption, what, v)
	}
	return nil
}

// boundOf is the bound of the named tensor.
func (e *exactConfig) boundOf(name string) float64 {
	if b, ok := e.bounds[name]; ok {
		return b
	}
	return e.bound
}

// grid is the exponent G of the named tensor's grid.
func (e *exactConfig) grid(name string) int {
	bits := exactTermBits
	if e.oneLimb {
		bits = oneLimbTermBits
	}
	return ceilLog2(e.boundOf(name)) + ceilLog2(e.maxWeight) - bits
}

// ceilLog2 is the smallest k with v ≤ 2^k (v > 0).
func ceilLog2(v float64) int {
	frac, exp := math.Frexp(v)
	if frac == 0.5 {
		return exp - 1
	}
	return exp
}

// exactSum reports whether the round's sums are exact (a secure sum's modular sum is already).
func (r *Round) exactSum() bool { return r.cfg.exact != nil && r.req.Kind == KindSum }

// checkExactConfig refuses exact sums where they do not apply.
func (r *Round) checkExactConfig() error {
	switch {
	case r.cfg.exact == nil:
		return nil
	case r.req.Kind == KindWhole:
		return fmt.Errorf("%w: %s needs every update at once: exact sums (WithExactSum) are for sum rules", ErrOption, r.rule.Name())
	case r.cfg.out == tensor.F64:
		return fmt.Errorf("%w: exact sums are written as f32, bf16, f16 or i8, not f64", ErrOption)
	}
	return nil
}

// newExactPlan is newPlan for exact sums: every field accumulates exactly on its tensor's grid.
// The output keeps the updates' dtype unless WithOutDType, or f32 when updates may mix dtypes
// (the first one's would depend on the arrival order) and for rules that move a global model.
func newExactPlan(ref tensor.Layout, inputs func(t int) []tensor.DType, cfg *config, req Requirements) (*plan, error) {
	p := &plan{ref: ref, fields: make([]device.AccField, len(ref)), quant: make([]bool, len(ref)), exact: true}
	for t, f := range ref {
		if slices.Contains(inputs(t), tensor.F64) {
			return nil, fmt.Errorf("%w: tensor %q has f64 inputs: exact sums take f32, bf16, f16 and i8", ErrOption, f.Name)
		}
		out := cfg.out
		switch {
		case req.Global:
			out = tensor.F32
		case out != tensor.Invalid:
		case cfg.mixed:
			out = tensor.F32
		default:
			out = f.DType
		}
		if out == tensor.I8 {
			p.quant[t] = true
			out = tensor.F32
		}
		if out == tensor.F64 {
			return nil, fmt.Errorf("%w: exact sums are written as f32, bf16, f16 or i8, not f64", ErrOption)
		}
		p.fields[t] = device.AccField{Name: f.Name, Len: f.Len(), Acc: tensor.I64, Out: out,
			Grid: cfg.exact.grid(f.Name), Bound: cfg.exact.boundOf(f.Name), OneLimb: cfg.exact.oneLimb}
	}
	return p, p.layOut(cfg)
}

// rangeChecker is the device that bounds updates: the round's device, or the host CPU.
func (r *Round) rangeChecker() (device.RangeChecker, error) {
	if d, ok := r.cfg.dev().(device.RangeChecker); ok {
		return d, nil
	}
	return hostCPU()
}

// exactScanFields describes a layout's tensors with their bounds, for CheckRange.
func (r *Round) exactScanFields(ref tensor.Layout) []device.AccField {
	fields := make([]device.AccField, len(ref))
	for t, f := range ref {
		fields[t] = device.AccField{Name: f.Name, Len: f.Len(), Bound: r.cfg.exact.boundOf(f.Name)}
	}
	return fields
}

// checkExactRange scans an update for values beyond the bounds (NaN and Inf included): the
// admission scan of exact sums, in place of checkFinite.
func (r *Round) checkExactRange(ctx context.Context, ref tensor.Layout, x []device.Span) error {
	rc, err := r.rangeChecker()
	if err != nil {
		return err
	}
	return rc.CheckRange(ctx, r.exactScanFields(ref), x)
}

// exactTotals are an exact sum's weights, summed exactly: Σ w_k (the weights as given, 1 under
// WeightsEqual) and Σ a_k (the weights the updates entered the sum with, clipping included).
type exactTotals struct {
	sumW, sumA *big.Float
}

// exactPrec holds any sum of float64 values exactly (their exponents span 2098 bits).
const exactPrec = 2200

func newExactTotals() *exactTotals {
	return &exactTotals{sumW: new(big.Float).SetPrec(exactPrec), sumA: new(big.Float).SetPrec(exactPrec)}
}

// exactTotals returns the sum's exact totals, made at the first use.
func (s *sumState) exactTotals() *exactTotals {
	if s.exact == nil {
		s.exact = newExactTotals()
	}
	return s.exact
}

func (e *exactTotals) add(w, a float64) {
	e.sumW.Add(e.sumW, new(big.Float).SetFloat64(w))
	e.sumA.Add(e.sumA, new(big.Float).SetFloat64(a))
}

// weight is Σ w_k rounded once.
func (e *exactTotals) weight() float64 {
	f, _ := e.sumW.Float64()
	return f
}

// exactWeight is the weight client c enters an exact sum with: its weight as given times the
// weighers' factors (the engine's power-of-two scaling undone, exactly), refused if it would take
// the round's total beyond the cap.
func (r *Round) exactWeight(c *Client) (float64, error) {
	a := r.weights.unscaled(c.weight * c.factor)
	total := new(big.Float).SetPrec(exactPrec).Add(r.sum.exactTotals().sumA, new(big.Float).SetFloat64(a))
	if total.Cmp(big.NewFloat(r.cfg.exact.maxWeight)) > 0 {
		t, _ := total.Float64()
		return 0, fmt.Errorf("%s: %w: weight %v takes the round's total to %v, beyond the exact sums' cap %v (ExactSum.MaxWeight, --exact-max-weight)",
			c.Source, ErrOutOfRange, a, t, r.cfg.exact.maxWeight)
	}
	return a, nil
}

// exactGlobalWeight is b, the weight the global model enters an exact sum with: D − Σ a_k (the
// new model), or −Σ a_k when a later stage consumes the averaged delta, from the exact total and
// rounded once. An incremental sum checks the global model against the bounds first: it adds it
// to the accumulator, which must not take a value it cannot hold (a batch job checks its inputs
// as it sums them).
func (r *Round) exactGlobalWeight(ctx context.Context, d float64) (float64, error) {
	s := r.sum
	b := new(big.Float).SetPrec(exactPrec).Neg(s.exactTotals().sumA)
	if !r.req.ConsumesDelta {
		b.Add(b, new(big.Float).SetFloat64(d))
	}
	bf, _ := b.Float64()
	if math.Abs(bf) > r.cfg.exact.maxWeight {
		return 0, fmt.Errorf("%s: %w: it enters the sum with weight %v, beyond the exact sums' cap %v (ExactSum.MaxWeight, --exact-max-weight)",
			globalName(r.global.set), ErrOutOfRange, bf, r.cfg.exact.maxWeight)
	}
	if s.deferred {
		return bf, nil
	}
	if err := r.checkExactRange(ctx, r.plan.ref, r.global.spans); err != nil {
		var re *device.RangeError
		var nf *tensor.NonFiniteError
		switch {
		case errors.As(err, &re):
			re.Source = globalName(r.global.set)
		case errors.As(err, &nf):
			nf.Source = globalName(r.global.set)
		}
		return 0, err
	}
	return bf, nil
}

// blameRange names the input of a batch job that holds the value a device found beyond its
// bound (inputs[k] is names[k]). A GPU writes the element as NaN: a non-finite result of an exact
// sum whose inputs are finite there is such a value.
func (r *Round) blameRange(err error, inputs [][]device.Span, names []string) error {
	var nf *tensor.NonFiniteError
	if r.exactSum() && errors.As(err, &nf) && nf.Source == "" {
		if t := r.plan.field(nf.Tensor); t >= 0 {
			f := r.plan.fields[t]
			for k, in := range inputs {
				switch v := in[t].Value(nf.Index); {
				case math.IsNaN(v) || math.IsInf(v, 0):
					return err // blame names it
				case !(math.Abs(v) <= f.Bound):
					return &device.RangeError{Source: names[k], Tensor: f.Name, Index: nf.Index, Value: v, Bound: f.Bound}
				}
			}
		}
	}
	var re *device.RangeError
	if !errors.As(err, &re) || re.Source != "" {
		return err
	}
	t := r.plan.field(re.Tensor)
	if t < 0 {
		return err
	}
	for k, in := range inputs {
		if v := in[t].Value(re.Index); !(math.Abs(v) <= re.Bound) {
			re.Source, re.Value = names[k], v
			return err
		}
	}
	return err
}
