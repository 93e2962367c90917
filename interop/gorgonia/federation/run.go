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
	c := defaults()
	for _, o := range opts {
		if o == nil {
			return nil, fmt.Errorf("%w: nil option", ErrOption)
		}
		if err := o(&c); err != nil {
			return nil, err
		}
	}
	if c.poisoned >= c.clients {
		return nil, fmt.Errorf("%w: %d of %d clients poisoned leaves no honest one", ErrOption, c.poisoned, c.clients)
	}
	log := c.log
	if log == nil {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	dir := c.dir
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp(c.scratch, "wattagg-federation-"); err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	meters := c.meters
	if len(meters) == 0 {
		inv, err := energy.Discover()
		if err != nil {
			return nil, err
		}
		defer inv.Close()
		meters = inv.Meters()
	}

	all, err := digits.Load()
	if err != nil {
		return nil, err
	}
	train, test, err := all.Split(c.testFrac, c.seed)
	if err != nil {
		return nil, err
	}
	shards, err := train.DirichletShards(c.clients, c.alpha, 20, c.seed)
	if err != nil {
		return nil, err
	}
	// The initial model is what every client is given before round 1 (a deployment ships
	// it with the model's code); later rounds start from the server's models.
	initial := filepath.Join(dir, "initial.safetensors")
	model0, err := mlp.Init(c.hidden, c.seed)
	if err != nil {
		return nil, err
	}
	if err := safetensors.WriteFile(initial, model0, safetensors.WithDirectIO(false)); err != nil {
		return nil, err
	}

	agg, err := startAggregator(&c, filepath.Join(dir, "server"), meters, log)
	if err != nil {
		return nil, err
	}
	defer agg.stop()
	node, err := startInference(filepath.Join(dir, "inference"), agg.url, test, log)
	if err != nil {
		return nil, err
	}
	defer node.close()
	res := &Result{Rule: c.rule, Attack: c.attack, Clients: c.clients, Alpha: c.alpha, Hidden: c.hidden,
		TestRows: test.Len(), Server: agg.url}
	for _, s := range shards {
		res.Shards = append(res.Shards, s.Len())
	}
	parts := make([]*participant, c.clients)
	for k := range parts {
		api, err := agg.client(k)
		if err != nil {
			return nil, err
		}
		a := NoAttack
		if k < c.poisoned {
			a = c.attack
			res.Poisoned = append(res.Poisoned, agg.ids[k])
		}
		if parts[k], err = newParticipant(agg.ids[k], api, shards[k], a, c.scale, filepath.Join(dir, "clients", agg.ids[k]),
			c.seed*1000+uint64(k), c.train); err != nil {
			return nil, err
		}
	}

	start := time.Now()
	var load *loadGenerator
	defer func() {
		if load != nil {
			if len(res.Rounds) > 0 {
				load.await(res.Rounds[len(res.Rounds)-1].Generation, 2*time.Second)
			}
			res.Load = load.stop()
		}
		res.Wall = time.Since(start)
	}()
	for n := 1; n <= c.rounds; n++ {
		rd, err := runRound(ctx, &c, n, agg, node, parts, initial)
		if errors.Is(err, ErrCollapsed) {
			res.Collapsed = err.Error()
			return res, nil
		}
		if err != nil {
			return res, err
		}
		res.Rounds = append(res.Rounds, rd)
		if load == nil && c.load > 0 {
			if load, err = node.startLoad(test, c.load); err != nil {
				return res, err
			}
		}
		if c.progress != nil {
			c.progress(rd)
		}
	}
	return res, nil
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
