package federation

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/wattagg/wattagg/interop/gorgonia/digits"
	"github.com/wattagg/wattagg/interop/gorgonia/serving"
	"github.com/wattagg/wattagg/server/client"
)

// inferenceNode is the Python-free inference node: it pulls each round's global model from
// the server into its own file, reloads it into a serving.Service (the service
// cmd/digits-serve runs) that answers predictions over HTTP on a loopback port, and measures
// held-out accuracy by asking that service, as any other client of it would.
type inferenceNode struct {
	svc    *serving.Service
	url    string
	api    *client.Client
	path   string
	hc     *http.Client
	labels []int
	body   []byte // the held-out rows as a PredictRequest
	hs     *http.Server
	done   chan error
}

func startInference(dir, serverURL string, test digits.Dataset, log *slog.Logger) (*inferenceNode, error) {
	api, err := client.New(serverURL)
	if err != nil {
		return nil, err
	}
	svc, err := serving.New(serving.WithMaxRows(max(test.Len(), 1)))
	if err != nil {
		return nil, err
	}
	body, err := json.Marshal(serving.PredictRequest{Inputs: pixels(test, 0, test.Len())})
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	n := &inferenceNode{svc: svc, url: "http://" + ln.Addr().String(), api: api,
		path: filepath.Join(dir, "global.safetensors"), labels: test.Y, body: body,
		hc:   &http.Client{Timeout: 30 * time.Second},
		done: make(chan error, 1),
		hs: &http.Server{Handler: svc.Handler(), ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second, IdleTimeout: time.Minute,
			ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}}
	go func() { n.done <- n.hs.Serve(ln) }()
	return n, nil
}

// pixels returns rows [from, to) of d as the service takes them: pixels 0..16.
func pixels(d digits.Dataset, from, to int) [][]float64 {
	rows := make([][]float64, 0, to-from)
	for i := from; i < to; i++ {
		row := make([]float64, digits.Features)
		for j, v := range d.Row(i) {
			row[j] = float64(v * digits.MaxPixel) // exact: v is a multiple of 1/16
		}
		rows = append(rows, row)
	}
	return rows
}

// load pulls round n's model (atomically replacing the node's file) and makes it the
// service's model; requests running meanwhile finish on the previous one.
func (n *inferenceNode) load(ctx context.Context, round int) (serving.ModelInfo, error) {
	if err := n.api.Pull(ctx, round, n.path); err != nil {
		return serving.ModelInfo{}, fmt.Errorf("inference node: pulling round %d's model: %w", round, err)
	}
	info, err := n.svc.Reload(n.path)
	if err != nil {
		return serving.ModelInfo{}, fmt.Errorf("inference node: loading round %d's model: %w", round, err)
	}
	return info, nil
}

// predict posts body to the service's /predict.
func (n *inferenceNode) predict(ctx context.Context, body []byte) (*serving.PredictResponse, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.url+"/predict", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := n.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("inference node: /predict answered %s: %s", resp.Status, bytes.TrimSpace(b))
	}
	var out serving.PredictResponse
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("inference node: /predict: %w", err)
	}
	return &out, nil
}

// accuracy asks the service for the held-out rows' classes and returns the share that are
// right. The answer must come from model generation gen: the one just loaded.
func (n *inferenceNode) accuracy(ctx context.Context, gen uint64) (float64, error) {
	resp, err := n.predict(ctx, n.body)
	if err != nil {
		return 0, err
	}
	if resp.Model.Generation != gen {
		return 0, fmt.Errorf("inference node: answered by model generation %d, want %d", resp.Model.Generation, gen)
	}
	if len(resp.Classes) != len(n.labels) {
		return 0, fmt.Errorf("inference node: %d classes for %d rows", len(resp.Classes), len(n.labels))
	}
	right := 0
	for i, c := range resp.Classes {
		if c == n.labels[i] {
			right++
		}
	}
	return float64(right) / float64(len(n.labels)), nil
}

// close stops the HTTP server and retires the model.
func (n *inferenceNode) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := n.hs.Shutdown(ctx)
	if serr := <-n.done; !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	n.svc.Close()
	return err
}

// LoadStats counts the prediction requests sent to the inference node while the federation
// ran and its model was replaced round after round.
type LoadStats struct {
	Requests int
	Failed   int
	// Generations is how many different models answered them.
	Generations int
	// FirstError is the first failure, if any.
	FirstError string
}

// loadGenerator sends small prediction requests to the node, one every pause, until stopped.
type loadGenerator struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	stats  LoadStats
	gens   map[uint64]bool
}

func (n *inferenceNode) startLoad(test digits.Dataset, pause time.Duration) (*loadGenerator, error) {
	rows := min(8, test.Len())
	body, err := json.Marshal(serving.PredictRequest{Inputs: pixels(test, 0, rows)})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := &loadGenerator{cancel: cancel, gens: map[uint64]bool{}}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		for ctx.Err() == nil {
			resp, err := n.predict(ctx, body)
			if ctx.Err() != nil {
				return // stopped while the request ran: not a failure of the node
			}
			g.mu.Lock()
			g.stats.Requests++
			if err == nil && len(resp.Classes) != rows {
				err = fmt.Errorf("%d classes for %d rows", len(resp.Classes), rows)
			}
			if err != nil {
				g.stats.Failed++
				if g.stats.FirstError == "" {
					g.stats.FirstError = err.Error()
				}
			} else {
				g.gens[resp.Model.Generation] = true
			}
			g.mu.Unlock()
			if sleep(ctx, pause) != nil {
				return
			}
		}
	}()
	return g, nil
}

// await waits, at most timeout, until model generation gen has answered a request: so that a
// run's last reload happens under load too.
func (g *loadGenerator) await(gen uint64, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		g.mu.Lock()
		seen := g.gens[gen]
		g.mu.Unlock()
		if seen {
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// stop ends the load and returns what it counted.
func (g *loadGenerator) stop() LoadStats {
	g.cancel()
	g.wg.Wait()
	g.mu.Lock()
	defer g.mu.Unlock()
	s := g.stats
	s.Generations = len(g.gens)
	return s
}
