package aggregate_test

import (
	"context"
	"math/rand/v2"
	"testing"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/aggregate/dp"
	"github.com/wattagg/wattagg/aggregate/optim"
	"github.com/wattagg/wattagg/aggregate/secagg"
	"github.com/wattagg/wattagg/tensor"
)

// statefulPinCases are the server optimizers and private means (two rounds each, from a global
// model; the second round's clients train from the first round's result) and the secure sum.
func statefulPinCases() []pinCase {
	f32 := []tensor.DType{tensor.F32}
	var cases []pinCase
	stateful := func(name string, build func() (aggregate.Rule, func() []*tensor.Set, error), weights []float64, dts []tensor.DType) {
		cases = append(cases, pinCase{name, func(t *testing.T, m pinMode) ([]*tensor.Set, []*aggregate.Report) {
			global := pinSet(t, pinRNG(30), tensor.F32, nil, 1, "global")
			rule, state, err := build()
			if err != nil {
				t.Fatal(err)
			}
			var sets []*tensor.Set
			var reps []*aggregate.Report
			for round := range 2 {
				cs := pinClients(t, uint64(31+round), 7, dts, global, 0.01)
				set, rep := runMode(t, m, rule, cs, weights, aggregate.WithChunkBytes(pinChunk), aggregate.WithGlobal(global))
				sets = append(sets, set.Clone())
				sets = append(sets, state()...)
				reps = append(reps, rep)
				global = set
			}
			return sets, reps
		}})
	}
	w7 := []float64{3, 1, 2, 5, 1, 1, 2}
	for _, name := range []string{"fedavgm", "fedadagrad", "fedadam", "fedyogi"} {
		stateful("optim/"+name, func() (aggregate.Rule, func() []*tensor.Set, error) {
			r, err := optim.New(name)
			if err != nil {
				return nil, nil, err
			}
			return r, func() []*tensor.Set {
				st := r.State()
				out := []*tensor.Set{st.M.Clone()}
				if st.V != nil {
					out = append(out, st.V.Clone())
				}
				return out
			}, nil
		}, w7, f32)
	}
	stateful("optim/fedadam-bf16-clients", func() (aggregate.Rule, func() []*tensor.Set, error) {
		r, err := optim.NewFedAdam(optim.WithServerLR(0.05))
		return r, func() []*tensor.Set { return nil }, err
	}, nil, []tensor.DType{tensor.BF16})
	mech := func(name string, extra ...dp.Option) func() (aggregate.Rule, func() []*tensor.Set, error) {
		return func() (aggregate.Rule, func() []*tensor.Set, error) {
			r, err := dp.New(name, append([]dp.Option{dp.WithNoiseMultiplier(0.7), dp.WithInsecureNoiseSeed(99)}, extra...)...)
			return r, func() []*tensor.Set { return nil }, err
		}
	}
	stateful("dp/fixed", mech("dp-fixed", dp.WithClipBound(0.3)), nil, f32)
	stateful("dp/fixed-expected", mech("dp-fixed", dp.WithClipBound(0.3), dp.WithExpectedClients(10), dp.WithSamplingRate(0.1)), nil, f32)
	stateful("dp/adaptive", mech("dp-adaptive", dp.WithClipBound(0.3), dp.WithClippedCountStddev(1)), nil, f32)
	cases = append(cases, pinCase{"secagg/recovery", secaggPin})
	return cases
}

// secaggPin: 6 clients masked pairwise with self masks, client 2 dropped.
func secaggPin(t *testing.T, m pinMode) ([]*tensor.Set, []*aggregate.Report) {
	ctx := context.Background()
	q, err := secagg.NewQuantizer(16, 4)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.NewChaCha8([32]byte{7})
	const n = 6
	seed := func() secagg.Seed {
		var s secagg.Seed
		r.Read(s[:])
		return s
	}
	pairs := make([]map[int]secagg.Seed, n)
	for i := range pairs {
		pairs[i] = map[int]secagg.Seed{}
	}
	for i := range n {
		for j := i + 1; j < n; j++ {
			s := seed()
			pairs[i][j], pairs[j][i] = s, s
		}
	}
	self := map[int]secagg.Seed{}
	var masked []*tensor.Set
	raw := pinClients(t, 40, n, []tensor.DType{tensor.F32}, nil, 1)
	for id := range n {
		s := seed()
		u, err := q.QuantizeSet(raw[id], r)
		if err != nil {
			t.Fatal(err)
		}
		c := &secagg.Client{ID: id, Self: &s, Pairs: pairs[id]}
		if err := c.Mask(ctx, u); err != nil {
			t.Fatal(err)
		}
		if id == 2 {
			continue // dropped after masking
		}
		self[id] = s
		masked = append(masked, u)
	}
	rec := &secagg.Recovery{Clients: []int{0, 1, 2, 3, 4, 5}, Self: self,
		Dropped: map[int]map[int]secagg.Seed{2: {0: pairs[2][0], 1: pairs[2][1], 3: pairs[2][3], 4: pairs[2][4], 5: pairs[2][5]}}}
	rule, err := secagg.New(secagg.WithBits(16), secagg.WithRange(4), secagg.WithRecovery(rec))
	if err != nil {
		t.Fatal(err)
	}
	return oneRound(t, m, rule, masked, nil, aggregate.WithChunkBytes(pinChunk))
}
