package gorgonia

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"unsafe"

	gt "gorgonia.org/tensor"

	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

func f32Tensor(t *testing.T, name string, shape ...int) *tensor.Tensor {
	t.Helper()
	x, err := tensor.New(name, tensor.F32, shape...)
	if err != nil {
		t.Fatal(err)
	}
	v, err := x.F32()
	if err != nil {
		t.Fatal(err)
	}
	for i := range v {
		v[i] = float32(i)*0.25 - 1
	}
	return x
}

func sameMemory(a, b []byte) bool {
	return len(a) == len(b) && unsafe.SliceData(a) == unsafe.SliceData(b)
}

func TestDenseViewsTensor(t *testing.T) {
	for _, shape := range [][]int{{3, 4}, {5}, {}, {2, 3, 4}, {1, 1}} {
		for _, dt := range []tensor.DType{tensor.F32, tensor.F64} {
			x, err := tensor.New("w", dt, shape...)
			if err != nil {
				t.Fatal(err)
			}
			for i := range x.Len() {
				switch dt {
				case tensor.F32:
					v, _ := x.F32()
					v[i] = float32(i) + 0.5
				case tensor.F64:
					v, _ := x.F64()
					v[i] = float64(i) + 0.5
				}
			}
			d, err := Dense(x)
			if err != nil {
				t.Fatalf("%v %s: %v", shape, dt, err)
			}
			want := gt.Shape(shape)
			if len(shape) == 0 {
				want = gt.ScalarShape()
			}
			if !d.Shape().Eq(want) {
				t.Fatalf("%v %s: dense shape %v", shape, dt, d.Shape())
			}
			// The Dense reads the tensor's values, and a write through it lands in the tensor's
			// bytes: the same memory, not a copy.
			for i := range x.Len() {
				coords := unravel(i, shape)
				got, err := d.At(coords...)
				if err != nil {
					t.Fatal(err)
				}
				if f := toF64(got); f != x.Value(i) {
					t.Fatalf("%v %s: element %d is %v, tensor has %v", shape, dt, i, f, x.Value(i))
				}
			}
			last := unravel(x.Len()-1, shape)
			switch dt {
			case tensor.F32:
				err = d.SetAt(float32(-7), last...)
			case tensor.F64:
				err = d.SetAt(float64(-7), last...)
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := x.Value(x.Len() - 1); got != -7 {
				t.Fatalf("%v %s: write through the dense not seen by the tensor (%v)", shape, dt, got)
			}
		}
	}
}

func unravel(i int, shape []int) []int {
	c := make([]int, len(shape))
	for k := len(shape) - 1; k >= 0; k-- {
		c[k] = i % shape[k]
		i /= shape[k]
	}
	return c
}

func toF64(v any) float64 {
	switch v := v.(type) {
	case float32:
		return float64(v)
	case float64:
		return v
	}
	return math.NaN()
}

func TestDenseOfMappedFile(t *testing.T) {
	w1, b1 := f32Tensor(t, "fc1.weight", 4, 3), f32Tensor(t, "fc1.bias", 4)
	s, err := tensor.NewSet(w1, b1)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "m.safetensors")
	if err := safetensors.WriteFile(path, s); err != nil {
		t.Fatal(err)
	}
	m, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ds, err := DenseSet(m)
	if err != nil {
		t.Fatal(err)
	}
	for i, d := range ds {
		v := d.Data().([]float32)
		if !sameMemory(bytesOf(v), m.At(i).Bytes()) {
			t.Fatalf("%s: the dense does not view the mapped bytes", m.At(i).Name)
		}
		want, _ := s.At(i).F32()
		if !slices.Equal(v, want) {
			t.Fatalf("%s: %v, want %v", m.At(i).Name, v, want)
		}
	}
}

// TestDenseOfPulledBytes: a model received as bytes (an HTTP body, an Arrow buffer) and parsed
// in place is viewed the same way.
func TestDenseOfPulledBytes(t *testing.T) {
	s, err := tensor.NewSet(f32Tensor(t, "fc1.weight", 2, 5))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "m.safetensors")
	if err := safetensors.WriteFile(path, s); err != nil {
		t.Fatal(err)
	}
	body, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	p, err := safetensors.Parse(body)
	if err != nil {
		t.Fatal(err)
	}
	ds, err := DenseSet(p)
	if err != nil {
		t.Fatal(err)
	}
	v := ds[0].Data().([]float32)
	want, _ := s.At(0).F32()
	if !slices.Equal(v, want) || !sameMemory(bytesOf(v), body[len(body)-len(bytesOf(v)):]) {
		t.Fatal("the dense does not view the received bytes")
	}
}

