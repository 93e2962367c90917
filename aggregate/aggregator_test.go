package aggregate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

func TestAggregatorMatchesFloat64Reference(t *testing.T) {
	r := rand.New(rand.NewPCG(10, 10))
	for _, dt := range []tensor.DType{tensor.F32, tensor.BF16, tensor.F16, tensor.I8, tensor.F64} {
		t.Run(dt.String(), func(t *testing.T) {
			agg, err := NewAggregator()
			if err != nil {
				t.Fatal(err)
			}
			defer agg.Close()
			var updates []*tensor.Set
			var weights []float64
			for k := range 9 {
				u := update(r, fmt.Sprint(k), dt, names)
				w := 1 + float64(r.IntN(50))
				if err := agg.Add(context.Background(), u, w); err != nil {
					t.Fatal(err)
				}
				updates, weights = append(updates, u), append(weights, w)
			}
			got, rep, err := agg.Result(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			checkAgainst(t, got, referenceMean(updates, weights), dt)
			if rep.Clients != 9 || agg.Clients() != 9 || rep.InDTypes[0] != dt.String() {
				t.Fatalf("report %+v", rep)
			}
		})
	}
}

// resultBytes is the aggregate's current result, for bitwise comparisons.
func resultBytes(t *testing.T, a *Aggregator) [][]byte {
	t.Helper()
	s, _, err := a.Result(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, tt := range s.Tensors() {
		out = append(out, bytes.Clone(tt.Bytes()))
	}
	return out
}

// A rejected update leaves the aggregate exactly as it was: same bits, same count and weight.
func TestAggregatorRejectedUpdateChangesNothing(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 11))
	agg, err := NewAggregator(WithMixedDTypes(true))
	if err != nil {
		t.Fatal(err)
	}
	for k := range 3 {
		if err := agg.Add(context.Background(), update(r, fmt.Sprint(k), tensor.F32, names), 2); err != nil {
			t.Fatal(err)
		}
	}
	before := resultBytes(t, agg)
	nanLate := update(r, "late-nan.safetensors", tensor.F32, names)
	tt, _ := nanLate.Tensor("scalar") // the last tensor: everything before it is fine
	setValue(tt, 0, math.NaN())
	shape := &tensor.Set{Source: "shape.safetensors"}
	for _, tt := range update(r, "", tensor.F32, names).Tensors() {
		if tt.Name == "norm" {
			tt, _ = tensor.New("norm", tensor.F32, 1000)
		}
		shape.Add(tt)
	}
	f64 := update(r, "f64.safetensors", tensor.F64, names)
	for _, tc := range []struct {
		u   *tensor.Set
		w   float64
		is  error
		msg string
	}{
		{nanLate, 1, tensor.ErrNonFinite, `late-nan.safetensors: tensor "scalar": non-finite value NaN at element 0`},
		{shape, 1, tensor.ErrLayoutMismatch, `shape.safetensors: layout mismatch: tensor "norm" has shape [1000], want [1001] (as in 0)`},
		{f64, 1, tensor.ErrLayoutMismatch, `f64.safetensors: layout mismatch: tensor "embed" is f64 but the aggregate accumulates it in f32`},
		{update(r, "w.safetensors", tensor.F32, names), -3, ErrWeight, "w.safetensors: invalid weight -3: weights must be positive and finite"},
		{update(r, "w.safetensors", tensor.F32, names), math.NaN(), ErrWeight, "w.safetensors: invalid weight NaN: weights must be positive and finite"},
	} {
		err := agg.Add(context.Background(), tc.u, tc.w)
		if !errors.Is(err, tc.is) || err.Error() != tc.msg {
			t.Fatalf("err = %v\nwant %q", err, tc.msg)
		}
		after := resultBytes(t, agg)
		for i := range before {
			if !bytes.Equal(before[i], after[i]) {
				t.Fatalf("%s: tensor %d changed", tc.msg, i)
			}
		}
		if agg.Clients() != 3 || agg.TotalWeight() != 6 {
			t.Fatalf("%s: %d clients, weight %v", tc.msg, agg.Clients(), agg.TotalWeight())
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := agg.Add(ctx, update(r, "x", tensor.F32, names), 1); !errors.Is(err, context.Canceled) || agg.Clients() != 3 {
		t.Fatalf("cancelled Add: %v, %d clients", err, agg.Clients())
	}
}

// The first update fixes the layout only if it is accepted.
func TestAggregatorRejectedFirstUpdate(t *testing.T) {
	r := rand.New(rand.NewPCG(12, 12))
	agg, _ := NewAggregator()
	bad := &tensor.Set{Source: "u32"}
	x, _ := tensor.New("x", tensor.U32, 3)
	bad.Add(x)
	if err := agg.Add(context.Background(), bad, 1); !errors.Is(err, tensor.ErrDType) {
		t.Fatalf("err = %v", err)
	}
	if _, _, err := agg.Result(context.Background()); !errors.Is(err, ErrNoInputs) {
		t.Fatalf("empty Result: %v", err)
	}
	u := update(r, "a", tensor.F32, names)
	if err := agg.Add(context.Background(), u, 1); err != nil {
		t.Fatal(err)
	}
	got, _, err := agg.Result(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	checkAgainst(t, got, referenceMean([]*tensor.Set{u}, []float64{1}), tensor.F32)
}

func TestAggregatorResetAndWriteFile(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 13))
	agg, _ := NewAggregator(WithChunkBytes(4096))
	defer agg.Close()
	for k := range 3 {
		agg.Add(context.Background(), update(r, fmt.Sprint(k), tensor.F32, names), 1)
	}
	agg.Reset()
	if agg.Clients() != 0 {
		t.Fatal("Reset kept clients")
	}
	var updates []*tensor.Set
	for k := range 4 {
		u := update(r, fmt.Sprint(k), tensor.F32, names)
		if err := agg.Add(context.Background(), u, float64(k+1)); err != nil {
			t.Fatal(err)
		}
		updates = append(updates, u)
	}
	path := filepath.Join(t.TempDir(), "global.safetensors")
	rep, err := agg.WriteFile(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	got, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	checkAgainst(t, got, referenceMean(updates, []float64{1, 2, 3, 4}), tensor.F32)
	if rep.Clients != 4 || rep.Output != path || got.Metadata["wattagg.clients"] != "4" {
		t.Fatalf("report %+v metadata %v", rep, got.Metadata)
	}
}

func TestAggregatorOverflowIsAnError(t *testing.T) {
	agg, _ := NewAggregator(WithOutDType(tensor.F16))
	u := &tensor.Set{Source: "big"}
	x, _ := tensor.New("x", tensor.F32, 4)
	setValue(x, 2, 7e4) // finite in f32, beyond the f16 range
	u.Add(x)
	if err := agg.Add(context.Background(), u, 1); err != nil {
		t.Fatal(err)
	}
	_, _, err := agg.Result(context.Background())
	if !errors.Is(err, ErrOverflow) || err.Error() != `tensor "x" element 2: overflow: the weighted mean is +Inf in f16 (accumulate in f64 or choose a wider output dtype)` {
		t.Fatalf("err = %v", err)
	}
}
