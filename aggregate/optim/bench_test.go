package optim_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/aggregate/optim"
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
// reads it with m and v and writes the new model (fresh memory: it is returned, and is the next
// round's global model) and m and v (into the buffers of the state before last: the current
// state stays intact until the round succeeds). Bytes: everything read (clients, global, m, v)
// and written (x, m, v); floor_GB/s reads the same inputs.
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
			rule, err := optim.New(name)
			if err != nil {
				b.Fatal(err)
			}
			defer rule.Close()
			ctx := context.Background()
			x := global
			step := func() *aggregate.Report {
				next, rep, err := aggregate.Aggregate(ctx, rule, updates, nil, aggregate.WithGlobal(x), aggregate.WithDevices(dev))
				if err != nil {
					b.Fatal(err)
				}
				x = next
				return rep
			}
			step() // round 1 has no state to read
			rep := step()
			b.SetBytes(rep.BytesRead + rep.BytesWritten)
			for b.Loop() {
				step()
			}
			bufs := [][]byte{x.At(0).Bytes(), rule.State().M.At(0).Bytes()}
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
