package aggregate_test

import (
	"context"
	"fmt"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/tensor"
)

// FedAdam over two rounds: clients train from the rule's global model and send their models;
// each Aggregate applies one server step and moves the global model on.
func ExampleNewFedAdam() {
	ctx := context.Background()
	rule, err := aggregate.NewFedAdam(aggregate.WithGlobal(client(1, -2)),
		aggregate.WithServerLR(0.1), aggregate.WithBeta1(0.9), aggregate.WithBeta2(0.99), aggregate.WithTau(0.01))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer rule.Close()
	// Round 1: the clients' weighted mean is [1.2, -1.7], a delta of [0.2, 0.3].
	x1, rep, _ := rule.Aggregate(ctx, []*tensor.Set{client(1.5, -2), client(1.1, -1.6)}, []float64{1, 3})
	w, _ := x1.At(0).F32()
	fmt.Printf("round %v: %.5f, delta norm %.4f\n", rep.Details["round"], w, rep.Details["delta_norm"])
	// Round 2: the clients move [0.2, 0.05] on average from the new model.
	x2, rep, _ := rule.Aggregate(ctx, []*tensor.Set{client(w[0]-0.1, w[1]+0.2), client(w[0]+0.3, w[1])}, []float64{1, 3})
	w, _ = x2.At(0).F32()
	m, _ := rule.State().M.At(0).F32()
	fmt.Printf("round %v: %.5f, first moment %.3f\n", rep.Details["round"], w, m)
	// Output:
	// round 1: [1.06185 -1.92790], delta norm 0.3606
	// round 2: [1.15708 -1.85142], first moment [0.038 0.032]
}
