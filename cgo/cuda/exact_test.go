package cuda

import (
	"context"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/aggregate/optim"
	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
)

// Exact sums on the GPU give the CPU's bits: FedAvg and FedAdam with WithExactSum, in batch and
// incremental rounds, the updates in another order on the GPU; a partial aggregate made on the
// GPU merges into a round on the CPU with the bits of one round; a value beyond the bound is the
// CPU's RangeError, naming the update.
func TestExactSumsOnGPU(t *testing.T) {
	ctx := context.Background()
	for _, d := range gpus(t, fakePipeline) {
		t.Run(d.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(70, 71))
			global := ruleUpdates(r, 1, 0)[0]
			updates := ruleUpdates(r, 9, 0.25)
			for k, u := range updates {
				u.Source = "client" + string(rune('a'+k))
			}
			weights := []float64{3, 1, 40, 7, 2, 2, 9, 1, 5}
			rev := func() ([]*tensor.Set, []float64) {
				us, ws := make([]*tensor.Set, len(updates)), make([]float64, len(weights))
				for k := range updates {
					us[len(us)-1-k], ws[len(ws)-1-k] = updates[k], weights[k]
				}
				return us, ws
			}
			exact := aggregate.WithExactSum(aggregate.ExactSum{Bound: 64})
			for _, rule := range []string{"fedavg", "fedadam"} {
				t.Run(rule, func(t *testing.T) {
					build := func() aggregate.Rule {
						if rule == "fedavg" {
							return aggregate.NewFedAvg()
						}
						o, err := optim.New(rule)
						if err != nil {
							t.Fatal(err)
						}
						return o
					}
					opts := []aggregate.Option{exact, aggregate.WithChunkBytes(16 << 10)}
					if rule != "fedavg" {
						opts = append(opts, aggregate.WithGlobal(global))
					}
					want, _, err := aggregate.Aggregate(ctx, build(), updates, weights, opts...)
					if err != nil {
						t.Fatal(err)
					}
					us, ws := rev()
					gpuOpts := append(opts, aggregate.WithDevices(d.g))
					before := d.g.launched("wa_exact_acc_")
					got, _, err := aggregate.Aggregate(ctx, build(), us, ws, gpuOpts...)
					if err != nil {
						t.Fatal(err)
					}
					if d.g.launched("wa_exact_acc_") == before {
						t.Fatalf("the batch ran no exact kernel on %s", d.g.Name())
					}
					sameSets(t, got, want, 0)

					round, err := aggregate.NewRound(ctx, build(), gpuOpts...)
					if err != nil {
						t.Fatal(err)
					}
					defer round.Close()
					for k, u := range us {
						if err := round.Add(ctx, u, ws[k]); err != nil {
							t.Fatal(err)
						}
					}
					got, _, err = round.Result(ctx)
					if err != nil {
						t.Fatal(err)
					}
					sameSets(t, got, want, 0)

					// A partial of some clients made on the GPU, the rest added on the CPU.
					pr, err := aggregate.NewRound(ctx, build(), gpuOpts...)
					if err != nil {
						t.Fatal(err)
					}
					defer pr.Close()
					for k := range 4 {
						if err := pr.Add(ctx, updates[k], weights[k]); err != nil {
							t.Fatal(err)
						}
					}
					p, err := pr.Partial(ctx)
					if err != nil {
						t.Fatal(err)
					}
					cpuRound, err := aggregate.NewRound(ctx, build(), opts...)
					if err != nil {
						t.Fatal(err)
					}
					defer cpuRound.Close()
					for k := 4; k < len(updates); k++ {
						if err := cpuRound.Add(ctx, updates[k], weights[k]); err != nil {
							t.Fatal(err)
						}
					}
					if err := cpuRound.AddPartial(ctx, p); err != nil {
						t.Fatal(err)
					}
					got, _, err = cpuRound.Result(ctx)
					if err != nil {
						t.Fatal(err)
					}
					sameSets(t, got, want, 0)
				})
			}
			bad := updates[5].Clone()
			bad.Source = "bad.safetensors"
			v, _ := bad.At(2).F32()
			v[99] = 100
			_, _, err := aggregate.Aggregate(ctx, aggregate.NewFedAvg(), []*tensor.Set{updates[0], bad}, nil, exact, aggregate.WithDevices(d.g))
			var re *device.RangeError
			if !errors.As(err, &re) || re.Source != "bad.safetensors" || re.Tensor != "layer2" || re.Index != 99 || re.Value != 100 {
				t.Fatalf("a value beyond the bound on %s: err = %v", d.g.Name(), err)
			}
		})
	}
}
