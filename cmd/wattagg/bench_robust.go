package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/aggregate/robust"
	"github.com/wattagg/wattagg/bench"
	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/kernels"
	"github.com/wattagg/wattagg/tensor"
)

// newBenchRobustCmd is `wattagg bench robust`: the robust rules on in-memory updates beside the
// floors measured in the same run.
func newBenchRobustCmd() *cobra.Command {
	var c benchCommon
	var clients, params, runs int
	cmd := &cobra.Command{
		Use:   "robust",
		Short: "Robust rules (median, trimmed mean, Krum, ...) beside the memory and FMA floors",
		Long: `Robust measures the Byzantine-robust rules on f32 updates in memory (the steady state of a
server: the output is reused), in input bytes per second, each beside its floor measured in the
same run: the memory read bandwidth divided by the passes the rule makes over the updates, and
for Krum's distances (the Gram matrix, n(n+1)/2 f64 FMAs per coordinate) the FMA throughput of
the cores, measured with a loop of independent VFMADD231PD.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rows, err := benchRobust(cmd.Context(), clients, params, runs, c.workers)
			if err != nil {
				return err
			}
			return c.print(cmd.OutOrStdout(), rows)
		},
	}
	c.flags(cmd)
	cmd.Flags().IntVar(&clients, "clients", 32, "updates")
	cmd.Flags().IntVar(&params, "params", 4<<20, "f32 parameters per update")
	cmd.Flags().IntVar(&runs, "runs", 5, "runs of each (the median is reported)")
	return cmd
}

func benchRobust(ctx context.Context, clients, params, runs, workers int) ([]bench.Row, error) {
	if clients < 1 || params < 1 || runs < 1 || workers < 1 {
		return nil, usagef("--clients, --params, --runs and --workers must be positive")
	}
	dev, err := device.NewCPU(device.WithWorkers(workers))
	if err != nil {
		return nil, err
	}
	updates, err := bench.InMemoryUpdates(clients, params, tensor.F32)
	if err != nil {
		return nil, err
	}
	var bufs [][]byte
	for _, u := range updates {
		bufs = append(bufs, u.At(0).Bytes())
	}
	in := int64(4 * clients * params)
	read := bench.ReadFloor(bufs, workers, 10) // best of 10: the VMs' read rate varies from pass to pass
	fma := fmaRate(workers)
	rows := []bench.Row{
		{Name: fmt.Sprintf("read floor %d x %s f32", clients, human(float64(params), "")), Seconds: float64(in) / read,
			Bytes: in, GBps: read / 1e9, Note: fmt.Sprintf("%d workers", workers)},
		{Name: "fma floor", GBps: fma / 1e9, Note: fmt.Sprintf("GFMA/s (f64, %d workers) = %.2f GHz x 8 FMA/cycle/core", workers, fma/1e9/8/float64(workers))},
	}
	// timed runs f runs times and returns the median seconds.
	timed := func(f func() error) (float64, error) {
		if err := f(); err != nil { // warm up: first touch of the output, page tables
			return 0, err
		}
		var ts []float64
		for range runs {
			start := time.Now()
			if err := f(); err != nil {
				return 0, err
			}
			ts = append(ts, time.Since(start).Seconds())
		}
		slices.Sort(ts)
		return ts[len(ts)/2], nil
	}
	row := func(name string, secs, floor float64, note string) bench.Row {
		r := bench.Row{Name: name, Seconds: secs, Bytes: in, Params: int64(params), GBps: float64(in) / secs / 1e9,
			ParamsPS: float64(params) / secs, FloorGBps: floor / 1e9, Note: note}
		if floor > 0 {
			r.Ratio = r.GBps / r.FloorGBps
		}
		return r
	}

	// Krum's distances: the device's Gram matrix.
	fields := []device.AccField{{Name: "w", Len: params, Acc: tensor.F32, Out: tensor.F32}}
	spans := make([][]device.Span, clients)
	for k, u := range updates {
		spans[k] = []device.Span{device.SpanOf(u.At(0))}
	}
	secs, err := timed(func() error { _, _, err := dev.Gram(ctx, fields, spans); return err })
	if err != nil {
		return nil, err
	}
	pairs := float64(clients*(clients+1)) / 2
	gramFloor := fma * float64(4*clients) / pairs
	rows = append(rows, row("krum distances (gram)", secs, gramFloor,
		fmt.Sprintf("%.1f GFMA/s; numpy's Gram route ~4 GB/s", pairs*float64(params)/secs/1e9)))

	dst := updates[0].Clone()
	opts := []aggregate.Option{aggregate.WithDevices(dev), aggregate.WithOutput(dst)}
	must := func(r aggregate.Rule, err error) aggregate.Rule {
		if err != nil {
			panic(err) // the parameters below are valid
		}
		return r
	}
	_ = must
	f := max(0, (clients-3)/4) // Bulyan's largest f
	for _, c := range []struct {
		rule   aggregate.Rule
		passes int
		note   string
	}{
		{robust.NewMedian(), 1, "numpy's np.median ~0.2 GB/s"},
		{must(robust.NewTrimmedMean(0.1)), 1, "beta 0.1"},
		{must(robust.NewKrum(f, 1)), 2, fmt.Sprintf("f=%d: gram + copy", f)},
		{must(robust.NewKrum(f, 0)), 2, fmt.Sprintf("f=%d, m=n-f: gram + mean", f)},
		{must(robust.NewBulyan(f)), 2, fmt.Sprintf("f=%d: gram + closest mean", f)},
		{must(robust.NewGeometricMedian(robust.WithSmoothing(1e-6), robust.WithMaxIterations(3), robust.WithTolerance(0))), 9, "3 Weiszfeld iterations"},
		{must(robust.NewCenteredClipping(1)), 3, "1 iteration"},
		{must(robust.NewNormClipping(robust.QuantileBound(0.5))), 2, "median norm"},
	} {
		if c.rule.Name() == "bulyan" && clients < 3 || (c.rule.Name() == "krum" || c.rule.Name() == "multi-krum") && clients <= 2*f+2 {
			continue
		}
		secs, err := timed(func() error { _, _, err := aggregate.Aggregate(ctx, c.rule, updates, nil, opts...); return err })
		if err != nil {
			return nil, err
		}
		note := fmt.Sprintf("%s; floor: read / %d pass", c.note, c.passes)
		if c.passes > 1 {
			note += "es"
		}
		rows = append(rows, row(c.rule.Name(), secs, read/float64(c.passes), note))
	}
	return rows, nil
}

// fmaRate is the f64 FMAs per second of workers goroutines running kernels.FMALoop at once,
// best of 5.
func fmaRate(workers int) float64 {
	const iters = 1 << 20
	best := 0.0
	for range 5 {
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
