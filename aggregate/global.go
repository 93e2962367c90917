package aggregate

import (
	"errors"
	"fmt"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
)

// globalModel is the global model x_t of a round, matched to its plan.
type globalModel struct {
	set   *tensor.Set
	spans []device.Span // in plan field order
	f32   [][]float32   // and their f32 views
	bytes int64
}

func globalName(g *tensor.Set) string {
	if g.Source != "" {
		return g.Source
	}
	return "global model"
}

// matchGlobal views g's tensors in the plan's field order. Every tensor must be f32 (the
// server's master copy); one at an odd address (a foreign file's layout) is copied once.
func matchGlobal(g *tensor.Set, p *plan) (*globalModel, error) {
	perm, err := p.ref.Match(g.Layout(), false)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", globalName(g), err)
	}
	m := &globalModel{set: g, spans: make([]device.Span, len(perm)), f32: make([][]float32, len(perm))}
	for t, j := range perm {
		gt := g.At(j)
		if gt.DType != tensor.F32 {
			return nil, fmt.Errorf("%s: %w: tensor %q is %s: the global model must be f32 (the server's master copy)",
				globalName(g), tensor.ErrDType, gt.Name, gt.DType)
		}
		x, err := gt.F32()
		if errors.Is(err, tensor.ErrUnaligned) {
			gt = gt.Clone()
			x, err = gt.F32()
		}
		if err != nil {
			return nil, err
		}
		m.spans[t], m.f32[t] = device.SpanOf(gt), x
		m.bytes += int64(len(gt.Bytes()))
	}
	return m, nil
}
