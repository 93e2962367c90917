package optim_test

import (
	"context"
	"fmt"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/aggregate/optim"
	"github.com/wattagg/wattagg/tensor"
)

// client is a one-tensor model "w".
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

// FedAdam over two rounds: clients train from the global model and send their models; each
// round applies one server step, and the model it returns is the next round's global model.
func ExampleNewFedAdam() {
	ctx := context.Background()
	rule, err := optim.NewFedAdam(optim.WithServerLR(0.1), optim.WithBeta1(0.9), optim.WithBeta2(0.99), optim.WithTau(0.01))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer rule.Close()
	// Round 1: the clients' weighted mean is [1.2, -1.7], a delta of [0.2, 0.3].
	x1, rep, err := aggregate.Aggregate(ctx, rule, []*tensor.Set{client(1.5, -2), client(1.1, -1.6)}, []float64{1, 3},
		aggregate.WithGlobal(client(1, -2)))
	if err != nil {
		fmt.Println(err)
		return
	}
	w, _ := x1.At(0).F32()
	fmt.Printf("round %v: %.5f, delta norm %.4f\n", rep.Details["round"], w, rep.Details["delta_norm"])
	// Round 2: the clients move [0.2, 0.05] on average from the new model.
	x2, rep, err := aggregate.Aggregate(ctx, rule, []*tensor.Set{client(w[0]-0.1, w[1]+0.2), client(w[0]+0.3, w[1])}, []float64{1, 3},
		aggregate.WithGlobal(x1))
	if err != nil {
		fmt.Println(err)
		return
	}
	w, _ = x2.At(0).F32()
	m, _ := rule.State().M.At(0).F32()
	fmt.Printf("round %v: %.5f, first moment %.3f\n", rep.Details["round"], w, m)
	// Output:
	// round 1: [1.06185 -1.92790], delta norm 0.3606
	// round 2: [1.15708 -1.85142], first moment [0.038 0.032]
}
