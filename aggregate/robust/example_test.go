package robust_test

import (
	"context"
	"fmt"
	"math"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/aggregate/robust"
	"github.com/wattagg/wattagg/tensor"
)

// client is a one-tensor update "w".
func client(values ...float32) *tensor.Set {
	t, err := tensor.FromF32("w", []int{len(values)}, values)
	if err != nil {
		panic(err)
	}
	s, err := tensor.NewSet(t)
	if err != nil {
		panic(err)
	}
	return s
}

// The coordinate-wise median of five clients, one of them sending huge values and one a NaN:
// the NaN client is excluded (the report says why) and the attacker is outvoted.
func ExampleMedian() {
	nan := float32(math.NaN())
	updates := []*tensor.Set{client(1, 2), client(2, 3), client(3, 4), client(1e6, -1e6), client(nan, 0)}
	result, rep, err := aggregate.Aggregate(context.Background(), robust.NewMedian(), updates, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	w, _ := result.At(0).F32()
	fmt.Println(w, rep.Details["excluded"])
	fmt.Println(rep.PerClient[4].Excluded)
	// Output:
	// [2.5 2.5] 1
	// tensor "w": non-finite value NaN at element 0
}

// Krum picks the update closest to its n-f-2 nearest neighbours; Multi-Krum averages the m best.
func ExampleKrum() {
	updates := []*tensor.Set{client(1, 1), client(1.1, 0.9), client(0.9, 1.2), client(1, 1.1), client(-50, 80), client(1.2, 1)}
	krum, err := robust.NewKrum(1, 1)
	if err != nil {
		fmt.Println(err)
		return
	}
	result, rep, err := aggregate.Aggregate(context.Background(), krum, updates, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	w, _ := result.At(0).F32()
	fmt.Println(w, *rep.PerClient[4].Selected)
	_, _, err = aggregate.Aggregate(context.Background(), krum, updates[:4], nil)
	fmt.Println(err)
	// Output:
	// [1 1] false
	// krum: too few clients: f=1 (n > 2f+2) needs at least 5 clients, have 4 (0 excluded for NaN or Inf)
}

// Parameters out of range are errors, never clamped.
func ExampleNewTrimmedMean() {
	_, err := robust.NewTrimmedMean(0.5)
	fmt.Println(err)
	// Output: invalid option: trimmed-mean beta 0.5: want 0 <= beta < 0.5 (the fraction cut from each end)
}
