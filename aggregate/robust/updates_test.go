package robust

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
)

// shapes of a small model with the spread real ones have: a matrix, odd vectors, a scalar.
var shapes = map[string][]int{"embed": {67, 33}, "bias": {5}, "norm": {1001}, "scalar": {}}
var names = []string{"embed", "bias", "norm", "scalar"}

// update makes a random update whose tensors have dtype dt (names in order).
func update(t *testing.T, r *rand.Rand, src string, dt tensor.DType, order []string) *tensor.Set {
	t.Helper()
	s := &tensor.Set{Source: src, Metadata: map[string]string{}}
	for _, name := range order {
		tt := newTensor(t, name, dt, shapes[name]...)
		for j := range tt.Len() {
			setValue(tt, j, r.NormFloat64())
		}
		if dt == tensor.I8 {
			tt.Scale = 0.01 + r.Float32()/50
		}
		addTo(t, s, tt)
	}
	return s
}

func setValue(t *tensor.Tensor, j int, v float64) {
	b := t.Bytes()
	switch t.DType {
	case tensor.F32:
		putU32(b[4*j:], math.Float32bits(float32(v)))
	case tensor.F64:
		putU32(b[8*j:], uint32(math.Float64bits(v)))
		putU32(b[8*j+4:], uint32(math.Float64bits(v)>>32))
	case tensor.BF16:
		putU16(b[2*j:], tensor.F32ToBF16(float32(v)))
	case tensor.F16:
		putU16(b[2*j:], tensor.F32ToF16(float32(v)))
	case tensor.I8:
		b[j] = byte(int8(max(-127, min(127, math.Round(v*40)))))
	}
}

func putU16(b []byte, v uint16) { b[0], b[1] = byte(v), byte(v>>8) }
func putU32(b []byte, v uint32) { putU16(b, uint16(v)); putU16(b[2:], uint16(v>>16)) }

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

// relTol is the relative error allowed for an output dtype: its rounding plus the f32
// accumulation over a few inputs.
var relTol = map[tensor.DType]float64{tensor.F32: 1e-6, tensor.F64: 1e-12, tensor.BF16: 1.0 / 128, tensor.F16: 1.0 / 1024, tensor.I8: 1.0 / 100}

func mustCPU(t *testing.T, workers int) device.Device {
	t.Helper()
	d, err := device.NewCPU(device.WithWorkers(workers))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// must(New...(...))(t) is the rule a constructor returned, failing the test on its error.
func must[T any](v T, err error) func(t *testing.T) T {
	return func(t *testing.T) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}
