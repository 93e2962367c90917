package robust

import (
	"context"
	"fmt"
	"math"
	"slices"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
)

// iterate is a model-sized f32 vector an iterative rule keeps (the geometric median's estimate,
// centered clipping's center): the only copies robust rules make, bounded by the memory budget.
type iterate struct {
	fields []device.AccField // the round's fields with f32 output
	chunks []device.Chunk
	data   [][]byte // per field
	spans  []device.Span
	arena  []byte
}

// newIterates allocates count zeroed iterates from the round's allocator, failing when they
// would not fit the memory budget (aggregate.WithMemoryBudget). free gives them back.
func (r *round) newIterates(count int) (its []*iterate, free func(), err error) {
	var params int64
	for _, f := range r.in.Fields() {
		params += int64(f.Len)
	}
	if need := int64(count) * 4 * params; need > r.in.MemoryBudget() {
		return nil, nil, fmt.Errorf("%s: %w: %d model-sized f32 iterates need %d bytes, more than the memory budget of %d bytes",
			r.rule, aggregate.ErrOption, count, need, r.in.MemoryBudget())
	}
	fields := slices.Clone(r.in.Fields())
	offsets := make([]int64, len(fields))
	var size int64
	for t := range fields {
		fields[t].Out = tensor.F32
		offsets[t] = size
		size += 4 * int64(fields[t].Len)
	}
	chunks, err := device.CutChunks(fields, offsets, r.in.ChunkBytes())
	if err != nil {
		return nil, nil, err
	}
	alloc := r.in.Allocator()
	its = make([]*iterate, count)
	for i := range its {
		arena := alloc.Allocate(int(size))
		it := &iterate{fields: fields, chunks: chunks, data: make([][]byte, len(fields)), spans: make([]device.Span, len(fields)), arena: arena}
		for t, f := range fields {
			b := arena[offsets[t] : offsets[t]+4*int64(f.Len)]
			it.data[t] = b
			it.spans[t] = device.Span{DType: tensor.F32, Data: b, Scale: 1}
		}
		its[i] = it
	}
	return its, func() {
		for _, it := range its {
			alloc.Free(it.arena)
		}
	}, nil
}

// output writes a job's chunks into the iterate.
func (it *iterate) output() device.Output { return &iterateOutput{it} }

type iterateOutput struct{ it *iterate }

func (o *iterateOutput) Dest(c, p int) ([]byte, error) {
	pc := o.it.chunks[c].Pieces[p]
	return o.it.data[pc.Field][4*pc.Lo : 4*pc.Hi], nil
}

func (o *iterateOutput) Done(int) error { return nil }

// sumInto computes Σ_i w_i·x_i·scale over inputs (device spans, clients or iterates) into it.
func (r *round) sumInto(ctx context.Context, it *iterate, inputs [][]device.Span, w []float64, scale float64) error {
	job := &device.SumJob{Fields: it.fields, Inputs: inputs, Weights: w, Scale: scale, Chunks: it.chunks, Output: it.output()}
	stats, err := r.in.Device().WeightedSum(ctx, job)
	r.in.Record(stats)
	if err != nil {
		return r.in.Overflow(err)
	}
	return nil
}

// distTo returns ‖x_k − z‖ for the usable clients, excluding first those whose norm is not
// finite (their distances are dropped: the others' do not depend on them).
func (r *round) distTo(ctx context.Context, z *iterate) ([]float64, error) {
	cs := slices.Clone(r.keep)
	sq, nsq, stats, err := r.dev.SqDistances(ctx, r.in.Fields(), r.inputsOf(cs), z.spans)
	r.in.Record(stats)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", r.rule, err)
	}
	r.setNorms(cs, nsq)
	var dist []float64
	for i, k := range cs {
		if slices.Contains(r.keep, k) {
			dist = append(dist, math.Sqrt(max(0, sq[i])))
		}
	}
	return dist, nil
}

// emitIterate writes an iterate as the result, converted to the output dtypes.
func (r *round) emitIterate(ctx context.Context, z *iterate) error {
	return r.in.Emit(ctx, func(out device.Output) (device.Stats, error) {
		job := &device.SumJob{Fields: r.in.Fields(), Inputs: [][]device.Span{z.spans}, Weights: []float64{1},
			Scale: 1, Chunks: r.in.Chunks(), Output: out}
		stats, err := r.in.Device().WeightedSum(ctx, job)
		if err != nil {
			return stats, r.in.Overflow(err)
		}
		return stats, nil
	})
}
