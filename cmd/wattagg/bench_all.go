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
	"github.com/wattagg/wattagg/sched"
	"github.com/wattagg/wattagg/tensor"
)

// benchSuiteNames are the suites `bench all` runs, in order: the floors first, so that a
// reader meets them before the figures they bound.
var benchSuiteNames = []string{"floor", "mean", "e2e", "stream", "robust", "energy"}

// benchAllFlags are the flags of `bench all`.
type benchAllFlags struct {
	quick                                    bool
	out, dir, suites, progressMode, floorSrc string
	workers                                  int
	ef                                       energyFlags
}

func newBenchAllCmd() *cobra.Command {
	var f benchAllFlags
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
			return f.run(cmd)
		},
	}
	f.register(cmd.Flags())
	return cmd
}

// register adds the flags of `bench all` to fl.
func (f *benchAllFlags) register(fl *pflag.FlagSet) {
	fl.BoolVar(&f.quick, "quick", false, "smaller sweeps and fewer runs: about a minute on 2 cores instead of five")
	fl.StringVar(&f.out, "out", "", "the folder to write (default ./wattagg-bench-DATE-TIME)")
	fl.StringVar(&f.dir, "dir", "", "working directory for the input files of e2e and stream (default: a temporary one, removed)")
	fl.StringVar(&f.suites, "suites", strings.Join(benchSuiteNames, ","), "the suites to run, comma-separated")
	fl.StringVar(&f.floorSrc, "floor-src", "", "path of e2efloor.c (default: ../shared/floors/e2efloor.c)")
	fl.IntVar(&f.workers, "workers", runtime.GOMAXPROCS(0), "goroutines of the CPU device")
	fl.StringVar(&f.progressMode, "progress", "auto", "progress bars on stderr: auto (when a terminal), always, never")
	f.ef.register(fl)
}

// run runs the suites --suites names on this machine into the folder --out, and writes its
// index.md.
func (f *benchAllFlags) run(cmd *cobra.Command) error {
	names, err := f.check()
	if err != nil {
		return err
	}
	if f.out == "" {
		f.out = "wattagg-bench-" + time.Now().Format("20060102-150405")
	}
	cpu, m, err := f.openMachine()
	if err != nil {
		return err
	}
	defer m.Close()
	profile, err := f.ef.profilePath()
	if err != nil {
		return err
	}
	removeDir, err := f.workDir()
	if err != nil {
		return err
	}
	defer removeDir()
	if err := os.MkdirAll(f.out, 0o755); err != nil {
		return err
	}
	env := f.env(cmd, cpu, m)
	suites := selectSuites(f.allSuites(env.preset, m, profile), names)
	return runBenchAll(env, suites, f.out, f.progressMode, benchCommandLine(cmd))
}

// check refuses a bad --workers or --progress and returns the suites --suites names, in order.
func (f *benchAllFlags) check() ([]string, error) {
	if f.workers < 1 {
		return nil, usagef("--workers %d: want at least 1", f.workers)
	}
	if err := checkProgressFlag(f.progressMode); err != nil {
		return nil, err
	}
	return parseSuites(f.suites)
}

// openMachine makes the CPU device with --workers goroutines and discovers the machine's
// devices and energy meters around it; the caller closes the machine.
func (f *benchAllFlags) openMachine() (*device.CPU, *sched.Machine, error) {
	cpu, err := device.NewCPU(device.WithWorkers(f.workers))
	if err != nil {
		return nil, nil, usagef("--workers: %v", err)
	}
	m, err := f.ef.openMachine(cpu)
	if err != nil {
		return nil, nil, err
	}
	return cpu, m, nil
}

// workDir makes a temporary working directory where --dir is not given, and returns what
// removes it (nothing, for a --dir of the user's).
func (f *benchAllFlags) workDir() (remove func(), err error) {
	if f.dir != "" {
		return func() {}, nil
	}
	if f.dir, err = os.MkdirTemp("", "wattagg-bench-all-"); err != nil {
		return nil, err
	}
	dir := f.dir
	return func() { os.RemoveAll(dir) }, nil // gigabytes of inputs
}

// env is what every suite runs with: the command's streams, the CPU device, the machine with
// its meters, and the sizes of a quick or full run.
func (f *benchAllFlags) env(cmd *cobra.Command, cpu *device.CPU, m *sched.Machine) *benchEnv {
	env := &benchEnv{ctx: cmd.Context(), stdout: cmd.OutOrStdout(), stderr: cmd.ErrOrStderr(),
		cpu: cpu, machine: bench.DescribeMachine(cpu), preset: presetFor(f.quick), quick: f.quick}
	describeMeters(&env.machine, m)
	return env
}

// allSuites are every suite of `bench all` by name, sized by p; the energy suite meters m and
// plans with the profile kept at profile.
func (f *benchAllFlags) allSuites(p benchPreset, m *sched.Machine, profile string) map[string]benchSuite {
	sweep := p.sweep
	return map[string]benchSuite{
		"floor": floorSuite{mib: p.floorMiB, writeMiB: p.writeMiB, dir: f.dir},
		"mean": meanSuite{clients: p.meanClients, params: p.meanParams, runs: p.meanRuns,
			dtypes: []tensor.DType{tensor.F32, tensor.BF16}, sweep: &sweep, sweepRuns: p.meanSweepRuns},
		"e2e": e2eSuite{cfg: bench.E2EConfig{Dir: filepath.Join(f.dir, "e2e"), Clients: p.e2eClients,
			Params: p.e2eParams, Runs: p.e2eRuns, FloorSrc: f.floorSrc}},
		"stream": streamSuite{cfg: bench.RSSConfig{Dir: filepath.Join(f.dir, "stream"), Clients: p.streamClients,
			Params: p.streamParams}},
		"robust": robustSuite{clients: p.robustClients, params: p.robustParams, runs: p.robustRuns,
			sweep: &sweep, sweepRuns: p.robustSweepRuns},
		"energy": energySuite{cfg: bench.EnergyConfig{Clients: p.energyClients, Params: p.energyParams,
			DType: tensor.F32, Runs: p.energyRuns}, machine: m, profilePath: profile, progressMode: f.progressMode},
	}
}

// selectSuites returns the suites of all that names lists, in its order.
func selectSuites(all map[string]benchSuite, names []string) []benchSuite {
	var run []benchSuite
	for _, n := range names {
		run = append(run, all[n])
	}
	return run
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