func TestDenseRejects(t *testing.T) {
	bf, err := tensor.New("h", tensor.BF16, 4)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Dense(bf); !errors.Is(err, tensor.ErrDType) {
		t.Fatalf("bf16: %v, want ErrDType", err)
	}
	empty, err := tensor.New("e", tensor.F32, 3, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Dense(empty); !errors.Is(err, tensor.ErrShape) {
		t.Fatalf("empty: %v, want ErrShape", err)
	}
	buf := tensor.AlignedBytes(4*4 + 1)
	odd, err := tensor.FromBytes("odd", tensor.F32, []int{4}, buf[1:])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Dense(odd); !errors.Is(err, tensor.ErrUnaligned) {
		t.Fatalf("unaligned: %v, want ErrUnaligned", err)
	}
	s, err := tensor.NewSet(f32Tensor(t, "a", 2), bf)
	if err != nil {
		t.Fatal(err)
	}
	s.Source = "client-3"
	if _, err := DenseSet(s); !errors.Is(err, tensor.ErrDType) {
		t.Fatalf("set with bf16: %v, want ErrDType", err)
	}
}

func TestFromDenseViewsBacking(t *testing.T) {
	back := []float32{1, 2, 3, 4, 5, 6}
	d := gt.New(gt.WithShape(2, 3), gt.WithBacking(back))
	x, err := FromDense("w", d)
	if err != nil {
		t.Fatal(err)
	}
	if x.DType != tensor.F32 || !slices.Equal(x.Shape, []int{2, 3}) {
		t.Fatalf("got %s %v", x.DType, x.Shape)
	}
	if !sameMemory(x.Bytes(), bytesOf(back)) {
		t.Fatal("tensor does not view the dense's backing array")
	}

	b64 := []float64{1.5, -2}
	x, err = FromDense("v", gt.New(gt.WithShape(2), gt.WithBacking(b64)))
	if err != nil {
		t.Fatal(err)
	}
	if x.DType != tensor.F64 || !slices.Equal(x.Float64s(), b64) || !sameMemory(x.Bytes(), bytesOf(b64)) {
		t.Fatalf("f64: %s %v", x.DType, x.Float64s())
	}

	// A scalar keeps its (empty) shape and still views the backing.
	sc := []float32{9}
	x, err = FromDense("s", gt.New(gt.WithShape(), gt.WithBacking(sc)))
	if err != nil {
		t.Fatal(err)
	}
	if len(x.Shape) != 0 || x.Value(0) != 9 || !sameMemory(x.Bytes(), bytesOf(sc)) {
		t.Fatalf("scalar: shape %v value %v", x.Shape, x.Value(0))
	}

	// A contiguous row slice is a view too; the tensor starts at the slice.
	rows, err := d.Slice(gt.S(1, 2))
	if err != nil {
		t.Fatal(err)
	}
	x, err = FromDense("row", rows.(*gt.Dense))
	if err != nil {
		t.Fatal(err)
	}
	if got := x.Float64s(); !slices.Equal(got, []float64{4, 5, 6}) || unsafe.SliceData(x.Bytes()) != (*byte)(unsafe.Pointer(&back[3])) {
		t.Fatalf("row slice: %v", got)
	}
}

func TestFromDenseRejects(t *testing.T) {
	tr := gt.New(gt.WithShape(2, 3), gt.WithBacking([]float32{1, 2, 3, 4, 5, 6}))
	if err := tr.T(); err != nil {
		t.Fatal(err)
	}
	if _, err := FromDense("t", tr); !errors.Is(err, ErrNotContiguous) {
		t.Fatalf("transposed: %v, want ErrNotContiguous", err)
	}
	m := gt.New(gt.WithShape(4, 2), gt.WithBacking([]float32{1, 2, 3, 4, 5, 6, 7, 8}))
	col, err := m.Slice(nil, gt.S(1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := FromDense("col", col.(*gt.Dense)); !errors.Is(err, ErrNotContiguous) {
		t.Fatalf("strided column: %v, want ErrNotContiguous", err)
	}
	ints := gt.New(gt.WithShape(2), gt.WithBacking([]int{1, 2}))
	if _, err := FromDense("i", ints); !errors.Is(err, tensor.ErrDType) {
		t.Fatalf("int dense: %v, want ErrDType", err)
	}
	empty := gt.New(gt.WithShape(0), gt.WithBacking([]float32{}))
	if _, err := FromDense("e", empty); !errors.Is(err, tensor.ErrShape) {
		t.Fatalf("empty dense: %v, want ErrShape", err)
	}
	if _, err := FromDense("nil", nil); !errors.Is(err, tensor.ErrShape) {
		t.Fatalf("nil dense: %v, want ErrShape", err)
	}
}

func TestSetFromDenseRoundTrip(t *testing.T) {
	s, err := tensor.NewSet(f32Tensor(t, "fc1.weight", 3, 2), f32Tensor(t, "fc1.bias", 3), f32Tensor(t, "fc2.weight", 1, 3))
	if err != nil {
		t.Fatal(err)
	}
	ds, err := DenseSet(s)
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, s.Len())
	for i, x := range s.Tensors() {
		names[i] = x.Name
	}
	back, err := SetFromDense(names, ds)
	if err != nil {
		t.Fatal(err)
	}
	if !back.Layout().Equal(s.Layout()) {
		t.Fatalf("layout %v, want %v", back.Layout(), s.Layout())
	}
	for i := range s.Len() {
		if !sameMemory(back.At(i).Bytes(), s.At(i).Bytes()) {
			t.Fatalf("%s: round trip copied the data", names[i])
		}
	}

	if _, err := SetFromDense(names[:2], ds); !errors.Is(err, tensor.ErrLayoutMismatch) {
		t.Fatalf("2 names for 3 values: %v, want ErrLayoutMismatch", err)
	}
	if _, err := SetFromDense([]string{"a", "b", "a"}, ds); !errors.Is(err, tensor.ErrDuplicateName) {
		t.Fatalf("duplicate names: %v, want ErrDuplicateName", err)
	}
}
