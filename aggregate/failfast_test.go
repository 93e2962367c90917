package aggregate_test

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/tensor"
)

// A round WithFailFast gives the bits of a round without it, refuses a NaN update with the same
// message, and then takes no more calls (the update was partly added); an exact sum, which
// scans its bound first, ignores the option and goes on.
func TestFailFast(t *testing.T) {
	ctx := context.Background()
	dts := []tensor.DType{tensor.F32, tensor.BF16, tensor.F16}
	updates := pinClients(t, 93, 5, dts, nil, 1)
	bad := pinClients(t, 94, 1, []tensor.DType{tensor.F32}, nil, 1)[0]
	bad.Source = "poisoned"
	last := bad.At(bad.Len() - 1)
	must(last.F32())(t)[last.Len()-3] = float32(math.NaN())

	run := func(opts ...aggregate.Option) (*aggregate.Round, error) {
		r := must(aggregate.NewRound(ctx, aggregate.NewFedAvg(), append(opts, aggregate.WithMixedDTypes(true))...))(t)
		for k, u := range updates {
			if err := r.Add(ctx, u, float64(k+1)); err != nil {
				t.Fatal(err)
			}
		}
		return r, r.Add(ctx, bad, 1)
	}
	plain, plainErr := run()
	defer plain.Close()
	fast, fastErr := run(aggregate.WithFailFast())
	defer fast.Close()
	var nf *tensor.NonFiniteError
	if !errors.As(fastErr, &nf) || fastErr.Error() != plainErr.Error() {
		t.Fatalf("fail-fast refusal %q, want the scan's %q", fastErr, plainErr)
	}
	want, _ := must2(plain.Result(ctx))(t)
	defer want.Close()
	if err := fast.Add(ctx, updates[0], 1); !errors.Is(err, aggregate.ErrClosed) || !strings.Contains(err.Error(), "WithFailFast") {
		t.Fatalf("Add after the refusal: %v, want ErrClosed naming WithFailFast", err)
	}
	if _, _, err := fast.Result(ctx); !errors.Is(err, aggregate.ErrClosed) || !strings.Contains(err.Error(), nf.Error()) {
		t.Fatalf("Result after the refusal: %v, want ErrClosed with the refusal", err)
	}

	// Without the bad update, the two rounds agree bit for bit.
	ok := must(aggregate.NewRound(ctx, aggregate.NewFedAvg(), aggregate.WithFailFast(), aggregate.WithMixedDTypes(true)))(t)
	defer ok.Close()
	for k, u := range updates {
		if err := ok.Add(ctx, u, float64(k+1)); err != nil {
			t.Fatal(err)
		}
	}
	got, _ := must2(ok.Result(ctx))(t)
	defer got.Close()
	sameBits(t, "fail-fast", want, got)

	exact, err := run(aggregate.WithFailFast(), aggregate.WithExactSum(aggregate.ExactSum{Bound: 8, MaxWeight: 100}))
	defer exact.Close()
	if !errors.As(err, &nf) {
		t.Fatalf("exact sum: %v, want a NonFiniteError", err)
	}
	if _, _, err := exact.Result(ctx); err != nil {
		t.Fatalf("an exact sum scans first and goes on: %v", err)
	}
}

// AddGroup stops at the first update it refuses: those before it are added, the refusal is the
// one Add gives, and the round goes on (a refusal before any value is read) or, WithFailFast
// and a NaN found while adding, is given up.
func TestAddGroupRefusals(t *testing.T) {
	ctx := context.Background()
	updates := pinClients(t, 95, 4, []tensor.DType{tensor.F32}, nil, 1)
	other := pinClients(t, 96, 1, []tensor.DType{tensor.F64}, nil, 1)[0] // another dtype: refused from its header
	other.Source = "other"
	poisoned := pinClients(t, 97, 1, []tensor.DType{tensor.F32}, nil, 1)[0]
	poisoned.Source = "poisoned"
	must(poisoned.At(0).F32())(t)[100] = float32(math.Inf(-1))

	seq := must(aggregate.NewRound(ctx, aggregate.NewFedAvg()))(t)
	defer seq.Close()
	grp := must(aggregate.NewRound(ctx, aggregate.NewFedAvg()))(t)
	defer grp.Close()
	if err := grp.AddGroup(ctx, updates[:2], []float64{1}); !errors.Is(err, aggregate.ErrWeight) {
		t.Fatalf("1 weight for 2 updates: %v, want ErrWeight", err)
	}
	want := seq.Add(ctx, updates[0], 2)
	if want == nil {
		want = seq.Add(ctx, other, 1)
	}
	err := grp.AddGroup(ctx, []*tensor.Set{updates[0], other, updates[1]}, []float64{2, 1, 3})
	if err == nil || err.Error() != want.Error() {
		t.Fatalf("group refusal %v, want Add's %v", err, want)
	}
	for k, u := range updates[1:] {
		if err := seq.Add(ctx, u, float64(k+3)); err != nil {
			t.Fatal(err)
		}
	}
	if err := grp.AddGroup(ctx, updates[1:], []float64{3, 4, 5}); err != nil {
		t.Fatal(err)
	}
	a, _ := must2(seq.Result(ctx))(t)
	defer a.Close()
	b, _ := must2(grp.Result(ctx))(t)
	defer b.Close()
	sameBits(t, "groups after a refusal", a, b)

	fast := must(aggregate.NewRound(ctx, aggregate.NewFedAvg(), aggregate.WithFailFast()))(t)
	defer fast.Close()
	err = fast.AddGroup(ctx, []*tensor.Set{updates[0], poisoned, updates[1]}, nil)
	var nf *tensor.NonFiniteError
	if !errors.As(err, &nf) || !strings.HasPrefix(err.Error(), "poisoned: ") || nf.Index != 100 {
		t.Fatalf("fail-fast group: %v, want poisoned's -Inf at 100", err)
	}
	if _, _, err := fast.Result(ctx); !errors.Is(err, aggregate.ErrClosed) {
		t.Fatalf("Result after a fail-fast refusal in a group: %v, want ErrClosed", err)
	}
}
