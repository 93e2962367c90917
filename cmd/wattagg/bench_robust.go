package main

import (
	"context"
	"fmt"
	"os/exec"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
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

// robustSuite measures the robust rules on in-memory updates beside the floors measured in
// the same run, at one configuration and along the sweeps.
type robustSuite struct {
	clients, params, runs int
	numpy                 string            // a python3 with numpy: its Gram route is timed beside
	sweep                 *bench.SweepSizes // nil: no sweep
	sweepRuns             int
	rules                 robustRules
}

// robustRuleNames are the rows `bench robust --rules` chooses from, in the suite's order.
var robustRuleNames = []string{"gram", "median", "trimmed-mean", "krum", "multi-krum", "bulyan", "geomed", "centered-clip", "norm-clip"}

// robustRules is the set of rules a robust suite measures; nil measures all.
type robustRules map[string]bool

func (r robustRules) has(name string) bool { return r == nil || r[name] }

// parseRobustRules reads --rules: comma-separated names of robustRuleNames, or "all".
func parseRobustRules(list string) (robustRules, error) {
	if strings.TrimSpace(list) == "all" {
		return nil, nil
	}
	rules := robustRules{}
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		if !slices.Contains(robustRuleNames, name) {
			return nil, usagef("--rules: unknown rule %q (want all or some of %s)", name, strings.Join(robustRuleNames, ","))
		}
		rules[name] = true
	}
	return rules, nil
}

func (robustSuite) name() string { return "robust" }
func (robustSuite) title() string {
	return "robust rules (median, trimmed mean, Krum, ...) on in-memory f32 updates, beside the memory and FMA floors"
}

