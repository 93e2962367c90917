package dp

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/wattagg/wattagg/tensor"
)

// shapes of a small model with the spread real ones have: a matrix, odd vectors, a scalar.
var shapes = map[string][]int{"embed": {67, 33}, "bias": {5}, "norm": {1001}, "scalar": {}}

// update makes a random f32 update (names in order).
func update(t *testing.T, r *rand.Rand, src string, order []string) *tensor.Set {
	t.Helper()
	s := &tensor.Set{Source: src, Metadata: map[string]string{}}
	for _, name := range order {
		tt := newTensor(t, name, tensor.F32, shapes[name]...)
		for j := range tt.Len() {
			setValue(tt, j, r.NormFloat64())
		}
		addTo(t, s, tt)
	}
	return s
}

func setValue(t *tensor.Tensor, j int, v float64) {
	b := t.Bytes()
	u := math.Float32bits(float32(v))
	b[4*j], b[4*j+1], b[4*j+2], b[4*j+3] = byte(u), byte(u>>8), byte(u>>16), byte(u>>24)
}

// newTensor is tensor.New that fails the test on error.
func newTensor(t *testing.T, name string, dt tensor.DType, shape ...int) *tensor.Tensor {
	t.Helper()
	tt, err := tensor.New(name, dt, shape...)
	if err != nil {
		t.Fatal(err)
	}
	return tt
}

// addTo is Set.Add that fails the test on error.
func addTo(t *testing.T, s *tensor.Set, tt *tensor.Tensor) {
	t.Helper()
	if err := s.Add(tt); err != nil {
		t.Fatal(err)
	}
}

// must(New...(...))(t) is what a constructor returned, failing the test on its error.
func must[T any](v T, err error) func(t *testing.T) T {
	return func(t *testing.T) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

// f32Set makes a Set of f32 tensors from name/values pairs, in order.
func f32Set(t *testing.T, src string, kv ...any) *tensor.Set {
	t.Helper()
	s := &tensor.Set{Source: src, Metadata: map[string]string{}}
	for i := 0; i < len(kv); i += 2 {
		v := kv[i+1].([]float32)
		tt, err := tensor.FromF32(kv[i].(string), []int{len(v)}, append([]float32(nil), v...))
		if err != nil {
			t.Fatal(err)
		}
		addTo(t, s, tt)
	}
	return s
}

func f32Of(t *testing.T, s *tensor.Set, name string) []float32 {
	t.Helper()
	tt, ok := s.Tensor(name)
	if !ok {
		t.Fatalf("no tensor %q in %s", name, s.Source)
	}
	v, err := tt.F32()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func equalF32(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for j := range a {
		if math.Float32bits(a[j]) != math.Float32bits(b[j]) {
			return false
		}
	}
	return true
}

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
			nt := newTensor(t, tt.Name, tensor.F32, tt.Shape...)
			for j := range nt.Len() {
				setValue(nt, j, tt.Value(j)+r.NormFloat64()*scale*float64(k+1)/math.Sqrt(p))
			}
			addTo(t, u, nt)
		}
		out = append(out, u)
	}
	return out
}
