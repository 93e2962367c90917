// Package servebench measures a wattagg server (package server) on loopback, each figure beside
// a floor measured in the same run: HTTP ingest of many concurrent clients against plain TCP
// streams into a discarding reader and the disk's durable write rate, peak memory against the
// issue's budget, many small clients' updates per second and acknowledgement latency, the
// durability design against checkpointing the accumulator, and a crash run that kills the
// server with SIGKILL at random moments and checks what survives. `wattagg bench serve` and
// the server's crash test run it.
package servebench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/server"
	"github.com/wattagg/wattagg/server/api"
	"github.com/wattagg/wattagg/server/client"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// Starter starts a server process serving the configuration at cfgPath that writes the
// address it listens on to addrFile once it serves (`wattagg serve --config F --addr-file A`).
type Starter func(cfgPath, addrFile string) (*exec.Cmd, error)

// CrashConfig is a crash run.
type CrashConfig struct {
	Dir         string // a fresh directory for the data, configuration and logs
	Clients     int    // in the round (max_clients), each pushing one update
	Params      int    // f32 parameters per update
	Kills       int    // SIGKILLs, each at a random moment of the pushes
	Concurrency int    // clients pushing at once
	MaxKillWait time.Duration
	Seed        uint64
	Start       Starter
	Log         func(format string, args ...any)
	Sum         string // the round's round.sum, as Config.Sum ("": the server's default)
}

// CrashResult is what a crash run found.
type CrashResult struct {
	Kills      int
	Acked      int // updates acknowledged to their client, over every run
	Lost       int // acknowledged updates missing from the final round
	Twice      int // clients counted more than once
	Mismatched int // acknowledgements whose digest or position differs from the log's
	Updates    int // in the final round
	BitsEqual  bool
	Resumes    []time.Duration // process start to serving, after each kill
}

// Crash runs a round of c.Clients concurrent pushes, kills the server with SIGKILL c.Kills
// times at random moments and restarts it each time, then lets the round finish. It checks that
// every acknowledged update is in the final round exactly once, and that the model has the bits
// of the engine run over the acknowledged spool files in acknowledgement-log order.
func Crash(ctx context.Context, c CrashConfig) (*CrashResult, error) {
	if c.Start == nil || c.Clients < 1 || c.Params < 1 || c.Concurrency < 1 {
		return nil, fmt.Errorf("servebench: crash run: bad configuration")
	}
	if c.MaxKillWait <= 0 {
		c.MaxKillWait = 500 * time.Millisecond
	}
	logf := c.Log
	if logf == nil {
		logf = func(string, ...any) {}
	}
	rng := rand.New(rand.NewPCG(c.Seed, 0x5eed))
	data := filepath.Join(c.Dir, "data")
	round := map[string]any{"rule": "fedavg", "max_clients": c.Clients, "keep_spool": true}
	setSum(round, c.Sum)
	cfg := map[string]any{
		"listen":   "127.0.0.1:0",
		"data_dir": data,
		"round":    round,
		"limits":   map[string]any{"max_streams": c.Concurrency + 4},
	}
	tokens := make([]string, c.Clients)
	var clients []map[string]string
	for k := range tokens {
		tokens[k] = fmt.Sprintf("crash-token-%d-%x", k, rng.Uint64())
		clients = append(clients, map[string]string{"id": clientID(k), "token_sha256": server.HashToken(tokens[k])})
	}
	cfg["clients"] = clients
	cfgPath := filepath.Join(c.Dir, "server.json")
	b, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(cfgPath, b, 0o600); err != nil {
		return nil, err
	}
	bodies := make([][]byte, c.Clients)
	for k := range bodies {
		if bodies[k], err = updateBytes(c.Params, k); err != nil {
			return nil, err
		}
	}
	res := &CrashResult{}
	acked := map[string]api.Ack{}
	var mu sync.Mutex
	for kill := 0; kill <= c.Kills; kill++ {
		final := kill == c.Kills
		started := time.Now()
		p, err := startProcess(ctx, c.Start, cfgPath, filepath.Join(c.Dir, "addr"))
		if err != nil {
			return res, err
		}
		if kill > 0 {
			res.Resumes = append(res.Resumes, time.Since(started))
		}
		// What the restarted server holds: every acknowledgement so far, once.
		if err := checkAcked(ctx, p.url, acked, res); err != nil {
			p.kill()
			return res, err
		}
		pushCtx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		work := make(chan int, c.Clients)
		for k := range c.Clients {
			// The last client pushes only in the last run, so that the round cannot complete
			// before every kill has struck in the middle of it.
			if _, ok := acked[clientID(k)]; !ok && (final || k < c.Clients-1) {
				work <- k
			}
		}
		close(work)
		for range c.Concurrency {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for k := range work {
					cl, err := client.New(p.url, client.WithToken(tokens[k]))
					if err != nil {
						continue
					}
					ack, err := cl.Push(pushCtx, 1, bytes.NewReader(bodies[k]), int64(len(bodies[k])), client.WithWeight(float64(k+1)))
					if err != nil {
						continue
					}
					mu.Lock()
					if _, dup := acked[ack.Client]; !dup {
						acked[ack.Client] = *ack
						res.Acked++
					}
					mu.Unlock()
				}
			}()
		}
		if !final {
			// A random moment of the pushes: after a random number of this run's
			// acknowledgements (fewer than remain, so the round never completes before the last
			// run), and a random delay.
			mu.Lock()
			remaining := c.Clients - 1 - len(acked)
			step := max(1, 2*remaining/(c.Kills-kill+1))
			target := len(acked) + rng.IntN(step)
			mu.Unlock()
			for waited := time.Duration(0); waited < 60*time.Second; waited += time.Millisecond {
				mu.Lock()
				n := len(acked)
				mu.Unlock()
				if n >= target {
					break
				}
				time.Sleep(time.Millisecond)
			}
			time.Sleep(time.Duration(rng.Int64N(int64(c.MaxKillWait))))
			p.kill()
			res.Kills++
			cancel()
			wg.Wait()
			mu.Lock()
			logf("kill %d: %d acknowledged so far", res.Kills, len(acked))
			mu.Unlock()
			continue
		}
		wg.Wait()
		cancel()
		err = waitClosed(ctx, p.url, 1)
		if err == nil {
			err = checkAcked(ctx, p.url, acked, res)
		}
		p.stop()
		if err != nil {
			return res, err
		}
	}
	return res, verifyBits(filepath.Join(data, "rounds", "000001"), acked, res)
}

