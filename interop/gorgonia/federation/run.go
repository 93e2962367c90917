package federation

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/wattagg/wattagg/energy"
	"github.com/wattagg/wattagg/interop/gorgonia/digits"
	"github.com/wattagg/wattagg/interop/gorgonia/mlp"
	"github.com/wattagg/wattagg/server/client"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// Run runs one federation: it starts the server and the inference node, then for every round
// lets each client pull the last global model, train and push, waits for the server to
// aggregate, has the inference node load the new model and answer the held-out rows, and
// records the round. A client whose training diverges, or whose update the server refuses,
// sends nothing that round (the round is closed without it); a round in which no client can
// send anything ends the run early, with Result.Collapsed saying so, and no error. Run stops
// everything before it returns; on error the rounds run so far are in the Result.
func Run(ctx context.Context, opts ...Option) (*Result, error) {
	c, err := configure(opts)
	if err != nil {
		return nil, err
	}
	log := c.logger()
	dir, removeDir, err := c.workDir()
	if err != nil {
		return nil, err
	}
	defer removeDir()
	meters, closeMeters, err := c.energyMeters()
	if err != nil {
		return nil, err
	}
	defer closeMeters()
	data, err := loadData(&c)
	if err != nil {
		return nil, err
	}
	initial, err := writeInitialModel(&c, dir)
	if err != nil {
		return nil, err
	}

	agg, err := startAggregator(&c, filepath.Join(dir, "server"), meters, log)
	if err != nil {
		return nil, err
	}
	defer agg.stop()
	node, err := startInference(filepath.Join(dir, "inference"), agg.url, data.test, log)
	if err != nil {
		return nil, err
	}
	defer node.close()
	f := &federationRun{c: &c, data: data, initial: initial, agg: agg, node: node, res: newResult(&c, data, agg.url)}
	if err := f.join(dir); err != nil {
		return nil, err
	}
	return f.runRounds(ctx)
}

// configure applies opts over the defaults and checks that they leave an honest client.
func configure(opts []Option) (config, error) {
	c := defaults()
	for _, o := range opts {
		if o == nil {
			return c, fmt.Errorf("%w: nil option", ErrOption)
		}
		if err := o(&c); err != nil {
			return c, err
		}
	}
	if c.poisoned >= c.clients {
		return c, fmt.Errorf("%w: %d of %d clients poisoned leaves no honest one", ErrOption, c.poisoned, c.clients)
	}
	return c, nil
}

