package aggregate_test

import (
	"context"
	"fmt"
	"math"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/tensor"
)

// The coordinate-wise median of four clients, one of them sending huge values and one a NaN:
// the NaN client is excluded (the report says why) and the attacker is outvoted.
func ExampleMedian() {
	nan := float32(math.NaN())
	updates := []*tensor.Set{client(1, 2), client(2, 3), client(3, 4), client(1e6, -1e6), client(nan, 0)}
	median, _ := aggregate.NewMedian()
	result, rep, err := median.Aggregate(context.Background(), updates, nil)
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
	krum, _ := aggregate.NewKrum(1, 1)
	result, rep, err := krum.Aggregate(context.Background(), updates, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	w, _ := result.At(0).F32()
	fmt.Println(w, *rep.PerClient[4].Selected)
	_, _, err = krum.Aggregate(context.Background(), updates[:4], nil)
	fmt.Println(err)
	// Output:
	// [1 1] false
	// krum: too few clients: f=1 (n > 2f+2) needs at least 5 clients, have 4 (0 excluded for NaN or Inf)
}

// Parameters out of range are errors, never clamped.
func ExampleNewTrimmedMean() {
	_, err := aggregate.NewTrimmedMean(0.5)
	fmt.Println(err)
	// Output: invalid option: trimmed-mean beta 0.5: want 0 <= beta < 0.5 (the fraction cut from each end)
}
