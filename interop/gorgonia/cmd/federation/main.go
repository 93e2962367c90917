// Command federation runs the wattagg showcase: a real federation on one machine. Ten clients
// train a small MLP with gorgonia on non-IID shards of the UCI digits and push their models
// over HTTP to a wattagg aggregation server on a loopback port; an inference node pulls each
// round's global model, reloads it into an HTTP prediction service while requests keep
// arriving, and answers the held-out digits. Each round prints the accuracy, the clients, the
// bytes, the aggregation's seconds and joules with their source. Then the attack table: the
// same federation with 3 of the 10 clients poisoned (updates scaled by −10, or labels
// flipped) under each robust rule.
//
//	federation [-out DIR] [-rounds 20] [-table=true] [-clean=true] [-parallel 3] [-dir DIR]
//
// It writes into -out: federation.png (accuracy and joules per round), federation.md (the
// rounds as a Markdown table), attack-table.md and attacks.png (the attack table and each
// run's accuracy per round), and results.json (every run, every round).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/wattagg/wattagg/energy"
	"github.com/wattagg/wattagg/interop/gorgonia/federation"
	"github.com/wattagg/wattagg/interop/gorgonia/mlp"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "federation:", err)
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

var errUsage = errors.New("usage")

type flags struct {
	out, dir        string
	rounds, clients int
	poisoned        int
	table, clean    bool
	rules           []federation.Rule
	parallel        int
	epochs, batch   int
	lr, alpha       float64
	seed            uint64
	load            time.Duration
	verbose         bool
}

func parse(args []string, stderr io.Writer) (*flags, error) {
	f := &flags{}
	fs := flag.NewFlagSet("federation", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.out, "out", "federation-out", "directory for the plots, tables and results.json")
	fs.StringVar(&f.dir, "dir", "", "parent of the runs' working directories: the server's data, the clients' and the inference node's files (default /dev/shm where it exists, else the system's temporary directory)")
	fs.IntVar(&f.rounds, "rounds", 20, "rounds per federation")
	fs.IntVar(&f.clients, "clients", 10, "clients")
	fs.IntVar(&f.poisoned, "poisoned", 3, "poisoned clients in the attack table")
	fs.BoolVar(&f.table, "table", true, "run the attack table after the main federation")
	rules := fs.String("rules", "", "the attack table's rules, comma-separated (default: every rule of the table: "+ruleNames(federation.DefaultRules())+")")
	fs.BoolVar(&f.clean, "clean", true, "give the attack table a no-attack column for every rule (the clean fedavg run is the main one)")
	fs.IntVar(&f.parallel, "parallel", 3, "attack-table federations run at once (each waits on fsyncs and HTTP part of the time)")
	fs.IntVar(&f.epochs, "epochs", 5, "local epochs per round")
	fs.IntVar(&f.batch, "batch", 16, "local minibatch size")
	fs.Float64Var(&f.lr, "lr", 0.3, "local SGD learning rate")
	fs.Float64Var(&f.alpha, "alpha", 0.5, "Dirichlet label skew of the shards (smaller: more skewed)")
	fs.Uint64Var(&f.seed, "seed", 42, "seed of the split, the shards, the initial model and the clients' training")
	fs.DurationVar(&f.load, "load", 5*time.Millisecond, "pause between the prediction requests kept on the inference node during the main run (0: none)")
	fs.BoolVar(&f.verbose, "v", false, "log the server's and the inference node's events")
	if err := fs.Parse(args); err != nil {
		return nil, fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	}
	f.rules = federation.DefaultRules()
	if *rules != "" {
		f.rules = nil
		for _, name := range strings.Split(*rules, ",") {
			i := slices.IndexFunc(federation.DefaultRules(), func(r federation.Rule) bool { return r.Name == strings.TrimSpace(name) })
			if i < 0 {
				return nil, fmt.Errorf("%w: -rules: %q is not one of %s", errUsage, name, ruleNames(federation.DefaultRules()))
			}
			f.rules = append(f.rules, federation.DefaultRules()[i])
		}
	}
	if f.poisoned < 1 || f.poisoned >= f.clients {
		return nil, fmt.Errorf("%w: -poisoned %d: want 1 to %d", errUsage, f.poisoned, f.clients-1)
	}
	if f.parallel < 1 {
		return nil, fmt.Errorf("%w: -parallel %d", errUsage, f.parallel)
	}
	if f.load < 0 {
		return nil, fmt.Errorf("%w: -load %v is negative", errUsage, f.load)
	}
	return f, nil
}

