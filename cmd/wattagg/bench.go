package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
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
(memory read bandwidth, FMA throughput, or the C yardstick shared/floors/e2efloor.c), and
prints the ratio.

Every suite prints its table on stdout. With --out DIR it also writes a report people can
compare across runs and machines:

  DIR/SUITE.json   every figure with its floor, ratio, unit and parameters (rule, clients,
                   params, dtype, device, policy), and the machine (CPU, cores, kernels,
                   GOAMD64, Go) and date
  DIR/SUITE.md     the same as Markdown tables: figure, floor measured in the same run, ratio
  DIR/SUITE-*.png  plots: throughput against clients and model size per rule with the floor
                   dashed (mean, robust: SUITE-clients.png, SUITE-params.png), each figure's
                   ratio to its floor (SUITE-ratio.png), the floors themselves (floor-
                   bandwidth.png), joules per parameter per policy and device, predicted and
                   measured, labelled estimated without an energy counter (energy-joules.png)

mean and robust sweep clients 8..128 (4M params) and model size 1M..64M (8 clients) when
--out is given (--sweep=false skips it; --sweep without --out prints the sweep tables).

"wattagg bench all [--quick] [--out DIR]" runs every suite with progress bars and writes one
folder with index.md linking everything.`,
	}
	cmd.AddCommand(newBenchFloorCmd(), newBenchMeanCmd(), newBenchE2ECmd(), newBenchStreamCmd())
	cmd.AddCommand(newBenchEnergyCmd())
	cmd.AddCommand(newBenchRobustCmd())
	cmd.AddCommand(newBenchAllCmd())
	return cmd
}

// benchCommon are the flags every suite shares.
type benchCommon struct {
	workers  int
	json     bool
	out      string
	sweep    bool
	progress string
}

func (b *benchCommon) flags(cmd *cobra.Command) {
	cmd.Flags().IntVar(&b.workers, "workers", runtime.GOMAXPROCS(0), "goroutines")
	cmd.Flags().BoolVar(&b.json, "json", false, "print the main rows as JSON")
	cmd.Flags().StringVar(&b.out, "out", "", "write DIR/SUITE.json, DIR/SUITE.md and DIR/SUITE-*.png")
	cmd.Flags().StringVar(&b.progress, "progress", "auto", "progress bar on stderr: auto (when a terminal), always, never")
}

// sweepFlag registers --sweep for the suites that plot against clients and model size.
func (b *benchCommon) sweepFlag(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&b.sweep, "sweep", false, "also measure along clients 8..128 and model sizes 1M..64M (default: on with --out)")
}

// sweeping reports whether the sweeps run: as --sweep says, else when a report is written.
func (b *benchCommon) sweeping(cmd *cobra.Command) bool {
	if cmd.Flags().Changed("sweep") {
		return b.sweep
	}
	return b.out != ""
}

func (b *benchCommon) print(w io.Writer, rows []bench.Row) error {
	if b.json {
		return json.NewEncoder(w).Encode(rows)
	}
	return bench.WriteTable(w, rows)
}

// env builds the environment of a single suite run from the flags.
func (b *benchCommon) env(cmd *cobra.Command) (*benchEnv, error) {
	if b.workers < 1 {
		return nil, usagef("--workers %d: want at least 1", b.workers)
	}
	if err := checkProgressFlag(b.progress); err != nil {
		return nil, err
	}
	cpu, err := device.NewCPU(device.WithWorkers(b.workers))
	if err != nil {
		return nil, usagef("--workers: %v", err)
	}
	return &benchEnv{ctx: cmd.Context(), stdout: cmd.OutOrStdout(), stderr: cmd.ErrOrStderr(), json: b.json,
		cpu: cpu, machine: bench.DescribeMachine(cpu), preset: presetFor(false)}, nil
}

// runSuite runs one suite as its own command: a progress bar, the table, and the report
// files when --out is given.
func (b *benchCommon) runSuite(cmd *cobra.Command, env *benchEnv, s benchSuite) error {
	bar := newStepBar(env.stderr, b.progress, "bench "+s.name())
	env.step = bar.step
	rep, err := s.run(env)
	bar.finish()
	if err != nil {
		return err
	}
	if b.out != "" {
		_, err = writeReport(env.ctx, env.stderr, rep, b.out)
	}
	return err
}

func checkProgressFlag(mode string) error {
	switch mode {
	case "auto", "always", "never":
		return nil
	}
	return usagef("--progress %q: want auto, always or never", mode)
}

// floorSuite measures the floors themselves: memory read bandwidth with one worker and with
// all, and the durable-write bandwidth of the disk.
type floorSuite struct {
	mib, writeMiB int
	dir           string // where the write floor writes; "" for the temp dir
}

func (floorSuite) name() string { return "floor" }
func (floorSuite) title() string {
	return "the floors: memory read bandwidth (1 and all workers) and durable-write bandwidth"
}

func (s floorSuite) run(env *benchEnv) (*bench.Report, error) {
	workers := env.cpu.Info().Workers
	env.progress(0, 2, "memory read")
	res := bench.MemoryFloor(s.mib<<20, workers, 5)
	var rows []bench.Row
	for _, w := range []int{1, workers} {
		if v, ok := res[w]; ok && (len(rows) == 0 || w != 1) {
			r := bench.Row{Name: fmt.Sprintf("read %d MiB, %s", s.mib, plural(w, "worker")), Rule: "memory read", Bytes: int64(s.mib) << 20, IsFloor: true}
			r.Seconds = float64(r.Bytes) / v
			r.GBps = v / 1e9
			rows = append(rows, r)
		}
	}
	if s.writeMiB > 0 {
		env.progress(1, 2, "durable write")
		dir := s.dir
		if dir == "" {
			dir = os.TempDir()
		}
		n := int64(s.writeMiB) << 20
		v, err := bench.DurableWriteFloor(dir, n, 3)
		if err != nil {
			return nil, err
		}
		rows = append(rows, bench.Row{Name: fmt.Sprintf("durable write %d MiB (O_DIRECT where allowed, fsync)", s.writeMiB),
			Rule: "durable write", Bytes: n, Seconds: float64(n) / v, GBps: v / 1e9, Note: "in " + dir, IsFloor: true})
	}
	env.progress(2, 2, "done")
	if err := env.printRows(rows, ""); err != nil {
		return nil, err
	}
	rep := env.newReport(s)
	rep.Config["mib"], rep.Config["write_mib"] = fmt.Sprint(s.mib), fmt.Sprint(s.writeMiB)
	for _, r := range rows {
		rep.Add(r.Result(""))
	}
	rep.Notes = append(rep.Notes, "these are the floors the other suites measure beside their figures, in the same run")
	return rep, nil
}

func newBenchFloorCmd() *cobra.Command {
	var c benchCommon
	var s floorSuite
	cmd := &cobra.Command{
		Use:   "floor",
		Short: "Memory read bandwidth (the floor of every single pass over memory) and durable writes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			env, err := c.env(cmd)
			if err != nil {
				return err
			}
			if s.mib < 1 || s.writeMiB < 0 {
				return usagef("--mib must be at least 1 and --write-mib at least 0")
			}
			return c.runSuite(cmd, env, s)
		},
	}
	c.flags(cmd)
	cmd.Flags().IntVar(&s.mib, "mib", fullPreset.floorMiB, "buffer size in MiB (well above the last-level cache)")
	cmd.Flags().IntVar(&s.writeMiB, "write-mib", fullPreset.writeMiB, "MiB written durably for the write floor (0: skip)")
	cmd.Flags().StringVar(&s.dir, "dir", "", "directory the write floor writes in (default $TMPDIR)")
	return cmd
}

// meanSuite is FedAvg of in-memory updates beside the read floor of the same memory, per
// input dtype, and along the sweeps.
type meanSuite struct {
	clients, params, runs int
	dtypes                []tensor.DType
	sweep                 *bench.SweepSizes // nil: no sweep
	sweepRuns             int
}

func (meanSuite) name() string { return "mean" }
func (meanSuite) title() string {
	return "FedAvg of in-memory updates into a reused output, beside the read floor of the same memory"
}

func (s meanSuite) run(env *benchEnv) (*bench.Report, error) {
	total := len(s.dtypes)
	if s.sweep != nil {
		total += len(s.dtypes) * len(s.sweep.Points())
	}
	rep := env.newReport(s)
	rows, times, err := s.mainRows(env, total)
	if err != nil {
		return nil, err
	}
	for _, r := range rows {
		rep.Add(r.Result(""))
	}
	if err := env.printRows(rows, ""); err != nil {
		return nil, err
	}
	if !env.json {
		for _, line := range speedups(rows, times) {
			fmt.Fprintln(env.stdout, line)
			rep.Notes = append(rep.Notes, line)
		}
	}
	s.config(rep)
	if s.sweep == nil {
		return rep, nil
	}
	if err := s.sweeps(env, rep, suiteProgress{done: len(rows), total: total}); err != nil {
		return nil, err
	}
	return rep, nil
}

// mainRows measures the main rows: every dtype's updates in memory at once, measured in
// interleaved runs, so that the dtypes' params/s compare on the same machine state. It
// returns each row's times, run by run, beside it. total is the progress steps of the run.
func (s meanSuite) mainRows(env *benchEnv, total int) ([]bench.Row, [][]float64, error) {
	env.progress(0, total, fmt.Sprintf("%d x %s %s", s.clients, bench.ParamsLabel(int64(s.params)), dtypeList(s.dtypes)))
	cases := make([]bench.MeanCase, len(s.dtypes))
	for k, dt := range s.dtypes {
		updates, err := bench.InMemoryUpdates(s.clients, s.params, dt)
		if err != nil {
			return nil, nil, err
		}
		cases[k] = bench.MeanCase{Updates: updates, Options: meanOptions(dt)}
	}
	rows, times, err := bench.WeightedMeans(env.ctx, cases, env.cpu, s.runs)
	if err != nil {
		return nil, nil, err
	}
	cases = nil
	debug.FreeOSMemory()
	return rows, times, nil
}

// sweeps measures FedAvg along the sweeps in every dtype into rep, from progress on.
func (s meanSuite) sweeps(env *benchEnv, rep *bench.Report, progress suiteProgress) error {
	sw := suiteSweeps{env: env, rep: rep, sizes: *s.sweep, dtypes: s.dtypes, suiteProgress: progress,
		measure: func(updates []*tensor.Set, dt tensor.DType) ([]bench.Row, error) {
			r, err := bench.WeightedMean(env.ctx, updates, env.cpu, s.sweepRuns, meanOptions(dt)...)
			if err != nil {
				return nil, err
			}
			return []bench.Row{r}, nil
		}}
	return sw.run()
}

// suiteProgress is how far a suite's run is: done of total steps.
type suiteProgress struct {
	done, total int
}

// suiteSweeps runs a suite's sweeps, along clients and then along model size, in every dtype:
// each sweep's rows go into the report and are printed as one table under its heading.
type suiteSweeps struct {
	env    *benchEnv
	rep    *bench.Report
	sizes  bench.SweepSizes
	dtypes []tensor.DType
	suiteProgress
	// measure measures the updates of one sweep point, in dt, into its rows.
	measure func(updates []*tensor.Set, dt tensor.DType) ([]bench.Row, error)
}

// run runs the sweep along clients, then the one along model size.
func (w *suiteSweeps) run() error {
	for _, sweep := range []string{bench.SweepClients, bench.SweepParams} {
		if err := w.sweep(sweep); err != nil {
			return err
		}
	}
	return nil
}

// sweep runs one sweep, bench.SweepClients or bench.SweepParams, in every dtype, and prints
// its table.
func (w *suiteSweeps) sweep(sweep string) error {
	var sweepRows []bench.Row
	var heading string
	for _, dt := range w.dtypes {
		err := bench.RunSweep(w.env.ctx, onlySweep(w.sizes, sweep), dt, func(p bench.SweepPoint, updates []*tensor.Set) error {
			w.env.progress(w.done, w.total, fmt.Sprintf("sweep %d x %s %s", p.Clients, bench.ParamsLabel(int64(p.Params)), dt))
			rows, err := w.measure(updates, dt)
			if err != nil {
				return err
			}
			w.done++
			heading = sweepHeading(p, w.sizes)
			sweepRows = append(sweepRows, rows...)
			for _, r := range rows {
				w.rep.Add(r.Result(p.Sweep))
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	if len(sweepRows) == 0 {
		return nil
	}
	return w.env.printRows(sweepRows, heading)
}

// meanOptions are the options of the mean suite's FedAvg of dt inputs: an f32 result.
func meanOptions(dt tensor.DType) []aggregate.Option {
	if dt == tensor.F32 {
		return nil
	}
	return []aggregate.Option{aggregate.WithOutDType(tensor.F32)}
}

func dtypeList(dts []tensor.DType) string {
	names := make([]string, len(dts))
	for i, dt := range dts {
		names[i] = dt.String()
	}
	return strings.Join(names, ", ")
}

// speedup says how many times base's params/s dt's runs reach: the median of the ratios of
// interleaved runs (same params, so base's time over dt's), with their range.
func speedup(dt, base string, baseTimes, times []float64) string {
	ratios := make([]float64, min(len(baseTimes), len(times)))
	for r := range ratios {
		ratios[r] = baseTimes[r] / times[r]
	}
	slices.Sort(ratios)
	return fmt.Sprintf("%s / %s params/s: %.2fx (median of %d interleaved runs, %.2f-%.2f)",
		dt, base, ratios[len(ratios)/2], len(ratios), ratios[0], ratios[len(ratios)-1])
}

// speedups says, for every row after the first, how many times the first row's params/s its
// runs reach (see speedup); times are the rows' runs.
func speedups(rows []bench.Row, times [][]float64) []string {
	var lines []string
	for k := 1; k < len(rows); k++ {
		lines = append(lines, speedup(rows[k].DType, rows[0].DType, times[0], times[k]))
	}
	return lines
}

func (s meanSuite) config(rep *bench.Report) {
	var dts []string
	for _, dt := range s.dtypes {
		dts = append(dts, dt.String())
	}
	rep.Config["clients"], rep.Config["params"], rep.Config["runs"] = fmt.Sprint(s.clients), fmt.Sprint(s.params), fmt.Sprint(s.runs)
	rep.Config["dtypes"] = strings.Join(dts, ",")
	if s.sweep != nil {
		rep.Config["sweep"], rep.Config["sweep_runs"] = s.sweep.String(), fmt.Sprint(s.sweepRuns)
	}
	rep.Notes = append(rep.Notes, "bytes counted: inputs read + output written; floor: the read bandwidth of the same input memory, best of 3 passes",
		"16-bit inputs accumulate in f64 (the default), which is compute-bound on AVX2: their floor is not reachable there")
}

// onlySweep keeps one of the sweeps of s.
func onlySweep(s bench.SweepSizes, sweep string) bench.SweepSizes {
	if sweep == bench.SweepClients {
		s.Params, s.ParamClients = nil, 0
	} else {
		s.Clients, s.ClientParams = nil, 0
	}
	return s
}

func parseDTypes(list string) ([]tensor.DType, error) {
	var out []tensor.DType
	for _, name := range strings.Split(list, ",") {
		dt, err := tensor.ParseDType(strings.TrimSpace(name))
		if err != nil {
			return nil, usagef("--dtypes: %v", err)
		}
		if dt != tensor.F32 && dt != tensor.BF16 && dt != tensor.F16 {
			return nil, usagef("--dtypes: %s: synthetic updates are f32, bf16 or f16", dt)
		}
		out = append(out, dt)
	}
	return out, nil
}

func newBenchMeanCmd() *cobra.Command {
	var c benchCommon
	var s meanSuite
	var dtypes string
	cmd := &cobra.Command{
		Use:   "mean",
		Short: "FedAvg of in-memory updates beside the read floor of the same memory",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			env, err := c.env(cmd)
			if err != nil {
				return err
			}
			if s.dtypes, err = parseDTypes(dtypes); err != nil {
				return err
			}
			if s.clients < 1 || s.params < 1 || s.runs < 1 || s.sweepRuns < 1 {
				return usagef("--clients, --params, --runs and --sweep-runs must be at least 1")
			}
			if c.sweeping(cmd) {
				sizes := env.preset.sweep
				s.sweep = &sizes
			}
			return c.runSuite(cmd, env, s)
		},
	}
	c.flags(cmd)
	c.sweepFlag(cmd)
	cmd.Flags().IntVar(&s.clients, "clients", fullPreset.meanClients, "updates")
	cmd.Flags().IntVar(&s.params, "params", fullPreset.meanParams, "parameters per update")
	cmd.Flags().IntVar(&s.runs, "runs", fullPreset.meanRuns, "runs (the median is reported)")
	cmd.Flags().IntVar(&s.sweepRuns, "sweep-runs", fullPreset.meanSweepRuns, "runs at each sweep point")
	cmd.Flags().StringVar(&dtypes, "dtypes", "f32,bf16", "input dtypes to measure, comma-separated")
	return cmd
}

// e2eSuite is `wattagg aggregate` end to end beside e2efloor.c.
type e2eSuite struct {
	cfg bench.E2EConfig
}

func (e2eSuite) name() string { return "e2e" }
func (e2eSuite) title() string {
	return "wattagg aggregate end to end (files in the page cache to a durable result) beside shared/floors/e2efloor.c"
}

func (s e2eSuite) run(env *benchEnv) (*bench.Report, error) {
	cfg := s.cfg
	cfg.Workers = env.cpu.Info().Workers
	if cfg.Dir == "" {
		cfg.Dir = filepath.Join(os.TempDir(), "wattagg-bench-e2e")
	}
	if exe, err := os.Executable(); err == nil {
		cfg.CLI = exe
	}
	cfg.Progress = env.progress
	rows, err := bench.E2E(env.ctx, cfg, env.stderr)
	if err != nil {
		return nil, err
	}
	if err := env.printRows(rows, ""); err != nil {
		return nil, err
	}
	rep := env.newReport(s)
	rep.Config["clients"], rep.Config["params"], rep.Config["runs"] = fmt.Sprint(cfg.Clients), fmt.Sprint(cfg.Params), fmt.Sprint(cfg.Runs)
	for _, r := range rows {
		rep.Add(r.Result(""))
	}
	rep.Notes = append(rep.Notes, "throughput is (clients+1) x payload bytes / seconds, as e2efloor counts it; the floor is the faster of e2efloor's two ways of reading, measured in the same run")
	return rep, nil
}

func newBenchE2ECmd() *cobra.Command {
	var c benchCommon
	var s e2eSuite
	cmd := &cobra.Command{
		Use:   "e2e",
		Short: "wattagg aggregate end to end beside shared/floors/e2efloor.c",
		Long: `E2e writes a federation of f32 files, warms the page cache, and times the same job done by
