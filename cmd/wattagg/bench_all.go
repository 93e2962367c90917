package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/wattagg/wattagg/bench"
	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
)

// benchSuiteNames are the suites `bench all` runs, in order: the floors first, so that a
// reader meets them before the figures they bound.
var benchSuiteNames = []string{"floor", "mean", "e2e", "stream", "robust", "energy"}

func newBenchAllCmd() *cobra.Command {
	var quick bool
	var out, dir, suites, progressMode, floorSrc string
	var workers int
	var ef energyFlags
	cmd := &cobra.Command{
		Use:   "all",
		Short: "Run every suite and write one folder: JSON, Markdown and PNG reports, and index.md",
		Long: `All runs every suite — floor, mean, e2e, stream, robust, energy — with a progress bar per
suite on stderr and each suite's table on stdout, and writes one folder (--out, default
./wattagg-bench-DATE-TIME) that a user can open:

  index.md         the machine (CPU, cores, kernels, GOAMD64, GPUs, energy meters), every suite
                   with links to its files and its plots inline, and what this machine could not
                   run (a GPU policy without a GPU, e2efloor.c without gcc), and why
  SUITE.json       per suite: every figure with its floor measured in the same run, the ratio,
                   the unit and the parameters, and the machine and date
  SUITE.md         the same as Markdown tables (figure, floor, ratio)
  SUITE-*.png      the plots: mean-clients.png, mean-params.png, robust-clients.png,
                   robust-params.png (throughput against clients 8..128 and model size
                   1M..64M per rule, the floor dashed), SUITE-ratio.png (ratio to floor),
                   floor-bandwidth.png, energy-joules.png (joules per parameter per policy and
                   device, predicted and measured, labelled estimated without a counter)

The full run takes about 4-6 minutes on 2 cores and needs about 3.5 GB of memory and 2.5 GB
of disk in --dir; --quick (smaller sweeps, fewer runs) about a minute and 1.2 GB. Other work on the machine
skews the figures: run it on an idle machine. A suite that fails is named in index.md and the
others still run (exit status 1).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if workers < 1 {
				return usagef("--workers %d: want at least 1", workers)
			}
			if err := checkProgressFlag(progressMode); err != nil {
				return err
			}
			names, err := parseSuites(suites)
			if err != nil {
				return err
			}
			if out == "" {
				out = "wattagg-bench-" + time.Now().Format("20060102-150405")
			}
			cpu, err := device.NewCPU(device.WithWorkers(workers))
			if err != nil {
				return usagef("--workers: %v", err)
			}
			m, err := ef.openMachine(cpu)
			if err != nil {
				return err
			}
			defer m.Close()
			profile, err := ef.profilePath()
			if err != nil {
				return err
			}
			if dir == "" {
				if dir, err = os.MkdirTemp("", "wattagg-bench-all-"); err != nil {
					return err
				}
				defer os.RemoveAll(dir) // gigabytes of inputs
			}
			if err := os.MkdirAll(out, 0o755); err != nil {
				return err
			}
			p := presetFor(quick)
			env := &benchEnv{ctx: cmd.Context(), stdout: cmd.OutOrStdout(), stderr: cmd.ErrOrStderr(),
				cpu: cpu, machine: bench.DescribeMachine(cpu), preset: p, quick: quick}
			describeMeters(&env.machine, m)
			sweep := p.sweep
			all := map[string]benchSuite{
				"floor": floorSuite{mib: p.floorMiB, writeMiB: p.writeMiB, dir: dir},
				"mean": meanSuite{clients: p.meanClients, params: p.meanParams, runs: p.meanRuns,
					dtypes: []tensor.DType{tensor.F32, tensor.BF16}, sweep: &sweep, sweepRuns: p.meanSweepRuns},
				"e2e": e2eSuite{cfg: bench.E2EConfig{Dir: filepath.Join(dir, "e2e"), Clients: p.e2eClients,
					Params: p.e2eParams, Runs: p.e2eRuns, FloorSrc: floorSrc}},
				"stream": streamSuite{cfg: bench.RSSConfig{Dir: filepath.Join(dir, "stream"), Clients: p.streamClients,
					Params: p.streamParams}},
				"robust": robustSuite{clients: p.robustClients, params: p.robustParams, runs: p.robustRuns,
					sweep: &sweep, sweepRuns: p.robustSweepRuns},
				"energy": energySuite{cfg: bench.EnergyConfig{Clients: p.energyClients, Params: p.energyParams,
					DType: tensor.F32, Runs: p.energyRuns}, machine: m, profilePath: profile, progressMode: progressMode},
			}
			var run []benchSuite
			for _, n := range names {
				run = append(run, all[n])
			}
			return runBenchAll(env, run, out, progressMode, benchCommandLine(cmd))
		},
	}
	fl := cmd.Flags()
	fl.BoolVar(&quick, "quick", false, "smaller sweeps and fewer runs: about a minute on 2 cores instead of five")
	fl.StringVar(&out, "out", "", "the folder to write (default ./wattagg-bench-DATE-TIME)")
	fl.StringVar(&dir, "dir", "", "working directory for the input files of e2e and stream (default: a temporary one, removed)")
	fl.StringVar(&suites, "suites", strings.Join(benchSuiteNames, ","), "the suites to run, comma-separated")
	fl.StringVar(&floorSrc, "floor-src", "", "path of e2efloor.c (default: ../shared/floors/e2efloor.c)")
	fl.IntVar(&workers, "workers", runtime.GOMAXPROCS(0), "goroutines of the CPU device")
	fl.StringVar(&progressMode, "progress", "auto", "progress bars on stderr: auto (when a terminal), always, never")
	ef.register(fl)
	return cmd
}

func parseSuites(list string) ([]string, error) {
	var out []string
	for _, n := range strings.Split(list, ",") {
		n = strings.TrimSpace(n)
		if !slices.Contains(benchSuiteNames, n) {
			return nil, usagef("--suites: unknown suite %q (want some of %s)", n, strings.Join(benchSuiteNames, ", "))
		}
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out, nil
}

// runBenchAll runs the suites one after another, each with its own progress bar, writes each
// report into out as it completes, and index.md at the end — also when a suite failed or the
// run was interrupted, so that what was measured stays readable.
func runBenchAll(env *benchEnv, suites []benchSuite, out, progressMode, command string) error {
	start := time.Now()
	idx := bench.Index{Date: time.Now().UTC().Truncate(time.Second), Quick: env.quick, Command: command}
	var failed []string
	for i, s := range suites {
		if env.ctx.Err() != nil {
			break
		}
		fmt.Fprintf(env.stdout, "\n== %s: %s ==\n", s.name(), s.title())
		bar := newStepBar(env.stderr, progressMode, fmt.Sprintf("[%d/%d] %s", i+1, len(suites), s.name()))
		env.step = bar.step
		t0 := time.Now()
		rep, err := s.run(env)
		bar.finish()
		entry := bench.IndexEntry{Suite: s.name(), Title: s.title(), Seconds: time.Since(t0).Seconds()}
		if err == nil {
			entry.Files, err = writeReport(env.ctx, env.stderr, rep, out)
			entry.Skipped = rep.Skipped()
		}
		if err != nil {
			if errors.Is(err, context.Canceled) {
				break
			}
			entry.Err = err.Error()
			failed = append(failed, s.name())
			fmt.Fprintf(env.stderr, "wattagg: bench %s: %v\n", s.name(), err)
		}
		idx.Suites = append(idx.Suites, entry)
	}
	idx.Machine, idx.Seconds = env.machine, time.Since(start).Seconds()
	if err := idx.Write(out); err != nil {
		return err
	}
	fmt.Fprintf(env.stderr, "wattagg: wrote %s (%d suites in %.0f s)\n", filepath.Join(out, "index.md"), len(idx.Suites), idx.Seconds)
	if err := env.ctx.Err(); err != nil {
		return err
	}
	if len(failed) > 0 {
		return fmt.Errorf("bench all: %s failed (see %s)", strings.Join(failed, ", "), filepath.Join(out, "index.md"))
	}
	return nil
}

// benchCommandLine is the command that made the folder, for the index.
func benchCommandLine(cmd *cobra.Command) string {
	parts := []string{cmd.CommandPath()}
	cmd.Flags().Visit(func(f *pflag.Flag) {
		if f.Value.Type() == "bool" && f.Value.String() == "true" {
			parts = append(parts, "--"+f.Name)
		} else {
			parts = append(parts, "--"+f.Name+" "+f.Value.String())
		}
	})
	return strings.Join(parts, " ")
}
