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

// BenchmarkExactMean is BenchmarkWeightedMean's FedAvg (32 f32 updates of 4M parameters, in
// memory, the result buffer reused) with exact sums beside the order-dependent f32 sum, each
// against the read floor of the same inputs measured right after it (floor_GB/s, of_floor).
func BenchmarkExactMean(b *testing.B) {
	const clients, params = 32, 4 << 20
	dev, err := device.NewCPU()
	if err != nil {
		b.Fatal(err)
	}
	updates, err := bench.InMemoryUpdates(clients, params, tensor.F32)
	if err != nil {
		b.Fatal(err)
	}
	var bufs [][]byte
	for _, u := range updates {
		bufs = append(bufs, u.At(0).Bytes())
	}
	for _, mode := range []string{"float-f32", "exact"} {
		b.Run(fmt.Sprintf("clients=%d/params=%d/sum=%s", clients, params, mode), func(b *testing.B) {
			opts := []aggregate.Option{aggregate.WithDevices(dev), aggregate.WithOutDType(tensor.F32)}
			if mode == "exact" {
				opts = append(opts, aggregate.WithExactSum(aggregate.ExactSum{}))
			} else {
				opts = append(opts, aggregate.WithAccumulator(tensor.F32))
			}
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
			floor := bench.ReadFloor(bufs, dev.Info().Workers, 3)
			perSec := float64(rep.BytesRead+rep.BytesWritten) * float64(b.N) / b.Elapsed().Seconds()
			b.ReportMetric(floor/1e9, "floor_GB/s")
			b.ReportMetric(perSec/floor, "of_floor")
			b.ReportMetric(float64(params)*float64(b.N)/b.Elapsed().Seconds()/1e6, "Mparams/s")
		})
	}
}

// BenchmarkExactAdd is one update of 4M f32 parameters added to an incremental round's exact
// accumulator (16 bytes per parameter: the update read once, the limbs read and written), against
// the read floor of the same bytes (acc_B/param: the accumulator's memory per parameter).
func BenchmarkExactAdd(b *testing.B) {
	const params = 4 << 20
	dev, err := device.NewCPU()
	if err != nil {
		b.Fatal(err)
	}
	updates, err := bench.InMemoryUpdates(1, params, tensor.F32)
	if err != nil {
		b.Fatal(err)
	}
	x := []device.Span{device.SpanOf(updates[0].At(0))}
	for _, mode := range []string{"float-f32", "float-f64", "exact"} {
		b.Run("sum="+mode, func(b *testing.B) {
			f := device.AccField{Name: "x", Len: params, Acc: tensor.F32, Out: tensor.F32}
			switch mode {
			case "float-f64":
				f.Acc = tensor.F64
			case "exact":
				f.Acc, f.Grid, f.Bound = tensor.I64, -45, 1<<16
			}
			acc, err := dev.NewAccumulator([]device.AccField{f})
			if err != nil {
				b.Fatal(err)
			}
			defer acc.Close()
			accBytes := map[string]int{"float-f32": 4, "float-f64": 8, "exact": 16}[mode]
			// Touch the accumulator once: fresh pages are not what a round's adds pay for.
			if err := acc.Add(context.Background(), x, 1); err != nil {
				b.Fatal(err)
			}
			traffic := int64(params) * int64(4+2*accBytes)
			b.SetBytes(traffic)
			for b.Loop() {
				if err := acc.Add(context.Background(), x, 1); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			buf := make([]byte, traffic)
			for i := range buf { // written, so that the floor reads memory, not the zero page
				buf[i] = byte(i)
			}
			floor := bench.ReadFloor([][]byte{buf}, dev.Info().Workers, 3)
			perSec := float64(traffic) * float64(b.N) / b.Elapsed().Seconds()
			b.ReportMetric(float64(accBytes), "acc_B/param")
			b.ReportMetric(floor/1e9, "floor_GB/s")
			b.ReportMetric(perSec/floor, "of_floor")
			b.ReportMetric(b.Elapsed().Seconds()*1e3/float64(b.N), "ms/update")
		})
	}
}
