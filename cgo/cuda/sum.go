package cuda

import (
	"context"
	"fmt"
	"slices"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
)

// WeightedSum implements device.Device: the job's inputs stream from host memory through the
// pipeline, the sums are accumulated and converted on the GPU exactly as the CPU device does
// (same operations in the same order: the results are bit-identical), and each finished chunk
// is copied to the job's Output. A NaN or Inf in a result is a *tensor.NonFiniteError naming the
// tensor and element.
func (g *GPU) WeightedSum(ctx context.Context, sj *device.SumJob) (device.Stats, error) {
	if err := sj.Validate(); err != nil {
		return device.Stats{}, err
	}
	for t, f := range sj.Fields {
		if err := supports(t, f, sj.Inputs); err != nil {
			return device.Stats{}, err
		}
	}
	src := g.hostSource(sj.Inputs)
	j := &job{g: g, fields: sj.Fields, src: src,
		op:  newSumOp(sj.Fields, &src, sj.Weights, sj.Scale, false),
		out: output{chunks: sj.Chunks, out: sj.Output, check: true, progress: sj.Progress}}
	stats, err := j.run(ctx)
	return stats, exactRangeError(err, sj) // exact.go
}

// weightedSumResident is WeightedSum over device-resident inputs into a device-resident output:
// out = Σ_i weights[i]·scale·inputs[i], tensor by tensor, accumulated in fields[t].Acc and
// written in out's dtype (which must be fields[t].Out). fields gives the accumulator dtypes; its
// lengths must match the residents'. A NaN or Inf in the output is a *tensor.NonFiniteError.
func (g *GPU) weightedSumResident(ctx context.Context, fields []device.AccField, inputs []*resident, weights []float64, scale float64, out *resident) (device.Stats, error) {
	if len(inputs) != len(weights) {
		return device.Stats{}, fmt.Errorf("%w: %d inputs, %d weights", device.ErrJob, len(inputs), len(weights))
	}
	rf, err := residentFields(g, inputs, out)
	if err != nil {
		return device.Stats{}, err
	}
	if len(fields) != len(rf) {
		return device.Stats{}, fmt.Errorf("%w: %d fields for %d tensors", device.ErrJob, len(fields), len(rf))
	}
	for t, f := range fields {
		if f.Len != rf[t].Len || f.Out != rf[t].Out {
			return device.Stats{}, fmt.Errorf("%w: field %q: %d elements of %s, the output holds %d of %s", device.ErrJob, f.Name, f.Len, f.Out, rf[t].Len, rf[t].Out)
		}
		for i, in := range inputs {
			if dt := in.fields[t].DType; !dt.Real() {
				return device.Stats{}, fmt.Errorf("%w: field %q: input %d is %s and cannot be summed", device.ErrUnsupported, f.Name, i, dt)
			}
		}
		if err := supportsResident(t, f, inputs); err != nil {
			return device.Stats{}, err
		}
	}
	src := source{res: inputs}
	j := &job{g: g, fields: fields, src: src, op: newSumOp(fields, &src, weights, scale, false), out: output{res: out}}
	stats, err := j.run(ctx)
	if err != nil {
		return stats, err
	}
	return stats, g.checkResidentFinite(ctx, out)
}

// supports checks what the CPU device checks, with the same messages.
func supports(t int, f device.AccField, inputs [][]device.Span) error {
	if f.Acc == tensor.I64 {
		return exactSupports(t, f, inputs) // exact.go
	}
	if f.Acc != tensor.F32 && f.Acc != tensor.F64 {
		return fmt.Errorf("%w: field %q: accumulator dtype %s (want f32 or f64)", device.ErrUnsupported, f.Name, f.Acc)
	}
	switch f.Out {
	case tensor.F32, tensor.F16, tensor.BF16:
	case tensor.F64:
		if f.Acc != tensor.F64 {
			return fmt.Errorf("%w: field %q: f64 output needs an f64 accumulator", device.ErrUnsupported, f.Name)
		}
	default:
		return fmt.Errorf("%w: field %q: output dtype %s", device.ErrUnsupported, f.Name, f.Out)
	}
	if f.Acc == tensor.F32 {
		for i, in := range inputs {
			if in[t].DType == tensor.F64 {
				return fmt.Errorf("%w: field %q: input %d is f64 and needs an f64 accumulator", device.ErrUnsupported, f.Name, i)
			}
		}
	}
	return nil
}

func supportsResident(t int, f device.AccField, inputs []*resident) error {
	spans := make([][]device.Span, len(inputs))
	for i, r := range inputs {
		spans[i] = make([]device.Span, t+1)
		spans[i][t].DType = r.fields[t].DType
	}
	return supports(t, f, spans)
}

