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

	"github.com/wattagg/wattagg/internal/tensortest"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// The streaming FedAvg of the old Aggregator is a Round of FedAvg: updates are added as they
// arrive, one round per round.

// newFedAvgRound begins a round of FedAvg, failing the test on error; the round is closed at
// the end of the test.
func newFedAvgRound(t *testing.T, opts ...Option) *Round {
	t.Helper()
	r, err := NewRound(context.Background(), NewFedAvg(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func TestRoundMatchesFloat64Reference(t *testing.T) {
	r := rand.New(rand.NewPCG(10, 10))
	for _, dt := range []tensor.DType{tensor.F32, tensor.BF16, tensor.F16, tensor.I8, tensor.F64} {
		t.Run(dt.String(), func(t *testing.T) {
			round := newFedAvgRound(t)
			var updates []*tensor.Set
			var weights []float64
			for k := range 9 {
				u := tensortest.Update(t, r, fmt.Sprint(k), dt, names)
				w := 1 + float64(r.IntN(50))
				if err := round.Add(context.Background(), u, w); err != nil {
					t.Fatal(err)
				}
				updates, weights = append(updates, u), append(weights, w)
			}
			got, rep, err := round.Result(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			checkAgainst(t, got, referenceMean(updates, weights), dt)
			if rep.Clients != 9 || round.Clients() != 9 || rep.InDTypes[0] != dt.String() {
				t.Fatalf("report %+v", rep)
			}
		})
	}
}

// resultBytes closes a round into its result, for bitwise comparisons.
func resultBytes(t *testing.T, r *Round) [][]byte {
	t.Helper()
	s, _, err := r.Result(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, tt := range s.Tensors() {
		out = append(out, bytes.Clone(tt.Bytes()))
	}
	return out
}

// A rejected update leaves the round exactly as it was: same bits, same count and weight. A
// round's Result closes it, so each rejection is tried in a round of its own, whose result must
// be bit for bit the result of the same accepted updates alone.
func TestRoundRejectedUpdateChangesNothing(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 11))
	var accepted []*tensor.Set
	for k := range 3 {
		accepted = append(accepted, tensortest.Update(t, r, fmt.Sprint(k), tensor.F32, names))
	}
	start := func() *Round {
		round := newFedAvgRound(t, WithMixedDTypes(true))
		for _, u := range accepted {
			if err := round.Add(context.Background(), u, 2); err != nil {
				t.Fatal(err)
			}
		}
		return round
	}
	before := resultBytes(t, start())
	nanLate := tensortest.Update(t, r, "late-nan.safetensors", tensor.F32, names)
	tt, _ := nanLate.Tensor("scalar") // the last tensor: everything before it is fine
	tensortest.SetValue(tt, 0, math.NaN())
	shape := &tensor.Set{Source: "shape.safetensors"}
	for _, tt := range tensortest.Update(t, r, "", tensor.F32, names).Tensors() {
		if tt.Name == "norm" {
			tt = tensortest.New(t, "norm", tensor.F32, 1000)
		}
		tensortest.Add(t, shape, tt)
	}
	f64 := tensortest.Update(t, r, "f64.safetensors", tensor.F64, names)
	for _, tc := range []struct {
		u   *tensor.Set
		w   float64
		is  error
		msg string
	}{
		{nanLate, 1, tensor.ErrNonFinite, `late-nan.safetensors: tensor "scalar": non-finite value NaN at element 0`},
		{shape, 1, tensor.ErrLayoutMismatch, `shape.safetensors: layout mismatch: tensor "norm" has shape [1000], want [1001] (as in 0)`},
		{f64, 1, tensor.ErrLayoutMismatch, `f64.safetensors: layout mismatch: tensor "embed" is f64 but the round accumulates it in f32 (accumulate in f64)`},
		{tensortest.Update(t, r, "w.safetensors", tensor.F32, names), -3, ErrWeight, "w.safetensors: invalid weight -3: weights must be positive and finite"},
		{tensortest.Update(t, r, "w.safetensors", tensor.F32, names), math.NaN(), ErrWeight, "w.safetensors: invalid weight NaN: weights must be positive and finite"},
	} {
		round := start()
		err := round.Add(context.Background(), tc.u, tc.w)
		if !errors.Is(err, tc.is) || err.Error() != tc.msg {
			t.Fatalf("err = %v\nwant %q", err, tc.msg)
		}
		if round.Clients() != 3 || round.TotalWeight() != 6 {
			t.Fatalf("%s: %d clients, weight %v", tc.msg, round.Clients(), round.TotalWeight())
		}
		after := resultBytes(t, round)
		for i := range before {
			if !bytes.Equal(before[i], after[i]) {
				t.Fatalf("%s: tensor %d changed", tc.msg, i)
			}
		}
	}
	round := start()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := round.Add(ctx, tensortest.Update(t, r, "x", tensor.F32, names), 1); !errors.Is(err, context.Canceled) || round.Clients() != 3 {
		t.Fatalf("cancelled Add: %v, %d clients", err, round.Clients())
	}
}

// The first update fixes the layout only if it is accepted.
func TestRoundRejectedFirstUpdate(t *testing.T) {
	r := rand.New(rand.NewPCG(12, 12))
	bad := &tensor.Set{Source: "u32"}
	tensortest.Add(t, bad, tensortest.New(t, "x", tensor.U32, 3))
	empty := newFedAvgRound(t)
	if err := empty.Add(context.Background(), bad, 1); !errors.Is(err, tensor.ErrDType) {
		t.Fatalf("err = %v", err)
	}
	if _, _, err := empty.Result(context.Background()); !errors.Is(err, ErrNoInputs) {
		t.Fatalf("empty Result: %v", err)
	}
	// A failed Result still closes the round to updates.
	if err := empty.Add(context.Background(), tensortest.Update(t, r, "late", tensor.F32, names), 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("Add after Result: %v", err)
	}
	round := newFedAvgRound(t)
	if err := round.Add(context.Background(), bad, 1); !errors.Is(err, tensor.ErrDType) {
		t.Fatalf("err = %v", err)
	}
	u := tensortest.Update(t, r, "a", tensor.F32, names)
	if err := round.Add(context.Background(), u, 1); err != nil {
		t.Fatal(err)
	}
	got, _, err := round.Result(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	checkAgainst(t, got, referenceMean([]*tensor.Set{u}, []float64{1}), tensor.F32)
}

// An abandoned round is closed and a new round begun (the old Aggregator's Reset); the new
// round's WriteFile writes the mean of its own updates only.
func TestRoundAbandonedAndWriteFile(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 13))
	first := newFedAvgRound(t, WithChunkBytes(4096))
	for k := range 3 {
		if err := first.Add(context.Background(), tensortest.Update(t, r, fmt.Sprint(k), tensor.F32, names), 1); err != nil {
			t.Fatal(err)
		}
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := first.Result(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Result of a closed round: %v", err)
	}
	round := newFedAvgRound(t, WithChunkBytes(4096))
	if round.Clients() != 0 {
		t.Fatal("a new round has clients")
	}
	var updates []*tensor.Set
	for k := range 4 {
		u := tensortest.Update(t, r, fmt.Sprint(k), tensor.F32, names)
		if err := round.Add(context.Background(), u, float64(k+1)); err != nil {
			t.Fatal(err)
		}
		updates = append(updates, u)
	}
	path := filepath.Join(t.TempDir(), "global.safetensors")
	rep, err := round.WriteFile(context.Background(), path)
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

func TestRoundOverflowIsAnError(t *testing.T) {
	round := newFedAvgRound(t, WithOutDType(tensor.F16))
	u := &tensor.Set{Source: "big"}
	x := tensortest.New(t, "x", tensor.F32, 4)
	tensortest.SetValue(x, 2, 7e4) // finite in f32, beyond the f16 range
	tensortest.Add(t, u, x)
	if err := round.Add(context.Background(), u, 1); err != nil {
		t.Fatal(err)
	}
	_, _, err := round.Result(context.Background())
	if !errors.Is(err, ErrOverflow) || err.Error() != `fedavg: tensor "x" element 2: overflow: the result is +Inf in f16 (accumulate in f64 or choose a wider output dtype)` {
		t.Fatalf("err = %v", err)
	}
}
