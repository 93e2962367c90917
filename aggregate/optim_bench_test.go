package aggregate_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/bench"
	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
)

// reportFloor adds the read floor of bufs (XorFold on the device's workers, measured in the same
// run) beside the benchmark's bytes per second.
func reportFloor(b *testing.B, bufs [][]byte, workers int, bytesPerOp int64, params int) {
	b.StopTimer()
	floor := bench.ReadFloor(bufs, workers, 3)
	perSec := float64(bytesPerOp) * float64(b.N) / b.Elapsed().Seconds()
	b.ReportMetric(floor/1e9, "floor_GB/s")
	b.ReportMetric(perSec/floor, "of_floor")
	b.ReportMetric(float64(params)*float64(b.N)/b.Elapsed().Seconds()/1e6, "Mparams/s")
}

// BenchmarkServerOptimizerRound is one in-memory round of each server optimizer: 16 f32 client
// models of 4M parameters and the global model are summed into the delta, and the fused step
// reads it with m and v and writes the new model (fresh memory: it is returned) and m and v
// (into the buffers of the state before last: the current state stays intact until the round
// succeeds). Bytes: everything read (clients, global, m, v) and written (x, m, v); floor_GB/s
// reads the same inputs.
func BenchmarkServerOptimizerRound(b *testing.B) {
	const clients, params = 16, 4 << 20
	dev, err := device.NewCPU()
	if err != nil {
		b.Fatal(err)
	}
	updates, err := bench.InMemoryUpdates(clients+1, params, tensor.F32)
	if err != nil {
		b.Fatal(err)
	}
	global, updates := updates[clients], updates[:clients]
	for _, name := range []string{"fedavgm", "fedadam"} {
		b.Run(fmt.Sprintf("%s/clients=%d/params=%d", name, clients, params), func(b *testing.B) {
			rule, err := aggregate.NewServerOptimizer(name, aggregate.WithGlobal(global), aggregate.WithRuleOptions(aggregate.WithDevice(dev)))
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			if _, _, err := rule.Aggregate(ctx, updates, nil); err != nil { // round 1 has no state to read
				b.Fatal(err)
			}
			_, rep, err := rule.Aggregate(ctx, updates, nil)
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(rep.BytesRead + rep.BytesWritten)
			for b.Loop() {
				if _, _, err := rule.Aggregate(ctx, updates, nil); err != nil {
					b.Fatal(err)
				}
			}
			bufs := [][]byte{rule.Global().At(0).Bytes(), rule.State().M.At(0).Bytes()}
			if v := rule.State().V; v != nil {
				bufs = append(bufs, v.At(0).Bytes())
			}
			for _, u := range updates {
				bufs = append(bufs, u.At(0).Bytes())
			}
			reportFloor(b, bufs, dev.Info().Workers, rep.BytesRead+rep.BytesWritten, params)
		})
	}
}

// BenchmarkSecureSum is the server side of a secure sum: 32 masked u32 updates of 4M elements
// added modulo 2^32 (VPADDD over every input, accumulator blocks in L2) and decoded to f32; with
// masks=32 it also removes 32 self masks (AES-256-CTR keystreams, 512 MiB of them). Bytes: the
// inputs read plus the output written; floor_GB/s reads the same inputs.
func BenchmarkSecureSum(b *testing.B) {
	const clients, params = 32, 4 << 20
	dev, err := device.NewCPU()
	if err != nil {
		b.Fatal(err)
	}
	updates := make([]*tensor.Set, clients)
	var bufs [][]byte
	for k := range updates {
		t, _ := tensor.New("w", tensor.U32, params)
		v, _ := t.U32()
		x := uint32(k*2654435761 + 1)
		for j := range v {
			x ^= x << 13
			x ^= x >> 17
			x ^= x << 5
			v[j] = x
		}
		updates[k], _ = tensor.NewSet(t)
		updates[k].Metadata[aggregate.SecAggClientKey] = fmt.Sprint(k)
		bufs = append(bufs, t.Bytes())
	}
	for _, masks := range []int{0, clients} {
		b.Run(fmt.Sprintf("clients=%d/params=%d/masks=%d", clients, params, masks), func(b *testing.B) {
			opts := []aggregate.SecAggOption{aggregate.WithSecAggBits(16), aggregate.WithSecAggRuleOptions(aggregate.WithDevice(dev))}
			if masks > 0 {
				rec := &aggregate.SecAggRecovery{Self: map[int]aggregate.Seed{}}
				for k := range clients {
					rec.Clients = append(rec.Clients, k)
					rec.Self[k] = aggregate.Seed{byte(k)}
				}
				opts = append(opts, aggregate.WithSecAggRecovery(rec))
			}
			rule, err := aggregate.NewSecureSum(opts...)
			if err != nil {
				b.Fatal(err)
			}
			_, rep, err := rule.Aggregate(context.Background(), updates, nil)
			if err != nil {
				b.Fatal(err)
			}
			if rep.Details["masks_removed"] != float64(masks) {
				b.Fatalf("removed %v masks", rep.Details["masks_removed"])
			}
			b.SetBytes(rep.BytesRead + rep.BytesWritten)
			for b.Loop() {
				if _, _, err := rule.Aggregate(context.Background(), updates, nil); err != nil {
					b.Fatal(err)
				}
			}
			reportFloor(b, bufs, dev.Info().Workers, rep.BytesRead+rep.BytesWritten, params)
		})
	}
}
