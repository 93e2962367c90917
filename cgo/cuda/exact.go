package cuda

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"unsafe"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
)

// Exact sums on the GPU (device.AccField with Acc I64; kernels/cuda/exact.cu): each field's sums
// are two int64 arrays, hi then lo, in scratch during a job and in an accumulator's resident
// (one I64 tensor of 2·Len elements per field). The terms are kernels.ExactTerm's and the
// additions exact, so the limbs are the CPU's bit for bit whatever the order of the inputs; an
// element with an input beyond the field's bound is marked, written as NaN, and reported by the
// output check (aggregate names the input and the bound).

// exactSupports checks an exact field as the CPU device does.
func exactSupports(t int, f device.AccField, inputs [][]device.Span) error {
	if !(f.Bound > 0) || math.IsInf(f.Bound, 0) {
		return fmt.Errorf("%w: field %q: an exact sum needs a positive finite bound, not %v", device.ErrJob, f.Name, f.Bound)
	}
	switch f.Out {
	case tensor.F32, tensor.BF16, tensor.F16:
	default:
		return fmt.Errorf("%w: field %q: an exact sum is written as f32, bf16 or f16, not %s", device.ErrUnsupported, f.Name, f.Out)
	}
	for i, in := range inputs {
		switch dt := in[t].DType; dt {
		case tensor.F32, tensor.BF16, tensor.F16, tensor.I8:
		default:
			return fmt.Errorf("%w: field %q: input %d is %s: exact sums take f32, bf16, f16 and i8", device.ErrUnsupported, f.Name, i, dt)
		}
	}
	return nil
}

// exactSegment enqueues segment k of an exact field: every group of inputs added to the limbs
// (the scratch, or the accumulator's resident), then, for a job's output, the store.
func (o *sumOp) exactSegment(b *batch, k int) error {
	g := b.j.g
	sg := b.sl.segs[k]
	f := o.fields[sg.field]
	n := sg.hi - sg.lo
	var hi, lo uint64
	if o.add {
		hi = b.output(k) // the resident: hi[Len] then lo[Len]
		lo = hi + 8*uint64(f.Len)
	} else {
		hi = b.scratchAt(k)
		lo = hi + 8*uint64(n)
	}
	first := !o.add
	if len(o.groups[sg.field]) == 0 && first {
		b.enqueue(func(s cuStream) error { return g.memsetErr(hi, int64(16*n), s) })
	}
	grid, err := blocks(int64(n), 256)
	if err != nil {
		return err
	}
	for _, gr := range o.groups[sg.field] {
		ptrs := make([]uint64, len(gr.inputs))
		for q, i := range gr.inputs {
			ptrs[q] = b.input(k, i)
		}
		xs, w, lim := param(b, ptrs), param(b, gr.w64), param(b, gr.lim)
		name := "wa_exact_acc_" + gr.dtype.String()
		args := []uint64{hi, lo, xs, w, lim, argInt(len(ptrs)), uint64(n), argBool(first)}
		b.enqueue(func(s cuStream) error { return g.launch(s, name, grid, 256, 0, args...) })
		first = false
	}
	if !o.add {
		out := b.output(k)
		sc := math.Ldexp(o.scale, f.Grid)
		b.enqueue(func(s cuStream) error {
			return g.launch(s, "wa_exact_store", grid, 256, 0, out, argInt(int(f.Out)), hi, lo, argF64(sc), uint64(n))
		})
	}
	return nil
}

// exactStore enqueues the store of segment k of an exact accumulator (the resident source).
func (o storeOp) exactStore(b *batch, k int) error {
	g := b.j.g
	sg := b.sl.segs[k]
	f := o.fields[sg.field]
	n := sg.hi - sg.lo
	hi := b.input(k, 0)
	lo := hi + 8*uint64(f.Len)
	out := b.output(k)
	grid, err := blocks(int64(n), 256)
	if err != nil {
		return err
	}
	sc := math.Ldexp(o.scale, f.Grid)
	b.enqueue(func(s cuStream) error {
		return g.launch(s, "wa_exact_store", grid, 256, 0, out, argInt(int(f.Out)), hi, lo, argF64(sc), uint64(n))
	})
	return nil
}

