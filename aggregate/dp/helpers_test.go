package dp

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/wattagg/wattagg/internal/tensortest"
	"github.com/wattagg/wattagg/tensor"
)

// aroundGlobal makes n client models around g: client k moves every coordinate by a random
// amount scaled so that its delta norm is about scale·(k+1).
func aroundGlobal(t *testing.T, r *rand.Rand, g *tensor.Set, n int, scale float64) []*tensor.Set {
	t.Helper()
	var out []*tensor.Set
	var p float64
	for _, tt := range g.Tensors() {
		p += float64(tt.Len())
	}
	for k := range n {
		u := &tensor.Set{Source: fmt.Sprintf("client%d", k), Metadata: map[string]string{}}
		for _, tt := range g.Tensors() {
			nt := tensortest.New(t, tt.Name, tensor.F32, tt.Shape...)
			for j := range nt.Len() {
				tensortest.SetValue(nt, j, tt.Value(j)+r.NormFloat64()*scale*float64(k+1)/math.Sqrt(p))
			}
			tensortest.Add(t, u, nt)
		}
		out = append(out, u)
	}
	return out
}
