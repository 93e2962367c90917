package cuda

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/tensor"
)

// The rules find a device's capabilities with type assertions (device.Robust, device.Optimizer,
// device.ModSummer) and fall back to the host for a device without them. Given the GPU with
// aggregate.WithDevice — what `wattagg aggregate --device cuda:0` does — they must run their
// device work on it, and give the CPU device's results: the order statistics, selections and
// optimizer steps bit for bit, the geometric median (whose distances are f64 sums in another
// order) within f32 rounding.

// ruleUpdates returns n client models of three f32 tensors.
func ruleUpdates(r *rand.Rand, n int, center float64) []*tensor.Set {
	var sets []*tensor.Set
	for i := range n {
		var ts []*tensor.Tensor
		for k, shape := range [][]int{{4099}, {3, 5}, {700}} {
			tt, err := tensor.New(fmt.Sprintf("layer%d", k), tensor.F32, shape...)
			if err != nil {
				panic(err)
			}
			v, _ := tt.F32()
			for j := range v {
				v[j] = float32(center + r.NormFloat64()*(1+float64(i%3)))
			}
			ts = append(ts, tt)
		}
		s, err := tensor.NewSet(ts...)
		if err != nil {
			panic(err)
		}
		sets = append(sets, s)
	}
	return sets
}

// launched sums the launches of the kernels whose names start with prefix.
func (g *GPU) launched(prefix string) int64 {
	var n int64
	for name, c := range g.launches {
		if strings.HasPrefix(name, prefix) {
			n += c.Load()
		}
	}
	return n
}

// sameSets compares two results tensor by tensor: bit for bit (tol 0) or within tol·(1+|want|).
func sameSets(t *testing.T, got, want *tensor.Set, tol float64) {
	t.Helper()
	if got.Len() != want.Len() {
		t.Fatalf("%d tensors, want %d", got.Len(), want.Len())
	}
	for k := range want.Len() {
		g, w := got.At(k), want.At(k)
		for j := range w.Len() {
			a, b := g.Value(j), w.Value(j)
			if tol == 0 && math.Float64bits(a) != math.Float64bits(b) || math.Abs(a-b) > tol*(1+math.Abs(b)) || math.IsNaN(a) {
				t.Fatalf("%s[%d] = %v, want %v (the CPU device's)", w.Name, j, a, b)
			}
		}
	}
}

func TestRobustRulesOnGPU(t *testing.T) {
	for _, d := range gpus(t, fakePipeline) {
		t.Run(d.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(60, 61))
			updates := ruleUpdates(r, 9, 0.5)
			for _, tc := range []struct {
				name   string
				build  func(opts ...aggregate.Option) (aggregate.Rule, error)
				kernel string // the GPU kernels the rule must run
				tol    float64
			}{
				{"median", func(o ...aggregate.Option) (aggregate.Rule, error) { return aggregate.NewMedian(o...) }, "wa_select_", 0},
				{"trimmed-mean", func(o ...aggregate.Option) (aggregate.Rule, error) { return aggregate.NewTrimmedMean(0.2, o...) }, "wa_select_", 0},
				{"krum", func(o ...aggregate.Option) (aggregate.Rule, error) { return aggregate.NewKrum(2, 1, o...) }, "wa_gram", 0},
				{"multi-krum", func(o ...aggregate.Option) (aggregate.Rule, error) { return aggregate.NewKrum(2, 3, o...) }, "wa_gram", 0},
				{"bulyan", func(o ...aggregate.Option) (aggregate.Rule, error) { return aggregate.NewBulyan(1, o...) }, "wa_select_", 0},
				{"geomed", func(o ...aggregate.Option) (aggregate.Rule, error) {
					return aggregate.NewGeometricMedian(1e-6, 20, 1e-7, o...)
				}, "wa_sqdist", 1e-5},
			} {
				t.Run(tc.name, func(t *testing.T) {
					cpuRule, err := tc.build()
					if err != nil {
						t.Fatal(err)
					}
					want, _, err := cpuRule.Aggregate(context.Background(), updates, nil)
					if err != nil {
						t.Fatal(err)
					}
					gpuRule, err := tc.build(aggregate.WithDevice(d.g))
					if err != nil {
						t.Fatal(err)
					}
					before := d.g.launched(tc.kernel)
					got, rep, err := gpuRule.Aggregate(context.Background(), updates, nil)
					if err != nil {
						t.Fatal(err)
					}
					if d.g.launched(tc.kernel) == before {
						t.Fatalf("%s ran no %s* kernel on %s", tc.name, tc.kernel, d.g.Name())
					}
					if len(rep.Devices) == 0 || rep.Devices[0].Device != d.g.Name() {
						t.Fatalf("report devices %+v, want %s", rep.Devices, d.g.Name())
					}
					sameSets(t, got, want, tc.tol)
				})
			}
		})
	}
}

