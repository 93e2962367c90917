package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/internal/cli"
	"github.com/wattagg/wattagg/sched"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

type aggregateFlags struct {
	output   string
	weights  string
	rule     string
	outDType string
	acc      string
	exact    exactFlags // --exact-bound, --exact-max-weight, --exact-one-limb (with --acc exact)
	mixed    bool
	stream   bool
	spool    string
	read     string // --read: how the CPU reads .safetensors inputs (safetensors.ReadMode)
	json     bool
	workers  int
	device   string
	progress string
	energy   energyFlags // meters and profile (energy.go)
	plan     planFlags   // --policy, --deadline, --power-cap (energy.go)
}

func newAggregateCmd() *cobra.Command {
	var f aggregateFlags
	cmd := &cobra.Command{
		Use:   "aggregate -o OUT.safetensors IN... ",
		Short: "Aggregate client updates into one model",
		Long: `Aggregate reads client updates (.safetensors files, Arrow IPC files .arrow and streams .arrows,
or directories of them), computes
the weighted mean tensor by tensor (FedAvg), and writes it atomically to OUT: the file appears
only when complete and synced, and a failure leaves nothing behind.

Weights: --weights, else each file's __metadata__ num_examples, else 1 for every client.
Every update must hold the same tensors with the same shapes (and dtypes, unless
--mixed-dtypes). Any NaN or Inf is an error naming the file, tensor and element.

By default all files are mapped at once and reduced in one pass over memory (the fastest way).
--stream adds them as a server receives them, a few at a time (8 files mapped, added in one
pass over the sum): sums (fedavg, the server optimizers, dp-*, fixed-bound clipping, secagg)
keep one model-sized running sum whatever the number of clients; rules that need every update
at once (median, krum, ...) keep each in a spool directory and map it at the end. Both give the
same bits; --stream stops at the first bad file.

--acc exact makes a sum's result a function of the (update, weight) pairs alone: the same bits
whatever the order of the inputs, with --stream or not, on any number of cores and on any
device. Each weighted value is rounded to a fixed grid (from --exact-bound and
--exact-max-weight) and the results are added as integers; a value beyond --exact-bound is an
error naming the file, tensor and element. A running sum (--stream) takes 8 bytes per parameter
where its sums stay within 2^62 grid units (|mean| × total weight < 2^17 at the default grid of
2^-45) and 16 where they go beyond; --exact-one-limb keeps 8 on a coarser grid.

` + rulesHelp(),
		Example: `  wattagg aggregate -o global.safetensors clients/
  wattagg aggregate -o global.safetensors --weights 120,80,200 a.safetensors b.safetensors c.safetensors
  wattagg aggregate -o global.bf16.safetensors --out-dtype bf16 --json clients/*.safetensors`,
		Args: f.checkArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runAggregate(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), f, args)
		},
	}
	f.register(cmd.Flags())
	return cmd
}

// checkArgs refuses a command line without inputs or without -o.
func (f *aggregateFlags) checkArgs(_ *cobra.Command, args []string) error {
	if len(args) == 0 {
		return usagef("aggregate needs at least one input file or directory (see wattagg aggregate --help)")
	}
	if f.output == "" {
		return usagef("aggregate needs an output file: -o OUT.safetensors")
	}
	return nil
}

