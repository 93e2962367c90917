package mlp

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/wattagg/wattagg/tensor"
)

// fedAvg is the plain float64 weighted mean of the clients' tensors, weights from their
// num_examples metadata, rounded to float32: FedAvg written in the test, as the check of the
// training pieces (the real federation uses wattagg's aggregation).
func fedAvg(t *testing.T, clients []*tensor.Set) *tensor.Set {
	t.Helper()
	total := 0.0
	w := make([]float64, len(clients))
	for k, c := range clients {
		n, err := strconv.Atoi(c.Metadata[NumExamplesKey])
		if err != nil || n <= 0 {
			t.Fatalf("client %d: num_examples %q", k, c.Metadata[NumExamplesKey])
		}
		w[k] = float64(n)
		total += w[k]
	}
	out, err := tensor.NewSet()
	if err != nil {
		t.Fatal(err)
	}
	for i, x := range clients[0].Tensors() {
		sum := make([]float64, x.Len())
		for k, c := range clients {
			for j := range sum {
				sum[j] += w[k] * c.At(i).Value(j)
			}
		}
		v := make([]float32, len(sum))
		for j := range v {
			v[j] = float32(sum[j] / total)
		}
		m, err := tensor.FromF32(x.Name, x.Shape, v)
		if err != nil {
			t.Fatal(err)
		}
		if err := out.Add(m); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

type fedConfig struct {
	rounds, clients, hidden int
	alpha                   float64
	opts                    []Option
}

// federate runs FedAvg in process and returns the held-out accuracy after each round.
func federate(t *testing.T, cfg fedConfig, stopAt float64) (accs []float64, perClient time.Duration) {
	t.Helper()
	train, test := splitDigits(t)
	shards, err := train.DirichletShards(cfg.clients, cfg.alpha, 20, 42)
	if err != nil {
		t.Fatal(err)
	}
	global := initModel(t, cfg.hidden, 42)
	var trainTime time.Duration
	for round := range cfg.rounds {
		updates := make([]*tensor.Set, len(shards))
		for k, shard := range shards {
			start := time.Now()
			opts := append([]Option{WithSeed(uint64(round*1000 + k))}, cfg.opts...)
			updates[k], err = Train(context.Background(), global, shard, opts...)
			trainTime += time.Since(start)
			if err != nil {
				t.Fatal(err)
			}
		}
		global = fedAvg(t, updates)
		m, err := Load(global)
		if err != nil {
			t.Fatal(err)
		}
		acc, err := m.Accuracy(test)
		if err != nil {
			t.Fatal(err)
		}
		accs = append(accs, acc)
		if acc >= stopAt {
			break
		}
	}
	return accs, trainTime / time.Duration(len(accs)*len(shards))
}

// TestFedAvgDigits is the server-free check of the showcase's pieces: 10 clients with
// Dirichlet(0.5) label skew train locally with the default options from the global model,
// FedAvg (weighted by num_examples) makes the next one, and the held-out accuracy must reach
// 0.90 within 20 rounds. With -short it stops at the first round that does.
func TestFedAvgDigits(t *testing.T) {
	start := time.Now()
	stop := 2.0
	if testing.Short() {
		stop = 0.90
	}
	accs, perClient := federate(t, fedConfig{rounds: 20, clients: 10, hidden: 32, alpha: 0.5}, stop)
	first := -1
	for r, a := range accs {
		if a >= 0.90 && first < 0 {
			first = r + 1
		}
	}
	t.Logf("held-out accuracy by round: %.3f", accs)
	t.Logf("0.90 first reached after round %d; %d rounds in %v, %v per client per round of local training",
		first, len(accs), time.Since(start).Round(time.Millisecond), perClient.Round(10*time.Microsecond))
	if first < 0 {
		t.Fatalf("held-out accuracy never reached 0.90 in %d rounds: %.3f", len(accs), accs)
	}
}
