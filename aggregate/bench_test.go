package aggregate_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/bench"
	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
)

// BenchmarkWeightedMean is FedAvg of 32 updates of 4M parameters, in memory, with the result
// buffer reused (a server's steady state). Bytes are the inputs read plus the output written;
// floor_GB/s is the read bandwidth of the same inputs measured in the same run, and
// of_floor the ratio.
func BenchmarkWeightedMean(b *testing.B) {
	const clients, params = 32, 4 << 20
	dev, err := device.NewCPU()
	if err != nil {
		b.Fatal(err)
	}
	// bf16 is measured with its default f64 accumulator and with an f32 one: widening to f64
	// costs 2 µops per 4 elements on AVX2, which makes the f64 path compute-bound.
	for _, c := range []struct{ in, acc tensor.DType }{{tensor.F32, tensor.F32}, {tensor.BF16, tensor.F64}, {tensor.BF16, tensor.F32}} {
		dt := c.in
		b.Run(fmt.Sprintf("clients=%d/params=%d/in=%s/acc=%s", clients, params, c.in, c.acc), func(b *testing.B) {
			updates, err := bench.InMemoryUpdates(clients, params, dt)
			if err != nil {
				b.Fatal(err)
			}
			opts := []aggregate.Option{aggregate.WithDevices(dev), aggregate.WithOutDType(tensor.F32), aggregate.WithAccumulator(c.acc)}
			dst, rep, err := aggregate.WeightedMean(context.Background(), updates, nil, opts...)
			if err != nil {
				b.Fatal(err)
			}
			opts = append(opts, aggregate.WithOutput(dst))
			b.SetBytes(rep.BytesRead + rep.BytesWritten)
			for b.Loop() {
				if _, _, err := aggregate.WeightedMean(context.Background(), updates, nil, opts...); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			var bufs [][]byte
			for _, u := range updates {
				bufs = append(bufs, u.At(0).Bytes())
			}
			floor := bench.ReadFloor(bufs, dev.Info().Workers, 3)
			perSec := float64(rep.BytesRead+rep.BytesWritten) * float64(b.N) / b.Elapsed().Seconds()
			b.ReportMetric(floor/1e9, "floor_GB/s")
			b.ReportMetric(perSec/floor, "of_floor")
			b.ReportMetric(float64(params)*float64(b.N)/b.Elapsed().Seconds()/1e6, "Mparams/s")
		})
	}
}

// BenchmarkWeightedMeanFresh is FedAvg into a new result each call (no WithOutput; the result
// closed after each call, so the shared pool serves the next one), beside the same call into a
// reused output, alternating in the same loop: fresh_of_reused is the ratio of their params/s.
// The first call of the process is reported too (first_of_reused): the pool has nothing then,
// and every page of the result is new.
func BenchmarkWeightedMeanFresh(b *testing.B) {
	dev, err := device.NewCPU()
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct{ clients, params int }{{32, 4 << 20}, {8, 50 << 20}} {
		b.Run(fmt.Sprintf("clients=%d/params=%d", c.clients, c.params), func(b *testing.B) {
			updates, err := bench.InMemoryUpdates(c.clients, c.params, tensor.F32)
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			opts := []aggregate.Option{aggregate.WithDevices(dev)}
			// A result of a size no earlier benchmark pooled: this call's pages are all new.
			start := time.Now()
			dst, _, err := aggregate.WeightedMean(ctx, updates, nil, opts...)
			if err != nil {
				b.Fatal(err)
			}
			first := time.Since(start)
			reusedOpts := append(opts[:len(opts):len(opts)], aggregate.WithOutput(dst))
			var fresh, reused time.Duration
			for b.Loop() {
				start := time.Now()
				out, _, err := aggregate.WeightedMean(ctx, updates, nil, opts...)
				if err != nil {
					b.Fatal(err)
				}
				out.Close()
				fresh += time.Since(start)
				start = time.Now()
				if _, _, err := aggregate.WeightedMean(ctx, updates, nil, reusedOpts...); err != nil {
					b.Fatal(err)
				}
				reused += time.Since(start)
			}
			dst.Close()
			perCall := reused.Seconds() / float64(b.N)
			b.ReportMetric(float64(c.params)/fresh.Seconds()*float64(b.N)/1e6, "fresh_Mparams/s")
			b.ReportMetric(float64(c.params)/perCall/1e6, "reused_Mparams/s")
			b.ReportMetric(reused.Seconds()/fresh.Seconds(), "fresh_of_reused")
			b.ReportMetric(perCall/first.Seconds(), "first_of_reused")
		})
	}
}
