package server

import (
	"bytes"
	"math"
	"path/filepath"
	"testing"

	"github.com/wattagg/wattagg/server/api"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// rangeModel is a model of tensors listed out of name order: b [4 3], a [5], c [6]. By name the
// flattened space is a (0..5), b (5..17), c (17..23).
func rangeModel(t *testing.T, base float32) *tensor.Set {
	t.Helper()
	mk := func(name string, shape []int, off float32) *tensor.Tensor {
		n := 1
		for _, d := range shape {
			n *= d
		}
		v := make([]float32, n)
		for i := range v {
			v[i] = base + off + float32(i)
		}
		x, err := tensor.FromF32(name, shape, v)
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	s, err := tensor.NewSet(mk("b", []int{4, 3}, 100), mk("a", []int{5}, 0), mk("c", []int{6}, 200))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestModelRange: a round that owns coordinates [3, 20) keeps elements 3..4 of a, all of b and
// elements 0..2 of c, and its model is the weighted mean of those parts.
func TestModelRange(t *testing.T) {
	leakCheck(t)
	cfg, tokens, admin := testConfig(t, 3)
	cfg.Round.MaxClients = 2
	cfg.Round.ModelRange = &[2]int64{3, 20}
	ts := startServer(t, cfg, tokens, admin)
	small := encode(t, f32Set(t, [][]int{{19}}, func(int, int) float32 { return 1 }), nil)
	code, b := ts.put(t, tokens["c2"], 1, bytes.NewReader(small), int64(len(small)), nil)
	wantRefused(t, code, b, 400, "layout", "owns coordinates [3, 20) of the model, but the update has 19")
	ts.push(t, "c0", 1, encode(t, rangeModel(t, 0), nil), map[string]string{api.WeightHeader: "1"})
	ts.push(t, "c1", 1, encode(t, rangeModel(t, 10), nil), map[string]string{api.WeightHeader: "3"})
	st := ts.waitState(t, 1, api.StateClosed)
	if st.ModelRange == nil || *st.ModelRange != [2]int64{3, 20} {
		t.Fatalf("status range %v", st.ModelRange)
	}
	m := ts.readModel(t, 1)
	mean := func(v float32) float32 { return (1*v + 3*(v+10)) / 4 }
	want := map[string]struct {
		shape []int
		first float32
	}{"a": {[]int{2}, 3}, "b": {[]int{4, 3}, 100}, "c": {[]int{3}, 200}}
	if m.Len() != 3 {
		t.Fatalf("model has %d tensors", m.Len())
	}
	for i := range m.Len() {
		x := m.At(i)
		w, ok := want[x.Name]
		if !ok || !equalShape(x.Shape, w.shape) {
			t.Fatalf("tensor %s %v, want %v", x.Name, x.Shape, w.shape)
		}
		for j, v := range f32s(t, x) {
			if exp := mean(w.first + float32(j)); math.Abs(float64(v-exp)) > 1e-4 {
				t.Fatalf("%s[%d] = %v, want %v", x.Name, j, v, exp)
			}
		}
	}
}

// TestModelRangeWithGlobal: a ranged round of a rule that moves a global model starts from the
// part of the initial model, and the next round from the previous round's model.
func TestModelRangeWithGlobal(t *testing.T) {
	leakCheck(t)
	cfg, tokens, admin := testConfig(t, 2)
	initial := filepath.Join(t.TempDir(), "g.safetensors")
	if err := safetensors.WriteFile(initial, rangeModel(t, 0.5), safetensors.WithDirectIO(false)); err != nil {
		t.Fatal(err)
	}
	cfg.Round = RoundConfig{Rule: "fedavgm", InitialGlobal: initial, ModelRange: &[2]int64{3, 20}}
	ts := startServer(t, cfg, tokens, admin)
	ts.push(t, "c0", 1, encode(t, rangeModel(t, 1), nil), nil)
	ts.push(t, "c1", 1, encode(t, rangeModel(t, 2), nil), nil)
	st := ts.waitState(t, 1, api.StateClosed)
	if st.Global != filepath.Join("rounds", "000001", globalPartFile) {
		t.Fatalf("round 1 starts from %q", st.Global)
	}
	g, err := safetensors.Open(filepath.Join(cfg.DataDir, st.Global))
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if g.Len() != 3 || g.Metadata[ModelRangeKey] != "3,20" || g.Metadata[RangeOffsetKeyPrefix+"a"] != "3" {
		t.Fatalf("global part: %d tensors, metadata %v", g.Len(), g.Metadata)
	}
	if st2 := ts.waitState(t, 2, api.StateOpen); st2.Global != filepath.Join("rounds", "000001", modelFile) {
		t.Fatalf("round 2 starts from %q", st2.Global)
	}
	ts.push(t, "c0", 2, encode(t, rangeModel(t, 1), nil), nil)
	ts.push(t, "c1", 2, encode(t, rangeModel(t, 2), nil), nil)
	ts.waitState(t, 2, api.StateClosed)
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
