package aggregate

import (
	"fmt"
	"math"
	"strconv"

	"github.com/wattagg/wattagg/tensor"
)

// WeightSource says where a round's weights came from.
type WeightSource string

// The weight sources, as reports say them.
const (
	WeightsGiven       WeightSource = "given"
	WeightsNumExamples WeightSource = NumExamplesKey
	WeightsUniform     WeightSource = "uniform"
)

// sourceName names update k in messages: its Source, or its position.
func sourceName(u *tensor.Set, k int) string {
	if u != nil && u.Source != "" {
		return u.Source
	}
	return fmt.Sprintf("update %d", k)
}

// checkWeight rejects weights a sum cannot use: zero, negative, NaN, infinite.
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

// ResolveWeights returns one checked weight per update and where they came from: the given
// ones, or else each update's num_examples, or else 1 for all. Some updates with num_examples
// and some without is an error: weighting them 1 beside hundreds would be silently wrong. Only
// Source and Metadata of the updates are read, so a caller can resolve weights from headers
// before it adds anything.
func ResolveWeights(updates []*tensor.Set, weights []float64) ([]float64, WeightSource, error) {
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
	with, without := -1, -1
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

// weightTracker follows a round's weights as updates arrive: their total and where they came
// from, refusing a mix of sources a batch would refuse.
//
// Weights enter sums multiplied by a power of two fixed by the first weight (scale), chosen so
// that it is near 1: any finite positive weights then work (1e-320 each, whose total's
// reciprocal overflows, or 1e308 each, whose total does), and, since scaling by a power of two is
// exact, the bits of ordinary rounds do not change.
type weightTracker struct {
	total float64 // of the clients added, scaled
	from  WeightSource
	who   string // the first client, for messages
	first float64
	shift int  // the power of two weights are scaled by
	fixed bool // shift is set (by the first weight)
}

// scaled is w·2^shift, fixing shift from w when it is the first weight.
func (t *weightTracker) scaled(w float64) float64 {
	if !t.fixed {
		_, e := math.Frexp(w)
		t.shift, t.fixed = 1-e, true
	}
	return math.Ldexp(w, t.shift)
}

// unscaled undoes scaled.
func (t *weightTracker) unscaled(w float64) float64 { return math.Ldexp(w, -t.shift) }

// check refuses weight w of client who from source from before anything is added, under the
// rule's policy; it returns the weight the client enters the sum with (before scaling).
func (t *weightTracker) check(policy WeightPolicy, w float64, from WeightSource, who, rule string) (float64, error) {
	if err := checkWeight(w, who); err != nil {
		return 0, err
	}
	if policy == WeightsEqual {
		if from == WeightsNumExamples {
			return 1, nil // example counts are the clients' own business: every client counts once
		}
		if t.who != "" && t.from == WeightsGiven && from == WeightsGiven && w != t.first {
			return 0, fmt.Errorf("%s: %w: %s counts every client once: weights must be equal (%v here, %v for %s)",
				who, ErrWeight, rule, w, t.first, t.who)
		}
		return 1, nil
	}
	if t.who == "" || t.from == from {
		return w, nil
	}
	if t.from == WeightsGiven || from == WeightsGiven {
		return 0, fmt.Errorf("%s: %w: weighted by %s, but %s was weighted by %s: weight every update the same way", who, ErrWeight, from, t.who, t.from)
	}
	with, without := who, t.who
	if from == WeightsUniform {
		with, without = t.who, who
	}
	return 0, fmt.Errorf("%w: %s has %s but %s has none: give weights explicitly", ErrWeight, with, NumExamplesKey, without)
}

// add records an accepted client.
func (t *weightTracker) add(c *Client, from WeightSource) {
	if t.who == "" {
		t.who, t.from, t.first = c.Source, from, c.given
	}
	t.total += c.weight
}

// source is where the weights came from, as a report says (uniform under WeightsEqual).
func (t *weightTracker) source(policy WeightPolicy) WeightSource {
	if policy == WeightsEqual || t.from == "" {
		return WeightsUniform
	}
	return t.from
}
