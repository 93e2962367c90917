package optim

import (
	"math"
	"testing"

	"github.com/wattagg/wattagg/internal/tensortest"
	"github.com/wattagg/wattagg/tensor"
)

// plus returns the f32 tensor "w" of s plus off, as a client model.
func plus(t *testing.T, src string, s *tensor.Set, off ...float32) *tensor.Set {
	t.Helper()
	x := tensortest.F32Of(t, s, "w")
	v := make([]float32, len(x))
	for j := range v {
		v[j] = x[j] + off[j]
	}
	return tensortest.F32Set(t, src, "w", v)
}

func near(got float32, want float64, rel float64) bool {
	return math.Abs(float64(got)-want) <= rel*math.Max(math.Abs(want), 1e-3)
}

// referenceMean is FedAvg computed plainly in float64, by tensor name.
func referenceMean(updates []*tensor.Set, weights []float64) map[string][]float64 {
	var total float64
	for _, w := range weights {
		total += w
	}
	out := map[string][]float64{}
	for k, u := range updates {
		for _, t := range u.Tensors() {
			if out[t.Name] == nil {
				out[t.Name] = make([]float64, t.Len())
			}
			for j := range t.Len() {
				out[t.Name][j] += weights[k] * t.Value(j) / total
			}
		}
	}
	return out
}
