package aggregate

import (
	"context"

	"github.com/wattagg/wattagg/tensor"
)

// FedAvg is federated averaging (McMahan et al., 2017, "Communication-Efficient Learning of
// Deep Networks from Decentralized Data"): tensor by tensor, Σ_k w_k·x_k / Σ_k w_k, with the
// clients' weights (their example counts, as Flower weights them). It is a sum: nothing but
// the engine's weighted sum.
type FedAvg struct{}

// NewFedAvg returns the FedAvg rule.
func NewFedAvg() *FedAvg { return &FedAvg{} }

// Name is "fedavg".
func (*FedAvg) Name() string { return "fedavg" }

// Requirements: a sum of real updates, weights applied.
func (*FedAvg) Requirements() Requirements { return Requirements{Kind: KindSum} }

// Begin begins a round; FedAvg keeps no state.
func (f *FedAvg) Begin(context.Context, *Env) (Stage, error) { return fedAvgStage{}, nil }

type fedAvgStage struct{}

// Report adds nothing: FedAvg's view of a client is its weight, which Report.Weights holds.
func (fedAvgStage) Report(*Report) {}

// WeightedMean is FedAvg over a batch of updates in memory: Aggregate(ctx, NewFedAvg(), ...).
func WeightedMean(ctx context.Context, updates []*tensor.Set, weights []float64, opts ...Option) (*tensor.Set, *Report, error) {
	return Aggregate(ctx, NewFedAvg(), updates, weights, opts...)
}

// WeightedMeanFile is FedAvg over a batch of updates written to path:
// AggregateFile(ctx, NewFedAvg(), path, ...).
func WeightedMeanFile(ctx context.Context, path string, updates []*tensor.Set, weights []float64, opts ...Option) (*Report, error) {
	return AggregateFile(ctx, NewFedAvg(), path, updates, weights, opts...)
}
