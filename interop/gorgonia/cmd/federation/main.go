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

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f, err := parse(args, stderr)
	if err != nil {
		return err
	}
	start := time.Now()
	if err := os.MkdirAll(f.out, 0o755); err != nil {
		return err
	}
	level := slog.LevelWarn
	if f.verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	inv, err := energy.Discover()
	if err != nil {
		return err
	}
	defer inv.Close()
	scratch := scratchParent(f.dir)
	common := []federation.Option{
		federation.WithRounds(f.rounds), federation.WithClients(f.clients), federation.WithDirichlet(f.alpha),
		federation.WithSeed(f.seed), federation.WithScratch(scratch), federation.WithMeters(inv.Meters()...),
		federation.WithLogger(log),
		federation.WithTraining(mlp.WithEpochs(f.epochs), mlp.WithBatchSize(f.batch), mlp.WithLearningRate(f.lr)),
	}
	setup := fmt.Sprintf("%d clients, Dirichlet(%g) label-skewed shards of the UCI digits; MLP 64-32-10, %d local epochs of SGD (batch %d, lr %g) with gorgonia; %d rounds",
		f.clients, f.alpha, f.epochs, f.batch, f.lr, f.rounds)

	// The main federation: clean FedAvg, with a stream of requests on the inference node.
	fmt.Fprintf(stdout, "wattagg federation: %s\n", setup)
	fmt.Fprintf(stdout, "server: wattagg's aggregation server in this process, HTTP on a loopback port; working files under %s\n", scratch)
	fmt.Fprintf(stdout, "energy: %s\n\n", meterLine(inv))
	main := append([]federation.Option(nil), common...)
	if f.load > 0 {
		main = append(main, federation.WithInferenceLoad(f.load))
	}
	first := true
	main = append(main, federation.WithProgress(func(rd federation.Round) {
		if first {
			federation.WriteRoundsHeader(stdout)
			first = false
		}
		federation.WriteRound(stdout, rd)
	}))
	res, err := federation.Run(ctx, main...)
	if err != nil {
		return err
	}
	if len(res.Rounds) > 0 {
		fmt.Fprintf(stdout, "\njoules' provenance (round %d): %s\n", len(res.Rounds), federation.Provenance(res.Rounds[len(res.Rounds)-1].Energy))
	}
	summarise(stdout, res, f.load > 0)
	if err := federation.PlotRun(filepath.Join(f.out, "federation.png"), res, setup); err != nil {
		return err
	}
	if err := writeRounds(filepath.Join(f.out, "federation.md"), res, setup); err != nil {
		return err
	}
	results := []*federation.Result{res}
	fmt.Fprintf(stdout, "main run: %.1f s; wrote %s and %s\n", time.Since(start).Seconds(),
		filepath.Join(f.out, "federation.png"), filepath.Join(f.out, "federation.md"))

	var failed error // the attack table's failed runs
	if f.table {
		attacks := federation.DefaultAttacks()
		if !f.clean {
			attacks = attacks[1:]
		}
		t, err := federation.NewTable(f.rules, attacks, f.poisoned)
		if err != nil {
			return err
		}
		t.Set(res)
		fmt.Fprintf(stdout, "\nattack table: %d federations, %d at a time\n", countEmpty(t), f.parallel)
		var mu sync.Mutex
		err = t.Run(ctx, f.parallel, func(r *federation.Result) {
			mu.Lock()
			defer mu.Unlock()
			results = append(results, r)
			note := ""
			switch {
			case r.Error != "":
				note = " — FAILED: " + r.Error
			case r.Collapsed != "":
				note = " — " + r.Collapsed
			case r.FirstDropped() > 0:
				note = fmt.Sprintf(" — clients drop out from round %d", r.FirstDropped())
			}
			fmt.Fprintf(stdout, "  %-34s %-12s final accuracy %.3f (%.1f s)%s\n", r.Rule.Label(), r.Attack, r.Final(), r.Wall.Seconds(), note)
		}, common...)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// A failed run has its cell marked; the table and plots are written, then the
		// failures returned.
		failed = err
		var md strings.Builder
		fmt.Fprintf(&md, "# Attack table\n\n%s. Final held-out accuracy after the last round; %d of %d clients poisoned in the attack columns.\n\n",
			setup, f.poisoned, f.clients)
		if err := t.WriteMarkdown(&md); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "\n%s\n", md.String())
		if err := os.WriteFile(filepath.Join(f.out, "attack-table.md"), []byte(md.String()), 0o644); err != nil {
			return err
		}
		if err := federation.PlotTable(filepath.Join(f.out, "attacks.png"), t, setup); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "attack table: %.1f s; wrote %s and %s\n", t.Wall.Seconds(),
			filepath.Join(f.out, "attack-table.md"), filepath.Join(f.out, "attacks.png"))
	}
	b, err := json.MarshalIndent(results, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(f.out, "results.json"), b, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "showcase: %.1f s in all\n", time.Since(start).Seconds())
	return failed
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
