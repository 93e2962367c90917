package cuda

import (
	"context"
	"fmt"
	"math"
	"unsafe"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/kernels"
	"github.com/wattagg/wattagg/tensor"
)

// step applies one server optimizer step in place, in one fused pass over device memory: the
// kernel of Optimize with the arithmetic of device.OptimJob, whose rule and hyperparameters it
// takes (device.OptimRule, kernels.OptimParams). x is the model, delta the aggregated update, m
// and v the optimizer state (v is unused by FedAvgM and may be nil there); x, m and v receive
// XOut, MOut and VOut of the job. What differs from device.OptimJob: the operands are f32
// residents of one layout rather than host slices, the update is always in place, and no two
// operands may be the same buffer (the job allows XOut = D).
func (g *GPU) step(ctx context.Context, rule device.OptimRule, p kernels.OptimParams, x, delta, m, v *resident) error {
	if rule < device.OptimFedAvgM || rule > device.OptimFedYogi {
		return fmt.Errorf("%w: optimizer %s", device.ErrUnsupported, rule)
	}
	rs := []*resident{x, delta, m}
	if rule.SecondMoment() {
		if v == nil {
			return fmt.Errorf("%w: %s needs the second-moment state v", device.ErrJob, rule)
		}
		rs = append(rs, v)
	}
	for i, r := range rs {
		for _, q := range rs[:i] {
			if q == r {
				return fmt.Errorf("%w: %s: the same buffer is passed twice", device.ErrJob, rule)
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
	return g.onStream(ctx, func(_ *lane, s cuStream) error {
		for t, f := range fields {
			if f.Len == 0 {
				continue
			}
			grid, err := blocks(int64(f.Len), 256)
			if err != nil {
				return err
			}
			var vp uint64
			if rule.SecondMoment() {
				vp = v.ptrs[t]
			}
			if err := g.launch(s, "wa_optim", grid, 256, 0, optimArgs(rule, p, x.ptrs[t], delta.ptrs[t], m.ptrs[t], vp, f.Len)...); err != nil {
				return err
			}
		}
		return nil
	})
}

// Optimize implements device.Optimizer: the fused step of kernels/cuda/optim.cu over host
// memory. X, D, M and V are staged to the GPU slab by slab through the pipeline (page-locked
// ones copied directly), the step runs in place on the staged copies, and the new x, m and v
// come back to XOut, MOut and VOut, so the results are the bits the CPU's kernels compute (the
// rounding rules of device.OptimJob; a NaN may come back with another payload). A slab's outputs
// are written only after all its inputs were copied, and slabs are disjoint element ranges, so
// an output may be its input (XOut = X or D, MOut = M, VOut = V) as the job allows. A cancelled
// context stops the job between slabs and returns ctx.Err(), leaving the outputs partly written
// (or all written, when it came after the last slab was queued).
//
// Called from an Output callback of this GPU's own job (a server optimizer stepping each chunk
// of the weighted sum), it runs on the side lane (see GPU).
func (g *GPU) Optimize(ctx context.Context, s *device.OptimJob) (device.Stats, error) {
	if err := s.Validate(); err != nil {
		return device.Stats{}, err
	}
	if err := ctx.Err(); err != nil {
		return device.Stats{Device: g.Name()}, err
	}
	n := len(s.X)
	if n == 0 {
		return device.Stats{Device: g.Name()}, nil
	}
	ins := [][]float32{s.X, s.D, s.M}
	outs := [][]float32{s.XOut, s.MOut}
	if s.Rule.SecondMoment() {
		ins, outs = append(ins, s.V), append(outs, s.VOut)
	}
	inputs := make([][]device.Span, len(ins))
	for i, x := range ins {
		inputs[i] = []device.Span{{DType: tensor.F32, Data: f32Bytes(x)}}
	}
	// One chunk per optimChunkElems elements, its out region laid out [x | m | v].
	ob := 4 * len(outs)
	var chunks []device.Chunk
	for lo := 0; lo < n; lo += optimChunkElems {
		hi := min(lo+optimChunkElems, n)
		chunks = append(chunks, device.Chunk{Off: int64(lo) * int64(ob), Len: (hi - lo) * ob,
			Pieces: []device.Piece{{Field: 0, Lo: lo, Hi: hi}}})
	}
	raw := func(c int, b []byte) error {
		pc := chunks[c].Pieces[0]
		m := 4 * (pc.Hi - pc.Lo)
		for q, o := range outs {
			copy(f32Bytes(o[pc.Lo:pc.Hi]), b[q*m:(q+1)*m])
		}
		return nil
	}
	fields := []device.AccField{{Name: "x", Len: n, Acc: tensor.F32, Out: tensor.F32}}
	p := s.OptimParams
	j := &job{g: g, fields: fields, src: g.hostSource(inputs), op: &optimOp{rule: s.Rule, p: p, outs: len(outs)},
		out: output{chunks: chunks, raw: raw, elemBytes: ob}}
	return j.run(ctx)
}

// optimChunkElems is the unit in which Optimize hands results back (1 MiB of each output).
const optimChunkElems = 1 << 18

// optimOp runs the step in place on a segment's staged x, d, m (and v), then copies x, m (and
// v) to the segment's out region.
type optimOp struct {
	rule device.OptimRule
	p    kernels.OptimParams
	outs int
}

// optimArgs are wa_optim's arguments: the rule (device.OptimRule's numbers are optim.cu's), the
// state's addresses (v 0 for FedAvgM), the hyperparameters and the element count.
func optimArgs(rule device.OptimRule, p kernels.OptimParams, x, d, m, v uint64, n int) []uint64 {
	return []uint64{argInt(int(rule)), x, d, m, v, argF32(p.LR), argF32(p.Beta1), argF32(p.Beta2), argF32(p.Tau), uint64(n)}
}

func (*optimOp) scratch(int) int { return 0 }

func (op *optimOp) segment(b *batch, k int) error {
	g := b.j.g
	sg := b.sl.segs[k]
	n := sg.hi - sg.lo
	x, d, m := b.input(k, 0), b.input(k, 1), b.input(k, 2)
	var v uint64
	if op.outs == 3 {
		v = b.input(k, 3)
	}
	grid, err := blocks(int64(n), 256)
	if err != nil {
		return err
	}
	args := optimArgs(op.rule, op.p, x, d, m, v, n)
	out := b.output(k)
	b.enqueue(func(s cuStream) error {
		if err := g.launch(s, "wa_optim", grid, 256, 0, args...); err != nil {
			return err
		}
		for q, src := range []uint64{x, m, v}[:op.outs] {
			if err := g.drv.d2d(g.ctx, out+uint64(q*4*n), src, int64(4*n), s); err != nil {
				return fmt.Errorf("%s: %w", g.Name(), err)
			}
		}
		return nil
	})
	return nil
}

// f32Bytes views v as bytes.
func f32Bytes(v []float32) []byte {
	if len(v) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(v))), 4*len(v))
}

