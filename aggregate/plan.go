package aggregate

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
)

// plan is how an aggregate is computed and laid out: per tensor the accumulator and output
// dtypes, where each output tensor sits in the output data section, and the chunks the data
// section is cut into.
type plan struct {
	ref     tensor.Layout     // the first update's layout: the output's tensor order
	fields  []device.AccField // per tensor, in ref order; Out is what the device produces
	quant   []bool            // per tensor: quantise the device's f32 output to i8 afterwards
	order   []int             // the fields in data-section order
	offsets []int64           // per field: byte offset in the data section
	size    int64             // bytes of the data section
	chunks  []device.Chunk
}

// newPlan decides dtypes and placement. inputs(t) lists the dtypes the updates bring for
// tensor t (all updates for a batch, the first for a streaming aggregate).
func newPlan(ref tensor.Layout, inputs func(t int) []tensor.DType, cfg config) (*plan, error) {
	p := &plan{ref: ref, fields: make([]device.AccField, len(ref)), quant: make([]bool, len(ref))}
	for t, f := range ref {
		in := inputs(t)
		for _, dt := range in {
			if !dt.Real() {
				return nil, fmt.Errorf("%w: tensor %q is %s: FedAvg averages real values (u32 tensors are for the secure-sum rule)", tensor.ErrDType, f.Name, dt)
			}
		}
		allF32 := len(in) > 0 && !slices.ContainsFunc(in, func(dt tensor.DType) bool { return dt != tensor.F32 })
		wide := slices.Contains(in, tensor.F64)
		acc := cfg.acc
		if acc == tensor.Invalid {
			acc = tensor.F64
			if allF32 {
				acc = tensor.F32
			}
		}
		if acc == tensor.F32 && wide {
			return nil, fmt.Errorf("%w: tensor %q has f64 inputs: accumulate in f64", ErrOption, f.Name)
		}
		out := cfg.out
		if out == tensor.Invalid {
			out = f.DType
		}
		if out == tensor.I8 {
			p.quant[t] = true
			out = tensor.F32
		}
		if out == tensor.F64 && acc == tensor.F32 {
			if cfg.acc == tensor.F32 {
				return nil, fmt.Errorf("%w: f64 output from an f32 accumulator: accumulate in f64", ErrOption)
			}
			acc = tensor.F64 // an f64 output deserves an f64 sum
		}
		p.fields[t] = device.AccField{Name: f.Name, Len: f.Len(), Acc: acc, Out: out}
	}

	// Widest elements first, as the reference safetensors writer orders tensors: every tensor
	// then starts at a multiple of its element size, so chunk boundaries never split an element.
	p.order = make([]int, len(ref))
	for i := range p.order {
		p.order[i] = i
	}
	slices.SortStableFunc(p.order, func(a, b int) int {
		return cmp.Compare(p.fields[b].Out.Size(), p.fields[a].Out.Size())
	})
	p.offsets = make([]int64, len(ref))
	for _, t := range p.order {
		p.offsets[t] = p.size
		p.size += int64(p.fields[t].Len) * int64(p.fields[t].Out.Size())
	}
	chunks, err := device.CutChunks(p.fields, p.offsets, cfg.chunkBytes)
	if err != nil {
		return nil, err
	}
	p.chunks = chunks
	return p, nil
}

// quantised reports whether any tensor is written as i8.
func (p *plan) quantised() bool { return slices.Contains(p.quant, true) }

// fileLayout is the output layout in data-section order, with final dtypes.
func (p *plan) fileLayout() tensor.Layout {
	l := make(tensor.Layout, 0, len(p.order))
	for _, t := range p.order {
		l = append(l, tensor.Field{Name: p.ref[t].Name, DType: p.fields[t].Out, Shape: p.ref[t].Shape})
	}
	return l
}

// describe fills the dtype summary of a report.
func (p *plan) describe(r *Report, inputs func(t int) []tensor.DType) {
	seen := map[tensor.DType]bool{}
	for t := range p.ref {
		for _, dt := range inputs(t) {
			if !seen[dt] {
				seen[dt] = true
				r.InDTypes = append(r.InDTypes, dt.String())
			}
		}
	}
	r.AccDType = summarise(p.fields, func(f device.AccField, _ int) tensor.DType { return f.Acc })
	r.OutDType = summarise(p.fields, func(f device.AccField, t int) tensor.DType {
		if p.quant[t] {
			return tensor.I8
		}
		return f.Out
	})
	r.Tensors = len(p.ref)
	r.Params = p.ref.NumParams()
}

func summarise(fields []device.AccField, dt func(device.AccField, int) tensor.DType) string {
	if len(fields) == 0 {
		return ""
	}
	first := dt(fields[0], 0)
	for t, f := range fields {
		if dt(f, t) != first {
			return "mixed"
		}
	}
	return first.String()
}
