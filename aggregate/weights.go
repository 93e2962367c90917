package aggregate

import (
	"fmt"
	"math"
	"strconv"

	"github.com/wattagg/wattagg/tensor"
)

// NumExamplesKey is the metadata key whose value is an update's default weight (the number of
// examples the client trained on), as Flower and the FedAvg paper weight clients.
const NumExamplesKey = "num_examples"

// sourceName names update k in messages: its Source, or its position.
func sourceName(u *tensor.Set, k int) string {
	if u != nil && u.Source != "" {
		return u.Source
	}
	return fmt.Sprintf("update %d", k)
}

// checkWeight rejects weights FedAvg cannot use: zero, negative, NaN, infinite.
func checkWeight(w float64, who string) error {
	if !(w > 0) || math.IsInf(w, 0) {
		return fmt.Errorf("%s: %w %v: weights must be positive and finite", who, ErrWeight, w)
	}
	return nil
}

// WeightOf returns the weight metadata gives an update (num_examples) and whether it has one.
func WeightOf(u *tensor.Set) (float64, bool, error) {
	v, ok := u.Metadata[NumExamplesKey]
	if !ok {
		return 0, false, nil
	}
	w, err := strconv.ParseFloat(v, 64)
	if err != nil {
		return 0, true, fmt.Errorf("%s: %w: %s %q is not a number", sourceName(u, 0), ErrWeight, NumExamplesKey, v)
	}
	if err := checkWeight(w, sourceName(u, 0)+": "+NumExamplesKey); err != nil {
		return 0, true, err
	}
	return w, true, nil
}

// Where weights came from, as reports say.
const (
	WeightsGiven       = "given"
	WeightsNumExamples = NumExamplesKey
	WeightsUniform     = "uniform"
)

// ResolveWeights returns one checked weight per update and where they came from (WeightsGiven,
// WeightsNumExamples or WeightsUniform): the given ones, or else each update's num_examples, or
// else 1 for all. Some updates with num_examples and some without is an error: weighting them 1
// beside hundreds would be silently wrong. Only Source and Metadata of the updates are read, so
// a streaming caller can resolve weights from headers before it adds anything.
func ResolveWeights(updates []*tensor.Set, weights []float64) ([]float64, string, error) {
	if weights != nil {
		if len(weights) != len(updates) {
			return nil, "", fmt.Errorf("%w: %d weights for %d updates", ErrWeight, len(weights), len(updates))
		}
		for k, w := range weights {
			if err := checkWeight(w, fmt.Sprintf("%s (weight %d)", sourceName(updates[k], k), k+1)); err != nil {
				return nil, "", err
			}
		}
		return weights, WeightsGiven, nil
	}
	out := make([]float64, len(updates))
	with := -1
	without := -1
	for k, u := range updates {
		w, ok, err := WeightOf(u)
		if err != nil {
			return nil, "", err
		}
		if ok {
			out[k], with = w, k
		} else {
			out[k], without = 1, k
		}
	}
	switch {
	case with >= 0 && without >= 0:
		return nil, "", fmt.Errorf("%w: %s has %s but %s has none: give weights explicitly",
			ErrWeight, sourceName(updates[with], with), NumExamplesKey, sourceName(updates[without], without))
	case with >= 0:
		return out, WeightsNumExamples, nil
	}
	return out, WeightsUniform, nil
}

// totalWeight sums weights, failing if the sum overflows.
func totalWeight(weights []float64) (float64, error) {
	var sum float64
	for _, w := range weights {
		sum += w
	}
	if math.IsInf(sum, 0) {
		return 0, fmt.Errorf("%w: the weights sum to infinity", ErrWeight)
	}
	return sum, nil
}