// FedAdam over three rounds: the weighted sum of each round on the GPU, each finished chunk
// stepped by the GPU's Optimize from the sum's Output (the side lane), the model and moments
// the CPU device's bit for bit.
func TestServerOptimizerOnGPU(t *testing.T) {
	for _, d := range gpus(t, fakePipeline) {
		t.Run(d.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(62, 63))
			global := ruleUpdates(r, 1, 0)[0]
			var rules []*aggregate.ServerOptimizer
			for _, opts := range [][]aggregate.Option{nil, {aggregate.WithDevice(d.g), aggregate.WithChunkBytes(16 << 10)}} {
				rule, err := aggregate.NewFedAdam(aggregate.WithGlobal(global), aggregate.WithServerLR(0.1), aggregate.WithTau(1e-3),
					aggregate.WithRuleOptions(opts...))
				if err != nil {
					t.Fatal(err)
				}
				defer rule.Close()
				rules = append(rules, rule)
			}
			sums, steps := d.g.launched("wa_acc_f64_f32"), d.g.launched("wa_optim")
			for round := range 3 {
				updates := ruleUpdates(r, 5, 0.1*float64(round+1))
				want, _, err := rules[0].Aggregate(context.Background(), updates, nil)
				if err != nil {
					t.Fatal(err)
				}
				var got *tensor.Set
				var rep *aggregate.Report
				within(t, 2*time.Minute, func() {
					got, rep, err = rules[1].Aggregate(context.Background(), updates, nil)
				})
				if err != nil {
					t.Fatal(err)
				}
				if len(rep.Devices) == 0 || rep.Devices[0].Device != d.g.Name() {
					t.Fatalf("round %d: report devices %+v, want %s", round, rep.Devices, d.g.Name())
				}
				sameSets(t, got, want, 0)
				sameSets(t, rules[1].State().M, rules[0].State().M, 0)
				sameSets(t, rules[1].State().V, rules[0].State().V, 0)
			}
			// The sum runs on the GPU; the step runs on the host, where the sum's chunks land
			// (aggregate's optimizerOf): a GPU step would copy every chunk there and back.
			if d.g.launched("wa_acc_f64_f32") == sums {
				t.Fatalf("fedadam summed nothing on %s", d.g.Name())
			}
			if d.g.launched("wa_optim") != steps {
				t.Fatalf("fedadam stepped host chunks on %s", d.g.Name())
			}
		})
	}
}

// Secure sum's modular sum runs on the GPU (device.ModSummer) and decodes to the CPU's result.
func TestSecureSumOnGPU(t *testing.T) {
	for _, d := range gpus(t, fakePipeline) {
		t.Run(d.name, func(t *testing.T) {
			ctx := context.Background()
			r := rand.New(rand.NewPCG(64, 65))
			q, err := aggregate.NewSecAggQuantizer(16, 1)
			if err != nil {
				t.Fatal(err)
			}
			src := rand.NewChaCha8([32]byte{7})
			var s01, s02, s12 aggregate.Seed
			src.Read(s01[:])
			src.Read(s02[:])
			src.Read(s12[:])
			pairs := []map[int]aggregate.Seed{{1: s01, 2: s02}, {0: s01, 2: s12}, {0: s02, 1: s12}}
			var masked []*tensor.Set
			for id, u := range ruleUpdates(r, 3, 0) {
				// Updates within the quantiser's range [-1, 1].
				for k := range u.Len() {
					v, _ := u.At(k).F32()
					for j := range v {
						v[j] = float32(math.Tanh(float64(v[j])))
					}
				}
				qu, err := q.QuantizeSet(u, src)
				if err != nil {
					t.Fatal(err)
				}
				if err := (&aggregate.SecAggClient{ID: id, Pairs: pairs[id]}).Mask(ctx, qu); err != nil {
					t.Fatal(err)
				}
				masked = append(masked, qu)
			}
			var results []*tensor.Set
			before := d.g.launched("wa_modsum_u32")
			for _, opts := range [][]aggregate.Option{nil, {aggregate.WithDevice(d.g)}} {
				rule, err := aggregate.NewSecureSum(aggregate.WithSecAggBits(16), aggregate.WithSecAggRange(1), aggregate.WithSecAggRuleOptions(opts...))
				if err != nil {
					t.Fatal(err)
				}
				mean, _, err := rule.Aggregate(ctx, masked, nil)
				if err != nil {
					t.Fatal(err)
				}
				results = append(results, mean)
			}
			if d.g.launched("wa_modsum_u32") == before {
				t.Fatalf("secagg ran no modular sum on %s", d.g.Name())
			}
			sameSets(t, results[1], results[0], 0)
		})
	}
}
