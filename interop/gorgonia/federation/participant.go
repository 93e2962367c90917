package federation

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/wattagg/wattagg/interop/gorgonia/attack"
	"github.com/wattagg/wattagg/interop/gorgonia/digits"
	"github.com/wattagg/wattagg/interop/gorgonia/mlp"
	"github.com/wattagg/wattagg/server/api"
	"github.com/wattagg/wattagg/server/client"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// participant is one client of the federation: its shard, its connection to the server with
// its own token, and a directory for the global model it pulls.
type participant struct {
	id    string
	api   *client.Client
	data  digits.Dataset // with flipped labels for a label-flipping client
	scale float64        // the scaling attack's factor; 0 for an honest client
	dir   string
	seed  uint64
	train []mlp.Option
}

func newParticipant(id string, api *client.Client, data digits.Dataset, a Attack, scale float64, dir string, seed uint64, train []mlp.Option) (*participant, error) {
	p := &participant{id: id, api: api, data: data, dir: dir, seed: seed, train: train}
	switch a {
	case ScaleAttack:
		p.scale = scale
	case FlipAttack:
		var err error
		if p.data, err = attack.FlipLabels(data, attack.ReversedLabels()); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return p, nil
}

// round is the client's part of round n: pull the global model of round n−1 (round 1 starts
// from the initial model every client is given), train on the shard from it, poison the
// result if this client is an attacker, and push it to round n. It returns the server's
// acknowledgement, sent once the update is durable.
func (p *participant) round(ctx context.Context, n int, initial string) (*api.Ack, error) {
	path := initial
	if n > 1 {
		path = filepath.Join(p.dir, "global.safetensors")
		if err := p.api.Pull(ctx, n-1, path); err != nil {
			return nil, fmt.Errorf("%s: pulling round %d's model: %w", p.id, n-1, err)
		}
	}
	global, err := safetensors.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p.id, err)
	}
	defer global.Close()
	// The seed goes last: each client's order of samples differs, round after round.
	opts := append(append([]mlp.Option(nil), p.train...), mlp.WithSeed(p.seed^uint64(n)<<20))
	local, err := mlp.Train(ctx, global, p.data, opts...)
	if err != nil {
		return nil, fmt.Errorf("%s: training in round %d: %w", p.id, n, err)
	}
	if p.scale != 0 {
		if local, err = attack.ScaleUpdate(global, local, p.scale); err != nil {
			return nil, fmt.Errorf("%s: %w", p.id, err)
		}
	}
	// The update is written beside the global model, as a client writes what it uploads, and
	// pushed from the file (its length is known before the body is sent).
	update := filepath.Join(p.dir, "update.safetensors")
	if err := safetensors.WriteFile(update, local, safetensors.WithDirectIO(false)); err != nil {
		return nil, fmt.Errorf("%s: %w", p.id, err)
	}
	ack, err := p.api.PushFile(ctx, n, update)
	if err != nil {
		return nil, fmt.Errorf("%s: pushing to round %d: %w", p.id, n, err)
	}
	return ack, nil
}
