package attack

import (
	"context"
	"errors"
	"math"
	"slices"
	"testing"

	"github.com/wattagg/wattagg/interop/gorgonia/digits"
	"github.com/wattagg/wattagg/interop/gorgonia/mlp"
	"github.com/wattagg/wattagg/tensor"
)

func TestFlipLabels(t *testing.T) {
	d := digits.Dataset{X: make([]float32, 3*digits.Features), Y: []int{0, 7, 9}}
	got, err := FlipLabels(d, ReversedLabels())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Y, []int{9, 2, 0}) || !slices.Equal(d.Y, []int{0, 7, 9}) {
		t.Fatalf("flipped %v, original now %v", got.Y, d.Y)
	}
	for name, perm := range map[string][]int{
		"short":     {1, 0},
		"repeated":  {0, 0, 2, 3, 4, 5, 6, 7, 8, 9},
		"too large": {10, 1, 2, 3, 4, 5, 6, 7, 8, 9},
		"negative":  {-1, 1, 2, 3, 4, 5, 6, 7, 8, 9},
	} {
		if _, err := FlipLabels(d, perm); !errors.Is(err, ErrAttack) {
			t.Errorf("%s: %v, want ErrAttack", name, err)
		}
	}
}

// TestFlippedClientIsPoisoned: a client trained on reversed labels from a good model ends up
// far worse on the held-out split than one trained on the true labels.
func TestFlippedClientIsPoisoned(t *testing.T) {
	all, err := digits.Load()
	if err != nil {
		t.Fatal(err)
	}
	train, test, err := all.Split(0.2, 1)
	if err != nil {
		t.Fatal(err)
	}
	start, err := mlp.Init(32, 1)
	if err != nil {
		t.Fatal(err)
	}
	flipped, err := FlipLabels(train, ReversedLabels())
	if err != nil {
		t.Fatal(err)
	}
	acc := func(d digits.Dataset) float64 {
		s, err := mlp.Train(context.Background(), start, d, mlp.WithEpochs(3))
		if err != nil {
			t.Fatal(err)
		}
		m, err := mlp.Load(s)
		if err != nil {
			t.Fatal(err)
		}
		a, err := m.Accuracy(test)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	honest, poisoned := acc(train), acc(flipped)
	t.Logf("held-out accuracy: honest %.3f, reversed labels %.3f", honest, poisoned)
	if honest < 0.85 || poisoned > 0.1 {
		t.Fatalf("honest %.3f, poisoned %.3f", honest, poisoned)
	}
}

func f32Set(t *testing.T, vals map[string][]float32, order ...string) *tensor.Set {
	t.Helper()
	s, err := tensor.NewSet()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range order {
		x, err := tensor.FromF32(name, []int{len(vals[name])}, vals[name])
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Add(x); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func TestScaleUpdate(t *testing.T) {
	g := map[string][]float32{"a": {1, 2, 3}, "b": {-0.5, 0.25}}
	k := map[string][]float32{"a": {1.5, 1, 3}, "b": {0.5, 0.125}}
	global := f32Set(t, g, "a", "b")
	local := f32Set(t, k, "b", "a") // another order: matched by name
	local.Metadata["num_examples"] = "123"
	got, err := ScaleUpdate(global, local, DefaultScale)
	if err != nil {
		t.Fatal(err)
	}
	if got.Metadata["num_examples"] != "123" {
		t.Fatalf("metadata %v", got.Metadata)
	}
	for i, name := range []string{"b", "a"} {
		x := got.At(i)
		if x.Name != name || x.DType != tensor.F32 {
			t.Fatalf("tensor %d is %s %s", i, x.Name, x.DType)
		}
		for j, v := range x.Float64s() {
			xt, xk := float64(g[name][j]), float64(k[name][j])
			if want := float64(float32(xt - 10*(xk-xt))); v != want {
				t.Fatalf("%s[%d] = %v, want %v", name, j, v, want)
			}
		}
	}
	// s = 1 gives the client's own model back.
	same, err := ScaleUpdate(global, local, 1)
	if err != nil {
		t.Fatal(err)
	}
	for i := range same.Len() {
		if !slices.Equal(same.At(i).Float64s(), local.At(i).Float64s()) {
			t.Fatalf("s=1 changed %s", same.At(i).Name)
		}
	}
}

func TestScaleUpdateRejects(t *testing.T) {
	global := f32Set(t, map[string][]float32{"a": {1, 2}}, "a")
	if _, err := ScaleUpdate(global, f32Set(t, map[string][]float32{"a": {1, 2, 3}}, "a"), -10); !errors.Is(err, tensor.ErrLayoutMismatch) {
		t.Errorf("shape: %v, want ErrLayoutMismatch", err)
	}
	if _, err := ScaleUpdate(global, f32Set(t, map[string][]float32{"c": {1, 2}}, "c"), -10); !errors.Is(err, tensor.ErrLayoutMismatch) {
		t.Errorf("name: %v, want ErrLayoutMismatch", err)
	}
	if _, err := ScaleUpdate(global, global, math.NaN()); !errors.Is(err, ErrAttack) {
		t.Errorf("NaN scale: %v, want ErrAttack", err)
	}
	u, err := tensor.New("a", tensor.U32, 2)
	if err != nil {
		t.Fatal(err)
	}
	us, err := tensor.NewSet(u)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ScaleUpdate(global, us, -10); !errors.Is(err, tensor.ErrDType) {
		t.Errorf("u32: %v, want ErrDType", err)
	}
}
