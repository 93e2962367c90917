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