// addNoise adds Gaussian noise of standard deviation sigma to every element of r (f32 or f64
// tensors): element j of tensor t receives sigma·z where z is normal j mod 4 of Philox4x32-10
// counter offset + Σ_{u<t} ⌈len_u/4⌉ + ⌊j/4⌋ under key seed (Box-Muller in f64; see
// kernels/cuda/noise.cu). Which normal an element gets depends only on (seed, counter), never on
// the launch; its last bits depend on the device's log and sincospi (libdevice's on a GPU, the C
// library's on the fake: a few ulp from Go's math, see the package doc). It returns the first
// counter the call did not use: pass it as the next call's offset so that no noise is ever
// reused.
//
// Philox is a statistically good generator, not a cryptographic one, and its 64-bit key can be
// searched: noise from it gives no differential privacy. The DP rules draw their noise on the
// host from ChaCha8 keyed by crypto/rand; use this for simulations and tests only.
func (g *GPU) addNoise(ctx context.Context, r *resident, sigma float64, seed, offset uint64) (uint64, error) {
	if sigma < 0 || math.IsNaN(sigma) || math.IsInf(sigma, 0) {
		return offset, fmt.Errorf("%w: noise standard deviation %v", device.ErrJob, sigma)
	}
	fields, err := residentFields(g, []*resident{r}, nil)
	if err != nil {
		return offset, err
	}
	isFloat := func(d tensor.DType) bool { return d == tensor.F32 || d == tensor.F64 }
	if err := checkResidentDTypes([]*resident{r}, isFloat, "noised (want f32 or f64)"); err != nil {
		return offset, err
	}
	ctr := offset
	err = g.onStream(ctx, func(_ *lane, s cuStream) error {
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
func (g *GPU) scale(ctx context.Context, r *resident, s float64) error {
	fields, err := residentFields(g, []*resident{r}, nil)
	if err != nil {
		return err
	}
	isFloat := func(d tensor.DType) bool { return d == tensor.F32 || d == tensor.F64 }
	if err := checkResidentDTypes([]*resident{r}, isFloat, "scaled (want f32 or f64)"); err != nil {
		return err
	}
	return g.onStream(ctx, func(_ *lane, st cuStream) error {
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
