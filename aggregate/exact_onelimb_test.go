package aggregate

import (
	"testing"

	"github.com/wattagg/wattagg/tensor"
)

// The plan of a one-limb round asks the device for one-limb sums, on the grid 40 bits coarser
// than two limbs'.
func TestOneLimbPlan(t *testing.T) {
	ref := tensor.Layout{{Name: "w", DType: tensor.F32, Shape: []int{10}}}
	inputs := func(int) []tensor.DType { return []tensor.DType{tensor.F32} }
	for _, one := range []bool{false, true} {
		cfg, err := newConfig([]Option{WithExactSum(ExactSum{Bound: 16, MaxWeight: 1 << 20, OneLimb: one})})
		if err != nil {
			t.Fatal(err)
		}
		p, err := newExactPlan(ref, inputs, cfg, Requirements{Kind: KindSum})
		if err != nil {
			t.Fatal(err)
		}
		want := 4 + 20 - 101
		if one {
			want = 4 + 20 - 61
		}
		if f := p.fields[0]; f.OneLimb != one || f.Grid != want {
			t.Fatalf("one limb %v: field %+v, want grid %d", one, f, want)
		}
	}
}