// register adds the flags of aggregate to fl, those of the rules' parameters included.
func (f *aggregateFlags) register(fl *pflag.FlagSet) {
	fl.StringVarP(&f.output, "output", "o", "", "output .safetensors file (written atomically)")
	fl.StringVar(&f.weights, "weights", "", "comma-separated client weights, one per input file, in order")
	fl.StringVar(&f.rule, "rule", "fedavg", "aggregation rule: "+strings.Join(ruleNames(), ", "))
	fl.StringVar(&f.outDType, "out-dtype", "", "output dtype: f32, f64, f16, bf16 or i8 (default: as the first input)")
	fl.StringVar(&f.acc, "acc", "", "accumulator: f32, f64, or exact: order-independent sums, the same bits whatever the order of the inputs, the cores and devices, for sum rules (default: f32 for f32 inputs, f64 otherwise)")
	fl.Float64Var(&f.exact.bound, "exact-bound", aggregate.DefaultExactBound, "--acc exact: every value within ±this (beyond is an error naming file, tensor and element); a smaller bound is a finer grid")
	fl.Float64Var(&f.exact.maxWeight, "exact-max-weight", aggregate.DefaultExactMaxWeight, "--acc exact: the clients' weights total at most this; a smaller cap is a finer grid")
	fl.BoolVar(&f.exact.oneLimb, "exact-one-limb", false, "--acc exact: keep --stream's running sums in 8 bytes per parameter however large they grow (two limbs take 16 where they pass 2^62 grid units), on a grid 2^40 coarser: set a tight --exact-bound and --exact-max-weight")
	fl.BoolVar(&f.mixed, "mixed-dtypes", false, "accept clients that send a tensor in different dtypes (f32, bf16, f16, i8)")
	fl.BoolVar(&f.stream, "stream", false, "add files as a server receives them, 8 at a time (memory: one model)")
	fl.StringVar(&f.spool, "spool", "", "--stream with a rule that needs every update: spool directory (default: one beside -o, removed at the end)")
	fl.StringVar(&f.read, "read", "auto", "how .safetensors inputs are read: auto (per file, from the page cache; files in large folios as wattagg calibrate measured, else by a probe), map, copy (pread), direct (O_DIRECT)")
	fl.BoolVar(&f.json, "json", false, "print the report as one JSON object on stdout")
	fl.IntVar(&f.workers, "workers", runtime.GOMAXPROCS(0), "goroutines running kernels")
	fl.StringVar(&f.device, "device", "auto", "device to run on: auto (the planner splits the work over the devices), cpu, or KIND:INDEX such as cuda:0 (see wattagg devices)")
	f.energy.register(fl)
	f.plan.register(fl)
	fl.StringVar(&f.progress, "progress", "auto", "progress bar on stderr: auto (when a terminal), always, never")
	registerRuleFlags(fl)
}

// runAggregate checks the flags and the inputs, opens the devices and their meters, runs the
// round and prints its report.
func runAggregate(ctx context.Context, stdout, stderr io.Writer, f aggregateFlags, args []string) error {
	r, err := newAggregateRun(f, args)
	if err != nil {
		return err
	}
	en, err := r.openDevices(ctx, stderr)
	if err != nil {
		return err
	}
	defer en.close()
	r.useEnergyRun(en)
	bar := r.progressBar(stderr)
	defer bar.Finish()
	rep, err := r.run(ctx)
	if err != nil {
		return err
	}
	en.learn(stderr, rep)
	bar.Finish()
	return r.print(stdout, rep)
}

// aggregateRun is one run of aggregate: its flags, the rule, the options of the round, the
// planner and the reader, and the inputs with their weights.
type aggregateRun struct {
	f        aggregateFlags
	rule     aggregate.Rule
	opts     []aggregate.Option
	planOpts []sched.Option
	readMode safetensors.ReadMode
	readOpts []safetensors.Option
	paths    []string
	weights  []float64
}

// newAggregateRun checks the flags and the inputs, before any device is opened.
func newAggregateRun(f aggregateFlags, args []string) (*aggregateRun, error) {
	r := &aggregateRun{f: f}
	if err := r.parseFlags(); err != nil {
		return nil, err
	}
	if err := r.listInputs(args); err != nil {
		return nil, err
	}
	return r, nil
}

// parseFlags builds the rule and the options of the round, the planner and the reader from
// the flags.
func (r *aggregateRun) parseFlags() error {
	rule, ruleOpts, err := buildRule(r.f.rule)
	if err != nil {
		return err
	}
	opts, err := aggregateOptions(r.f)
	if err != nil {
		return err
	}
	r.rule, r.opts = rule, append(opts, ruleOpts...)
	if r.planOpts, err = r.f.plan.options(); err != nil {
		return err
	}
	if err := r.f.energy.validate(); err != nil {
		return err
	}
	if r.readMode, err = safetensors.ParseReadMode(r.f.read); err != nil {
		return usagef("--read: %v", err)
	}
	r.readOpts = []safetensors.Option{safetensors.WithReadMode(r.readMode)}
	return nil
}

// listInputs lists the input files (directories expanded), refuses one given twice or given as
// the output, and reads --weights.
func (r *aggregateRun) listInputs(args []string) error {
	var err error
	if r.paths, err = expandInputs(args); err != nil {
		return err
	}
	if err := checkDistinct(r.f.output, r.paths); err != nil {
		return err
	}
	r.weights, err = parseWeights(r.f.weights, len(r.paths))
	return err
}

// openDevices makes the CPU device with --workers goroutines and opens the energy run around
// it; the caller closes the energy run.
func (r *aggregateRun) openDevices(ctx context.Context, stderr io.Writer) (*energyRun, error) {
	// Devices, meters and (for a batch) the planner with its profile.
	cpu, err := device.NewCPU(device.WithWorkers(r.f.workers))
	if err != nil {
		return nil, err
	}
	// The planner places a batch over the calibrated devices (--device auto) or predicts and
	// paces the one named; a named device that could not be calibrated runs unplanned.
	return openEnergyRun(ctx, stderr, r.f.energy, cpu, r.f.device, r.planOpts, !r.f.stream, r.f.progress)
}

// useEnergyRun adds the devices, the planner and the meters of en to the round's options and,
// with --read auto, how en reads files cached in large folios to the reader's.
func (r *aggregateRun) useEnergyRun(en *energyRun) {
	if r.readMode == safetensors.ReadAuto {
		r.readOpts = append(r.readOpts, safetensors.WithLargeFolioRead(en.largeFolioRead(r.f.energy)))
	}
	r.opts = append(r.opts, en.options(r.f.device)...)
}

// progressBar returns the progress bar on stderr that --progress asks for (nil for none), and
// has the round report to it.
func (r *aggregateRun) progressBar(stderr io.Writer) *cli.Progress {
	bar := cli.NewProgress(stderr, r.f.progress, "aggregating")
	if bar != nil {
		r.opts = append(r.opts, aggregate.WithProgress(bar.Set))
	}
	return bar
}

// run aggregates the inputs: as a server receives them with --stream, else all at once.
func (r *aggregateRun) run(ctx context.Context) (*aggregate.Report, error) {
	if r.f.stream {
		return streamFiles(ctx, r.f, r.rule, r.paths, r.weights, r.opts, r.readOpts)
	}
	return batchFiles(ctx, r.f.output, r.rule, r.paths, r.weights, r.opts, r.readOpts)
}

// print prints the report on stdout: as one JSON object with --json, else as text.
func (r *aggregateRun) print(stdout io.Writer, rep *aggregate.Report) error {
	if r.f.json {
		enc := json.NewEncoder(stdout)
		return enc.Encode(rep)
	}
	printReport(stdout, rep)
	return nil
}

// maxWorkersPerCPU bounds --workers: more goroutines than this per CPU only add scheduling and
// scratch memory (100000 workers spent 6 s and 286 MiB on 6 parameters).
const maxWorkersPerCPU = 8

func aggregateOptions(f aggregateFlags) ([]aggregate.Option, error) {
	if err := checkDeviceFlag(f.device); err != nil {
		return nil, err
	}
	if most := maxWorkersPerCPU * runtime.NumCPU(); f.workers < 1 || f.workers > most {
		return nil, usagef("--workers %d: want 1 to %d (%d per CPU)", f.workers, most, maxWorkersPerCPU)
	}
	opts := []aggregate.Option{aggregate.WithMixedDTypes(f.mixed)}
	if f.outDType != "" {
		dt, err := tensor.ParseDType(f.outDType)
		if err != nil {
			return nil, usagef("--out-dtype: %v", err)
		}
		opts = append(opts, aggregate.WithOutDType(dt))
	}
	switch {
	case f.acc == "exact":
		// Zero would mean "the default" to the library: on the command line it is a bad value.
		if !(f.exact.bound > 0) || !(f.exact.maxWeight > 0) {
			return nil, usagef("--exact-bound %v, --exact-max-weight %v: want positive finite numbers", f.exact.bound, f.exact.maxWeight)
		}
		if f.exact.oneLimb && f.exact.maxWeight == aggregate.DefaultExactMaxWeight {
			return nil, usagef("--exact-one-limb needs --exact-max-weight, the clients' largest total weight: with the default cap (2^40) one limb's grid is too coarse for a mean")
		}
		opts = append(opts, aggregate.WithExactSum(aggregate.ExactSum{Bound: f.exact.bound, MaxWeight: f.exact.maxWeight, OneLimb: f.exact.oneLimb}))
	case f.exact.changed():
		return nil, usagef("--exact-bound, --exact-max-weight and --exact-one-limb go with --acc exact")
	case f.acc != "":
		dt, err := tensor.ParseDType(f.acc)
		if err != nil {
			return nil, usagef("--acc: %v (or exact)", err)
		}
		opts = append(opts, aggregate.WithAccumulator(dt))
	}
	if f.spool != "" {
		opts = append(opts, aggregate.WithSpoolDir(f.spool))
	}
	if err := aggregate.CheckOptions(opts...); err != nil {
		return nil, usagef("%v", err)
	}
	return opts, nil
}

// exactFlags are the parameters of --acc exact.
type exactFlags struct {
	bound, maxWeight float64
	oneLimb          bool
}

// changed reports whether a parameter was set away from its default.
func (e exactFlags) changed() bool {
	return e.bound != aggregate.DefaultExactBound || e.maxWeight != aggregate.DefaultExactMaxWeight || e.oneLimb
}

// expandInputs replaces directories by the update files they hold (.safetensors, Arrow .arrow
// and .arrows), sorted by name.
// Anything that is not a regular file (a named pipe would block the run) is refused here, before
// any file is opened.
func expandInputs(args []string) ([]string, error) {
	var paths []string
	for _, a := range args {
		st, err := os.Stat(a)
		if err != nil {
			return nil, err
		}
		if !st.IsDir() {
			if err := regular(a, st); err != nil {
				return nil, err
			}
			paths = append(paths, a)
			continue
		}
		var matches []string
		for _, ext := range updateExts {
			m, err := filepath.Glob(filepath.Join(a, "*"+ext))
			if err != nil {
				return nil, err
			}
			matches = append(matches, m...)
		}
		if len(matches) == 0 {
			return nil, fmt.Errorf("%s: no update files (.safetensors, .arrow, .arrows) in this directory", a)
		}
		slices.Sort(matches)
		for _, m := range matches {
			st, err := os.Stat(m)
			if err != nil {
				return nil, err
			}
			if err := regular(m, st); err != nil {
				return nil, err
			}
		}
		paths = append(paths, matches...)
	}
	return paths, nil
}

// regular refuses a path that is not a regular file.
func regular(path string, st fs.FileInfo) error {
	if st.Mode().IsRegular() {
		return nil
	}
	what := "not a regular file"
	switch m := st.Mode(); {
	case m&fs.ModeNamedPipe != 0:
		what = "a named pipe"
	case m&fs.ModeSocket != 0:
		what = "a socket"
	case m&fs.ModeDevice != 0:
		what = "a device"
	}
	return fmt.Errorf("%s: %s, not a .safetensors file", path, what)
}

// checkDistinct refuses an input given twice and an output that is one of the inputs, comparing
// files (device and inode), not names: a.safetensors and ./a.safetensors are one file.
func checkDistinct(output string, paths []string) error {
	seen := map[fileID]string{}
	for _, p := range paths {
		id, ok := idOf(p)
		if !ok {
			continue
		}
		if prev, dup := seen[id]; dup {
			return usagef("%s is given twice (also as %s): each update counts once", p, prev)
		}
		seen[id] = p
	}
	if id, ok := idOf(output); ok {
		if in, clash := seen[id]; clash {
			return usagef("-o %s is the input %s: the output would replace an update", output, in)
		}
	}
	return nil
}

// parseWeights reads --weights: one positive, finite number per input. A bad value is a usage
// error (exit status 2), whichever way it is bad.
func parseWeights(s string, n int) ([]float64, error) {
	if s == "" {
		return nil, nil
	}
	parts := strings.Split(s, ",")
	if len(parts) != n {
		return nil, usagef("--weights has %d values for %d input files", len(parts), n)
	}
	w := make([]float64, n)
	for i, p := range parts {
		v, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil || !(v > 0) || math.IsInf(v, 0) {
			return nil, usagef("--weights: value %d %q: want a positive, finite number", i+1, p)
		}
		w[i] = v
	}
	return w, nil
}

func batchFiles(ctx context.Context, out string, rule aggregate.Rule, paths []string, weights []float64, opts []aggregate.Option, readOpts []safetensors.Option) (*aggregate.Report, error) {
	sets, err := openUpdates(paths, readOpts...)
	if err != nil {
		return nil, err
	}
	// The files are unmapped as soon as the round has read them for the last time, while the
	// result's last chunks are written and synced.
	rel := tensor.NewRelease(sets)
	defer rel.Wait()
	return aggregate.AggregateFile(ctx, rule, out, sets, weights, append(opts, aggregate.WithInputsDone(rel.Start))...)
}

// streamFiles adds the files in groups of streamGroup, each mapped only while its group is
// added, as a server adds updates on arrival. The round is told first what will arrive (the headers' layouts and
// the weights resolved from them by the batch rules, so a bad weight fails before any work),
// so that it gives the bits of the batch over the same files in the same order.
func streamFiles(ctx context.Context, f aggregateFlags, rule aggregate.Rule, paths []string, weights []float64, opts []aggregate.Option, readOpts []safetensors.Option) (*aggregate.Report, error) {
	headers := make([]*tensor.Set, len(paths))
	exp := aggregate.Expected{Layouts: make([]tensor.Layout, len(paths))}
	for i, p := range paths {
		layout, md, err := headerOf(p)
		if err != nil {
			return nil, err
		}
		headers[i] = &tensor.Set{Source: p, Metadata: md}
		exp.Layouts[i] = layout
	}
	byExamples := weights == nil
	if rule.Requirements().Weights != aggregate.WeightsEqual {
		w, _, err := aggregate.ResolveWeights(headers, weights)
		if err != nil {
			return nil, err
		}
		exp.Weights = w
	}
	if f.spool == "" && rule.Requirements().Kind == aggregate.KindWhole {
		dir, err := os.MkdirTemp(filepath.Dir(f.output), ".wattagg-spool-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		opts = append(opts, aggregate.WithSpoolDir(dir))
	}
	// The command gives up on the first bad file anyway: each update is checked while it is
	// added instead of scanned first (one read of it, not two).
	r, err := aggregate.NewRound(ctx, rule, append(opts, aggregate.WithExpected(exp), aggregate.WithFailFast())...)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	var released []*tensor.Release
	defer func() {
		for _, rel := range released {
			rel.Wait()
		}
	}()
	for lo := 0; lo < len(paths); lo += streamGroup {
		hi := min(lo+streamGroup, len(paths))
		sets, err := openUpdates(paths[lo:hi], readOpts...)
		if err != nil {
			return nil, err
		}
		var w []float64
		if !byExamples {
			w = weights[lo:hi]
		}
		err = r.AddGroup(ctx, sets, w)
		rel := tensor.NewRelease(sets) // unmapped while the next group is added
		rel.Start()
		released = append(released, rel)
		if err != nil {
			return nil, err
		}
	}
	return r.WriteFile(ctx, f.output)
}

// streamGroup is how many files --stream opens and adds at a time: a group is added in one pass
// over the sum (aggregate.Round.AddGroup), so the sum is read and written once per group, not
// once per file, with the same bits. The mapped files are page cache, not the process's own
// memory: the streaming memory stays one sum however many files.
var streamGroup = 8

func printReport(w io.Writer, r *aggregate.Report) {
	fmt.Fprintf(w, "%s of %d updates: %s params in %d tensors, %s -> %s (accumulated in %s)\n",
		r.Rule, r.Clients, human(float64(r.Params), ""), r.Tensors, strings.Join(r.InDTypes, "+"), r.OutDType, r.AccDType)
	fmt.Fprintf(w, "  read %s, wrote %s in %.3f s: %.1f GB/s, %s params/s\n",
		human(float64(r.BytesRead), "B"), human(float64(r.BytesWritten), "B"), r.Seconds, r.GBps, human(r.ParamsPerSec, ""))
	for _, d := range r.Devices {
		fmt.Fprintf(w, "  device %s: %.0f%% of the work\n", d.Device, 100*d.Share)
	}
	fmt.Fprintf(w, "  weights: %s\n", r.WeightsFrom)
	printClients(w, r.PerClient)
	if len(r.Details) > 0 {
		var parts []string
		for _, k := range slices.Sorted(maps.Keys(r.Details)) {
			parts = append(parts, fmt.Sprintf("%s %.6g", k, r.Details[k]))
		}
		fmt.Fprintf(w, "  %s: %s\n", r.Rule, strings.Join(parts, ", "))
	}
	printEnergy(w, r)
	if r.Output != "" {
		fmt.Fprintf(w, "  wrote %s\n", r.Output)
	}
}

// printClients summarises what a rule saw of the clients: how many it excluded (and why, for
// the first few), clipped and selected. The full list is in --json.
func printClients(w io.Writer, cs []aggregate.ClientDiag) {
	var excluded []aggregate.ClientDiag
	clipped, selected, withSelection := 0, 0, 0
	for _, c := range cs {
		if c.Excluded != "" {
			excluded = append(excluded, c)
		}
		if c.Clipped != nil && *c.Clipped {
			clipped++
		}
		if c.Selected != nil {
			withSelection++
			if *c.Selected {
				selected++
			}
		}
	}
	if withSelection > 0 {
		fmt.Fprintf(w, "  clients selected: %d of %d\n", selected, withSelection)
	}
	if clipped > 0 {
		fmt.Fprintf(w, "  clients clipped: %d of %d\n", clipped, len(cs))
	}
	for i, c := range excluded {
		if i == 3 {
			fmt.Fprintf(w, "  ... and %d more excluded (see --json)\n", len(excluded)-i)
			break
		}
		fmt.Fprintf(w, "  excluded %s: %s\n", c.Source, c.Excluded)
	}
}

// human formats v with an SI prefix: 25.1M, 537 MB.
func human(v float64, unit string) string {
	prefixes := []string{"", "k", "M", "G", "T", "P"}
	i := 0
	for v >= 1000 && i < len(prefixes)-1 {
		v /= 1000
		i++
	}
	sep := ""
	if unit != "" {
		sep = " "
	}
	if i == 0 {
		return fmt.Sprintf("%.0f%s%s", v, sep, unit)
	}
	return fmt.Sprintf("%.3g%s%s%s", v, sep, prefixes[i], unit)
}