// sumOp accumulates weighted inputs. Inputs of one field are grouped in runs of consecutive
// inputs of one dtype, exactly as the CPU device groups them, so that every element sees the
// same additions in the same order: the inputs' order.
type sumOp struct {
	fields []device.AccField
	groups [][]sumGroup
	add    bool    // add into the output (Accumulator.Add) instead of writing it
	direct []bool  // per field: accumulate in the output itself (same dtype), no scratch
	scale  float64 // exact fields: the job's scale, which multiplies their sums (exact.go)
}

type sumGroup struct {
	dtype  tensor.DType
	inputs []int
	w32    []float32
	w64    []float64
	lim    []int32 // exact fields: each input's magnitude limit, as the kernel's u32 (exact.go)
}

func newSumOp(fields []device.AccField, src *source, weights []float64, scale float64, add bool) *sumOp {
	o := &sumOp{fields: fields, groups: make([][]sumGroup, len(fields)), add: add, direct: make([]bool, len(fields)), scale: scale}
	for t, f := range fields {
		o.direct[t] = add || f.Acc == f.Out
		gs := o.groups[t]
		for i := range src.count() {
			dt := src.dtype(i, t)
			k := len(gs) - 1
			if k < 0 || gs[k].dtype != dt {
				gs = append(gs, sumGroup{dtype: dt})
				k++
			}
			gr := &gs[k]
			if f.Acc == tensor.I64 {
				gr.inputs = append(gr.inputs, i)
				exactGroup(gr, f, weights[i], device.Span{DType: dt, Scale: src.scale(i, t)})
				continue
			}
			w := weights[i] * scale
			if dt == tensor.I8 {
				w *= float64(src.scale(i, t))
			}
			gr.inputs = append(gr.inputs, i)
			if f.Acc == tensor.F32 {
				gr.w32 = append(gr.w32, float32(w))
			} else {
				gr.w64 = append(gr.w64, w)
			}
		}
		o.groups[t] = gs
	}
	return o
}

func (o *sumOp) scratch(t int) int {
	if o.direct[t] {
		return 0
	}
	if o.fields[t].Acc == tensor.I64 {
		return 16 // two limbs
	}
	return o.fields[t].Acc.Size()
}

func (o *sumOp) segment(b *batch, k int) error {
	if o.fields[b.sl.segs[k].field].Acc == tensor.I64 {
		return o.exactSegment(b, k)
	}
	g := b.j.g
	sg := b.sl.segs[k]
	f := o.fields[sg.field]
	n := sg.hi - sg.lo
	acc := b.output(k)
	if !o.direct[sg.field] {
		acc = b.scratchAt(k)
	}
	first := !o.add
	if len(o.groups[sg.field]) == 0 && first {
		b.enqueue(func(s cuStream) error { return g.memsetErr(acc, int64(n*f.Acc.Size()), s) })
	}
	grid, err := blocks((int64(n)+3)/4, 256)
	if err != nil {
		return err
	}
	for _, gr := range o.groups[sg.field] {
		ptrs := make([]uint64, len(gr.inputs))
		vec := acc%16 == 0
		for q, i := range gr.inputs {
			ptrs[q] = b.input(k, i)
			vec = vec && ptrs[q]%16 == 0
		}
		xs := param(b, ptrs)
		var w uint64
		if f.Acc == tensor.F32 {
			w = param(b, gr.w32)
		} else {
			w = param(b, gr.w64)
		}
		name := "wa_acc_" + f.Acc.String() + "_" + gr.dtype.String()
		args := []uint64{acc, xs, w, argInt(len(ptrs)), uint64(n), argBool(first), argBool(vec)}
		b.enqueue(func(s cuStream) error { return g.launch(s, name, grid, 256, 0, args...) })
		first = false
	}
	if !o.direct[sg.field] {
		out := b.output(k)
		g1, err := blocks(int64(n), 256)
		if err != nil {
			return err
		}
		b.enqueue(func(s cuStream) error {
			if f.Acc == tensor.F32 {
				return g.launch(s, "wa_store_f32", g1, 256, 0, out, argInt(int(f.Out)), acc, argF32(1), uint64(n))
			}
			return g.launch(s, "wa_store_f64", g1, 256, 0, out, argInt(int(f.Out)), acc, argF64(1), uint64(n))
		})
	}
	return nil
}

func (g *GPU) memsetErr(p uint64, n int64, s cuStream) error {
	if err := g.drv.memset(g.ctx, p, 0, n, s); err != nil {
		return fmt.Errorf("%s: %w", g.Name(), err)
	}
	return nil
}

// storeOp converts an accumulator (the single, resident input) to the output dtypes with a scale,
// as the CPU's Store kernels do: f32 sums are scaled in f32, f64 sums in f64.
type storeOp struct {
	fields []device.AccField
	scale  float64
}

func (storeOp) scratch(int) int { return 0 }

