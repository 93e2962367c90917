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
	if f.clients < 1 || f.bf16 < 0 || f.bf16 > f.clients || f.params < 1 {
		return usagef("demo needs --clients >= 1, 0 <= --bf16 <= --clients and --params >= 1")
	}
	dir := f.dir
	if dir == "" {
		d, err := os.MkdirTemp("", "wattagg-demo-")
		if err != nil {
			return err
		}
		dir = d
	}
	if !f.keep {
		defer os.RemoveAll(dir)
	}

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
	bar := cli.NewProgress(stderr, f.progress, "generating")
	start := time.Now()
	paths, err := fed.Write(ctx, filepath.Join(dir, "clients"), bar.Set)
	bar.Finish()
	if err != nil {
		return err
	}
	genSeconds := time.Since(start).Seconds()
	var inBytes int64
	for _, c := range fed.Clients {
		inBytes += fed.Model.Params() * int64(c.DType.Size())
	}
	fmt.Fprintf(stdout, "wattagg demo: %d clients x %s-parameter %s (%d f32, %d bf16), weighted by num_examples\n",
		f.clients, human(float64(fed.Model.Params()), ""), fed.Model.Name, dtypes[tensor.F32], dtypes[tensor.BF16])
	fmt.Fprintf(stdout, "  generated %s of updates in %.1f s in %s\n\n", human(float64(inBytes), "B"), genSeconds, dir)

	dev, err := device.NewCPU()
	if err != nil {
		return err
	}
	workers := dev.Info().Workers
	// Read as `wattagg aggregate --read auto` would: files in large folios as calibrated here.
	readOpt := safetensors.WithLargeFolioRead((&energyRun{}).largeFolioRead(energyFlags{}))
	sets, err := safetensors.OpenAll(paths, readOpt)
	if err != nil {
		return err
	}
	defer safetensors.CloseAll(sets)
	var bufs [][]byte
	for _, s := range sets {
		for _, t := range s.Tensors() {
			bufs = append(bufs, t.Bytes())
		}
	}
	floor := bench.ReadFloor(bufs, workers, 3)

	inv, err := energy.Discover()
	if err != nil {
		return err
	}
	defer inv.Close()
	opts := []aggregate.Option{aggregate.WithDevices(dev), aggregate.WithMixedDTypes(true), aggregate.WithMeters(inv.Meters()...)}
	batchOut := filepath.Join(dir, "global.safetensors")
	bar = cli.NewProgress(stderr, f.progress, "aggregating")
	batch, err := aggregate.WeightedMeanFile(ctx, batchOut, sets, nil, append(opts, aggregate.WithProgress(bar.Set))...)
	bar.Finish()
	if err != nil {
		return err
	}

	streamOut := filepath.Join(dir, "global-stream.safetensors")
	stream, firstAdd, err := demoStream(ctx, streamOut, sets, paths, opts, readOpt)
	if err != nil {
		return err
	}
	same, err := sameFiles(batchOut, streamOut)
	if err != nil {
		return err
	}

	maxErr, err := checkDemo(batchOut, sets)
	if err != nil {
		return err
	}
	streamErr, err := checkDemo(streamOut, sets)
	if err != nil {
		return err
	}

	// The result is written durably: the disk is part of the floor of every row that writes.
	write, err := bench.DurableWriteFloor(dir, batch.BytesWritten, 2)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  step\tseconds\tread\twritten\tGB/s\tfloor s\tof floor\tparams/s\tjoules")
	fmt.Fprintf(tw, "  memory read (%d workers, same files)\t%.3f\t%s\t-\t%.1f\t\t\t\t\n", workers,
		float64(batch.BytesRead)/floor, human(float64(batch.BytesRead), "B"), floor/1e9)
	fmt.Fprintf(tw, "  durable write (direct I/O + fsync)\t%.3f\t-\t%s\t%.1f\t\t\t\t\n",
		float64(batch.BytesWritten)/write, human(float64(batch.BytesWritten), "B"), write/1e9)
	// One pass reads every update once and writes the result once; streaming also reads each
	// update twice (the finiteness scan, then the sum) and the running sum once per update.
	accBytes := int64(4)
	if stream.AccDType == "f64" {
		accBytes = 8
	}
	streamRead := 2*stream.BytesRead + int64(stream.Clients)*2*stream.Params*accBytes
	for _, r := range []struct {
		name string
		rep  *aggregate.Report
		read int64 // bytes its floor must read
	}{
		{"fedavg, one pass over all files -> file", batch, batch.BytesRead},
		{"fedavg, streaming one file at a time -> file", stream, streamRead},
	} {
		joules := "-"
		if r.rep.Joules != nil {
			joules = fmt.Sprintf("%.3g (%s)", *r.rep.Joules, r.rep.JoulesSource)
		}
		fl := max(float64(r.read)/floor, float64(r.rep.BytesWritten)/write)
		fmt.Fprintf(tw, "  %s\t%.3f\t%s\t%s\t%.1f\t%.3f\t%.2f\t%s\t%s\n", r.name, r.rep.Seconds,
			human(float64(r.rep.BytesRead), "B"), human(float64(r.rep.BytesWritten), "B"), r.rep.GBps,
			fl, fl/r.rep.Seconds, human(r.rep.ParamsPerSec, ""), joules)
	}
	// The first add of a round allocates its sums: fresh memory, which some hosts back slowly
	// (first touch, the kernel zeroing pages the hypervisor hands over one by one). A server
	// pays it once per round size (its accumulators are pooled); the rest is the steady state.
	accTotal := stream.Params * accBytes
	fmt.Fprintf(tw, "    of which the first add (%s of fresh memory for the %s sums)\t%.3f\t\t\t%.1f\t\t\t\t\n",
		human(float64(accTotal), "B"), stream.AccDType, firstAdd, float64(accTotal)/firstAdd/1e9)
	if rest := stream.Seconds - firstAdd; stream.Clients > 1 && rest > 0 {
		restRead := streamRead - 2*stream.BytesRead/int64(stream.Clients) - 2*accTotal
		fl := max(float64(restRead)/floor, float64(stream.BytesWritten)/write)
		fmt.Fprintf(tw, "    and the other %d adds and the write\t%.3f\t\t\t\t%.3f\t%.2f\t\t\n", stream.Clients-1, rest, fl, fl/rest)
	}
	tw.Flush()
	fmt.Fprintf(stdout, "\n  accumulated in %s, written as %s; kernels: %s\n", batch.AccDType, batch.OutDType, dev.Info().Kernels)
	fmt.Fprintf(stdout, "  check: max |error| against a float64 reference over sampled coordinates: %.2g (one pass), %.2g (streaming)\n", maxErr, streamErr)
	if same {
		fmt.Fprintln(stdout, "  check: the streaming result is bit for bit the one-pass result")
	} else {
		fmt.Fprintln(stdout, "  check: the streaming result DIFFERS from the one-pass result")
	}
	printEnergy(stdout, batch)
	if f.keep {
		fmt.Fprintf(stdout, "  output: %s\n", batchOut)
	}
	return nil
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
