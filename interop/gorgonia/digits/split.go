package digits

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
)

// ErrSplit is returned for split parameters that cannot be met.
var ErrSplit = errors.New("digits: invalid split")

// newRand is the one random source of the package: PCG seeded with seed and a stream constant
// per use, so that results depend on the seed alone (never on math/rand's global state or the
// Go release's default source).
func newRand(seed, stream uint64) *rand.Rand {
	return rand.New(rand.NewPCG(seed, stream))
}

// Split holds out testFraction of each class (rounded to the nearest sample, at least one
// per class present) as a test set and returns the rest as the training set, both in a
// seeded random order. Stratifying keeps the test set's class balance that of the data.
func (d Dataset) Split(testFraction float64, seed uint64) (train, test Dataset, err error) {
	if !(testFraction > 0 && testFraction < 1) {
		return Dataset{}, Dataset{}, fmt.Errorf("%w: test fraction %v not in (0, 1)", ErrSplit, testFraction)
	}
	r := newRand(seed, 0x5917)
	var trainIdx, testIdx []int
	for c, idx := range d.byClass() {
		if len(idx) == 0 {
			continue
		}
		if len(idx) < 2 {
			return Dataset{}, Dataset{}, fmt.Errorf("%w: class %d has %d sample, cannot hold one out and train on another", ErrSplit, c, len(idx))
		}
		r.Shuffle(len(idx), func(i, j int) { idx[i], idx[j] = idx[j], idx[i] })
		k := min(max(int(math.Round(testFraction*float64(len(idx)))), 1), len(idx)-1)
		testIdx = append(testIdx, idx[:k]...)
		trainIdx = append(trainIdx, idx[k:]...)
	}
	r.Shuffle(len(testIdx), func(i, j int) { testIdx[i], testIdx[j] = testIdx[j], testIdx[i] })
	r.Shuffle(len(trainIdx), func(i, j int) { trainIdx[i], trainIdx[j] = trainIdx[j], trainIdx[i] })
	return d.Subset(trainIdx), d.Subset(testIdx), nil
}

func (d Dataset) byClass() [Classes][]int {
	var idx [Classes][]int
	for i, y := range d.Y {
		idx[y] = append(idx[y], i)
	}
	return idx
}

// maxDirichletTries bounds the redraws of DirichletShards before it gives up.
const maxDirichletTries = 1000

// DirichletShards cuts d into clients shards with label skew: for each class, a proportion
// vector p ~ Dirichlet(alpha, ..., alpha) over the clients is drawn and the class's samples
// (in a seeded random order) are dealt out in those proportions (Hsu, Qi and Brown 2019, the
// usual non-IID benchmark split). Small alpha (0.1) gives clients a few dominant classes; large
// alpha (100) approaches an IID split. Draws are repeated until every client has at least
// minSize samples, so no client is empty. The result depends only on d, the parameters and
// seed.
func (d Dataset) DirichletShards(clients int, alpha float64, minSize int, seed uint64) ([]Dataset, error) {
	switch {
	case clients < 1:
		return nil, fmt.Errorf("%w: %d clients", ErrSplit, clients)
	case !(alpha > 0) || math.IsInf(alpha, 0):
		return nil, fmt.Errorf("%w: Dirichlet alpha %v must be positive and finite", ErrSplit, alpha)
	case minSize < 0 || minSize*clients > d.Len():
		return nil, fmt.Errorf("%w: %d clients of at least %d samples from %d", ErrSplit, clients, minSize, d.Len())
	}
	r := newRand(seed, 0xd1c4)
	byClass := d.byClass()
	p := make([]float64, clients)
	for range maxDirichletTries {
		shards := make([][]int, clients)
		for _, idx := range byClass {
			idx = slices.Clone(idx)
			r.Shuffle(len(idx), func(i, j int) { idx[i], idx[j] = idx[j], idx[i] })
			dirichlet(r, alpha, p)
			// Cut points at the rounded cumulative proportions: every sample goes to exactly
			// one client and the last cut is the class size.
			start, cum := 0, 0.0
			for k := range clients {
				cum += p[k]
				end := int(math.Round(cum * float64(len(idx))))
				if k == clients-1 {
					end = len(idx)
				}
				end = min(max(end, start), len(idx))
				shards[k] = append(shards[k], idx[start:end]...)
				start = end
			}
		}
		if slices.ContainsFunc(shards, func(s []int) bool { return len(s) < minSize }) {
			continue
		}
		out := make([]Dataset, clients)
		for k, s := range shards {
			r.Shuffle(len(s), func(i, j int) { s[i], s[j] = s[j], s[i] })
			out[k] = d.Subset(s)
		}
		return out, nil
	}
	return nil, fmt.Errorf("%w: no Dirichlet(%v) draw in %d gave every one of %d clients %d samples", ErrSplit, alpha, maxDirichletTries, clients, minSize)
}

// dirichlet fills p with a draw from Dirichlet(alpha, ..., alpha): normalised Gamma(alpha, 1)
// variates.
func dirichlet(r *rand.Rand, alpha float64, p []float64) {
	sum := 0.0
	for i := range p {
		p[i] = gamma(r, alpha)
		sum += p[i]
	}
	if sum == 0 { // every variate underflowed (alpha tiny): one client takes the class
		clear(p)
		p[r.IntN(len(p))] = 1
		return
	}
	for i := range p {
		p[i] /= sum
	}
}

// gamma draws from Gamma(a, 1) by Marsaglia and Tsang's method (2000); a < 1 uses
// Gamma(a+1)·U^(1/a).
func gamma(r *rand.Rand, a float64) float64 {
	if a < 1 {
		u := r.Float64()
		return gamma(r, a+1) * math.Pow(u, 1/a)
	}
	d := a - 1.0/3
	c := 1 / math.Sqrt(9*d)
	for {
		x := r.NormFloat64()
		v := 1 + c*x
		if v <= 0 {
			continue
		}
		v = v * v * v
		u := r.Float64()
		if u < 1-0.0331*x*x*x*x || math.Log(u) < 0.5*x*x+d*(1-v+math.Log(v)) {
			return d * v
		}
	}
}
