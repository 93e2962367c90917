package robust_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/aggregate/robust"
	"github.com/wattagg/wattagg/bench"
	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/kernels"
	"github.com/wattagg/wattagg/tensor"
)

// The robust rules on the shape: 32 f32 updates of 4M parameters in memory (512 MiB),
// input bytes per second, beside the floor measured in the same run: the memory read floor
// divided by the passes the rule makes over the updates, or for the Gram matrix the FMA floor
// (n(n+1)/2 f64 FMAs per coordinate).

var robustBench struct {
	once    sync.Once
	updates []*tensor.Set
	err     error
}

func robustBenchUpdates(b *testing.B) []*tensor.Set {
	robustBench.once.Do(func() {
		robustBench.updates, robustBench.err = bench.InMemoryUpdates(32, 4<<20, tensor.F32)
	})
	if robustBench.err != nil {
		b.Fatal(robustBench.err)
	}
	return robustBench.updates
}

// readFloor is the read bandwidth of the updates' memory on every core.
func readFloor(updates []*tensor.Set) float64 {
	var bufs [][]byte
	for _, u := range updates {
		for _, t := range u.Tensors() {
			bufs = append(bufs, t.Bytes())
		}
	}
	return bench.ReadFloor(bufs, 2, 3)
}

// fmaFloor is the FMAs per second of every core running kernels.FMALoop at once.
func fmaFloor(workers int) float64 {
	const iters = 1 << 20
	best := 0.0
	for range 3 {
		var wg sync.WaitGroup
		start := time.Now()
		for range workers {
			wg.Add(1)
			go func() { defer wg.Done(); kernels.FMALoop(iters) }()
		}
		wg.Wait()
		best = max(best, float64(workers*iters*kernels.FMALoopFMAs)/time.Since(start).Seconds())
	}
	return best
}

func BenchmarkRobustRules(b *testing.B) {
	updates := robustBenchUpdates(b)
	n := len(updates)
	in := updates[0].NumBytes() * int64(n)
	dst := updates[0].Clone()
	ctx := context.Background()
	mk := func(r aggregate.Rule, err error) aggregate.Rule {
		if err != nil {
			b.Fatal(err)
		}
		return r
	}
	opts := []aggregate.Option{aggregate.WithOutput(dst)}
	for _, c := range []struct {
		rule   aggregate.Rule
		passes float64
	}{
		{robust.NewMedian(), 2},
		{mk(robust.NewTrimmedMean(0.1)), 2},
		{mk(robust.NewKrum(3, 1)), 3},
		{mk(robust.NewKrum(3, 0)), 3},
		{mk(robust.NewBulyan(3)), 3},
		{mk(robust.NewGeometricMedian(robust.WithSmoothing(1e-6), robust.WithMaxIterations(3), robust.WithTolerance(0))), 10},
		{mk(robust.NewCenteredClipping(1, robust.WithIterations(1))), 5},
		{mk(robust.NewNormClipping(robust.QuantileBound(0.5))), 2},
	} {
		b.Run(fmt.Sprintf("rule=%s/n=%d", c.rule.Name(), n), func(b *testing.B) {
			b.SetBytes(in)
			for b.Loop() {
				if _, _, err := aggregate.Aggregate(ctx, c.rule, updates, nil, opts...); err != nil {
					b.Fatal(err)
				}
			}
			floor := readFloor(updates) / c.passes
			got := float64(in) * float64(b.N) / b.Elapsed().Seconds()
			b.ReportMetric(floor/1e9, "floor-GB/s")
			b.ReportMetric(got/floor, "of-floor")
		})
	}
}

// BenchmarkRobustGram measures the device's Gram matrix (Krum's distances) beside the FMA
// floor of all cores: n(n+1)/2 FMAs per coordinate of n f32 inputs, so the floor in input bytes
// per second is FMA/s · 4n / (n(n+1)/2).
func BenchmarkRobustGram(b *testing.B) {
	updates := robustBenchUpdates(b)
	n := len(updates)
	dev, err := device.NewCPU()
	if err != nil {
		b.Fatal(err)
	}
	fields := []device.AccField{{Name: "w", Len: updates[0].At(0).Len(), Acc: tensor.F32, Out: tensor.F32}}
	inputs := make([][]device.Span, n)
	for k, u := range updates {
		inputs[k] = []device.Span{device.SpanOf(u.At(0))}
	}
	in := updates[0].NumBytes() * int64(n)
	b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
		b.SetBytes(in)
		for b.Loop() {
			if _, _, err := dev.Gram(context.Background(), fields, inputs); err != nil {
				b.Fatal(err)
			}
		}
		fmas := fmaFloor(dev.Info().Workers)
		floor := fmas * 4 * float64(n) / float64(n*(n+1)/2)
		got := float64(in) * float64(b.N) / b.Elapsed().Seconds()
		b.ReportMetric(fmas/1e9, "floor-GFMA/s")
		b.ReportMetric(floor/1e9, "floor-GB/s")
		b.ReportMetric(got/floor, "of-floor")
	})
}
