package cuda

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/aggregate/optim"
	"github.com/wattagg/wattagg/aggregate/robust"
	"github.com/wattagg/wattagg/aggregate/secagg"
	"github.com/wattagg/wattagg/tensor"
)

// The rules find a device's capabilities with type assertions (device.Robust, device.Optimizer,
// device.ModSummer) and fall back to the host for a device without them. Given the GPU with
// aggregate.WithDevices — what `wattagg aggregate --device cuda:0` does — they must run their
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
				build  func() (aggregate.Rule, error)
				kernel string // the GPU kernels the rule must run
				tol    float64
			}{
				{"median", func() (aggregate.Rule, error) { return robust.NewMedian(), nil }, "wa_select_", 0},
				{"trimmed-mean", func() (aggregate.Rule, error) { return robust.NewTrimmedMean(0.2) }, "wa_select_", 0},
				{"krum", func() (aggregate.Rule, error) { return robust.NewKrum(2, 1) }, "wa_gram", 0},
				{"multi-krum", func() (aggregate.Rule, error) { return robust.NewKrum(2, 3) }, "wa_gram", 0},
				{"bulyan", func() (aggregate.Rule, error) { return robust.NewBulyan(1) }, "wa_select_", 0},
				{"geomed", func() (aggregate.Rule, error) {
					return robust.NewGeometricMedian(robust.WithSmoothing(1e-6), robust.WithMaxIterations(20), robust.WithTolerance(1e-7))
				}, "wa_sqdist", 1e-5},
			} {
				t.Run(tc.name, func(t *testing.T) {
					rule, err := tc.build()
					if err != nil {
						t.Fatal(err)
					}
					want, _, err := aggregate.Aggregate(context.Background(), rule, updates, nil)
					if err != nil {
						t.Fatal(err)
					}
					before := d.g.launched(tc.kernel)
					got, rep, err := aggregate.Aggregate(context.Background(), rule, updates, nil, aggregate.WithDevices(d.g))
					if err != nil {
						t.Fatal(err)
					}
					if d.g.launched(tc.kernel) == before {
						t.Fatalf("%s ran no %s* kernel on %s", tc.name, tc.kernel, d.g.Name())
					}
					if !slices.ContainsFunc(rep.Devices, func(s aggregate.DeviceShare) bool { return s.Device == d.g.Name() }) {
						t.Fatalf("report devices %+v, want %s among them", rep.Devices, d.g.Name())
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
			globals := []*tensor.Set{ruleUpdates(r, 1, 0)[0], nil}
			globals[1] = globals[0]
			var rules []*optim.Optimizer
			optsOf := [][]aggregate.Option{nil, {aggregate.WithDevices(d.g), aggregate.WithChunkBytes(16 << 10)}}
			for range optsOf {
				rule, err := optim.NewFedAdam(optim.WithServerLR(0.1), optim.WithTau(1e-3))
				if err != nil {
					t.Fatal(err)
				}
				defer rule.Close()
				rules = append(rules, rule)
			}
			sums, steps := d.g.launched("wa_acc_f64_f32"), d.g.launched("wa_optim")
			for round := range 3 {
				updates := ruleUpdates(r, 5, 0.1*float64(round+1))
				want, _, err := aggregate.Aggregate(context.Background(), rules[0], updates, nil, aggregate.WithGlobal(globals[0]))
				if err != nil {
					t.Fatal(err)
				}
				var got *tensor.Set
				var rep *aggregate.Report
				within(t, 2*time.Minute, func() {
					got, rep, err = aggregate.Aggregate(context.Background(), rules[1], updates, nil,
						append(optsOf[1], aggregate.WithGlobal(globals[1]))...)
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
				globals[0], globals[1] = want, got
			}
			// The sum runs on the GPU; the step runs on the host, where the sum's chunks land
			// (optim's stepperOf): a GPU step would copy every chunk there and back.
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
			q, err := secagg.NewQuantizer(16, 1)
			if err != nil {
				t.Fatal(err)
			}
			src := rand.NewChaCha8([32]byte{7})
			var s01, s02, s12 secagg.Seed
			src.Read(s01[:])
			src.Read(s02[:])
			src.Read(s12[:])
			pairs := []map[int]secagg.Seed{{1: s01, 2: s02}, {0: s01, 2: s12}, {0: s02, 1: s12}}
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
				if err := (&secagg.Client{ID: id, Pairs: pairs[id]}).Mask(ctx, qu); err != nil {
					t.Fatal(err)
				}
				masked = append(masked, qu)
			}
			var results []*tensor.Set
			before := d.g.launched("wa_modsum_u32")
			for _, opts := range [][]aggregate.Option{nil, {aggregate.WithDevices(d.g)}} {
				rule, err := secagg.New(secagg.WithBits(16), secagg.WithRange(1))
				if err != nil {
					t.Fatal(err)
				}
				mean, _, err := aggregate.Aggregate(ctx, rule, masked, nil, opts...)
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