// newBenchRobustCmd is `wattagg bench robust`: the robust rules on in-memory updates beside the
// floors measured in the same run.
func newBenchRobustCmd() *cobra.Command {
	var c benchCommon
	var s robustSuite
	var rules string
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
			env, err := c.env(cmd)
			if err != nil {
				return err
			}
			if s.clients < 1 || s.params < 1 || s.runs < 1 || s.sweepRuns < 1 {
				return usagef("--clients, --params, --runs, --sweep-runs and --workers must be positive")
			}
			if s.rules, err = parseRobustRules(rules); err != nil {
				return err
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
	cmd.Flags().IntVar(&s.clients, "clients", fullPreset.robustClients, "updates")
	cmd.Flags().IntVar(&s.params, "params", fullPreset.robustParams, "f32 parameters per update")
	cmd.Flags().IntVar(&s.runs, "runs", fullPreset.robustRuns, "runs of each (the median is reported)")
	cmd.Flags().IntVar(&s.sweepRuns, "sweep-runs", fullPreset.robustSweepRuns, "runs at each sweep point")
	cmd.Flags().StringVar(&rules, "rules", "all", "rules to measure, comma-separated: all, or some of "+strings.Join(robustRuleNames, ","))
	cmd.Flags().StringVar(&s.numpy, "numpy", "", "python3 with numpy (e.g. /usr/bin/python3): time numpy's Gram route, X @ X.T in f32, on the same sizes")
	return cmd
}

// numpyGramScript times X @ X.T for an n x p f32 matrix of normal values (best of 3) and
// prints the seconds: the Gram route a numpy user takes (f32, BLAS sgemm), which wattagg's
// f64-accumulated Gram matrix is compared with.
const numpyGramScript = `import sys, time, numpy as np
n, p = int(sys.argv[1]), int(sys.argv[2])
X = np.random.default_rng(1).standard_normal((n, p), dtype=np.float32)
best = 1e9
for _ in range(3):
    t = time.perf_counter(); G = X @ X.T; best = min(best, time.perf_counter() - t)
print(best, np.__version__)
`

// numpyGram runs numpyGramScript with python and returns its row beside wattagg's Gram row of
// rows (their ratio in the note; the floor is the Gram row's).
func numpyGram(ctx context.Context, python string, n, p int, rows []bench.Row) (bench.Row, error) {
	out, err := exec.CommandContext(ctx, python, "-c", numpyGramScript, fmt.Sprint(n), fmt.Sprint(p)).CombinedOutput()
	if err != nil {
		if msg := lastLine(string(out)); msg != "" {
			return bench.Row{}, fmt.Errorf("--numpy %s: %w: %s", python, err, msg)
		}
		return bench.Row{}, fmt.Errorf("--numpy %s: %w", python, err)
	}
	var secs float64
	var version string
	if _, err := fmt.Sscan(string(out), &secs, &version); err != nil || secs <= 0 {
		return bench.Row{}, fmt.Errorf("--numpy %s: unexpected output %q", python, lastLine(string(out)))
	}
	in := int64(4 * n * p)
	r := bench.Row{Name: "numpy X @ X.T (f32)", Rule: "numpy gram", Clients: n, DType: "f32", Seconds: secs, Bytes: in,
		Params: int64(p), GBps: float64(in) / secs / 1e9, ParamsPS: float64(p) / secs}
	for _, g := range rows {
		if g.Rule == "krum distances (gram)" {
			r.FloorGBps, r.FloorName = g.FloorGBps, g.FloorName
			r.Ratio = r.GBps / r.FloorGBps
			r.Note = fmt.Sprintf("numpy %s, best of 3; wattagg's Gram %.2fx faster", version, secs/g.Seconds)
		}
	}
	return r, nil
}

// lastLine is the last line of s, trimmed (a Python traceback's error), "" for none.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

func (s robustSuite) run(env *benchEnv) (*bench.Report, error) {
	r := s.start(env)
	rows, err := r.mainRows()
	if err != nil {
		return nil, err
	}
	if err := env.printRows(rows, ""); err != nil {
		return nil, err
	}
	rep := r.report(rows)
	if s.sweep == nil {
		return rep, nil
	}
	if err := r.sweeps(rep); err != nil {
		return nil, err
	}
	return rep, nil
}

// robustRun is the state of one run of a robust suite: its progress and the FMA rate every
// Gram row is measured beside.
type robustRun struct {
	s     robustSuite
	env   *benchEnv
	total int     // progress steps: the main configuration and every sweep point
	fma   float64 // f64 FMAs per second, measured as the run starts
}

// start starts a run of s on env: it counts the run's progress steps and measures the FMA
// floor.
func (s robustSuite) start(env *benchEnv) *robustRun {
	total := 1
	if s.sweep != nil {
		total += len(s.sweep.Points())
	}
	workers := env.cpu.Info().Workers
	env.progress(0, total, "fma floor")
	return &robustRun{s: s, env: env, total: total, fma: fmaRate(workers)}
}

// mainRows measures the rules at the suite's configuration, with the floors leading, and
// numpy's Gram route after them with --numpy.
func (r *robustRun) mainRows() ([]bench.Row, error) {
	s, env := r.s, r.env
	env.progress(0, r.total, fmt.Sprintf("%d x %s f32", s.clients, bench.ParamsLabel(int64(s.params))))
	updates, err := bench.InMemoryUpdates(s.clients, s.params, tensor.F32)
	if err != nil {
		return nil, err
	}
	rows, err := benchRobust(env.ctx, env.cpu, updates, s.runs, r.fma, true, s.rules)
	if err != nil {
		return nil, err
	}
	updates = nil // the sweeps and numpy need the memory
	debug.FreeOSMemory()
	if s.numpy == "" {
		return rows, nil
	}
	env.progress(0, r.total, "numpy X @ X.T")
	np, err := numpyGram(env.ctx, s.numpy, s.clients, s.params, rows)
	if err != nil {
		return nil, err
	}
	return append(rows, np), nil
}

// report is the suite's report of the main rows.
func (r *robustRun) report(rows []bench.Row) *bench.Report {
	s := r.s
	rep := r.env.newReport(s)
	rep.Config["clients"], rep.Config["params"], rep.Config["runs"] = fmt.Sprint(s.clients), fmt.Sprint(s.params), fmt.Sprint(s.runs)
	for _, row := range rows {
		res := row.Result("")
		if row.Rule == "fma floor" {
			res.Value, res.Unit = row.GBps, "GFMA/s" // benchRobust's table shows GFMA/s in the GB/s column
		}
		rep.Add(res)
	}
	rep.Notes = append(rep.Notes, "throughput is input bytes / seconds; each rule's floor is the read bandwidth of the same updates divided by the passes the rule makes over them, and Krum's distances' floor is the FMA throughput over n(n+1)/2 FMAs per coordinate")
	return rep
}

// sweeps measures the rules along the sweeps into rep, beside the FMA rate of the run.
func (r *robustRun) sweeps(rep *bench.Report) error {
	s := r.s
	rep.Config["sweep"], rep.Config["sweep_runs"] = s.sweep.String(), fmt.Sprint(s.sweepRuns)
	sw := suiteSweeps{env: r.env, rep: rep, sizes: *s.sweep, dtypes: []tensor.DType{tensor.F32}, suiteProgress: suiteProgress{done: 1, total: r.total},
		measure: func(updates []*tensor.Set, _ tensor.DType) ([]bench.Row, error) {
			return benchRobust(r.env.ctx, r.env.cpu, updates, s.sweepRuns, r.fma, false, s.rules)
		}}
	return sw.run()
}

// benchRobust measures every robust rule on updates (one f32 tensor each), each beside its
// floor: the read bandwidth of the same updates over the passes the rule makes, and the FMA
// rate fma for the Gram matrix. With floors, the floors themselves lead the rows. rules chooses
// the rules measured.
func benchRobust(ctx context.Context, dev *device.CPU, updates []*tensor.Set, runs int, fma float64, floors bool, rules robustRules) ([]bench.Row, error) {
	b := newRobustBench(dev, updates, runs, floors, rules)
	read := bench.ReadFloor(b.bufs, b.workers, 10) // best of 10: the VMs' read rate varies from pass to pass
	var rows []bench.Row
	if floors {
		rows = append(rows, b.floorRows(read, fma)...)
	}
	if rules.has("gram") {
		gram, err := gramRow(ctx, dev, updates, b.timed, fma, b.workers, rows)
		if err != nil {
			return nil, err
		}
		rows = append(rows, b.row("krum distances (gram)", gram.secs, gram.floor, "FMA rate / (n+1)/2 FMAs per input float", gram.note))
	}
	ruleRows, err := b.ruleRows(ctx)
	if err != nil {
		return nil, err
	}
	return append(rows, ruleRows...), nil
}

// robustBench is the state benchRobust's steps share: the updates, their sizes and the bytes
// its read floors read.
type robustBench struct {
	dev                      *device.CPU
	updates                  []*tensor.Set
	runs                     int
	floors                   bool // the floors lead the rows, which are named without their point
	rules                    robustRules
	clients, params, workers int
	bufs                     [][]byte // the updates' bytes
	in                       int64    // the updates' bytes in all
}

// newRobustBench is the state of a benchRobust over updates.
func newRobustBench(dev *device.CPU, updates []*tensor.Set, runs int, floors bool, rules robustRules) *robustBench {
	clients, params := len(updates), updates[0].At(0).Len()
	b := &robustBench{dev: dev, updates: updates, runs: runs, floors: floors, rules: rules,
		clients: clients, params: params, workers: dev.Info().Workers}
	for _, u := range updates {
		b.bufs = append(b.bufs, u.At(0).Bytes())
	}
	b.in = int64(4 * clients * params)
	return b
}

// floorRows are the rows of the read floor read (bytes/s) and the FMA rate fma that lead the
// suite's table.
func (b *robustBench) floorRows(read, fma float64) []bench.Row {
	return []bench.Row{
		{Name: fmt.Sprintf("read floor %d x %s f32", b.clients, bench.ParamsLabel(int64(b.params))), Rule: "read floor",
			Clients: b.clients, DType: "f32", Params: int64(b.params), Seconds: float64(b.in) / read,
			Bytes: b.in, GBps: read / 1e9, Note: fmt.Sprintf("%d workers", b.workers), IsFloor: true},
		{Name: "fma floor", Rule: "fma floor", GBps: fma / 1e9, IsFloor: true,
			Note: fmt.Sprintf("GFMA/s (f64, %d workers): independent VFMADD231PD, best before and after the Gram", b.workers)},
	}
}

// timed runs f runs times and returns the median seconds and the read floor of the same
// window: a pass of the read floor follows each run, and the best of them counts. The
// read rate of these VMs drifts by 1.5x within minutes (other tenants); a floor taken
// minutes before a rule measures the drift as much as the rule.
func (b *robustBench) timed(f func() error) (secs, floor float64, err error) {
	// The previous rule's garbage (iterates, results) goes before this rule is timed: the
	// collector then rarely runs inside a timing, and the heap stays near the live
	// federation instead of growing to twice it.
	runtime.GC()
	if err := f(); err != nil { // warm up: first touch of the output, page tables
		return 0, 0, err
	}
	var ts []float64
	for range b.runs {
		start := time.Now()
		if err := f(); err != nil {
			return 0, 0, err
		}
		ts = append(ts, time.Since(start).Seconds())
		floor = max(floor, bench.ReadFloor(b.bufs, b.workers, max(1, 3/b.runs)))
	}
	slices.Sort(ts)
	return ts[len(ts)/2], floor, nil
}

// row is rule's row: secs to aggregate the updates, beside floor (bytes/s), named floorName.
func (b *robustBench) row(rule string, secs, floor float64, floorName, note string) bench.Row {
	name := rule
	if !b.floors { // a sweep's rows: the table names the point
		name = fmt.Sprintf("%s %d x %s", rule, b.clients, bench.ParamsLabel(int64(b.params)))
	}
	r := bench.Row{Name: name, Rule: rule, Clients: b.clients, DType: "f32", Seconds: secs, Bytes: b.in, Params: int64(b.params),
		GBps: float64(b.in) / secs / 1e9, ParamsPS: float64(b.params) / secs, FloorGBps: floor / 1e9, FloorName: floorName, Note: note}
	if floor > 0 {
		r.Ratio = r.GBps / r.FloorGBps
	}
	return r
}

// ruleRows measures the rules of robustRuleCases that are measured here, each aggregating the
// updates into the same output, beside the read floor over the passes it makes.
func (b *robustBench) ruleRows(ctx context.Context) ([]bench.Row, error) {
	dst := b.updates[0].Clone()
	opts := []aggregate.Option{aggregate.WithDevices(b.dev), aggregate.WithOutput(dst)}
	f := max(0, (b.clients-3)/4) // Bulyan's largest f
	var rows []bench.Row
	for _, c := range robustRuleCases(f) {
		r, err := c.make()
		if err != nil {
			return nil, err
		}
		if !b.measures(r, f) {
			continue
		}
		secs, local, err := b.timed(func() error { _, _, err := aggregate.Aggregate(ctx, r, b.updates, nil, opts...); return err })
		if err != nil {
			return nil, err
		}
		rows = append(rows, b.row(r.Name(), secs, local/float64(c.passes), c.floorName(), c.note))
	}
	return rows, nil
}

// measures reports whether rule r is measured: chosen by the rules, and with enough clients
// for Bulyan and Krum at f.
func (b *robustBench) measures(r aggregate.Rule, f int) bool {
	if !b.rules.has(r.Name()) {
		return false
	}
	return !(r.Name() == "bulyan" && b.clients < 3 || (r.Name() == "krum" || r.Name() == "multi-krum") && b.clients <= 2*f+2)
}

// robustRuleCase is a robust rule as benchRobust measures it: how to make it, the passes it
// makes over the updates and the note of its row.
type robustRuleCase struct {
	make   func() (aggregate.Rule, error)
	passes int
	note   string
}

// robustRuleCases are the rules benchRobust measures after the Gram matrix, in its order, at
// Bulyan's and Krum's f.
func robustRuleCases(f int) []robustRuleCase {
	return []robustRuleCase{
		{func() (aggregate.Rule, error) { return robust.NewMedian(), nil }, 1, "numpy's np.median ~0.2 GB/s"},
		{func() (aggregate.Rule, error) { return robust.NewTrimmedMean(0.1) }, 1, "beta 0.1"},
		{func() (aggregate.Rule, error) { return robust.NewKrum(f, 1) }, 2, fmt.Sprintf("f=%d: gram + copy", f)},
		{func() (aggregate.Rule, error) { return robust.NewKrum(f, 0) }, 2, fmt.Sprintf("f=%d, m=n-f: gram + mean", f)},
		{func() (aggregate.Rule, error) { return robust.NewBulyan(f) }, 2, fmt.Sprintf("f=%d: gram + closest mean", f)},
		{func() (aggregate.Rule, error) {
			return robust.NewGeometricMedian(robust.WithSmoothing(1e-6), robust.WithMaxIterations(3), robust.WithTolerance(0))
		}, 9, "3 Weiszfeld iterations"},
		{func() (aggregate.Rule, error) { return robust.NewCenteredClipping(1) }, 3, "1 iteration"},
		{func() (aggregate.Rule, error) { return robust.NewNormClipping(robust.QuantileBound(0.5)) }, 2, "median norm"},
	}
}

// floorName names the floor of c's row: the read bandwidth over its passes, read between its
// runs.
func (c robustRuleCase) floorName() string {
	floorName := fmt.Sprintf("read bandwidth / %d pass", c.passes)
	if c.passes > 1 {
		floorName += "es"
	}
	return floorName + " (read between its runs)"
}

// gramTiming is the Gram matrix's row of benchRobust before it is named.
type gramTiming struct {
	secs, floor float64
	note        string
}

// gramRow times Krum's distances, the device's Gram matrix, with timed, and the FMA rate of
// the same window (on these VMs it varied by 2x from one run of the suite to the next, other
// tenants, as the read rate does), which it also writes into rows' "fma floor" row.
func gramRow(ctx context.Context, dev *device.CPU, updates []*tensor.Set, timed func(func() error) (float64, float64, error), fma float64, workers int, rows []bench.Row) (gramTiming, error) {
	clients, params := len(updates), updates[0].At(0).Len()
	fields := []device.AccField{{Name: "w", Len: params, Acc: tensor.F32, Out: tensor.F32}}
	spans := make([][]device.Span, clients)
	for k, u := range updates {
		spans[k] = []device.Span{device.SpanOf(u.At(0))}
	}
	secs, _, err := timed(func() error { _, _, err := dev.Gram(ctx, fields, spans); return err })
	if err != nil {
		return gramTiming{}, err
	}
	fma = max(fma, fmaRate(workers))
	for i := range rows {
		if rows[i].Rule == "fma floor" {
			rows[i].GBps = fma / 1e9
		}
	}
	pairs := float64(clients*(clients+1)) / 2
	return gramTiming{secs, fma * float64(4*clients) / pairs, fmt.Sprintf("%.1f GFMA/s", pairs*float64(params)/secs/1e9)}, nil
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