func clientID(k int) string { return fmt.Sprintf("c%03d", k) }

// updateBytes is client k's update: a deterministic f32 vector, as a .safetensors file.
func updateBytes(params, k int) ([]byte, error) {
	v := make([]float32, params)
	r := rand.New(rand.NewPCG(uint64(k), 7))
	for i := range v {
		v[i] = float32(r.NormFloat64())
	}
	t, err := tensor.FromF32("w", []int{params}, v)
	if err != nil {
		return nil, err
	}
	s, err := tensor.NewSet(t)
	if err != nil {
		return nil, err
	}
	return encodeSet(s)
}

// encodeSet returns the .safetensors bytes of s.
func encodeSet(s *tensor.Set) ([]byte, error) {
	dir, err := os.MkdirTemp("", "servebench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "u.safetensors")
	if err := safetensors.WriteFile(path, s, safetensors.WithDirectIO(false)); err != nil {
		return nil, err
	}
	return os.ReadFile(path)
}

// process is a server child process.
type process struct {
	cmd    *exec.Cmd
	url    string
	flight string // the Flight address, when served
	done   chan error
	ended  sync.Once // kill and stop wait for the process once
}

func startProcess(ctx context.Context, start Starter, cfgPath, addrFile string) (*process, error) {
	os.Remove(addrFile)
	cmd, err := start(cfgPath, addrFile)
	if err != nil {
		return nil, err
	}
	p := &process{cmd: cmd, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	deadline := time.Now().Add(120 * time.Second)
	for {
		if b, err := os.ReadFile(addrFile); err == nil && bytes.HasSuffix(b, []byte("\n")) {
			lines := strings.Fields(string(b))
			p.url = "http://" + lines[0]
			if len(lines) > 1 {
				p.flight = lines[1]
			}
			return p, nil
		}
		select {
		case err := <-p.done:
			return nil, fmt.Errorf("server exited before serving: %v", err)
		case <-ctx.Done():
			p.kill()
			return nil, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.kill()
			return nil, errors.New("server did not serve within 120 s")
		}
	}
}

// kill sends SIGKILL and waits for the process to die.
func (p *process) kill() {
	p.ended.Do(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
	})
}

// stop asks the server to shut down (SIGINT) and waits; it is a no-op once the process ended.
func (p *process) stop() {
	p.ended.Do(func() {
		_ = p.cmd.Process.Signal(os.Interrupt)
		select {
		case <-p.done:
		case <-time.After(60 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
}

// checkAcked checks that the server's round 1 holds every acknowledged update exactly once, at
// the position and with the digest its acknowledgement said.
func checkAcked(ctx context.Context, url string, acked map[string]api.Ack, res *CrashResult) error {
	cl, err := client.New(url)
	if err != nil {
		return err
	}
	st, err := cl.Status(ctx, 1)
	if err != nil {
		return err
	}
	seen := map[string]int{}
	for _, u := range st.Updates {
		seen[u.Client]++
	}
	res.Lost, res.Twice, res.Mismatched, res.Updates = 0, 0, 0, len(st.Updates)
	for c, n := range seen {
		if n > 1 {
			res.Twice++
			return fmt.Errorf("client %s is %d times in the round", c, n)
		}
	}
	for c, ack := range acked {
		if seen[c] != 1 {
			res.Lost++
			return fmt.Errorf("acknowledged update of %s (update %d) is not in the round", c, ack.Seq)
		}
		if st.Updates[ack.Seq].Client != c {
			res.Mismatched++
			return fmt.Errorf("acknowledged update of %s was update %d; the round says %s", c, ack.Seq, st.Updates[ack.Seq].Client)
		}
	}
	return nil
}

// waitClosed waits until round n is closed.
func waitClosed(ctx context.Context, url string, n int) error {
	_, err := waitClosedStatus(ctx, url, n)
	return err
}

// waitClosedStatus is waitClosed, and the closed round's status.
func waitClosedStatus(ctx context.Context, url string, n int) (*api.Round, error) {
	cl, err := client.New(url)
	if err != nil {
		return nil, err
	}
	for range 6000 {
		st, err := cl.Status(ctx, n)
		if err == nil && st.State != api.StateOpen {
			if st.State != api.StateClosed {
				return st, fmt.Errorf("round %d %s: %s", n, st.State, st.Reason)
			}
			return st, nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil, fmt.Errorf("round %d did not close", n)
}

// roundSums reads how the round in dir summed (its round.json: "sum" and "exact") and gives
// the engine options that sum the same way.
func roundSums(dir string) ([]aggregate.Option, bool, error) {
	b, err := os.ReadFile(filepath.Join(dir, "round.json"))
	if err != nil {
		return nil, false, err
	}
	var meta struct {
		Sum   string              `json:"sum"`
		Exact *server.ExactConfig `json:"exact"`
	}
	if err := json.Unmarshal(b, &meta); err != nil {
		return nil, false, fmt.Errorf("%s: %w", filepath.Join(dir, "round.json"), err)
	}
	if meta.Sum != server.SumExact || meta.Exact == nil {
		return nil, false, nil
	}
	e := aggregate.ExactSum{Bound: meta.Exact.Bound, MaxWeight: meta.Exact.MaxWeight, TensorBounds: meta.Exact.TensorBounds, OneLimb: meta.Exact.OneLimb}
	return []aggregate.Option{aggregate.WithExactSum(e)}, true, nil
}

// verifyBits recomputes the round from its acknowledged spool files with the engine alone
// (in log order for float sums, in reverse for exact ones), and compares the bits with the
// server's model.
func verifyBits(dir string, acked map[string]api.Ack, res *CrashResult) error {
	recs, err := server.ReadAckLog(filepath.Join(dir, "acks.log"))
	if err != nil {
		return err
	}
	for _, rec := range recs {
		if a, ok := acked[rec.Client]; ok && (a.Digest != rec.Digest || a.Seq != rec.Seq) {
			res.Mismatched++
		}
	}
	opts, exact, err := roundSums(dir)
	if err != nil {
		return err
	}
	if exact {
		// Exact sums do not depend on the order: recompute in the reverse of the log's.
		slices.Reverse(recs)
	}
	r, err := aggregate.NewRound(context.Background(), aggregate.NewFedAvg(), opts...)
	if err != nil {
		return err
	}
	defer r.Close()
	for _, rec := range recs {
		s, err := safetensors.Open(filepath.Join(dir, "spool", rec.File))
		if err != nil {
			return err
		}
		s.Source = rec.Client
		if rec.From == string(aggregate.WeightsGiven) {
			err = r.Add(context.Background(), s, rec.Weight)
		} else {
			err = r.AddByExamples(context.Background(), s)
		}
		s.Close()
		if err != nil {
			return err
		}
	}
	want, _, err := r.Result(context.Background())
	if err != nil {
		return err
	}
	defer want.Close()
	got, err := safetensors.Open(filepath.Join(dir, "model.safetensors"))
	if err != nil {
		return err
	}
	defer got.Close()
	res.BitsEqual = got.Len() == want.Len()
	for i := 0; res.BitsEqual && i < got.Len(); i++ {
		res.BitsEqual = bytes.Equal(got.At(i).Bytes(), want.At(i).Bytes())
	}
	return nil
}
