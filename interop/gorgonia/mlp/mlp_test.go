package mlp

import (
	"bytes"
	"context"
	"errors"
	"math"
	"path/filepath"
	"slices"
	"testing"

	"github.com/wattagg/wattagg/interop/gorgonia/digits"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

func splitDigits(t *testing.T) (train, test digits.Dataset) {
	t.Helper()
	d, err := digits.Load()
	if err != nil {
		t.Fatal(err)
	}
	train, test, err = d.Split(0.2, 1)
	if err != nil {
		t.Fatal(err)
	}
	return train, test
}

func initModel(t *testing.T, hidden int, seed uint64) *tensor.Set {
	t.Helper()
	s, err := Init(hidden, seed)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func setBytes(s *tensor.Set) [][]byte {
	var out [][]byte
	for _, x := range s.Tensors() {
		out = append(out, slices.Clone(x.Bytes()))
	}
	return out
}

func equalBytes(a, b [][]byte) bool {
	return slices.EqualFunc(a, b, bytes.Equal)
}

func TestInit(t *testing.T) {
	s := initModel(t, 32, 5)
	want := tensor.Layout{
		{Name: FC1Weight, DType: tensor.F32, Shape: []int{32, 64}},
		{Name: FC1Bias, DType: tensor.F32, Shape: []int{32}},
		{Name: FC2Weight, DType: tensor.F32, Shape: []int{10, 32}},
		{Name: FC2Bias, DType: tensor.F32, Shape: []int{10}},
	}
	if !s.Layout().Equal(want) {
		t.Fatalf("layout %v", s.Layout())
	}
	for i, x := range s.Tensors() {
		bound := 1 / math.Sqrt(float64([]int{64, 64, 32, 32}[i]))
		for _, v := range x.Float64s() {
			if math.Abs(v) > bound {
				t.Fatalf("%s: %v outside ±%v", x.Name, v, bound)
			}
		}
	}
	if !equalBytes(setBytes(s), setBytes(initModel(t, 32, 5))) {
		t.Fatal("same seed, different model")
	}
	if equalBytes(setBytes(s), setBytes(initModel(t, 32, 6))) {
		t.Fatal("seeds 5 and 6 gave the same model")
	}
	if _, err := Init(0, 1); !errors.Is(err, ErrOption) {
		t.Fatalf("hidden 0: %v, want ErrOption", err)
	}
}

// trainCentral trains a model on all of train: a realistic model for the inference tests.
func trainCentral(t *testing.T, train digits.Dataset) *tensor.Set {
	t.Helper()
	m, err := Train(context.Background(), initModel(t, 32, 1), train, WithEpochs(8), WithSeed(1))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestPredictMatchesReference runs the gorgonia forward pass of a trained model, mapped from a
// file, on the held-out split and compares it with the float64 reference written in the test:
// every logit within the float32 error bound derived in refForward, the same class for every
// row, and the accuracy.
func TestPredictMatchesReference(t *testing.T) {
	train, test := splitDigits(t)
	trained := trainCentral(t, train)
	path := filepath.Join(t.TempDir(), "global.safetensors")
	if err := safetensors.WriteFile(path, trained); err != nil {
		t.Fatal(err)
	}
	m, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	// The model views the mapped file's bytes (read-only pages: a write would fault).
	w1, _ := m.set.Tensor(FC1Weight)
	if v, _ := w1.F32(); &v[0] != &m.p.w1[0] {
		t.Fatal("the model copied fc1.weight instead of viewing the mapped file")
	}

	logits, classes, err := m.Predict(test.X)
	if err != nil {
		t.Fatal(err)
	}
	ref, bound := refForward(refFrom(t, trained), test.X)
	if len(logits) != len(ref) {
		t.Fatalf("%d logits, want %d", len(logits), len(ref))
	}
	worst, worstBound, ratio := 0.0, 0.0, 0.0
	for i := range ref {
		d := math.Abs(float64(logits[i]) - ref[i])
		if d > bound[i] {
			t.Fatalf("row %d logit %d: %v, reference %v: |diff| %.3g above the float32 bound %.3g",
				i/Outputs, i%Outputs, logits[i], ref[i], d, bound[i])
		}
		worst, worstBound = max(worst, d), max(worstBound, bound[i])
		ratio = max(ratio, d/bound[i])
	}
	refClasses := refArgmax(ref)
	if !slices.Equal(classes, refClasses) {
		for i := range classes {
			if classes[i] != refClasses[i] {
				t.Fatalf("row %d: class %d, reference %d", i, classes[i], refClasses[i])
			}
		}
	}
	right := 0
	for i, c := range refClasses {
		if c == test.Y[i] {
			right++
		}
	}
	acc, err := m.Accuracy(test)
	if err != nil {
		t.Fatal(err)
	}
	if want := float64(right) / float64(test.Len()); acc != want {
		t.Fatalf("accuracy %v, reference %v", acc, want)
	}
	if acc < 0.9 {
		t.Fatalf("centrally trained accuracy %.3f, want >= 0.9", acc)
	}
	t.Logf("%d rows: max |logit - f64 reference| %.3g (largest bound %.3g, at most %.2f of its bound); accuracy %.4f",
		test.Len(), worst, worstBound, ratio, acc)

	// One row at a time gives the same logits as the batch (a 1-row matrix is not a vector).
	one, c1, err := m.Predict(test.Row(3))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(one, logits[3*Outputs:4*Outputs]) || c1[0] != classes[3] {
		t.Fatalf("row 3 alone: %v, in the batch %v", one, logits[3*Outputs:4*Outputs])
	}
}

func TestPredictRejects(t *testing.T) {
	m, err := Load(initModel(t, 8, 1))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := m.Predict(make([]float32, 63)); !errors.Is(err, ErrInput) {
		t.Fatalf("63 values: %v, want ErrInput", err)
	}
	if _, _, err := m.Predict(nil); !errors.Is(err, ErrInput) {
		t.Fatalf("no values: %v, want ErrInput", err)
	}
	x := make([]float32, 128)
	x[70] = float32(math.Inf(1))
	if _, _, err := m.Predict(x); !errors.Is(err, ErrInput) {
		t.Fatalf("Inf: %v, want ErrInput", err)
	}
	if _, err := m.Accuracy(digits.Dataset{}); !errors.Is(err, ErrInput) {
		t.Fatalf("empty accuracy: %v, want ErrInput", err)
	}
}

func TestLoadRejects(t *testing.T) {
	good := initModel(t, 8, 1)
	mutate := func(f func(ts []*tensor.Tensor) []*tensor.Tensor) *tensor.Set {
		c := good.Clone()
		s, err := tensor.NewSet(f(slices.Clone(c.Tensors()))...)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	nan := good.Clone()
	b, _ := nan.At(2).F32()
	b[5] = float32(math.NaN())
	wrongShape, err := tensor.New(FC2Bias, tensor.F32, 11)
	if err != nil {
		t.Fatal(err)
	}
	extra, err := tensor.New("fc3.weight", tensor.F32, 2)
	if err != nil {
		t.Fatal(err)
	}
	u32, err := tensor.New(FC1Bias, tensor.U32, 8)
	if err != nil {
		t.Fatal(err)
	}
	for name, s := range map[string]*tensor.Set{
		"missing fc2.bias": mutate(func(ts []*tensor.Tensor) []*tensor.Tensor { return ts[:3] }),
		"wrong shape":      mutate(func(ts []*tensor.Tensor) []*tensor.Tensor { ts[3] = wrongShape; return ts }),
		"extra tensor":     mutate(func(ts []*tensor.Tensor) []*tensor.Tensor { return append(ts, extra) }),
		"u32":              mutate(func(ts []*tensor.Tensor) []*tensor.Tensor { ts[1] = u32; return ts }),
		"NaN":              nan,
	} {
		if _, err := Load(s); !errors.Is(err, ErrModel) {
			t.Errorf("%s: Load: %v, want ErrModel", name, err)
		}
		if _, err := Train(context.Background(), s, digits.Dataset{X: make([]float32, 64), Y: []int{1}}); !errors.Is(err, ErrModel) {
			t.Errorf("%s: Train: %v, want ErrModel", name, err)
		}
	}
}

// TestLoadConverts: a model in another float dtype (here bf16, as a client might send it) is
// served from a float32 copy, with the same predictions as its float32 twin.
func TestLoadConverts(t *testing.T) {
	f32 := initModel(t, 8, 2)
	var ts []*tensor.Tensor
	for _, x := range f32.Tensors() {
		b, err := tensor.New(x.Name, tensor.BF16, x.Shape...)
		if err != nil {
			t.Fatal(err)
		}
		u, _ := b.U16()
		v, _ := x.F32()
		for i := range v {
			u[i] = tensor.F32ToBF16(v[i])
			v[i] = tensor.BF16ToF32(u[i]) // the f32 twin holds the rounded values
		}
		ts = append(ts, b)
	}
	bf, err := tensor.NewSet(ts...)
	if err != nil {
		t.Fatal(err)
	}
	mb, err := Load(bf)
	if err != nil {
		t.Fatal(err)
	}
	mf, err := Load(f32)
	if err != nil {
		t.Fatal(err)
	}
	_, test := splitDigits(t)
	lb, _, err := mb.Predict(test.X[:50*Inputs])
	if err != nil {
		t.Fatal(err)
	}
	lf, _, err := mf.Predict(test.X[:50*Inputs])
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(lb, lf) {
		t.Fatal("bf16 model and its f32 twin disagree")
	}
}
