package mlp

import (
	"errors"
	"fmt"
	"math"

	G "gorgonia.org/gorgonia"

	"github.com/wattagg/wattagg/interop/gorgonia/digits"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// ErrInput is returned for inputs that are not whole rows of Inputs finite features.
var ErrInput = errors.New("mlp: bad input")

// Model answers predictions from a global model. Its parameters view the Set it was loaded
// from (no copy when the tensors are aligned f32), so a model mapped from a file is served
// from the page cache. A Model is read-only and safe for concurrent Predict calls: each call
// builds its own graph over the shared parameters.
type Model struct {
	p   *params
	set *tensor.Set // closed by Close when the Model owns it (Open)
}

// Load checks that s is the model and returns a Model over its memory. s must stay open
// while the Model is used; the Model does not close it.
func Load(s *tensor.Set) (*Model, error) {
	p, err := readParams(s, false)
	if err != nil {
		return nil, err
	}
	return &Model{p: p}, nil
}

// Open maps the .safetensors file at path and loads it; Close unmaps it.
func Open(path string) (*Model, error) {
	s, err := safetensors.Open(path)
	if err != nil {
		return nil, err
	}
	m, err := Load(s)
	if err != nil {
		s.Close()
		return nil, err
	}
	m.set = s
	return m, nil
}

// Close releases the mapping of a Model made by Open; for one made by Load it does nothing.
// No Predict may run during or after Close.
func (m *Model) Close() error {
	if m.set == nil {
		return nil
	}
	return m.set.Close()
}

// Hidden is the hidden layer's width.
func (m *Model) Hidden() int { return m.p.hidden }

// Predict runs the model on n = len(x)/Inputs rows of features (pixels scaled to [0, 1], as
// digits.Dataset holds them) and returns the n×Outputs logits, row by row, and each row's
// class (the first largest logit).
func (m *Model) Predict(x []float32) (logits []float32, classes []int, err error) {
	if len(x) == 0 || len(x)%Inputs != 0 {
		return nil, nil, fmt.Errorf("%w: %d values are not whole rows of %d", ErrInput, len(x), Inputs)
	}
	for i, v := range x {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return nil, nil, fmt.Errorf("%w: row %d feature %d is %v", ErrInput, i/Inputs, i%Inputs, v)
		}
	}
	n := len(x) / Inputs
	graphMu.Lock()
	xs := make([]float32, len(x))
	columns(xs, x, n)
	nt, err := newNet(m.p, n, xs)
	var vm G.VM
	if err == nil {
		vm = G.NewTapeMachine(nt.g)
	}
	graphMu.Unlock()
	if err != nil {
		return nil, nil, err
	}
	defer vm.Close()
	if err := vm.RunAll(); err != nil {
		return nil, nil, fmt.Errorf("mlp: forward pass: %w", err)
	}
	// The output belongs to the graph's machine: copy it out before the machine goes.
	out, ok := nt.logits.Value().Data().([]float32)
	if !ok || len(out) < n*Outputs {
		return nil, nil, fmt.Errorf("mlp: forward pass returned %T", nt.logits.Value().Data())
	}
	logits = append([]float32(nil), out[:n*Outputs]...)
	return logits, Argmax(logits, Outputs), nil
}

// Argmax returns the index of the first largest value of each row of width cols.
func Argmax(v []float32, cols int) []int {
	out := make([]int, len(v)/cols)
	for i := range out {
		row := v[i*cols : (i+1)*cols]
		best := 0
		for j, x := range row {
			if x > row[best] {
				best = j
			}
		}
		out[i] = best
	}
	return out
}

// Accuracy is the share of d's samples whose predicted class is their label.
func (m *Model) Accuracy(d digits.Dataset) (float64, error) {
	if d.Len() == 0 {
		return 0, fmt.Errorf("%w: no samples", ErrInput)
	}
	_, classes, err := m.Predict(d.X)
	if err != nil {
		return 0, err
	}
	right := 0
	for i, c := range classes {
		if c == d.Y[i] {
			right++
		}
	}
	return float64(right) / float64(d.Len()), nil
}