func (o storeOp) segment(b *batch, k int) error {
	if o.fields[b.sl.segs[k].field].Acc == tensor.I64 {
		return o.exactStore(b, k)
	}
	g := b.j.g
	sg := b.sl.segs[k]
	f := o.fields[sg.field]
	n := sg.hi - sg.lo
	acc, out := b.input(k, 0), b.output(k)
	grid, err := blocks(int64(n), 256)
	if err != nil {
		return err
	}
	b.enqueue(func(s cuStream) error {
		if f.Acc == tensor.F32 {
			return g.launch(s, "wa_store_f32", grid, 256, 0, out, argInt(int(f.Out)), acc, argF32(float32(o.scale)), uint64(n))
		}
		return g.launch(s, "wa_store_f64", grid, 256, 0, out, argInt(int(f.Out)), acc, argF64(o.scale), uint64(n))
	})
	return nil
}

// gpuAccumulator is a running sum in device memory.
type gpuAccumulator struct {
	g      *GPU
	fields []device.AccField
	sum    *resident // one tensor per field, in its accumulator dtype
	err    error     // a failed Reset, reported by the next call
}

// NewAccumulator implements device.Device: the sum lives in device memory; Add streams an update
// to the GPU and accumulates it there (the same operations as the CPU's); Emit converts on the GPU
// and copies the chunks back.
func (g *GPU) NewAccumulator(fields []device.AccField) (device.Accumulator, error) {
	rf := make([]residentField, len(fields))
	exact := 0
	for t, f := range fields {
		if err := supports(t, f, nil); err != nil {
			return nil, err
		}
		if f.Len < 0 {
			return nil, fmt.Errorf("%w: field %q: %d elements", device.ErrJob, f.Name, f.Len)
		}
		if f.OneLimb {
			return nil, fmt.Errorf("%w: field %q: one-limb exact sums are the CPU's accumulator (the GPU keeps two limbs)", device.ErrUnsupported, f.Name)
		}
		rf[t] = residentField{Name: f.Name, DType: f.Acc, Shape: []int{f.Len}}
		if f.Acc == tensor.I64 {
			exact++
		}
	}
	switch exact { // exact sums (exact.go): all fields or none
	case len(fields):
		rf = exactResidentFields(fields)
	case 0:
	default:
		return nil, fmt.Errorf("%w: %d of %d fields are exact: all or none", device.ErrUnsupported, exact, len(fields))
	}
	sum, err := g.newResident(rf)
	if err != nil {
		return nil, err
	}
	return &gpuAccumulator{g: g, fields: slices.Clone(fields), sum: sum}, nil
}

// Add implements device.Accumulator.
func (a *gpuAccumulator) Add(ctx context.Context, x []device.Span, w float64) error {
	if a.err != nil {
		return a.err
	}
	if err := (&device.SumJob{Fields: a.fields, Inputs: [][]device.Span{x}, Weights: []float64{w}}).Validate(); err != nil {
		return err
	}
	for t, f := range a.fields {
		if f.Acc == tensor.F32 && x[t].DType == tensor.F64 {
			return fmt.Errorf("%w: field %q: f64 input needs an f64 accumulator", device.ErrUnsupported, f.Name)
		}
		if f.Acc == tensor.I64 {
			if err := exactSupports(t, f, [][]device.Span{x}); err != nil {
				return err
			}
		}
	}
	src := a.g.hostSource([][]device.Span{x})
	j := &job{g: a.g, fields: a.fields, src: src, op: newSumOp(a.fields, &src, []float64{w}, 1, true), out: output{res: a.sum}}
	_, err := j.run(ctx)
	return err
}

// Emit implements device.Accumulator.
func (a *gpuAccumulator) Emit(ctx context.Context, scale float64, chunks []device.Chunk, out device.Output) (device.Stats, error) {
	if a.err != nil {
		return device.Stats{}, a.err
	}
	if err := (&device.SumJob{Fields: a.fields, Chunks: chunks}).Validate(); err != nil {
		return device.Stats{}, err
	}
	j := &job{g: a.g, fields: a.fields, src: source{res: []*resident{a.sum}}, op: storeOp{fields: a.fields, scale: scale},
		out: output{chunks: chunks, out: out, check: true}}
	return j.run(ctx)
}

// SumBytes implements device.SumHolder: the device memory of the sums.
func (a *gpuAccumulator) SumBytes() int64 {
	if a.sum == nil {
		return 0
	}
	return a.sum.size
}

// Reset implements device.Accumulator. A driver failure is reported by the next Add or Emit.
func (a *gpuAccumulator) Reset() {
	a.err = a.g.onStream(context.Background(), func(_ *lane, s cuStream) error {
		return a.g.memsetErr(a.sum.base, max(a.sum.size, 256), s)
	})
}

// Close implements device.Accumulator.
func (a *gpuAccumulator) Close() error { return a.sum.free() }
