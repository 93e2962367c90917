package mlp

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/wattagg/wattagg/interop/gorgonia/digits"
	"github.com/wattagg/wattagg/tensor"
)

// The tensor names of the model, in the order Init writes them.
const (
	FC1Weight = "fc1.weight"
	FC1Bias   = "fc1.bias"
	FC2Weight = "fc2.weight"
	FC2Bias   = "fc2.bias"
)

// Names lists the model's tensors in Set order.
var Names = [...]string{FC1Weight, FC1Bias, FC2Weight, FC2Bias}

// Inputs and Outputs are fixed by the data set.
const (
	Inputs  = digits.Features
	Outputs = digits.Classes
)

// NumExamplesKey is the metadata key under which Train records the number of samples it
// trained on; wattagg's FedAvg weighs each client by it.
const NumExamplesKey = "num_examples"

// ErrModel is returned for a Set that is not this model: a tensor missing, of the wrong shape,
// of a dtype that is not a float, or holding NaN or Inf.
var ErrModel = errors.New("mlp: not a 64-hidden-10 perceptron")

// Init returns a freshly initialised model with the given hidden width, drawn as PyTorch
// initialises nn.Linear (every weight and bias uniform in ±1/√fan_in) from a PCG generator
// seeded with seed: the same seed gives the same bits.
func Init(hidden int, seed uint64) (*tensor.Set, error) {
	if hidden < 1 || hidden > 1<<16 {
		return nil, fmt.Errorf("%w: hidden width %d not in 1..65536", ErrOption, hidden)
	}
	r := rand.New(rand.NewPCG(seed, 0x1417))
	shapes := [][]int{{hidden, Inputs}, {hidden}, {Outputs, hidden}, {Outputs}}
	fanIn := []int{Inputs, Inputs, hidden, hidden}
	s, err := tensor.NewSet()
	if err != nil {
		return nil, err
	}
	for i, name := range Names {
		t, err := tensor.New(name, tensor.F32, shapes[i]...)
		if err != nil {
			return nil, err
		}
		v, err := t.F32()
		if err != nil {
			return nil, err
		}
		bound := 1 / math.Sqrt(float64(fanIn[i]))
		for j := range v {
			v[j] = float32((2*r.Float64() - 1) * bound)
		}
		if err := s.Add(t); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// params are the model's four tensors as float32 slices, with the hidden width.
type params struct {
	hidden         int
	w1, b1, w2, b2 []float32
}

// slices returns the parameters in Names order.
func (p *params) slices() [4][]float32 { return [4][]float32{p.w1, p.b1, p.w2, p.b2} }

// shapes returns the parameters' shapes in Names order.
func (p *params) shapes() [4][]int {
	return [4][]int{{p.hidden, Inputs}, {p.hidden}, {Outputs, p.hidden}, {Outputs}}
}

// readParams checks that s is the model and returns its parameters: views of s's own memory
// when a tensor is aligned f32 (the usual case: wattagg writes f32 aligned), otherwise a
// float32 copy (f64, f16, bf16, i8, or f32 at an odd address in a foreign file). The hidden
// width is read from fc1.weight. With own, every slice is a fresh copy the caller may write.
func readParams(s *tensor.Set, own bool) (*params, error) {
	if s.Len() != len(Names) {
		return nil, fmt.Errorf("%s: %w: %d tensors, want %v", s.Source, ErrModel, s.Len(), Names)
	}
	w1, ok := s.Tensor(FC1Weight)
	if !ok {
		return nil, fmt.Errorf("%s: %w: no tensor %q", s.Source, ErrModel, FC1Weight)
	}
	if len(w1.Shape) != 2 || w1.Shape[1] != Inputs || w1.Shape[0] < 1 {
		return nil, fmt.Errorf("%s: %w: %s has shape %v, want [hidden, %d]", s.Source, ErrModel, FC1Weight, w1.Shape, Inputs)
	}
	p := &params{hidden: w1.Shape[0]}
	dst := [4]*[]float32{&p.w1, &p.b1, &p.w2, &p.b2}
	for i, want := range p.shapes() {
		t, ok := s.Tensor(Names[i])
		if !ok {
			return nil, fmt.Errorf("%s: %w: no tensor %q", s.Source, ErrModel, Names[i])
		}
		if !equalShape(t.Shape, want) {
			return nil, fmt.Errorf("%s: %w: %s has shape %v, want %v", s.Source, ErrModel, t.Name, t.Shape, want)
		}
		if !t.DType.Real() {
			return nil, fmt.Errorf("%s: %w: %s is %s", s.Source, ErrModel, t.Name, t.DType)
		}
		if err := t.CheckFinite(); err != nil {
			return nil, fmt.Errorf("%s: %w: %w", s.Source, ErrModel, err)
		}
		v, err := t.F32()
		if err != nil || own {
			v = make([]float32, t.Len())
			for j := range v {
				v[j] = float32(t.Value(j))
			}
		}
		*dst[i] = v
	}
	return p, nil
}

func equalShape(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
