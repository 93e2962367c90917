package aggregate

import (
	"math"

	"github.com/wattagg/wattagg/tensor"
)

// quantiseResult replaces the tensors the plan writes as i8 (computed as f32) by their
// symmetric per-tensor quantisation.
func quantiseResult(set *tensor.Set, p *plan) (*tensor.Set, error) {
	if !p.quantised() {
		return set, nil
	}
	out := &tensor.Set{Source: set.Source, Metadata: set.Metadata}
	for t, tt := range set.Tensors() {
		if p.quant[t] {
			q, err := quantiseI8(tt)
			if err != nil {
				return nil, err
			}
			tt = q
		}
		if err := out.Add(tt); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// quantiseI8 maps an f32 tensor to int8 with scale max|v|/127, rounding to nearest even, so
// that the largest magnitude is exactly representable and nothing clips.
func quantiseI8(t *tensor.Tensor) (*tensor.Tensor, error) {
	v, err := t.F32()
	if err != nil {
		return nil, err
	}
	var m float32
	for _, x := range v {
		m = max(m, float32(math.Abs(float64(x))))
	}
	scale := m / 127
	if scale == 0 || math.IsInf(float64(scale), 0) {
		scale = 1
	}
	q, err := tensor.New(t.Name, tensor.I8, t.Shape...)
	if err != nil {
		return nil, err
	}
	q.Scale = scale
	b := q.Bytes()
	for i, x := range v {
		r := math.RoundToEven(float64(x / scale))
		b[i] = byte(int8(max(-127, min(127, r))))
	}
	return q, nil
}