// scratchParent is where the runs' working directories go: tmpfs when there is one, so that
// the server's fsyncs (it acknowledges an update only once durable) cost nothing here.
func scratchParent(dir string) string {
	if dir != "" {
		return dir
	}
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		if f, err := os.CreateTemp("/dev/shm", ".wattagg-probe-*"); err == nil {
			f.Close()
			os.Remove(f.Name())
			return "/dev/shm"
		}
	}
	return os.TempDir()
}

// run is the command: the main federation, then the attack table, then results.json.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f, err := parse(args, stderr)
	if err != nil {
		return err
	}
	start := time.Now()
	if err := os.MkdirAll(f.out, 0o755); err != nil {
		return err
	}
	log := newLogger(stderr, f.verbose)
	inv, err := energy.Discover()
	if err != nil {
		return err
	}
	defer inv.Close()
	s := &showcase{f: f, stdout: stdout, start: start, scratch: scratchParent(f.dir), setup: setupLine(f)}
	s.common = s.commonOptions(log, inv.Meters())

	// The main federation: clean FedAvg, with a stream of requests on the inference node.
	s.printHeader(inv)
	res, err := federation.Run(ctx, s.mainOptions()...)
	if err != nil {
		return err
	}
	if err := s.reportMain(res); err != nil {
		return err
	}
	if f.table {
		if err := s.runTable(ctx, res); err != nil {
			return err
		}
	}
	if err := s.writeResults(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "showcase: %.1f s in all\n", time.Since(start).Seconds())
	return s.failed
}

