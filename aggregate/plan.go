package aggregate

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
)

// plan is how a round's result is computed and laid out: per tensor the accumulator and output
// dtypes, where each output tensor sits in the output data section, and the chunks the data
// section is cut into.
type plan struct {
	ref     tensor.Layout     // the round's layout: the output's tensor order
	fields  []device.AccField // per tensor, in ref order; Out is what the device produces
	quant   []bool            // per tensor: quantise the device's f32 output to i8 afterwards
	decode  bool              // the device produces u32 sums that a stage decodes to f32 in place
	exact   bool              // exact sums (WithExactSum, exact.go)
	order   []int             // the fields in data-section order
	offsets []int64           // per field: byte offset in the data section
	size    int64             // bytes of the data section
	chunks  []device.Chunk
}

// newPlan decides dtypes and placement. inputs(t) lists the dtypes the updates bring for
// tensor t (every update of a batch; the expected or first ones of an incremental sum). Rules
// that move a global model accumulate in f64 by default (the sum of the client models minus the
// global model is a small difference of large numbers, and the accumulator block stays in
// cache, so it is free) and output f32; a mod-sum adds u32 and decodes to f32.
func newPlan(ref tensor.Layout, inputs func(t int) []tensor.DType, cfg *config, req Requirements) (*plan, error) {
	if cfg.exact != nil && req.Kind == KindSum {
		return newExactPlan(ref, inputs, cfg, req)
	}
	p := &plan{ref: ref, fields: make([]device.AccField, len(ref)), quant: make([]bool, len(ref))}
	if req.Kind == KindModSum {
		p.decode = true
		for t, f := range ref {
			p.fields[t] = device.AccField{Name: f.Name, Len: f.Len(), Acc: tensor.U32, Out: tensor.U32}
		}
		return p, p.layOut(cfg)
	}
	for t, f := range ref {
		in := inputs(t)
		allF32 := len(in) > 0 && !slices.ContainsFunc(in, func(dt tensor.DType) bool { return dt != tensor.F32 })
		wide := slices.Contains(in, tensor.F64)
		acc := cfg.acc
		if acc == tensor.Invalid {
			acc = tensor.F64
			if allF32 && !req.Global {
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
		if req.Global {
			out = tensor.F32
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
	return p, p.layOut(cfg)
}

// layOut places the output tensors in the data section and cuts it into chunks.
func (p *plan) layOut(cfg *config) error {
	ref := p.ref
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
		return err
	}
	p.chunks = chunks
	return nil
}

// field is the index of the named tensor, or -1.
func (p *plan) field(name string) int {
	for t, f := range p.fields {
		if f.Name == name {
			return t
		}
	}
	return -1
}

// accOf is the accumulator dtype of the named tensor (Invalid if there is none).
func (p *plan) accOf(name string) tensor.DType {
	for _, f := range p.fields {
		if f.Name == name {
			return f.Acc
		}
	}
	return tensor.Invalid
}

// setDType is the dtype of output tensor t in the result Set: what the device writes, or f32
// where a stage decodes it in place.
func (p *plan) setDType(t int) tensor.DType {
	if p.decode {
		return tensor.F32
	}
	return p.fields[t].Out
}

// quantised reports whether any tensor is written as i8.
func (p *plan) quantised() bool { return slices.Contains(p.quant, true) }

// fileLayout is the output layout in data-section order, with final dtypes.
func (p *plan) fileLayout() tensor.Layout {
	l := make(tensor.Layout, 0, len(p.order))
	for _, t := range p.order {
		l = append(l, tensor.Field{Name: p.ref[t].Name, DType: p.setDType(t), Shape: p.ref[t].Shape})
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
	if p.exact {
		r.AccDType = "exact"
	}
	r.OutDType = summarise(p.fields, func(f device.AccField, t int) tensor.DType {
		if p.quant[t] {
			return tensor.I8
		}
		return p.setDType(t)
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
