package cuda

import (
	"context"
	"fmt"
	"math"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
)

// Rule is a server optimizer of adaptive federated optimization (Reddi et al. 2021).
type Rule int

// The rules. Per element, with Δ the round's aggregated update, every operation rounded in f32:
//
//	FedAvgM:    m = β1·m + Δ;                      x = x + lr·m
//	FedAdagrad: m = β1·m + (1-β1)·Δ;  v = v + Δ²;                           x = x + lr·m/(√v + τ)
//	FedAdam:    m = β1·m + (1-β1)·Δ;  v = β2·v + (1-β2)·Δ²;                 x = x + lr·m/(√v + τ)
//	FedYogi:    m = β1·m + (1-β1)·Δ;  v = v - (1-β2)·Δ²·sign(v - Δ²);      x = x + lr·m/(√v + τ)
//
// (no bias correction, as in the paper's Algorithm 2; sign(0) = 0).
const (
	FedAvgM Rule = iota + 1
	FedAdagrad
	FedAdam
	FedYogi
)

func (r Rule) String() string {
	switch r {
	case FedAvgM:
		return "fedavgm"
	case FedAdagrad:
		return "fedadagrad"
	case FedAdam:
		return "fedadam"
	case FedYogi:
		return "fedyogi"
	}
	return fmt.Sprintf("rule(%d)", int(r))
}

// Optimizer is a server optimizer and its hyper-parameters.
type Optimizer struct {
	Rule  Rule
	LR    float32 // server learning rate η
	Beta1 float32 // momentum
	Beta2 float32 // second-moment decay (FedAdam, FedYogi)
	Tau   float32 // adaptivity τ (FedAdagrad, FedAdam, FedYogi)
}

// Step applies one server optimizer step in place, in one fused pass over device memory: x is the
// model, delta the aggregated update, m and v the optimizer state (v is unused by FedAvgM and may
// be nil there). All are f32 Residents of one layout; delta is only read.
func (g *GPU) Step(ctx context.Context, o Optimizer, x, delta, m, v *Resident) error {
	if o.Rule < FedAvgM || o.Rule > FedYogi {
		return fmt.Errorf("%w: optimizer %s", device.ErrUnsupported, o.Rule)
	}
	rs := []*Resident{x, delta, m}
	if o.Rule != FedAvgM {
		if v == nil {
			return fmt.Errorf("%w: %s needs the second-moment state v", device.ErrJob, o.Rule)
		}
		rs = append(rs, v)
	}
	for i, r := range rs {
		for _, q := range rs[:i] {
			if q == r {
				return fmt.Errorf("%w: %s: the same buffer is passed twice", device.ErrJob, o.Rule)
			}
		}
	}
	fields, err := residentFields(g, rs, nil)
	if err != nil {
		return err
	}
	isF32 := func(d tensor.DType) bool { return d == tensor.F32 }
	if err := checkResidentDTypes(rs, isF32, "optimizer state (want f32)"); err != nil {
		return err
	}
	return g.onStream(ctx, func(s cuStream) error {
		for t, f := range fields {
			if f.Len == 0 {
				continue
			}
			grid, err := blocks(int64(f.Len), 256)
			if err != nil {
				return err
			}
			var vp uint64
			if v != nil && o.Rule != FedAvgM {
				vp = v.ptrs[t]
			}
			if err := g.launch(s, "wa_optim", grid, 256, 0, argInt(int(o.Rule)), x.ptrs[t], delta.ptrs[t], m.ptrs[t], vp,
				argF32(o.LR), argF32(o.Beta1), argF32(o.Beta2), argF32(o.Tau), uint64(f.Len)); err != nil {
				return err
			}
		}
		return nil
	})
}

// AddNoise adds Gaussian noise of standard deviation sigma to every element of r (f32 or f64
// tensors): element j of tensor t receives sigma·z where z is normal j mod 4 of Philox4x32-10
// counter offset + Σ_{u<t} ⌈len_u/4⌉ + ⌊j/4⌋ under key seed (Box-Muller in f64; see
// kernels/cuda/noise.cu). The noise depends only on (seed, counter), never on the device or the
// launch. It returns the first counter the call did not use: pass it as the next call's offset so
// that no noise is ever reused.
//
// Philox is a statistically good generator, not a cryptographic one, and its 64-bit key can be
// searched: noise from it gives no differential privacy. The DP rules draw their noise on the
// host from ChaCha8 keyed by crypto/rand; use this for simulations and tests only.
func (g *GPU) AddNoise(ctx context.Context, r *Resident, sigma float64, seed, offset uint64) (uint64, error) {
	if sigma < 0 || math.IsNaN(sigma) || math.IsInf(sigma, 0) {
		return offset, fmt.Errorf("%w: noise standard deviation %v", device.ErrJob, sigma)
	}
	fields, err := residentFields(g, []*Resident{r}, nil)
	if err != nil {
		return offset, err
	}
	isFloat := func(d tensor.DType) bool { return d == tensor.F32 || d == tensor.F64 }
	if err := checkResidentDTypes([]*Resident{r}, isFloat, "noised (want f32 or f64)"); err != nil {
		return offset, err
	}
	ctr := offset
	err = g.onStream(ctx, func(s cuStream) error {
		for t, f := range fields {
			groups := (uint64(f.Len) + 3) / 4
			if groups > 0 {
				grid, err := blocks(int64(groups), 256)
				if err != nil {
					return err
				}
				if err := g.launch(s, "wa_noise", grid, 256, 0, r.ptrs[t], argInt(int(f.Out)), uint64(f.Len), argF64(sigma), seed, ctr); err != nil {
					return err
				}
			}
			ctr += groups
		}
		return nil
	})
	if err != nil {
		return offset, err
	}
	return ctr, nil
}

// Scale multiplies every element of r (f32 or f64 tensors) by s in place, in the tensor's dtype
// (s rounded to f32 for f32 tensors): the clipping of an update, or 1/Σw after a sum.
func (g *GPU) Scale(ctx context.Context, r *Resident, s float64) error {
	fields, err := residentFields(g, []*Resident{r}, nil)
	if err != nil {
		return err
	}
	isFloat := func(d tensor.DType) bool { return d == tensor.F32 || d == tensor.F64 }
	if err := checkResidentDTypes([]*Resident{r}, isFloat, "scaled (want f32 or f64)"); err != nil {
		return err
	}
	return g.onStream(ctx, func(st cuStream) error {
		for t, f := range fields {
			if f.Len == 0 {
				continue
			}
			grid, err := blocks(int64(f.Len), 256)
			if err != nil {
				return err
			}
			v := s
			if f.Out == tensor.F32 {
				v = float64(float32(s))
			}
			if err := g.launch(st, "wa_scale", grid, 256, 0, r.ptrs[t], argInt(int(f.Out)), argF64(v), uint64(f.Len)); err != nil {
				return err
			}
		}
		return nil
	})
}