e2efloor.c (built here with gcc -O3 -march=native -fopenmp; reading by mmap and by pread, the
faster of the two being the floor), by wattagg in this process, and by the wattagg CLI as a
whole process. Throughput is (clients+1) x payload bytes / seconds, as e2efloor counts it.
Without gcc or e2efloor.c the floor rows are skipped, saying why.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			env, err := c.env(cmd)
			if err != nil {
				return err
			}
			if s.cfg.Clients < 1 || s.cfg.Params < 1 || s.cfg.Runs < 1 {
				return usagef("--clients, --params and --runs must be at least 1")
			}
			return c.runSuite(cmd, env, s)
		},
	}
	c.flags(cmd)
	cmd.Flags().StringVar(&s.cfg.Dir, "dir", "", "working directory (default $TMPDIR/wattagg-bench-e2e)")
	cmd.Flags().IntVar(&s.cfg.Clients, "clients", fullPreset.e2eClients, "client files")
	cmd.Flags().IntVar(&s.cfg.Params, "params", fullPreset.e2eParams, "f32 parameters per file")
	cmd.Flags().IntVar(&s.cfg.Runs, "runs", fullPreset.e2eRuns, "runs of each (the median is reported)")
	cmd.Flags().StringVar(&s.cfg.FloorSrc, "floor-src", "", "path of e2efloor.c (default: ../shared/floors/e2efloor.c)")
	return cmd
}

