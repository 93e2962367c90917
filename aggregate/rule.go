package aggregate

import (
	"context"

	"github.com/wattagg/wattagg/tensor"
)

// Rule is an aggregation rule over a batch of updates: FedAvg, a robust statistic, a server
// optimizer step, a private mechanism. Rules are built with options (the common ones of this
// package plus their own) that are checked when the rule is built.
type Rule interface {
	// Name is the rule's name in reports and on the command line ("fedavg", "median", ...).
	Name() string
	// Aggregate combines the updates into one Set. Weights are as WeightedMean takes them
	// (nil: num_examples, else 1 each); rules that ignore weights say so in their doc.
	Aggregate(ctx context.Context, updates []*tensor.Set, weights []float64) (*tensor.Set, *Report, error)
}

// FileRule is a Rule that can write its result to a .safetensors file without holding it in
// memory. Rules that cannot are written with safetensors.WriteFile after Aggregate.
type FileRule interface {
	Rule
	AggregateFile(ctx context.Context, path string, updates []*tensor.Set, weights []float64) (*Report, error)
}

// FedAvg is WeightedMean as a Rule.
type FedAvg struct{ opts []Option }

// NewFedAvg checks opts and returns the FedAvg rule.
func NewFedAvg(opts ...Option) (*FedAvg, error) {
	if _, err := newConfig(opts); err != nil {
		return nil, err
	}
	return &FedAvg{opts: opts}, nil
}

// Name is "fedavg".
func (*FedAvg) Name() string { return "fedavg" }

// Aggregate is WeightedMean.
func (r *FedAvg) Aggregate(ctx context.Context, updates []*tensor.Set, weights []float64) (*tensor.Set, *Report, error) {
	return WeightedMean(ctx, updates, weights, r.opts...)
}

// AggregateFile is WeightedMeanFile.
func (r *FedAvg) AggregateFile(ctx context.Context, path string, updates []*tensor.Set, weights []float64) (*Report, error) {
	return WeightedMeanFile(ctx, path, updates, weights, r.opts...)
}
