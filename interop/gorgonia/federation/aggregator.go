package federation

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"time"

	"github.com/wattagg/wattagg/energy"
	"github.com/wattagg/wattagg/server"
	"github.com/wattagg/wattagg/server/api"
	"github.com/wattagg/wattagg/server/client"
)

// aggregator is the federation's wattagg server: server.New over a data directory, serving
// its HTTP API on a loopback port until stop. Every client has its own token; a round closes
// (and the next opens) as soon as every client has pushed, the server's default max_clients.
type aggregator struct {
	url    string
	ids    []string       // client k's id
	tokens []string       // client k's bearer token
	api    *client.Client // no token: status and models are public
	admin  *client.Client // the admin token: closes a round some clients dropped out of
	cancel context.CancelFunc
	done   chan error
}

func startAggregator(c *config, dataDir string, meters []energy.Meter, log *slog.Logger) (*aggregator, error) {
	cfg := &server.Config{Listen: "127.0.0.1:0", DataDir: dataDir,
		Round: server.RoundConfig{Rule: c.rule.Name, Params: maps.Clone(c.rule.Params)}}
	a := &aggregator{}
	adminToken, err := newToken()
	if err != nil {
		return nil, err
	}
	cfg.AdminTokenSHA256 = server.HashToken(adminToken)
	for k := range c.clients {
		tok, err := newToken()
		if err != nil {
			return nil, err
		}
		id := fmt.Sprintf("client-%02d", k)
		a.ids = append(a.ids, id)
		a.tokens = append(a.tokens, tok)
		cfg.Clients = append(cfg.Clients, server.ClientConfig{ID: id, TokenSHA256: server.HashToken(tok)})
	}
	srv, err := server.New(cfg, server.WithLogger(log), server.WithMeters(meters...))
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		srv.Close()
		return nil, err
	}
	a.url = "http://" + ln.Addr().String()
	if a.api, err = client.New(a.url); err == nil {
		a.admin, err = client.New(a.url, client.WithToken(adminToken))
	}
	if err != nil {
		ln.Close()
		srv.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel, a.done = cancel, make(chan error, 1)
	go func() { a.done <- srv.Serve(ctx, ln, 5*time.Second) }()
	return a, nil
}

// newToken is a client's secret: 32 random bytes, hex.
func newToken() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

// client is a client of the server with client k's token.
func (a *aggregator) client(k int) (*client.Client, error) {
	return client.New(a.url, client.WithToken(a.tokens[k]))
}

// stop shuts the server down gracefully and waits for it.
func (a *aggregator) stop() error {
	a.cancel()
	return <-a.done
}

// awaitOpen waits until round n exists: the server opens it when round n−1 ends.
func (a *aggregator) awaitOpen(ctx context.Context, n int, poll time.Duration) error {
	for {
		st, err := a.api.Status(ctx, n)
		switch {
		case err == nil && st.State == api.StateOpen:
			return nil
		case err == nil:
			return fmt.Errorf("%w: round %d is %s before any client pushed (%s)", ErrRound, n, st.State, st.Reason)
		case !errors.Is(err, client.ErrNotFound):
			return err
		}
		if err := sleep(ctx, poll); err != nil {
			return fmt.Errorf("waiting for round %d to open: %w", n, err)
		}
	}
}

// awaitClosed waits until round n has ended, in long polls of the server (client.WaitEnded),
// and returns its status, with the report, or ErrRound if it failed.
func (a *aggregator) awaitClosed(ctx context.Context, n int) (*api.Round, error) {
	st, err := a.api.WaitEnded(ctx, n)
	if err != nil {
		return nil, fmt.Errorf("waiting for round %d to close: %w", n, err)
	}
	switch {
	case st.State == api.StateFailed:
		return nil, fmt.Errorf("%w: round %d failed: %s", ErrRound, n, st.Reason)
	case st.Report == nil:
		return nil, fmt.Errorf("%w: round %d closed without a report", ErrRound, n)
	}
	return st, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
