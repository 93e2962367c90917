package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/spf13/cobra"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/bench"
	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
)

func newBenchCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure wattagg beside the physical floors of this machine",
		Long: `Bench measures aggregation paths and, in the same run, the floor each one is bound by
(memory read bandwidth, or the C yardstick shared/floors/e2efloor.c), and prints the ratio.`,
	}
	cmd.AddCommand(newBenchFloorCmd(), newBenchMeanCmd(), newBenchE2ECmd(), newBenchStreamCmd())
	cmd.AddCommand(newBenchEnergyCmd())
	cmd.AddCommand(newBenchRobustCmd())
	return cmd
}

type benchCommon struct {
	workers int
	json    bool
}

func (b *benchCommon) flags(cmd *cobra.Command) {
	cmd.Flags().IntVar(&b.workers, "workers", runtime.GOMAXPROCS(0), "goroutines")
	cmd.Flags().BoolVar(&b.json, "json", false, "print rows as JSON")
}

func (b *benchCommon) print(w io.Writer, rows []bench.Row) error {
	if b.json {
		return json.NewEncoder(w).Encode(rows)
	}
	return bench.WriteTable(w, rows)
}

func newBenchFloorCmd() *cobra.Command {
	var c benchCommon
	var mib int
	cmd := &cobra.Command{
		Use:   "floor",
		Short: "Memory read bandwidth (the floor of every single pass over memory)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			res := bench.MemoryFloor(mib<<20, c.workers, 5)
			var rows []bench.Row
			for _, w := range []int{1, c.workers} {
				if v, ok := res[w]; ok && (len(rows) == 0 || w != 1) {
					r := bench.Row{Name: fmt.Sprintf("read %d MiB, %d workers", mib, w), Bytes: int64(mib) << 20}
					r.Seconds = float64(r.Bytes) / v
					r.GBps = v / 1e9
					rows = append(rows, r)
				}
			}
			return c.print(cmd.OutOrStdout(), rows)
		},
	}
	c.flags(cmd)
	cmd.Flags().IntVar(&mib, "mib", 512, "buffer size in MiB (well above the last-level cache)")
	return cmd
}

func newBenchMeanCmd() *cobra.Command {
	var c benchCommon
	var clients, params, runs int
	var dtypes string
	cmd := &cobra.Command{
		Use:   "mean",
		Short: "FedAvg of in-memory updates beside the read floor of the same memory",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dev, err := device.NewCPU(device.WithWorkers(c.workers))
			if err != nil {
				return err
			}
			var rows []bench.Row
			for _, name := range strings.Split(dtypes, ",") {
				dt, err := tensor.ParseDType(name)
				if err != nil {
					return usagef("--dtypes: %v", err)
				}
				updates, err := bench.InMemoryUpdates(clients, params, dt)
				if err != nil {
					return err
				}
				var opts []aggregate.Option
				if dt != tensor.F32 {
					opts = append(opts, aggregate.WithOutDType(tensor.F32))
				}
				r, err := bench.WeightedMean(cmd.Context(), updates, dev, runs, opts...)
				if err != nil {
					return err
				}
				rows = append(rows, r)
			}
			return c.print(cmd.OutOrStdout(), rows)
		},
	}
	c.flags(cmd)
	cmd.Flags().IntVar(&clients, "clients", 32, "updates")
	cmd.Flags().IntVar(&params, "params", 4<<20, "parameters per update")
	cmd.Flags().IntVar(&runs, "runs", 7, "runs (the median is reported)")
	cmd.Flags().StringVar(&dtypes, "dtypes", "f32,bf16", "input dtypes to measure, comma-separated")
	return cmd
}

func newBenchE2ECmd() *cobra.Command {
	var c benchCommon
	var cfg bench.E2EConfig
	cmd := &cobra.Command{
		Use:   "e2e",
		Short: "wattagg aggregate end to end beside shared/floors/e2efloor.c",
		Long: `E2e writes (or reuses) a federation of f32 files, warms the page cache, and times the
same job done by e2efloor.c (built here with gcc -O3 -march=native -fopenmp), by wattagg in
this process, and by the wattagg CLI as a whole process. Throughput is (clients+1) x payload
bytes / seconds, as e2efloor counts it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Workers = c.workers
			if cfg.Dir == "" {
				cfg.Dir = filepath.Join(os.TempDir(), "wattagg-bench-e2e")
			}
			if exe, err := os.Executable(); err == nil {
				cfg.CLI = exe
			}
			rows, err := bench.E2E(cmd.Context(), cfg, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			return c.print(cmd.OutOrStdout(), rows)
		},
	}
	c.flags(cmd)
	cmd.Flags().StringVar(&cfg.Dir, "dir", "", "working directory (default $TMPDIR/wattagg-bench-e2e; inputs are reused)")
	cmd.Flags().IntVar(&cfg.Clients, "clients", 32, "client files")
	cmd.Flags().IntVar(&cfg.Params, "params", 4<<20, "f32 parameters per file")
	cmd.Flags().IntVar(&cfg.Runs, "runs", 7, "runs of each (the median is reported)")
	cmd.Flags().StringVar(&cfg.FloorSrc, "floor-src", "", "path of e2efloor.c (default: ../shared/floors/e2efloor.c)")
	return cmd
}

func newBenchStreamCmd() *cobra.Command {
	var cfg bench.RSSConfig
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "stream",
		Short: "Peak anonymous memory of `wattagg aggregate --stream` against 1.3 x model + 96 MiB",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfg.Dir == "" {
				cfg.Dir = filepath.Join(os.TempDir(), "wattagg-bench-stream")
			}
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			cfg.CLI = exe
			res, err := bench.StreamRSS(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			if asJSON {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(res)
			}
			verdict := "within"
			if !res.Within {
				verdict = "OVER"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "streaming fedavg of %d x %s f32 params: peak RssAnon %.1f MiB, budget %.1f MiB (1.3 x %.1f MiB + 96 MiB): %s; %.2f s, %d samples\n",
				res.Clients, human(float64(res.Params), ""), mib(res.PeakAnon), mib(res.Budget), mib(res.OutputBytes), verdict, res.Seconds, res.Samples)
			return nil
		},
	}
	cmd.Flags().StringVar(&cfg.Dir, "dir", "", "working directory (default $TMPDIR/wattagg-bench-stream; inputs are reused)")
	cmd.Flags().IntVar(&cfg.Clients, "clients", 16, "client files")
	cmd.Flags().IntVar(&cfg.Params, "params", 25_000_000, "parameters per model (a transformer layout close to this)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return cmd
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }
