package device

import (
	"context"
	"fmt"

	"github.com/wattagg/wattagg/kernels"
	"github.com/wattagg/wattagg/tensor"
)

// Capabilities of the server-optimizer and secure-sum rules. They are separate small interfaces,
// not methods of Device, so that a device implements them when it can (the CPU and the CUDA
// device do, the latter with the kernels of kernels/cuda/optim.cu) and rules fall back to the host
// kernels for a device that does not.

// OptimRule is a fused server-optimizer step.
type OptimRule uint8

// The steps of adaptive federated optimization (Reddi et al., 2021, Algorithm 2, without bias
// correction) and server momentum.
const (
	OptimFedAvgM OptimRule = iota + 1
	OptimFedAdagrad
	OptimFedAdam
	OptimFedYogi
)

func (r OptimRule) String() string {
	switch r {
	case OptimFedAvgM:
		return "fedavgm"
	case OptimFedAdagrad:
		return "fedadagrad"
	case OptimFedAdam:
		return "fedadam"
	case OptimFedYogi:
		return "fedyogi"
	}
	return fmt.Sprintf("optim(%d)", uint8(r))
}

// SecondMoment reports whether the rule keeps a second moment v (all but FedAvgM).
func (r OptimRule) SecondMoment() bool { return r >= OptimFedAdagrad && r <= OptimFedYogi }

// OptimJob is one fused optimizer step over n elements of host memory: every slice holds n
// f32 elements (V and VOut are nil for FedAvgM).
//
// Per element j, with Δ = D[j], every operation an f32 operation rounded to nearest even, the
// square root and the division correctly rounded, and never a fused multiply-add (so that every
// device computes the same bits as the reference loops of package kernels):
//
//	FedAvgM:    m = β1·M[j] + Δ;                                 X' = X[j] + lr·m
//	FedAdagrad: m = β1·M[j] + (1-β1)·Δ;  v = V[j] + Δ²;                    X' = X[j] + (lr·m)/(√v + τ)
//	FedAdam:    m = β1·M[j] + (1-β1)·Δ;  v = β2·V[j] + (1-β2)·Δ²;          X' = X[j] + (lr·m)/(√v + τ)
//	FedYogi:    m = β1·M[j] + (1-β1)·Δ;  v = V[j] - ((1-β2)·Δ²)·sign(V[j] - Δ²);  X' = as FedAdam
//
// with 1-β computed once in f32, sign(0) = sign(NaN) = 0, and the products evaluated as written
// (Δ² = Δ·Δ; (1-β2)·Δ² rounded before it is multiplied by the sign); then XOut[j] = X',
// MOut[j] = m, VOut[j] = v.
//
// An output may be the very slice of its input, for an update in place (MOut = M, VOut = V, and
// XOut = X or XOut = D); outputs must not otherwise overlap the inputs or each other. Inputs
// that are not also outputs are not written. NaN and Inf propagate as the formulas say; nothing
// is checked.
type OptimJob struct {
	Rule OptimRule
	// OptimParams are η, β1, β2 and τ: the one description of a step's hyperparameters that
	// the kernels, the devices and the rules share.
	kernels.OptimParams
	X, D, M, V       []float32
	XOut, MOut, VOut []float32
}

// Validate checks that the lengths agree, so that kernels (which trust their arguments) are safe
// to call. Devices call it first.
func (s *OptimJob) Validate() error {
	if s.Rule < OptimFedAvgM || s.Rule > OptimFedYogi {
		return fmt.Errorf("%w: optimizer step of unknown rule %d", ErrJob, s.Rule)
	}
	n := len(s.X)
	names := []string{"D", "M", "XOut", "MOut", "V", "VOut"}
	lens := []int{len(s.D), len(s.M), len(s.XOut), len(s.MOut), len(s.V), len(s.VOut)}
	if !s.Rule.SecondMoment() {
		names, lens = names[:4], lens[:4]
	}
	for k, l := range lens {
		if l != n {
			return fmt.Errorf("%w: %s step: %s has %d elements, X has %d", ErrJob, s.Rule, names[k], l, n)
		}
	}
	return nil
}

// Optimizer is implemented by devices that run fused optimizer steps on host memory. (The
// CUDA device's Step runs the same step on device-resident tensors.)
type Optimizer interface {
	// Optimize runs job. The device may cut it into blocks and run them in parallel; a
	// cancelled context stops it between blocks, leaving the outputs partly written (inputs
	// aliased by an output are then partly updated too: callers that update in place must
	// treat the state as lost on error).
	Optimize(ctx context.Context, job *OptimJob) (Stats, error)
}

// ModSummer is implemented by devices that add u32 vectors modulo 2^32 (the server side of
// mask-based secure aggregation). Its method has the shape of Device.WeightedSum, as the CUDA
// device's ModSum already does.
type ModSummer interface {
	// ModSum computes, for every chunk, Σ_i inputs[i][t][j] modulo 2^32 (from 0) for the
	// elements of each piece and writes it as little-endian u32 to out.Dest, then calls
	// out.Done. Every field's Out must be U32 and every input span U32 with Len elements;
	// destinations must be 4-byte aligned. Modular addition is associative and commutative, so
	// the result is exact and independent of the order, blocking and device. Chunks may be
	// run in any order and in parallel; a cancelled context stops the job between chunks.
	ModSum(ctx context.Context, fields []AccField, inputs [][]Span, chunks []Chunk, out Output) (Stats, error)
}

// CheckModSum checks a mod-sum job's dtypes and lengths, so that kernels are safe to call.
// Devices call it first.
func CheckModSum(fields []AccField, inputs [][]Span, chunks []Chunk) error {
	for t, f := range fields {
		if f.Out != tensor.U32 {
			return fmt.Errorf("%w: field %q: output dtype %s (want u32)", ErrUnsupported, f.Name, f.Out)
		}
		for i, in := range inputs {
			if len(in) != len(fields) {
				return fmt.Errorf("%w: input %d: %d spans for %d fields", ErrJob, i, len(in), len(fields))
			}
			if in[t].DType != tensor.U32 {
				return fmt.Errorf("%w: field %q: input %d is %s: only u32 is summed modulo 2^32", ErrUnsupported, f.Name, i, in[t].DType)
			}
			if len(in[t].Data) != 4*f.Len {
				return fmt.Errorf("%w: field %q: input %d has %d bytes for %d u32 elements", ErrJob, f.Name, i, len(in[t].Data), f.Len)
			}
		}
	}
	return checkChunks(fields, chunks)
}
