package attack

import (
	"fmt"
	"maps"
	"math"

	"github.com/wattagg/wattagg/tensor"
)

// DefaultScale is the scaling factor of the showcase's scaling attack: the client sends
// x_t − 10·(x_k − x_t), ten times its honest update, reversed.
const DefaultScale = -10

// ScaleUpdate returns the model x_t + s·(x_k − x_t) for the global model x_t and a client's
// trained model x_k: s = 1 is the honest model, s = −10 (DefaultScale) the scaling attack. The
// result has local's tensors in local's order, as f32 (computed in float64, rounded once),
// and a copy of local's metadata, so it carries the same num_examples. The two Sets must hold
// the same tensors by name and shape (tensor.ErrLayoutMismatch), of float dtypes
// (tensor.ErrDType); s must be finite (ErrAttack).
func ScaleUpdate(global, local *tensor.Set, s float64) (*tensor.Set, error) {
	if math.IsNaN(s) || math.IsInf(s, 0) {
		return nil, fmt.Errorf("%w: scale %v", ErrAttack, s)
	}
	perm, err := local.Layout().Match(global.Layout(), false)
	if err != nil {
		return nil, fmt.Errorf("%s against %s: %w", local.Source, global.Source, err)
	}
	out, err := tensor.NewSet()
	if err != nil {
		return nil, err
	}
	out.Source = local.Source
	out.Metadata = maps.Clone(local.Metadata)
	if out.Metadata == nil {
		out.Metadata = map[string]string{}
	}
	for i, xk := range local.Tensors() {
		xt := global.At(perm[i])
		if !xk.DType.Real() || !xt.DType.Real() {
			return nil, fmt.Errorf("tensor %q: %w: scaling %s and %s", xk.Name, tensor.ErrDType, xk.DType, xt.DType)
		}
		r, err := tensor.New(xk.Name, tensor.F32, xk.Shape...)
		if err != nil {
			return nil, err
		}
		v, err := r.F32()
		if err != nil {
			return nil, err
		}
		for j := range v {
			g := xt.Value(j)
			v[j] = float32(g + s*(xk.Value(j)-g))
		}
		if err := out.Add(r); err != nil {
			return nil, err
		}
	}
	return out, nil
}
