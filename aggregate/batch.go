package aggregate

import (
	"context"
	"fmt"

	"github.com/wattagg/wattagg/tensor"
)

// Aggregate runs one round of rule over a batch of updates in memory: a Round that holds the
// updates where they are (WithRetainedUpdates) and sums them in one pass at the close.
//
// Weights are one per update, positive and finite; nil takes each update's num_examples, or 1
// for all (rules that count every client once ignore num_examples and need given weights
// equal). Updates must hold the same tensors (any order) with the same shapes and, unless
// WithMixedDTypes, the same dtypes. The result keeps the first update's tensor order (the
// global model's, for rules that have one) and dtypes unless WithOutDType. It is deterministic:
// the same inputs in the same order give the same bits whatever the number of cores, and the
// same bits as an incremental Round fed the same updates in the same order with WithExpected.
// The updates must stay valid until Aggregate returns; the result's memory is the round's
// allocator's (Close it when done).
func Aggregate(ctx context.Context, rule Rule, updates []*tensor.Set, weights []float64, opts ...Option) (*tensor.Set, *Report, error) {
	r, err := batchRound(ctx, rule, updates, weights, opts)
	if err != nil {
		return nil, nil, err
	}
	defer r.Close()
	return r.Result(ctx)
}

// AggregateFile is Aggregate with the result written to path as .safetensors without holding
// it in memory: chunks are written (with direct I/O where the filesystem allows) while the next
// ones are computed, and the file appears at path, together with the rule's state files, only
// when complete and durable. On error nothing is left at path (a previous file stays).
func AggregateFile(ctx context.Context, rule Rule, path string, updates []*tensor.Set, weights []float64, opts ...Option) (*Report, error) {
	if path == "" {
		return nil, fmt.Errorf("%w: empty output path", ErrOption)
	}
	r, err := batchRound(ctx, rule, updates, weights, opts)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return r.WriteFile(ctx, path)
}

// batchRound opens a round over updates and adds them all.
func batchRound(ctx context.Context, rule Rule, updates []*tensor.Set, weights []float64, opts []Option) (*Round, error) {
	if len(updates) == 0 {
		return nil, ErrNoInputs
	}
	if weights != nil && len(weights) != len(updates) {
		return nil, fmt.Errorf("%w: %d weights for %d updates", ErrWeight, len(weights), len(updates))
	}
	var from WeightSource
	if weights == nil && rule.Requirements().Weights != WeightsEqual {
		var err error
		if weights, from, err = ResolveWeights(updates, nil); err != nil {
			return nil, err
		}
	}
	r, err := newRound(ctx, rule, append(opts[:len(opts):len(opts)], WithRetainedUpdates()))
	if err != nil {
		return nil, err
	}
	err = r.addAll(ctx, updates, func(k int) (float64, WeightSource, error) {
		switch {
		case from != "":
			return weights[k], from, nil
		case weights != nil:
			return weights[k], WeightsGiven, nil
		}
		return 1, WeightsUniform, nil
	})
	if err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}