// streamSuite is the peak anonymous memory of `wattagg aggregate --stream` against its budget.
type streamSuite struct {
	cfg bench.RSSConfig
}

func (streamSuite) name() string { return "stream" }
func (streamSuite) title() string {
	return "peak anonymous memory of wattagg aggregate --stream against its budget, 1.3 x model + 96 MiB"
}

func (s streamSuite) run(env *benchEnv) (*bench.Report, error) {
	cfg := s.cfg
	if cfg.Dir == "" {
		cfg.Dir = filepath.Join(os.TempDir(), "wattagg-bench-stream")
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cfg.CLI = exe
	cfg.Workers = env.cpu.Info().Workers
	cfg.Progress = env.progress
	res, err := bench.StreamRSS(env.ctx, cfg)
	if err != nil {
		return nil, err
	}
	if env.json {
		if err := json.NewEncoder(env.stdout).Encode(res); err != nil {
			return nil, err
		}
	} else {
		verdict := "within"
		if !res.Within {
			verdict = "OVER"
		}
		fmt.Fprintf(env.stdout, "streaming fedavg of %d x %s f32 params: peak RssAnon %.1f MiB, budget %.1f MiB (1.3 x %.1f MiB + 96 MiB): %s; %.2f s, %d samples\n",
			res.Clients, human(float64(res.Params), ""), mib(res.PeakAnon), mib(res.Budget), mib(res.OutputBytes), verdict, res.Seconds, res.Samples)
	}
	rep := env.newReport(s)
	rep.Config["clients"], rep.Config["params"] = fmt.Sprint(cfg.Clients), fmt.Sprint(cfg.Params)
	rep.Add(res.Result())
	rep.Notes = append(rep.Notes, "mapped input files are page cache, not anonymous memory; the running sum is. The budget is a ceiling: a ratio of at most 1 is within it")
	return rep, nil
}

func newBenchStreamCmd() *cobra.Command {
	var c benchCommon
	var s streamSuite
	cmd := &cobra.Command{
		Use:   "stream",
		Short: "Peak anonymous memory of `wattagg aggregate --stream` against 1.3 x model + 96 MiB",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			env, err := c.env(cmd)
			if err != nil {
				return err
			}
			if s.cfg.Clients < 1 || s.cfg.Params < 1 {
				return usagef("--clients and --params must be at least 1")
			}
			return c.runSuite(cmd, env, s)
		},
	}
	c.flags(cmd)
	cmd.Flags().Lookup("json").Usage = "print the result as JSON"
	cmd.Flags().StringVar(&s.cfg.Dir, "dir", "", "working directory (default $TMPDIR/wattagg-bench-stream; inputs are reused)")
	cmd.Flags().IntVar(&s.cfg.Clients, "clients", fullPreset.streamClients, "client files")
	cmd.Flags().IntVar(&s.cfg.Params, "params", fullPreset.streamParams, "parameters per model (a transformer layout close to this)")
	return cmd
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }
