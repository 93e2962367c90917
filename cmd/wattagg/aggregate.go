package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

type aggregateFlags struct {
	output   string
	weights  string
	rule     string
	outDType string
	acc      string
	mixed    bool
	stream   bool
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
		Long: `Aggregate reads client updates (.safetensors files, or directories of them), computes
the weighted mean tensor by tensor (FedAvg), and writes it atomically to OUT: the file appears
only when complete and synced, and a failure leaves nothing behind.

Weights: --weights, else each file's __metadata__ num_examples, else 1 for every client.
Every update must hold the same tensors with the same shapes (and dtypes, unless
--mixed-dtypes). Any NaN or Inf is an error naming the file, tensor and element.

By default all files are mapped at once and reduced in one pass over memory (the fastest way).
--stream adds them one at a time to a running sum instead, so that memory stays the size of one
model whatever the number of clients.

` + rulesHelp(),
		Example: `  wattagg aggregate -o global.safetensors clients/
  wattagg aggregate -o global.safetensors --weights 120,80,200 a.safetensors b.safetensors c.safetensors
  wattagg aggregate -o global.bf16.safetensors --out-dtype bf16 --json clients/*.safetensors`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("aggregate needs at least one input file or directory (see wattagg aggregate --help)")
			}
			if f.output == "" {
				return usagef("aggregate needs an output file: -o OUT.safetensors")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return runAggregate(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), f, args)
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&f.output, "output", "o", "", "output .safetensors file (written atomically)")
	fl.StringVar(&f.weights, "weights", "", "comma-separated client weights, one per input file, in order")
	fl.StringVar(&f.rule, "rule", "fedavg", "aggregation rule: "+strings.Join(ruleNames(), ", "))
	fl.StringVar(&f.outDType, "out-dtype", "", "output dtype: f32, f64, f16, bf16 or i8 (default: as the first input)")
	fl.StringVar(&f.acc, "acc", "", "accumulator dtype: f32 or f64 (default: f32 for f32 inputs, f64 otherwise)")
	fl.BoolVar(&f.mixed, "mixed-dtypes", false, "accept clients that send a tensor in different dtypes (f32, bf16, f16, i8)")
	fl.BoolVar(&f.stream, "stream", false, "add files one at a time to a running sum (memory: one model)")
	fl.BoolVar(&f.json, "json", false, "print the report as one JSON object on stdout")
	fl.IntVar(&f.workers, "workers", runtime.GOMAXPROCS(0), "goroutines running kernels")
	fl.StringVar(&f.device, "device", "auto", "device to run on: auto (the planner splits the work over the devices), cpu, or KIND:INDEX such as cuda:0 (see wattagg devices)")
	f.energy.register(fl)
	f.plan.register(fl)
	fl.StringVar(&f.progress, "progress", "auto", "progress bar on stderr: auto (when a terminal), always, never")
	for _, r := range ruleSpecs {
		if r.flags != nil {
			r.flags(fl)
		}
	}
	return cmd
}

func runAggregate(ctx context.Context, stdout, stderr io.Writer, f aggregateFlags, args []string) error {
	spec := findRule(f.rule)
	if spec == nil {
		return usagef("unknown rule %q: available rules: %s", f.rule, strings.Join(ruleNames(), ", "))
	}
	if f.stream && !spec.stream {
		return usagef("--stream: rule %s needs all updates at once", f.rule)
	}
	opts, err := aggregateOptions(f)
	if err != nil {
		return err
	}
	planOpts, err := f.plan.options()
	if err != nil {
		return err
	}
	if err := f.energy.validate(); err != nil {
		return err
	}
	paths, err := expandInputs(args)
	if err != nil {
		return err
	}
	weights, err := parseWeights(f.weights, len(paths))
	if err != nil {
		return err
	}
	// Devices, meters and (for a batch) the planner with its profile.
	cpu, err := device.NewCPU(device.WithWorkers(f.workers))
	if err != nil {
		return err
	}
	en, err := openEnergyRun(ctx, stderr, f.energy, cpu, f.device, planOpts, !f.stream, f.progress)
	if err != nil {
		return err
	}
	defer en.close()
	opts = append(opts, en.options()...)
	if dev, ok := en.machine.Device(f.device); ok {
		opts = append(opts, aggregate.WithDevice(dev)) // --stream runs on one device: this one
	}
	bar := newProgress(stderr, f.progress, "aggregating")
	if bar != nil {
		opts = append(opts, aggregate.WithProgress(bar.set))
		defer bar.finish()
	}
	rep, err := en.around(func() (*aggregate.Report, error) {
		if f.stream {
			return streamFiles(ctx, f.output, paths, weights, bar, opts)
		}
		return batchFiles(ctx, f.output, paths, weights, spec, opts)
	})
	if err != nil {
		return err
	}
	en.learn(stderr, rep)
	bar.finish()
	if f.json {
		enc := json.NewEncoder(stdout)
		return enc.Encode(rep)
	}
	printReport(stdout, rep)
	return nil
}

