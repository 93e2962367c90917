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
	r := newCrashRun(c)
	if err := r.writeConfig(); err != nil {
		return nil, err
	}
	if err := r.encodeBodies(); err != nil {
		return nil, err
	}
	for kill := 0; kill <= r.c.Kills; kill++ {
		if err := r.run(ctx, kill); err != nil {
			return r.res, err
		}
	}
	return r.res, verifyBits(filepath.Join(r.data, "rounds", "000001"), r.acked, r.res)
}

// crashRun is the state a crash run's steps share.
type crashRun struct {
	c       CrashConfig
	logf    func(format string, args ...any)
	rng     *rand.Rand
	data    string   // the server's data directory
	cfgPath string   // the server's configuration
	tokens  []string // client k's token
	bodies  [][]byte // client k's update
	res     *CrashResult

	mu    sync.Mutex         // guards acked and res.Acked while clients push
	acked map[string]api.Ack // by client, over every run
}

// newCrashRun is a crash run of c, its defaults filled in.
func newCrashRun(c CrashConfig) *crashRun {
	if c.MaxKillWait <= 0 {
		c.MaxKillWait = 500 * time.Millisecond
	}
	logf := c.Log
	if logf == nil {
		logf = func(string, ...any) {}
	}
	return &crashRun{
		c:       c,
		logf:    logf,
		rng:     rand.New(rand.NewPCG(c.Seed, 0x5eed)),
		data:    filepath.Join(c.Dir, "data"),
		cfgPath: filepath.Join(c.Dir, "server.json"),
		res:     &CrashResult{},
		acked:   map[string]api.Ack{},
	}
}

// writeConfig writes the server's configuration: one round of every client, its spool kept,
// and a fresh token for each client.
func (r *crashRun) writeConfig() error {
	round := map[string]any{"rule": "fedavg", "max_clients": r.c.Clients, "keep_spool": true}
	setSum(round, r.c.Sum)
	cfg := map[string]any{
		"listen":   "127.0.0.1:0",
		"data_dir": r.data,
		"round":    round,
		"limits":   map[string]any{"max_streams": r.c.Concurrency + 4},
	}
	r.tokens = make([]string, r.c.Clients)
	var clients []map[string]string
	for k := range r.tokens {
		r.tokens[k] = fmt.Sprintf("crash-token-%d-%x", k, r.rng.Uint64())
		clients = append(clients, map[string]string{"id": clientID(k), "token_sha256": server.HashToken(r.tokens[k])})
	}
	cfg["clients"] = clients
	b, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	return os.WriteFile(r.cfgPath, b, 0o600)
}

// encodeBodies encodes every client's update.
func (r *crashRun) encodeBodies() error {
	r.bodies = make([][]byte, r.c.Clients)
	for k := range r.bodies {
		var err error
		if r.bodies[k], err = updateBytes(r.c.Params, k); err != nil {
			return err
		}
	}
	return nil
}

// run is the kill-th run of the server: it starts the server and has the clients without an
// acknowledgement push, then kills it at a random moment of the pushes or, in the last run,
// lets the round finish.
func (r *crashRun) run(ctx context.Context, kill int) error {
	final := kill == r.c.Kills
	p, err := r.start(ctx, kill)
	if err != nil {
		return err
	}
	pushCtx, cancel := context.WithCancel(ctx)
	pushers := r.push(pushCtx, p.url, r.pending(final))
	if !final {
		r.killMidway(p, kill)
		cancel()
		pushers.Wait()
		r.logf("kill %d: %d acknowledged so far", r.res.Kills, r.acknowledged())
		return nil
	}
	pushers.Wait()
	cancel()
	return r.finish(ctx, p)
}

// start starts the server, timing how long it takes to serve again after a kill, and checks
// what it holds; it kills the server if that check fails.
func (r *crashRun) start(ctx context.Context, kill int) (*process, error) {
	started := time.Now()
	p, err := startProcess(ctx, r.c.Start, r.cfgPath, filepath.Join(r.c.Dir, "addr"))
	if err != nil {
		return nil, err
	}
	if kill > 0 {
		r.res.Resumes = append(r.res.Resumes, time.Since(started))
	}
	// What the restarted server holds: every acknowledgement so far, once.
	if err := checkAcked(ctx, p.url, r.acked, r.res); err != nil {
		p.kill()
		return nil, err
	}
	return p, nil
}

// pending queues the clients that push in this run: those without an acknowledgement.
func (r *crashRun) pending(final bool) <-chan int {
	work := make(chan int, r.c.Clients)
	for k := range r.c.Clients {
		// The last client pushes only in the last run, so that the round cannot complete
		// before every kill has struck in the middle of it.
		if _, ok := r.acked[clientID(k)]; !ok && (final || k < r.c.Clients-1) {
			work <- k
		}
	}
	close(work)
	return work
}

// push starts c.Concurrency clients pushing the queued updates to the server at url, and
// returns what to wait on for them to end.
func (r *crashRun) push(ctx context.Context, url string, work <-chan int) *sync.WaitGroup {
	var wg sync.WaitGroup
	for range r.c.Concurrency {
		wg.Go(func() {
			for k := range work {
				r.pushOne(ctx, url, k)
			}
		})
	}
	return &wg
}

// pushOne pushes client k's update and records its acknowledgement; a push that fails is left
// for a later run.
func (r *crashRun) pushOne(ctx context.Context, url string, k int) {
	cl, err := client.New(url, client.WithToken(r.tokens[k]))
	if err != nil {
		return
	}
	ack, err := cl.Push(ctx, 1, bytes.NewReader(r.bodies[k]), int64(len(r.bodies[k])), client.WithWeight(float64(k+1)))
	if err != nil {
		return
	}
	r.record(ack)
}

// record counts an acknowledgement, the first of its client only.
func (r *crashRun) record(ack *api.Ack) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.acked[ack.Client]; !dup {
		r.acked[ack.Client] = *ack
		r.res.Acked++
	}
}

// acknowledged is how many clients have an acknowledgement.
func (r *crashRun) acknowledged() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.acked)
}

// killMidway kills the server with SIGKILL while the clients push, for the kill-th time.
func (r *crashRun) killMidway(p *process, kill int) {
	// A random moment of the pushes: after a random number of this run's
	// acknowledgements (fewer than remain, so the round never completes before the last
	// run), and a random delay.
	r.waitAcknowledged(r.killTarget(kill))
	time.Sleep(time.Duration(r.rng.Int64N(int64(r.c.MaxKillWait))))
	p.kill()
	r.res.Kills++
}

// killTarget is how many acknowledgements the kill-th kill waits for: those so far, and a
// random number of this run's, fewer than remain.
func (r *crashRun) killTarget(kill int) int {
	n := r.acknowledged()
	remaining := r.c.Clients - 1 - n
	step := max(1, 2*remaining/(r.c.Kills-kill+1))
	return n + r.rng.IntN(step)
}

// waitAcknowledged waits until target clients have an acknowledgement, or 60 s.
func (r *crashRun) waitAcknowledged(target int) {
	for waited := time.Duration(0); waited < 60*time.Second; waited += time.Millisecond {
		if r.acknowledged() >= target {
			break
		}
		time.Sleep(time.Millisecond)
	}
}

// finish waits for the round to close, checks that it holds every acknowledged update once,
// and stops the server.
func (r *crashRun) finish(ctx context.Context, p *process) error {
	err := waitClosed(ctx, p.url, 1)
	if err == nil {
		err = checkAcked(ctx, p.url, r.acked, r.res)
	}
	p.stop()
	return err
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
