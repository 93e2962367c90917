package aggregate_test

import (
	"context"
	"fmt"
	"math"

	"github.com/wattagg/wattagg/aggregate"
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

// Streaming FedAvg: a round adds updates as they arrive; memory is one model whatever their
// number.
func ExampleNewRound() {
	ctx := context.Background()
	round, err := aggregate.NewRound(ctx, aggregate.NewFedAvg())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer round.Close()
	for k, u := range []*tensor.Set{client(1, 2), client(3, 4)} {
		if err := round.Add(ctx, u, float64(1+2*k)); err != nil {
			fmt.Println(err)
			return
		}
	}
	inf := float32(math.Inf(1))
	err = round.Add(ctx, client(0, inf), 1) // rejected: the sum is untouched
	fmt.Println(err)
	mean, _, err := round.Result(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	w, _ := mean.At(0).F32()
	fmt.Println(round.Clients(), w)
	// Output:
	// update 2: tensor "w": non-finite value +Inf at element 1
	// 2 [2.5 3.5]
}