// logger is the configured logger, or one that writes warnings to stderr.
func (c *config) logger() *slog.Logger {
	if c.log != nil {
		return c.log
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// workDir makes the run's working directory: the configured one, kept, or a temporary one
// under the scratch parent, which the returned func removes.
func (c *config) workDir() (string, func(), error) {
	if c.dir != "" {
		if err := os.MkdirAll(c.dir, 0o700); err != nil {
			return "", nil, err
		}
		return c.dir, func() {}, nil
	}
	dir, err := os.MkdirTemp(c.scratch, "wattagg-federation-")
	if err != nil {
		return "", nil, err
	}
	return dir, func() { os.RemoveAll(dir) }, nil
}

// energyMeters are the configured meters, or the machine's, discovered; the returned func
// closes what was discovered.
func (c *config) energyMeters() ([]energy.Meter, func(), error) {
	if len(c.meters) > 0 {
		return c.meters, func() {}, nil
	}
	inv, err := energy.Discover()
	if err != nil {
		return nil, nil, err
	}
	return inv.Meters(), func() { inv.Close() }, nil
}

// federationData is the digits a run uses: the held-out rows and each client's shard.
type federationData struct {
	test   digits.Dataset
	shards []digits.Dataset
}

// loadData splits the digits into training and held-out rows and deals the training rows
// out to the clients in Dirichlet shards.
func loadData(c *config) (federationData, error) {
	all, err := digits.Load()
	if err != nil {
		return federationData{}, err
	}
	train, test, err := all.Split(c.testFrac, c.seed)
	if err != nil {
		return federationData{}, err
	}
	shards, err := train.DirichletShards(c.clients, c.alpha, 20, c.seed)
	if err != nil {
		return federationData{}, err
	}
	return federationData{test: test, shards: shards}, nil
}

// writeInitialModel writes the initial model into dir and returns its path.
func writeInitialModel(c *config, dir string) (string, error) {
	// The initial model is what every client is given before round 1 (a deployment ships
	// it with the model's code); later rounds start from the server's models.
	initial := filepath.Join(dir, "initial.safetensors")
	model0, err := mlp.Init(c.hidden, c.seed)
	if err != nil {
		return "", err
	}
	if err := safetensors.WriteFile(initial, model0, safetensors.WithDirectIO(false)); err != nil {
		return "", err
	}
	return initial, nil
}

// newResult is the Result of a run before its rounds: its setup and the shards' sizes.
func newResult(c *config, data federationData, server string) *Result {
	res := &Result{Rule: c.rule, Attack: c.attack, Clients: c.clients, Alpha: c.alpha, Hidden: c.hidden,
		TestRows: data.test.Len(), Server: server}
	for _, s := range data.shards {
		res.Shards = append(res.Shards, s.Len())
	}
	return res
}

// federationRun is a run once its server and inference node are up: the parties of its rounds
// and the Result it records them in.
type federationRun struct {
	c       *config
	data    federationData
	initial string
	agg     *aggregator
	node    *inferenceNode
	parts   []*participant
	load    *loadGenerator // nil until started, after the first round
	res     *Result
}

// join makes every client a participant of the server, each with its shard, a working
// directory under dir, and the attack if it is one of the poisoned ones.
func (f *federationRun) join(dir string) error {
	c := f.c
	f.parts = make([]*participant, c.clients)
	for k := range f.parts {
		api, err := f.agg.client(k)
		if err != nil {
			return err
		}
		a := NoAttack
		if k < c.poisoned {
			a = c.attack
			f.res.Poisoned = append(f.res.Poisoned, f.agg.ids[k])
		}
		if f.parts[k], err = newParticipant(f.agg.ids[k], api, f.data.shards[k], a, c.scale, filepath.Join(dir, "clients", f.agg.ids[k]),
			c.seed*1000+uint64(k), c.train); err != nil {
			return err
		}
	}
	return nil
}

// runRounds runs the rounds in turn, recording each, until the last or the federation
// collapses; it times them, and stops the inference load once they end.
func (f *federationRun) runRounds(ctx context.Context) (*Result, error) {
	start := time.Now()
	defer f.finish(start)
	for n := 1; n <= f.c.rounds; n++ {
		rd, err := runRound(ctx, f.c, n, f.agg, f.node, f.parts, f.initial)
		if errors.Is(err, ErrCollapsed) {
			f.res.Collapsed = err.Error()
			return f.res, nil
		}
		if err != nil {
			return f.res, err
		}
		if err := f.record(rd); err != nil {
			return f.res, err
		}
	}
	return f.res, nil
}

// record adds round rd to the Result, starts the inference load after the first round if
// one is configured, and reports the round's progress.
func (f *federationRun) record(rd Round) error {
	f.res.Rounds = append(f.res.Rounds, rd)
	if f.load == nil && f.c.load > 0 {
		var err error
		if f.load, err = f.node.startLoad(f.data.test, f.c.load); err != nil {
			return err
		}
	}
	if f.c.progress != nil {
		f.c.progress(rd)
	}
	return nil
}

// finish stops the inference load, once it has seen the last round's model, and records
// its statistics and the rounds' time since start.
func (f *federationRun) finish(start time.Time) {
	res := f.res
	if f.load != nil {
		if len(res.Rounds) > 0 {
			f.load.await(res.Rounds[len(res.Rounds)-1].Generation, 2*time.Second)
		}
		res.Load = f.load.stop()
	}
	res.Wall = time.Since(start)
}

// runRound runs round n: every client at once, then the server's aggregate, then the
// inference node.
func runRound(ctx context.Context, c *config, n int, agg *aggregator, node *inferenceNode, parts []*participant, initial string) (Round, error) {
	if err := agg.awaitOpen(ctx, n, c.poll); err != nil {
		return Round{}, err
	}
	start := time.Now()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		first   error
		dropped []string
	)
	for _, p := range parts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := p.round(ctx, n, initial)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
			case errors.Is(err, tensor.ErrNonFinite) || errors.Is(err, client.ErrBadUpdate):
				// The client sends nothing this round, as a real one would: its training
				// diverged, or the server refused what it sent.
				dropped = append(dropped, err.Error())
			case first == nil:
				first = err
				cancel() // the round cannot complete: stop the others
			}
		}()
	}
	wg.Wait()
	if first != nil {
		return Round{}, first
	}
	slices.Sort(dropped)
	switch {
	case len(dropped) == len(parts):
		return Round{}, fmt.Errorf("%w: round %d: no client could send an update (%s)", ErrCollapsed, n, dropped[0])
	case len(dropped) > 0:
		// The round waits for max_clients updates that will not all come: close it now.
		if _, err := agg.admin.CloseRound(ctx, n); err != nil {
			return Round{}, fmt.Errorf("closing round %d without its %d dropped clients: %w", n, len(dropped), err)
		}
	}
	st, err := agg.awaitClosed(ctx, n)
	if err != nil {
		return Round{}, err
	}
	info, err := node.load(ctx, n)
	if err != nil {
		return Round{}, err
	}
	acc, err := node.accuracy(ctx, info.Generation)
	if err != nil {
		return Round{}, err
	}
	rep := st.Report
	return Round{Round: n, Accuracy: acc, Clients: st.Clients, Bytes: st.Bytes, Seconds: rep.Seconds,
		Joules: rep.Joules, JoulesSource: rep.JoulesSource, JoulesReason: rep.JoulesReason, Energy: rep.Energy,
		Generation: info.Generation, Dropped: dropped, Wall: time.Since(start)}, nil
}