func aggregateOptions(f aggregateFlags) ([]aggregate.Option, error) {
	if err := checkDeviceFlag(f.device); err != nil {
		return nil, err
	}
	if f.workers < 1 {
		return nil, usagef("--workers %d: want at least 1", f.workers)
	}
	dev, err := device.NewCPU(device.WithWorkers(f.workers))
	if err != nil {
		return nil, err
	}
	opts := []aggregate.Option{aggregate.WithDevice(dev), aggregate.WithMixedDTypes(f.mixed)}
	if f.outDType != "" {
		dt, err := tensor.ParseDType(f.outDType)
		if err != nil {
			return nil, usagef("--out-dtype: %v", err)
		}
		opts = append(opts, aggregate.WithOutDType(dt))
	}
	if f.acc != "" {
		dt, err := tensor.ParseDType(f.acc)
		if err != nil {
			return nil, usagef("--acc: %v", err)
		}
		opts = append(opts, aggregate.WithAccumulator(dt))
	}
	return opts, nil
}

// expandInputs replaces directories by the .safetensors files they hold, sorted by name.
func expandInputs(args []string) ([]string, error) {
	var paths []string
	for _, a := range args {
		st, err := os.Stat(a)
		if err != nil {
			return nil, err
		}
		if !st.IsDir() {
			paths = append(paths, a)
			continue
		}
		matches, err := filepath.Glob(filepath.Join(a, "*.safetensors"))
		if err != nil {
			return nil, err
		}
		if len(matches) == 0 {
			return nil, fmt.Errorf("%s: no .safetensors files in this directory", a)
		}
		slices.Sort(matches)
		paths = append(paths, matches...)
	}
	return paths, nil
}

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
		if err != nil {
			return nil, usagef("--weights: value %d %q is not a number", i+1, p)
		}
		w[i] = v
	}
	return w, nil
}

func batchFiles(ctx context.Context, out string, paths []string, weights []float64, spec *ruleSpec, opts []aggregate.Option) (*aggregate.Report, error) {
	rule, err := spec.build(opts)
	if err != nil {
		return nil, err
	}
	sets, err := safetensors.OpenAll(paths)
	if err != nil {
		return nil, err
	}
	defer safetensors.CloseAll(sets)
	if fr, ok := rule.(aggregate.FileRule); ok {
		return fr.AggregateFile(ctx, out, sets, weights)
	}
	set, rep, err := rule.Aggregate(ctx, sets, weights)
	if err != nil {
		return nil, err
	}
	if err := safetensors.WriteFile(out, set); err != nil {
		return nil, err
	}
	rep.Output = out
	return rep, nil
}

// streamFiles adds the files one at a time, each mapped only while it is added. Weights are
// resolved first from the headers alone, by the rules of the batch path, so that a bad weight
// or a file without num_examples among files with it fails before any work.
func streamFiles(ctx context.Context, out string, paths []string, weights []float64, bar *progress, opts []aggregate.Option) (*aggregate.Report, error) {
	agg, err := aggregate.NewAggregator(opts...)
	if err != nil {
		return nil, err
	}
	defer agg.Close()
	var total, done int64
	headers := make([]*tensor.Set, len(paths))
	for i, p := range paths {
		h, err := safetensors.ReadHeader(p)
		if err != nil {
			return nil, err
		}
		headers[i] = &tensor.Set{Source: p, Metadata: h.Metadata}
		for k := range h.End {
			total += h.End[k] - h.Begin[k] // data bytes, as done counts them
		}
	}
	weights, _, err = aggregate.ResolveWeights(headers, weights)
	if err != nil {
		return nil, err
	}
	for i, p := range paths {
		set, err := safetensors.Open(p)
		if err != nil {
			return nil, err
		}
		err = agg.Add(ctx, set, weights[i])
		done += set.NumBytes()
		set.Close()
		if err != nil {
			return nil, err
		}
		bar.set(done, total)
	}
	return agg.WriteFile(ctx, out)
}

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
