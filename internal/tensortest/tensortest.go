// Package tensortest makes the tensors and sets the aggregation rules' tests share: random
// updates of a small model with the spread real ones have, sets from name/value pairs, and
// tensor.New, Set.Add and constructors that fail the test on error.
package tensortest

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/wattagg/wattagg/tensor"
)

// Shapes are the tensors of the small model: a matrix, odd vectors, a scalar.
var Shapes = map[string][]int{"embed": {67, 33}, "bias": {5}, "norm": {1001}, "scalar": {}}

// Names are Shapes' names in their usual order.
var Names = []string{"embed", "bias", "norm", "scalar"}

// Update makes a random update of the small model whose tensors have dtype dt, the names in
// order: standard normal values (SetValue), and for i8 a random scale in [0.01, 0.03).
func Update(t testing.TB, r *rand.Rand, src string, dt tensor.DType, order []string) *tensor.Set {
	t.Helper()
	s := &tensor.Set{Source: src, Metadata: map[string]string{}}
	for _, name := range order {
		tt := New(t, name, dt, Shapes[name]...)
		for j := range tt.Len() {
			SetValue(tt, j, r.NormFloat64())
		}
		if dt == tensor.I8 {
			tt.Scale = 0.01 + r.Float32()/50
		}
		Add(t, s, tt)
	}
	return s
}

// SetValue stores v as element j of tt, rounded to its dtype: i8 as round(40·v) within ±127
// (values scaled by the tensor's Scale), u32 as uint32(v).
func SetValue(tt *tensor.Tensor, j int, v float64) {
	b := tt.Bytes()
	le := binary.LittleEndian
	switch tt.DType {
	case tensor.F32:
		le.PutUint32(b[4*j:], math.Float32bits(float32(v)))
	case tensor.F64:
		le.PutUint64(b[8*j:], math.Float64bits(v))
	case tensor.BF16:
		le.PutUint16(b[2*j:], tensor.F32ToBF16(float32(v)))
	case tensor.F16:
		le.PutUint16(b[2*j:], tensor.F32ToF16(float32(v)))
	case tensor.I8:
		b[j] = byte(int8(max(-127, min(127, math.Round(v*40)))))
	case tensor.U32:
		le.PutUint32(b[4*j:], uint32(v))
	default:
		panic("tensortest.SetValue: dtype " + tt.DType.String())
	}
}

// New is tensor.New that fails the test on error.
func New(t testing.TB, name string, dt tensor.DType, shape ...int) *tensor.Tensor {
	t.Helper()
	tt, err := tensor.New(name, dt, shape...)
	if err != nil {
		t.Fatal(err)
	}
	return tt
}

// Add is s.Add(tt) that fails the test on error.
func Add(t testing.TB, s *tensor.Set, tt *tensor.Tensor) {
	t.Helper()
	if err := s.Add(tt); err != nil {
		t.Fatal(err)
	}
}

// Must(New...(...))(t) is what a constructor returned, failing the test on its error.
func Must[T any](v T, err error) func(t testing.TB) T {
	return func(t testing.TB) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

// F32Set makes a set of 1-D f32 tensors from name/values pairs, in order (the values copied).
func F32Set(t testing.TB, src string, kv ...any) *tensor.Set {
	t.Helper()
	s := &tensor.Set{Source: src, Metadata: map[string]string{}}
	for i := 0; i < len(kv); i += 2 {
		v := kv[i+1].([]float32)
		tt, err := tensor.FromF32(kv[i].(string), []int{len(v)}, append([]float32(nil), v...))
		if err != nil {
			t.Fatal(err)
		}
		Add(t, s, tt)
	}
	return s
}

// F32Of is the values of s's tensor name as f32, failing the test when there is none.
func F32Of(t testing.TB, s *tensor.Set, name string) []float32 {
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

// EqualF32 reports whether a and b hold the same bits.
func EqualF32(a, b []float32) bool {
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

// AroundGlobal makes n client models around g: client k moves every coordinate by a random
// amount scaled so that its delta norm is about scale·(k+1).
func AroundGlobal(t testing.TB, r *rand.Rand, g *tensor.Set, n int, scale float64) []*tensor.Set {
	t.Helper()
	var out []*tensor.Set
	var p float64
	for _, tt := range g.Tensors() {
		p += float64(tt.Len())
	}
	for k := range n {
		u := &tensor.Set{Source: fmt.Sprintf("client%d", k), Metadata: map[string]string{}}
		for _, tt := range g.Tensors() {
			nt := New(t, tt.Name, tensor.F32, tt.Shape...)
			for j := range nt.Len() {
				SetValue(nt, j, tt.Value(j)+r.NormFloat64()*scale*float64(k+1)/math.Sqrt(p))
			}
			Add(t, u, nt)
		}
		out = append(out, u)
	}
	return out
}
