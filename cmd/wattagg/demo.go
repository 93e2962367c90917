package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/bench"
	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/energy"
	"github.com/wattagg/wattagg/internal/cli"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

type demoFlags struct {
	clients  int
	bf16     int
	params   int64
	dir      string
	keep     bool
	progress string
}

func newDemoCmd() *cobra.Command {
	var f demoFlags
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Generate a realistic federation, aggregate it, and show what it cost",
		Long: `Demo writes a federation to a temporary directory — by default 16 clients of a
25M-parameter transformer, four of them sending bfloat16 to save bandwidth, each weighted by
its num_examples — then aggregates it twice (in one pass over all mapped files, and streaming
one file at a time), checks the result against a float64 reference, and prints a table of
time, bytes and throughput beside the floors measured in the same run: the memory read
bandwidth over the same files and a durable write of the result's size to the same disk.
The streaming row is split into its first add, which allocates the round's sums (fresh
memory, slow to first touch on some virtual machines), and the steady state after it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDemo(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), f)
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&f.clients, "clients", 16, "clients")
	fl.IntVar(&f.bf16, "bf16", 4, "how many of the clients send bfloat16")
	fl.Int64Var(&f.params, "params", 25_000_000, "model size (a transformer layout close to it)")
	fl.StringVar(&f.dir, "dir", "", "directory for the federation (default: a new temporary one)")
	fl.BoolVar(&f.keep, "keep", false, "keep the files afterwards")
	fl.StringVar(&f.progress, "progress", "auto", "progress bars on stderr: auto, always, never")
	return cmd
}

func runDemo(ctx context.Context, stdout, stderr io.Writer, f demoFlags) error {
	if err := f.validate(); err != nil {
		return err
	}
	dir, err := demoDir(f.dir)
	if err != nil {
		return err
	}
	if !f.keep {
		defer os.RemoveAll(dir)
	}
	d := &demoRun{stdout: stdout, stderr: stderr, f: f, dir: dir}
	if err := d.generate(ctx); err != nil {
		return err
	}
	if err := d.open(); err != nil {
		return err
	}
	defer safetensors.CloseAll(d.sets)
	d.measureReadFloor()

	inv, err := energy.Discover()
	if err != nil {
		return err
	}
	defer inv.Close()
	if err := d.aggregate(ctx, inv.Meters()); err != nil {
		return err
	}
	if err := d.check(); err != nil {
		return err
	}
	if err := d.measureWriteFloor(); err != nil {
		return err
	}
	d.printTable()
	d.printSummary()
	return nil
}

// validate checks the demo's flags.
func (f demoFlags) validate() error {
	if f.clients < 1 || f.bf16 < 0 || f.bf16 > f.clients || f.params < 1 {
		return usagef("demo needs --clients >= 1, 0 <= --bf16 <= --clients and --params >= 1")
	}
	return nil
}

// demoDir is dir, or a new temporary directory where dir is "".
func demoDir(dir string) (string, error) {
	if dir == "" {
		d, err := os.MkdirTemp("", "wattagg-demo-")
		if err != nil {
			return "", err
		}
		dir = d
	}
	return dir, nil
}

// federation is the demo's federation and how many of its clients send each dtype.
func (f demoFlags) federation() (bench.Federation, map[tensor.DType]int) {
	// The federation: clients train on different amounts of data; the last ones are
	// bandwidth-poor and send bfloat16.
	rng := rand.New(rand.NewPCG(42, 1))
	fed := bench.Federation{Model: bench.Transformer(f.params), Seed: 42}
	dtypes := map[tensor.DType]int{}
	for k := range f.clients {
		dt := tensor.F32
		if k >= f.clients-f.bf16 {
			dt = tensor.BF16
		}
		dtypes[dt]++
		fed.Clients = append(fed.Clients, bench.Client{DType: dt, NumExamples: 200 + rng.IntN(1800)})
	}
	return fed, dtypes
}

// demoRun is the state of one demo: the federation, its files, the two results and what was
// measured on them.
type demoRun struct {
	stdout, stderr io.Writer
	f              demoFlags
	dir            string

	fed     bench.Federation
	paths   []string // the clients' files
	dev     *device.CPU
	workers int
	readOpt safetensors.Option // how the files are read
	sets    []*tensor.Set      // the clients' files, mapped
	floor   float64            // the memory read floor over sets, bytes/s

	batchOut, streamOut string            // the one-pass and the streaming result
	batch, stream       *aggregate.Report // their reports
	firstAdd            float64           // seconds of the streaming round's first add
	same                bool              // whether the two results hold the same bytes
	maxErr, streamErr   float64           // their errors against a float64 reference
	write               float64           // the durable write floor, bytes/s
}

// generate writes the federation's files under the demo's directory and says what it wrote.
func (d *demoRun) generate(ctx context.Context) error {
	fed, dtypes := d.f.federation()
	d.fed = fed
	bar := cli.NewProgress(d.stderr, d.f.progress, "generating")
	start := time.Now()
	paths, err := d.fed.Write(ctx, filepath.Join(d.dir, "clients"), bar.Set)
	bar.Finish()
	if err != nil {
		return err
	}
	genSeconds := time.Since(start).Seconds()
	d.paths = paths
	d.printHeader(dtypes, genSeconds)
	return nil
}

// printHeader prints the federation generated: its clients, model, dtypes and bytes, and the
// seconds it took.
func (d *demoRun) printHeader(dtypes map[tensor.DType]int, genSeconds float64) {
	var inBytes int64
	for _, c := range d.fed.Clients {
		inBytes += d.fed.Model.Params() * int64(c.DType.Size())
	}
	fmt.Fprintf(d.stdout, "wattagg demo: %d clients x %s-parameter %s (%d f32, %d bf16), weighted by num_examples\n",
		d.f.clients, human(float64(d.fed.Model.Params()), ""), d.fed.Model.Name, dtypes[tensor.F32], dtypes[tensor.BF16])
	fmt.Fprintf(d.stdout, "  generated %s of updates in %.1f s in %s\n\n", human(float64(inBytes), "B"), genSeconds, d.dir)
}

// open makes the CPU device and maps the federation's files; the caller closes the sets.
func (d *demoRun) open() error {
	dev, err := device.NewCPU()
	if err != nil {
		return err
	}
	d.dev = dev
	d.workers = dev.Info().Workers
	// Read as `wattagg aggregate --read auto` would: files in large folios as calibrated here.
	d.readOpt = safetensors.WithLargeFolioRead((&energyRun{}).largeFolioRead(energyFlags{}))
	sets, err := safetensors.OpenAll(d.paths, d.readOpt)
	if err != nil {
		return err
	}
	d.sets = sets
	return nil
}

// measureReadFloor measures the memory read bandwidth over every tensor of the mapped files.
func (d *demoRun) measureReadFloor() {
	var bufs [][]byte
	for _, s := range d.sets {
		for _, t := range s.Tensors() {
			bufs = append(bufs, t.Bytes())
		}
	}
	d.floor = bench.ReadFloor(bufs, d.workers, 3)
}

// aggregate computes the weighted mean twice, metered by meters: in one pass over all the
// mapped files, then streaming one file at a time.
func (d *demoRun) aggregate(ctx context.Context, meters []energy.Meter) error {
	opts := []aggregate.Option{aggregate.WithDevices(d.dev), aggregate.WithMixedDTypes(true), aggregate.WithMeters(meters...)}
	if err := d.aggregateOnePass(ctx, opts); err != nil {
		return err
	}
	return d.aggregateStreaming(ctx, opts)
}

// aggregateOnePass writes the weighted mean of all the mapped files at once to batchOut.
func (d *demoRun) aggregateOnePass(ctx context.Context, opts []aggregate.Option) error {
	d.batchOut = filepath.Join(d.dir, "global.safetensors")
	bar := cli.NewProgress(d.stderr, d.f.progress, "aggregating")
	batch, err := aggregate.WeightedMeanFile(ctx, d.batchOut, d.sets, nil, append(opts, aggregate.WithProgress(bar.Set))...)
	bar.Finish()
	if err != nil {
		return err
	}
	d.batch = batch
	return nil
}

// aggregateStreaming writes the weighted mean to streamOut, adding the files one at a time.
func (d *demoRun) aggregateStreaming(ctx context.Context, opts []aggregate.Option) error {
	d.streamOut = filepath.Join(d.dir, "global-stream.safetensors")
	stream, firstAdd, err := demoStream(ctx, d.streamOut, d.sets, d.paths, opts, d.readOpt)
	if err != nil {
		return err
	}
	d.stream, d.firstAdd = stream, firstAdd
	return nil
}

// check compares the two results with each other, then each with a float64 reference.
func (d *demoRun) check() error {
	var err error
	if d.same, err = sameFiles(d.batchOut, d.streamOut); err != nil {
		return err
	}
	if d.maxErr, err = checkDemo(d.batchOut, d.sets); err != nil {
		return err
	}
	if d.streamErr, err = checkDemo(d.streamOut, d.sets); err != nil {
		return err
	}
	return nil
}

// measureWriteFloor measures a durable write of the result's size to the demo's disk.
func (d *demoRun) measureWriteFloor() error {
	// The result is written durably: the disk is part of the floor of every row that writes.
	write, err := bench.DurableWriteFloor(d.dir, d.batch.BytesWritten, 2)
	if err != nil {
		return err
	}
	d.write = write
	return nil
}

// printTable prints the floors, the two aggregations beside them, and the streaming row split
// into its first add and the rest.
func (d *demoRun) printTable() {
	tw := tabwriter.NewWriter(d.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  step\tseconds\tread\twritten\tGB/s\tfloor s\tof floor\tparams/s\tjoules")
	d.printFloorRows(tw)
	accTotal, streamRead := d.streamTraffic()
	d.printAggregateRows(tw, streamRead)
	d.printFirstAddRows(tw, accTotal, streamRead)
	tw.Flush()
}

// printFloorRows prints the rows of the memory read floor and the durable write floor.
func (d *demoRun) printFloorRows(tw io.Writer) {
	fmt.Fprintf(tw, "  memory read (%d workers, same files)\t%.3f\t%s\t-\t%.1f\t\t\t\t\n", d.workers,
		float64(d.batch.BytesRead)/d.floor, human(float64(d.batch.BytesRead), "B"), d.floor/1e9)
	fmt.Fprintf(tw, "  durable write (direct I/O + fsync)\t%.3f\t-\t%s\t%.1f\t\t\t\t\n",
		float64(d.batch.BytesWritten)/d.write, human(float64(d.batch.BytesWritten), "B"), d.write/1e9)
}

// streamTraffic is the size of the streaming round's sums and the bytes its floor must read.
func (d *demoRun) streamTraffic() (accTotal, streamRead int64) {
	// One pass reads every update once and writes the result once; streaming also reads each
	// update twice (the finiteness scan, then the sum) and the running sum once per update.
	accBytes := int64(4)
	if d.stream.AccDType == "f64" {
		accBytes = 8
	}
	streamRead = 2*d.stream.BytesRead + int64(d.stream.Clients)*2*d.stream.Params*accBytes
	return d.stream.Params * accBytes, streamRead
}

// printAggregateRows prints the one-pass and the streaming rows, each beside its floor;
// streamRead is the bytes the streaming row's floor must read.
func (d *demoRun) printAggregateRows(tw io.Writer, streamRead int64) {
	for _, r := range []struct {
		name string
		rep  *aggregate.Report
		read int64 // bytes its floor must read
	}{
		{"fedavg, one pass over all files -> file", d.batch, d.batch.BytesRead},
		{"fedavg, streaming one file at a time -> file", d.stream, streamRead},
	} {
		fl := d.floorSeconds(r.read, r.rep.BytesWritten)
		fmt.Fprintf(tw, "  %s\t%.3f\t%s\t%s\t%.1f\t%.3f\t%.2f\t%s\t%s\n", r.name, r.rep.Seconds,
			human(float64(r.rep.BytesRead), "B"), human(float64(r.rep.BytesWritten), "B"), r.rep.GBps,
			fl, fl/r.rep.Seconds, human(r.rep.ParamsPerSec, ""), demoJoules(r.rep))
	}
}

// printFirstAddRows prints the streaming row's first add and, after it, the steady state.
func (d *demoRun) printFirstAddRows(tw io.Writer, accTotal, streamRead int64) {
	// The first add of a round allocates its sums: fresh memory, which some hosts back slowly
	// (first touch, the kernel zeroing pages the hypervisor hands over one by one). A server
	// pays it once per round size (its accumulators are pooled); the rest is the steady state.
	stream, firstAdd := d.stream, d.firstAdd
	fmt.Fprintf(tw, "    of which the first add (%s of fresh memory for the %s sums)\t%.3f\t\t\t%.1f\t\t\t\t\n",
		human(float64(accTotal), "B"), stream.AccDType, firstAdd, float64(accTotal)/firstAdd/1e9)
	if rest := stream.Seconds - firstAdd; stream.Clients > 1 && rest > 0 {
		restRead := streamRead - 2*stream.BytesRead/int64(stream.Clients) - 2*accTotal
		fl := d.floorSeconds(restRead, stream.BytesWritten)
		fmt.Fprintf(tw, "    and the other %d adds and the write\t%.3f\t\t\t\t%.3f\t%.2f\t\t\n", stream.Clients-1, rest, fl, fl/rest)
	}
}

// floorSeconds is the floor of a step that reads read bytes and writes written bytes: the
// slower of the two at the floors measured.
func (d *demoRun) floorSeconds(read, written int64) float64 {
	return max(float64(read)/d.floor, float64(written)/d.write)
}

// demoJoules is the joules column of rep's row: its energy and where it came from, "-" for none.
func demoJoules(rep *aggregate.Report) string {
	joules := "-"
	if rep.Joules != nil {
		joules = fmt.Sprintf("%.3g (%s)", *rep.Joules, rep.JoulesSource)
	}
	return joules
}

// printSummary prints what follows the table: the dtypes and kernels, the checks, the energy
// and, with --keep, where the result is.
func (d *demoRun) printSummary() {
	fmt.Fprintf(d.stdout, "\n  accumulated in %s, written as %s; kernels: %s\n", d.batch.AccDType, d.batch.OutDType, d.dev.Info().Kernels)
	fmt.Fprintf(d.stdout, "  check: max |error| against a float64 reference over sampled coordinates: %.2g (one pass), %.2g (streaming)\n", d.maxErr, d.streamErr)
	if d.same {
		fmt.Fprintln(d.stdout, "  check: the streaming result is bit for bit the one-pass result")
	} else {
		fmt.Fprintln(d.stdout, "  check: the streaming result DIFFERS from the one-pass result")
	}
	printEnergy(d.stdout, d.batch)
	if d.f.keep {
		fmt.Fprintf(d.stdout, "  output: %s\n", d.batchOut)
	}
}

// demoStream adds the files one at a time to a Round, as a server adds updates on arrival,
// told first what will arrive (their layouts and weights), so that it gives the one-pass bits.
// It returns the round's report and the seconds of its first add (which allocates the sums).
func demoStream(ctx context.Context, out string, sets []*tensor.Set, paths []string, opts []aggregate.Option, read safetensors.Option) (*aggregate.Report, float64, error) {
	w, _, err := aggregate.ResolveWeights(sets, nil)
	if err != nil {
		return nil, 0, err
	}
	exp := aggregate.Expected{Weights: w}
	for _, s := range sets {
		exp.Layouts = append(exp.Layouts, s.Layout())
	}
	r, err := aggregate.NewRound(ctx, aggregate.NewFedAvg(), append(opts, aggregate.WithExpected(exp))...)
	if err != nil {
		return nil, 0, err
	}
	defer r.Close()
	var first float64
	for i, p := range paths {
		set, err := safetensors.Open(p, read)
		if err != nil {
			return nil, 0, err
		}
		start := time.Now()
		err = r.AddByExamples(ctx, set)
		if i == 0 {
			first = time.Since(start).Seconds()
		}
		set.Close()
		if err != nil {
			return nil, 0, err
		}
	}
	rep, err := r.WriteFile(ctx, out)
	return rep, first, err
}

// sameFiles reports whether two results hold the same tensors with the same bytes.
func sameFiles(a, b string) (bool, error) {
	x, err := safetensors.Open(a)
	if err != nil {
		return false, err
	}
	defer x.Close()
	y, err := safetensors.Open(b)
	if err != nil {
		return false, err
	}
	defer y.Close()
	if x.Len() != y.Len() {
		return false, nil
	}
	for _, t := range x.Tensors() {
		u, ok := y.Tensor(t.Name)
		if !ok || u.DType != t.DType || !bytes.Equal(u.Bytes(), t.Bytes()) {
			return false, nil
		}
	}
	return true, nil
}

// checkDemo compares the written aggregate with a float64 weighted mean computed plainly from
// the mapped inputs at sampled coordinates of every tensor.
func checkDemo(path string, sets []*tensor.Set) (float64, error) {
	out, err := safetensors.Open(path)
	if err != nil {
		return 0, err
	}
	defer out.Close()
	var total float64
	weights := make([]float64, len(sets))
	for k, s := range sets {
		w, _, err := aggregate.WeightOf(s)
		if err != nil {
			return 0, err
		}
		weights[k] = w
		total += w
	}
	var maxErr float64
	for _, t := range out.Tensors() {
		n := t.Len()
		for _, i := range []int{0, n / 3, n / 2, n - 1} {
			var want float64
			for k, s := range sets {
				in, ok := s.Tensor(t.Name)
				if !ok {
					return 0, fmt.Errorf("%s: tensor %q missing", s.Source, t.Name)
				}
				want += weights[k] * in.Value(i)
			}
			want /= total
			maxErr = math.Max(maxErr, math.Abs(t.Value(i)-want))
		}
	}
	return maxErr, nil
}