// exactGroup fills the kernel weights and magnitude limits of an exact field's group: the
// job's scale multiplies the sum, not the terms.
func exactGroup(gr *sumGroup, f device.AccField, w float64, sp device.Span) {
	gr.w64 = append(gr.w64, device.ExactWeight(w, sp, f.Grid))
	gr.lim = append(gr.lim, int32(device.ExactLimit(sp.DType, f.Bound, sp.Scale))) // below 2^31: a magnitude
}

// exactRangeError turns the NaN an exact field's output holds where an input was beyond the
// field's bound into what the CPU device reports: a *device.RangeError naming the tensor, element
// and value, or the *tensor.NonFiniteError of the input's own NaN or Inf.
func exactRangeError(err error, sj *device.SumJob) error {
	var nf *tensor.NonFiniteError
	if !errors.As(err, &nf) {
		return err
	}
	t := slices.IndexFunc(sj.Fields, func(f device.AccField) bool { return f.Name == nf.Tensor })
	if t < 0 || sj.Fields[t].Acc != tensor.I64 {
		return err
	}
	f := sj.Fields[t]
	for _, in := range sj.Inputs {
		switch v := in[t].Value(nf.Index); {
		case math.IsNaN(v) || math.IsInf(v, 0):
			return &tensor.NonFiniteError{Tensor: f.Name, Index: nf.Index, Value: v}
		case !(math.Abs(v) <= f.Bound):
			return &device.RangeError{Tensor: f.Name, Index: nf.Index, Value: v, Bound: f.Bound}
		}
	}
	return err
}

// exactResidentFields lays out an exact accumulator: 2·Len int64 per field.
func exactResidentFields(fields []device.AccField) []residentField {
	rf := make([]residentField, len(fields))
	for t, f := range fields {
		rf[t] = residentField{Name: f.Name, DType: tensor.I64, Shape: []int{2 * f.Len}, Scale: 1}
	}
	return rf
}

// limbs downloads field t's limbs.
func (a *gpuAccumulator) limbs(ctx context.Context) (*tensor.Set, error) {
	if a.err != nil {
		return nil, a.err
	}
	return a.sum.download(ctx)
}

func int64s(b []byte) []int64 {
	return unsafe.Slice((*int64)(unsafe.Pointer(unsafe.SliceData(b))), len(b)/8)
}

// ReadSums implements device.ExactAccumulator: the limbs copied back and written as 128-bit
// integers.
func (a *gpuAccumulator) ReadSums(ctx context.Context, t int, dst []int64) error {
	if t < 0 || t >= len(a.fields) || a.fields[t].Acc != tensor.I64 || len(dst) != 2*a.fields[t].Len {
		return fmt.Errorf("%w: sums of field %d into %d words", device.ErrJob, t, len(dst))
	}
	set, err := a.limbs(ctx)
	if err != nil {
		return err
	}
	defer set.Close()
	v := int64s(set.At(t).Bytes())
	n := a.fields[t].Len
	device.ExactToInt128(v[:n], v[n:], dst)
	return nil
}

// AddSums implements device.ExactAccumulator: the limbs copied back, the sums added on the host
// (refused there, unchanged, if beyond the limbs) and the limbs copied in again.
func (a *gpuAccumulator) AddSums(ctx context.Context, t int, src []int64) error {
	if t < 0 || t >= len(a.fields) || a.fields[t].Acc != tensor.I64 {
		return fmt.Errorf("%w: field %d of %d", device.ErrJob, t, len(a.fields))
	}
	set, err := a.limbs(ctx)
	if err != nil {
		return err
	}
	defer set.Close()
	v := int64s(set.At(t).Bytes())
	n := a.fields[t].Len
	if err := device.ExactAddInt128(v[:n], v[n:], src, a.fields[t].Name); err != nil {
		return err
	}
	spans := make([]device.Span, set.Len())
	for i, tt := range set.Tensors() {
		spans[i] = device.SpanOf(tt)
	}
	j := &job{g: a.g, fields: a.sum.accFields(), src: a.g.hostSource([][]device.Span{spans}), op: copyOp{}, out: output{res: a.sum}}
	_, err = j.run(ctx)
	return err
}
