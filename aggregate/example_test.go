package aggregate_test

import (
	"context"
	"fmt"
	"math"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/tensor"
)

func client(values ...float32) *tensor.Set {
	t, _ := tensor.FromF32("w", []int{len(values)}, values)
	s, _ := tensor.NewSet(t)
	return s
}

// FedAvg of three clients weighted by how many examples each trained on.
func ExampleWeightedMean() {
	updates := []*tensor.Set{client(1, 2), client(3, 4), client(5, 6)}
	mean, rep, err := aggregate.WeightedMean(context.Background(), updates, []float64{100, 100, 200})
	if err != nil {
		fmt.Println(err)
		return
	}
	w, _ := mean.At(0).F32()
	fmt.Println(w, rep.Clients, rep.Weights)
	// Output: [3.5 4.5] 3 [0.25 0.25 0.5]
}

// Streaming FedAvg: updates are added as they arrive; memory is one model whatever their number.
func ExampleAggregator() {
	agg, _ := aggregate.NewAggregator()
	defer agg.Close()
	ctx := context.Background()
	_ = agg.Add(ctx, client(1, 2), 1)
	_ = agg.Add(ctx, client(3, 4), 3)
	inf := float32(math.Inf(1))
	err := agg.Add(ctx, client(0, inf), 1) // rejected: the sum is untouched
	fmt.Println(err)
	mean, _, _ := agg.Result(ctx)
	w, _ := mean.At(0).F32()
	fmt.Println(agg.Clients(), w)
	// Output:
	// update 2: tensor "w": non-finite value +Inf at element 1
	// 2 [2.5 3.5]
}
