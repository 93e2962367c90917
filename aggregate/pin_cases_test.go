package aggregate_test

import (
	"context"
	"math/rand/v2"
	"strconv"
	"testing"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/tensor"
)

// pinChunk cuts the pinned outputs into several chunks (the 61×53 f32 tensor spans four).
const pinChunk = 4096

func must[T any](v T, err error) func(t *testing.T) T {
	return func(t *testing.T) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

// batchRule runs a batch rule once in memory.
func batchRule(r aggregate.Rule, updates []*tensor.Set, weights []float64) func(t *testing.T) ([]*tensor.Set, []*aggregate.Report) {
	return func(t *testing.T) ([]*tensor.Set, []*aggregate.Report) {
		set, rep, err := r.Aggregate(context.Background(), updates, weights)
		if err != nil {
			t.Fatal(err)
		}
		return []*tensor.Set{set}, []*aggregate.Report{rep}
	}
}

// withNaN returns the updates with one value of client k replaced by NaN (in a copy).
func withNaN(t *testing.T, updates []*tensor.Set, k int) []*tensor.Set {
	out := append([]*tensor.Set(nil), updates...)
	c := updates[k].Clone()
	b := c.At(0).Bytes()
	switch c.At(0).DType {
	case tensor.F32:
		copy(b[40:], []byte{0, 0, 0xc0, 0x7f})
	case tensor.BF16, tensor.F16:
		copy(b[20:], []byte{0xc0, 0x7f})
	default:
		t.Fatalf("withNaN: dtype %s", c.At(0).DType)
	}
	out[k] = c
	return out
}

func pinCases() []pinCase {
	f32 := []tensor.DType{tensor.F32}
	var cases []pinCase
	add := func(name string, run func(t *testing.T) ([]*tensor.Set, []*aggregate.Report)) {
		cases = append(cases, pinCase{name, run})
	}
	common := func(opts ...aggregate.Option) []aggregate.Option {
		return append([]aggregate.Option{aggregate.WithChunkBytes(pinChunk)}, opts...)
	}
	batch := func(name string, build func(opts []aggregate.Option) (aggregate.Rule, error), clients func(t *testing.T) []*tensor.Set, weights []float64, opts ...aggregate.Option) {
		add(name, func(t *testing.T) ([]*tensor.Set, []*aggregate.Report) {
			r := must(build(common(opts...)))(t)
			return batchRule(r, clients(t), weights)(t)
		})
	}
	clients := func(seed uint64, n int, dts []tensor.DType) func(t *testing.T) []*tensor.Set {
		return func(t *testing.T) []*tensor.Set { return pinClients(t, seed, n, dts, nil, 1) }
	}
	withExamples := func(seed uint64, n int, dts []tensor.DType) func(t *testing.T) []*tensor.Set {
		return func(t *testing.T) []*tensor.Set {
			cs := pinClients(t, seed, n, dts, nil, 1)
			for k, c := range cs {
				c.Metadata[aggregate.NumExamplesKey] = strconv.Itoa(10 + 7*k)
			}
			return cs
		}
	}
	fedavg := func(opts []aggregate.Option) (aggregate.Rule, error) { return aggregate.NewFedAvg(opts...) }
	w9 := []float64{1, 2, 3, 0.5, 4, 1.25, 7, 2, 1}

	// FedAvg.
	batch("fedavg/f32", fedavg, clients(1, 9, f32), w9)
	batch("fedavg/f32-examples", fedavg, withExamples(2, 9, f32), nil)
	batch("fedavg/bf16", fedavg, clients(3, 9, []tensor.DType{tensor.BF16}), w9)
	batch("fedavg/f16-i8out", fedavg, clients(4, 9, []tensor.DType{tensor.F16}), w9, aggregate.WithOutDType(tensor.I8))
	batch("fedavg/i8", fedavg, clients(5, 9, []tensor.DType{tensor.I8}), w9)
	batch("fedavg/f32-acc64-bf16out", fedavg, clients(6, 9, f32), w9, aggregate.WithAccumulator(tensor.F64), aggregate.WithOutDType(tensor.BF16))
	batch("fedavg/f64", fedavg, clients(7, 9, []tensor.DType{tensor.F64}), w9)
	batch("fedavg/mixed-grouped", fedavg, clients(8, 9, []tensor.DType{tensor.F32, tensor.F32, tensor.F32, tensor.BF16, tensor.BF16, tensor.BF16, tensor.I8, tensor.I8, tensor.I8}), w9, aggregate.WithMixedDTypes(true))

	// Robust rules.
	median := func(opts []aggregate.Option) (aggregate.Rule, error) { return aggregate.NewMedian(opts...) }
	batch("median/f32-odd", median, clients(10, 9, f32), nil)
	batch("median/bf16-even", median, clients(11, 8, []tensor.DType{tensor.BF16}), nil)
	add("median/nan-excluded", func(t *testing.T) ([]*tensor.Set, []*aggregate.Report) {
		r := must(aggregate.NewMedian(common()...))(t)
		return batchRule(r, withNaN(t, pinClients(t, 12, 9, f32, nil, 1), 4), nil)(t)
	})
	batch("trimmed-mean/0.2", func(opts []aggregate.Option) (aggregate.Rule, error) { return aggregate.NewTrimmedMean(0.2, opts...) },
		clients(13, 11, f32), nil)
	batch("trimmed-mean/f16", func(opts []aggregate.Option) (aggregate.Rule, error) { return aggregate.NewTrimmedMean(0.3, opts...) },
		clients(14, 10, []tensor.DType{tensor.F16}), nil)
	batch("krum/f1", func(opts []aggregate.Option) (aggregate.Rule, error) { return aggregate.NewKrum(1, 1, opts...) },
		clients(15, 9, f32), nil)
	batch("multi-krum/f1m3", func(opts []aggregate.Option) (aggregate.Rule, error) { return aggregate.NewKrum(1, 3, opts...) },
		clients(16, 9, f32), w9)
	batch("multi-krum/f2m0", func(opts []aggregate.Option) (aggregate.Rule, error) { return aggregate.NewKrum(2, 0, opts...) },
		clients(17, 9, f32), nil)
	batch("bulyan/f1", func(opts []aggregate.Option) (aggregate.Rule, error) { return aggregate.NewBulyan(1, opts...) },
		clients(18, 9, f32), nil)
	batch("bulyan/f1-bf16", func(opts []aggregate.Option) (aggregate.Rule, error) { return aggregate.NewBulyan(1, opts...) },
		clients(19, 8, []tensor.DType{tensor.BF16}), nil)
	batch("geomed", func(opts []aggregate.Option) (aggregate.Rule, error) {
		return aggregate.NewGeometricMedian(1e-6, 20, 1e-5, opts...)
	}, clients(20, 9, f32), w9)
	batch("centered-clip", func(opts []aggregate.Option) (aggregate.Rule, error) {
		return aggregate.NewCenteredClipping(30, 3, nil, opts...)
	}, clients(21, 9, f32), nil)
	batch("norm-clip/fixed", func(opts []aggregate.Option) (aggregate.Rule, error) {
		return aggregate.NewNormClipping(aggregate.FixedBound(57), opts...)
	}, clients(22, 9, f32), w9)
	batch("norm-clip/quantile", func(opts []aggregate.Option) (aggregate.Rule, error) {
		return aggregate.NewNormClipping(aggregate.QuantileBound(0.5), opts...)
	}, clients(23, 9, f32), nil)
	batch("norm-zero/fixed", func(opts []aggregate.Option) (aggregate.Rule, error) {
		return aggregate.NewNormZeroing(aggregate.FixedBound(57), opts...)
	}, clients(24, 9, f32), w9)

	// Server optimizers and private means: two rounds each, from a global model; the second
	// round's clients train from the first round's result.
	stateful := func(name string, build func(global *tensor.Set, opts []aggregate.Option) (aggregate.Rule, func() []*tensor.Set, error), weights []float64, dts []tensor.DType) {
		add(name, func(t *testing.T) ([]*tensor.Set, []*aggregate.Report) {
			global := pinSet(t, pinRNG(30), tensor.F32, nil, 1, "global")
			rule, state, err := build(global, common())
			if err != nil {
				t.Fatal(err)
			}
			var sets []*tensor.Set
			var reps []*aggregate.Report
			for round := range 2 {
				cs := pinClients(t, uint64(31+round), 7, dts, global, 0.01)
				set, rep, err := rule.Aggregate(context.Background(), cs, weights)
				if err != nil {
					t.Fatal(err)
				}
				sets = append(sets, set.Clone())
				sets = append(sets, state()...)
				reps = append(reps, rep)
				global = set
			}
			return sets, reps
		})
	}
	w7 := []float64{3, 1, 2, 5, 1, 1, 2}
	for _, name := range []string{"fedavgm", "fedadagrad", "fedadam", "fedyogi"} {
		stateful("optim/"+name, func(global *tensor.Set, opts []aggregate.Option) (aggregate.Rule, func() []*tensor.Set, error) {
			r, err := aggregate.NewServerOptimizer(name, aggregate.WithGlobal(global), aggregate.WithRuleOptions(opts...))
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
	stateful("optim/fedadam-bf16-clients", func(global *tensor.Set, opts []aggregate.Option) (aggregate.Rule, func() []*tensor.Set, error) {
		r, err := aggregate.NewFedAdam(aggregate.WithGlobal(global), aggregate.WithServerLR(0.05), aggregate.WithRuleOptions(opts...))
		return r, func() []*tensor.Set { return nil }, err
	}, nil, []tensor.DType{tensor.BF16})
	dp := func(name string, extra ...aggregate.RoundOption) func(global *tensor.Set, opts []aggregate.Option) (aggregate.Rule, func() []*tensor.Set, error) {
		return func(global *tensor.Set, opts []aggregate.Option) (aggregate.Rule, func() []*tensor.Set, error) {
			ro := append([]aggregate.RoundOption{aggregate.WithGlobal(global), aggregate.WithRuleOptions(opts...),
				aggregate.WithNoiseMultiplier(0.7), aggregate.WithInsecureNoiseSeed(99)}, extra...)
			r, err := aggregate.NewPrivateMean(name, ro...)
			return r, func() []*tensor.Set { return nil }, err
		}
	}
	stateful("dp/fixed", dp("dp-fixed", aggregate.WithClipBound(0.3)), nil, f32)
	stateful("dp/fixed-expected", dp("dp-fixed", aggregate.WithClipBound(0.3), aggregate.WithExpectedClients(10), aggregate.WithSamplingRate(0.1)), nil, f32)
	stateful("dp/adaptive", dp("dp-adaptive", aggregate.WithClipBound(0.3), aggregate.WithClippedCountStddev(1)), nil, f32)

	// Secure sum: 6 clients masked pairwise with self masks, client 2 dropped.
	add("secagg/recovery", func(t *testing.T) ([]*tensor.Set, []*aggregate.Report) {
		ctx := context.Background()
		q := must(aggregate.NewSecAggQuantizer(16, 4))(t)
		r := rand.NewChaCha8([32]byte{7})
		const n = 6
		seed := func() aggregate.Seed {
			var s aggregate.Seed
			r.Read(s[:])
			return s
		}
		pairs := make([]map[int]aggregate.Seed, n)
		for i := range pairs {
			pairs[i] = map[int]aggregate.Seed{}
		}
		for i := range n {
			for j := i + 1; j < n; j++ {
				s := seed()
				pairs[i][j], pairs[j][i] = s, s
			}
		}
		self := map[int]aggregate.Seed{}
		var masked []*tensor.Set
		raw := pinClients(t, 40, n, []tensor.DType{tensor.F32}, nil, 1)
		for id := range n {
			s := seed()
			u := must(q.QuantizeSet(raw[id], r))(t)
			c := &aggregate.SecAggClient{ID: id, Self: &s, Pairs: pairs[id]}
			if err := c.Mask(ctx, u); err != nil {
				t.Fatal(err)
			}
			if id == 2 {
				continue // dropped after masking
			}
			self[id] = s
			masked = append(masked, u)
		}
		rec := &aggregate.SecAggRecovery{Clients: []int{0, 1, 2, 3, 4, 5}, Self: self,
			Dropped: map[int]map[int]aggregate.Seed{2: {0: pairs[2][0], 1: pairs[2][1], 3: pairs[2][3], 4: pairs[2][4], 5: pairs[2][5]}}}
		rule := must(aggregate.NewSecureSum(aggregate.WithSecAggBits(16), aggregate.WithSecAggRange(4),
			aggregate.WithSecAggRecovery(rec), aggregate.WithSecAggRuleOptions(common()...)))(t)
		return batchRule(rule, masked, nil)(t)
	})
	return cases
}