// newLogger logs the server's and the inference node's warnings to stderr, and their other
// events too when verbose.
func newLogger(stderr io.Writer, verbose bool) *slog.Logger {
	level := slog.LevelWarn
	if verbose {
		level = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
}

// showcase is one run of the command: its flags, the options every federation of it shares,
// the setup they describe, and the results so far.
type showcase struct {
	f       *flags
	stdout  io.Writer
	start   time.Time
	scratch string
	common  []federation.Option
	setup   string

	mu      sync.Mutex
	results []*federation.Result
	failed  error // the attack table's failed runs
}

// commonOptions are the options every federation of the showcase shares.
func (s *showcase) commonOptions(log *slog.Logger, meters []energy.Meter) []federation.Option {
	f := s.f
	return []federation.Option{
		federation.WithRounds(f.rounds), federation.WithClients(f.clients), federation.WithDirichlet(f.alpha),
		federation.WithSeed(f.seed), federation.WithScratch(s.scratch), federation.WithMeters(meters...),
		federation.WithLogger(log),
		federation.WithTraining(mlp.WithEpochs(f.epochs), mlp.WithBatchSize(f.batch), mlp.WithLearningRate(f.lr)),
	}
}

// setupLine describes the federations the flags ask for.
func setupLine(f *flags) string {
	return fmt.Sprintf("%d clients, Dirichlet(%g) label-skewed shards of the UCI digits; MLP 64-32-10, %d local epochs of SGD (batch %d, lr %g) with gorgonia; %d rounds",
		f.clients, f.alpha, f.epochs, f.batch, f.lr, f.rounds)
}

// path is the named file in the output directory.
func (s *showcase) path(name string) string { return filepath.Join(s.f.out, name) }

// printHeader says what the federation is, where it runs and how its energy is measured.
func (s *showcase) printHeader(inv *energy.Inventory) {
	fmt.Fprintf(s.stdout, "wattagg federation: %s\n", s.setup)
	fmt.Fprintf(s.stdout, "server: wattagg's aggregation server in this process, HTTP on a loopback port; working files under %s\n", s.scratch)
	fmt.Fprintf(s.stdout, "energy: %s\n\n", meterLine(inv))
}

// mainOptions are the main run's options: the common ones, the inference load if any, and
// a progress that prints each round.
func (s *showcase) mainOptions() []federation.Option {
	opts := append([]federation.Option(nil), s.common...)
	if s.f.load > 0 {
		opts = append(opts, federation.WithInferenceLoad(s.f.load))
	}
	return append(opts, federation.WithProgress(printRounds(s.stdout)))
}

// printRounds prints each round as it ends, under a header printed before the first.
func printRounds(w io.Writer) federation.Progress {
	first := true
	return func(rd federation.Round) {
		if first {
			federation.WriteRoundsHeader(w)
			first = false
		}
		federation.WriteRound(w, rd)
	}
}

// reportMain prints the main run's provenance and summary, writes its plot and its rounds'
// table, and keeps it as the first of the results.
func (s *showcase) reportMain(res *federation.Result) error {
	if len(res.Rounds) > 0 {
		fmt.Fprintf(s.stdout, "\njoules' provenance (round %d): %s\n", len(res.Rounds), federation.Provenance(res.Rounds[len(res.Rounds)-1].Energy))
	}
	summarise(s.stdout, res, s.f.load > 0)
	if err := federation.PlotRun(s.path("federation.png"), res, s.setup); err != nil {
		return err
	}
	if err := writeRounds(s.path("federation.md"), res, s.setup); err != nil {
		return err
	}
	s.results = []*federation.Result{res}
	fmt.Fprintf(s.stdout, "main run: %.1f s; wrote %s and %s\n", time.Since(s.start).Seconds(),
		s.path("federation.png"), s.path("federation.md"))
	return nil
}

// runTable runs the attack table's federations, the main run filling its clean FedAvg
// cell, and writes the table and its plot. Failed runs are kept in s.failed; the error
// returned is one that stops the command.
func (s *showcase) runTable(ctx context.Context, res *federation.Result) error {
	attacks := federation.DefaultAttacks()
	if !s.f.clean {
		attacks = attacks[1:]
	}
	t, err := federation.NewTable(s.f.rules, attacks, s.f.poisoned)
	if err != nil {
		return err
	}
	t.Set(res)
	fmt.Fprintf(s.stdout, "\nattack table: %d federations, %d at a time\n", countEmpty(t), s.f.parallel)
	err = t.Run(ctx, s.f.parallel, s.tableRunDone, s.common...)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	// A failed run has its cell marked; the table and plots are written, then the
	// failures returned.
	s.failed = err
	return s.writeTable(t)
}

// tableRunDone keeps one of the attack table's runs and prints its line.
func (s *showcase) tableRunDone(r *federation.Result) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.results = append(s.results, r)
	fmt.Fprintf(s.stdout, "  %-34s %-12s final accuracy %.3f (%.1f s)%s\n", r.Rule.Label(), r.Attack, r.Final(), r.Wall.Seconds(), runNote(r))
}

// runNote says how an attack table's run went wrong, if it did.
func runNote(r *federation.Result) string {
	switch {
	case r.Error != "":
		return " — FAILED: " + r.Error
	case r.Collapsed != "":
		return " — " + r.Collapsed
	case r.FirstDropped() > 0:
		return fmt.Sprintf(" — clients drop out from round %d", r.FirstDropped())
	}
	return ""
}

