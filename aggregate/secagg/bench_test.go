package secagg_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/aggregate/secagg"
	"github.com/wattagg/wattagg/bench"
	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
)

// BenchmarkSecureSum is the server side of a secure sum: 32 masked u32 updates of 4M elements
// added modulo 2^32 (VPADDD over every input, accumulator blocks in L2) and decoded to f32; with
// masks=32 it also removes 32 self masks (AES-256-CTR keystreams, 512 MiB of them). Bytes: the
// inputs read plus the output written; floor_GB/s reads the same inputs (XorFold on the
// device's workers, measured in the same run).
func BenchmarkSecureSum(b *testing.B) {
	const clients, params = 32, 4 << 20
	dev, err := device.NewCPU()
	if err != nil {
		b.Fatal(err)
	}
	updates := make([]*tensor.Set, clients)
	var bufs [][]byte
	for k := range updates {
		t, err := tensor.New("w", tensor.U32, params)
		if err != nil {
			b.Fatal(err)
		}
		v, err := t.U32()
		if err != nil {
			b.Fatal(err)
		}
		x := uint32(k*2654435761 + 1)
		for j := range v {
			x ^= x << 13
			x ^= x >> 17
			x ^= x << 5
			v[j] = x
		}
		if updates[k], err = tensor.NewSet(t); err != nil {
			b.Fatal(err)
		}
		updates[k].Metadata[secagg.ClientKey] = fmt.Sprint(k)
		bufs = append(bufs, t.Bytes())
	}
	for _, masks := range []int{0, clients} {
		b.Run(fmt.Sprintf("clients=%d/params=%d/masks=%d", clients, params, masks), func(b *testing.B) {
			opts := []secagg.Option{secagg.WithBits(16)}
			if masks > 0 {
				rec := &secagg.Recovery{Self: map[int]secagg.Seed{}}
				for k := range clients {
					rec.Clients = append(rec.Clients, k)
					rec.Self[k] = secagg.Seed{byte(k)}
				}
				opts = append(opts, secagg.WithRecovery(rec))
			}
			rule, err := secagg.New(opts...)
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			_, rep, err := aggregate.Aggregate(ctx, rule, updates, nil, aggregate.WithDevices(dev))
			if err != nil {
				b.Fatal(err)
			}
			if rep.Details["masks_removed"] != float64(masks) {
				b.Fatalf("removed %v masks", rep.Details["masks_removed"])
			}
			b.SetBytes(rep.BytesRead + rep.BytesWritten)
			for b.Loop() {
				if _, _, err := aggregate.Aggregate(ctx, rule, updates, nil, aggregate.WithDevices(dev)); err != nil {
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