// writeTable prints the attack table and writes it as Markdown, with its plot.
func (s *showcase) writeTable(t *federation.Table) error {
	var md strings.Builder
	fmt.Fprintf(&md, "# Attack table\n\n%s. Final held-out accuracy after the last round; %d of %d clients poisoned in the attack columns.\n\n",
		s.setup, s.f.poisoned, s.f.clients)
	if err := t.WriteMarkdown(&md); err != nil {
		return err
	}
	fmt.Fprintf(s.stdout, "\n%s\n", md.String())
	if err := os.WriteFile(s.path("attack-table.md"), []byte(md.String()), 0o644); err != nil {
		return err
	}
	if err := federation.PlotTable(s.path("attacks.png"), t, s.setup); err != nil {
		return err
	}
	fmt.Fprintf(s.stdout, "attack table: %.1f s; wrote %s and %s\n", t.Wall.Seconds(),
		s.path("attack-table.md"), s.path("attacks.png"))
	return nil
}

// writeResults writes every run, every round, to results.json.
func (s *showcase) writeResults() error {
	b, err := json.MarshalIndent(s.results, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(s.path("results.json"), b, 0o644)
}

// meterLine says which meter the rounds are measured with, and why a better one is absent.
func meterLine(inv *energy.Inventory) string {
	s := inv.CPU.Name()
	if inv.CPUEstimate != "" {
		s += " (an estimate, not a counter: " + inv.CPUEstimate + "); RAPL: " + inv.RAPL.Detail
	} else {
		s += " (" + inv.RAPL.Detail + ")"
	}
	if len(inv.GPUs) > 0 {
		s += "; GPUs: " + inv.NVML.Detail
	}
	return s
}

func summarise(w io.Writer, res *federation.Result, load bool) {
	fmt.Fprintln(w)
	if res.Collapsed != "" {
		fmt.Fprintf(w, "the federation collapsed: %s\n", res.Collapsed)
	}
	if r := res.FirstReaching(0.90); r > 0 {
		fmt.Fprintf(w, "held-out accuracy (%d digits) first reached 0.90 in round %d; final %.3f after round %d\n",
			res.TestRows, r, res.Final(), len(res.Rounds))
	} else {
		fmt.Fprintf(w, "held-out accuracy (%d digits) never reached 0.90; final %.3f after round %d\n", res.TestRows, res.Final(), len(res.Rounds))
	}
	if load {
		l := res.Load
		fmt.Fprintf(w, "inference node: %d prediction requests while its model was reloaded %d times, %d failed; %d models answered them\n",
			l.Requests, len(res.Rounds), l.Failed, l.Generations)
		if l.FirstError != "" {
			fmt.Fprintf(w, "  first failure: %s\n", l.FirstError)
		}
	}
}

// writeRounds writes the run's rounds as a Markdown table.
func writeRounds(path string, res *federation.Result, setup string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# Federation\n\n%s. Rule %s.\n\n", setup, res.Rule)
	b.WriteString("| round | held-out accuracy | clients | bytes | aggregation (ms) | joules | joules' source |\n|---:|---:|---:|---:|---:|---:|---|\n")
	for _, rd := range res.Rounds {
		j := "—"
		if rd.Joules != nil {
			j = fmt.Sprintf("%.4f", *rd.Joules)
		}
		src := rd.JoulesSource
		if src == "" {
			src = rd.JoulesReason
		}
		fmt.Fprintf(&b, "| %d | %.3f | %d | %d | %.2f | %s | %s |\n", rd.Round, rd.Accuracy, rd.Clients, rd.Bytes, rd.Seconds*1e3, j, src)
	}
	if len(res.Rounds) > 0 {
		fmt.Fprintf(&b, "\nJoules' provenance: %s.\n", federation.Provenance(res.Rounds[len(res.Rounds)-1].Energy))
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

func ruleNames(rules []federation.Rule) string {
	names := make([]string, len(rules))
	for i, r := range rules {
		names[i] = r.Name
	}
	return strings.Join(names, ",")
}

func countEmpty(t *federation.Table) int {
	n := 0
	for _, row := range t.Results {
		for _, r := range row {
			if r == nil {
				n++
			}
		}
	}
	return n
}
