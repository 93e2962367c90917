package server

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/aggregate/optim"
	"github.com/wattagg/wattagg/server/api"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// TestDeadlineQuorumAndChaining runs a server optimizer (FedAdam) round after round: a round
// that misses its quorum at the deadline fails and the next starts from the same global model;
// a round that meets it closes at the deadline; each round's model is the next one's global,
// and has the bits of the engine run directly over the same updates in the same order.
func TestDeadlineQuorumAndChaining(t *testing.T) {
	leakCheck(t)
	cfg, tokens, admin := testConfig(t, 3)
	shapes := [][]int{{6, 4}, {5}}
	initial := filepath.Join(t.TempDir(), "global.safetensors")
	g := f32Set(t, shapes, func(tn, i int) float32 { return 0.5 + float32(tn*i)*0.01 })
	if err := safetensors.WriteFile(initial, g, safetensors.WithDirectIO(false)); err != nil {
		t.Fatal(err)
	}
	cfg.Round = RoundConfig{Rule: "fedadam", InitialGlobal: initial, Quorum: 2, Deadline: Duration(400 * time.Millisecond),
		Params: map[string]float64{"server_lr": 0.05}}
	ts := startServer(t, cfg, tokens, admin)
	update := func(k, round int) []byte {
		return encode(t, f32Set(t, shapes, func(tn, i int) float32 { return 0.5 + float32(k+round+tn+i)*0.03 }), nil)
	}
	// Round 1: one update, quorum 2: fails at the deadline.
	ts.push(t, "c0", 1, update(0, 1), nil)
	st := ts.waitState(t, 1, api.StateFailed)
	if st.Reason != "the deadline passed with 1 updates, short of the quorum of 2" {
		t.Fatalf("reason %q", st.Reason)
	}
	st2 := ts.waitState(t, 2, api.StateOpen)
	if st2.Global != initial {
		t.Fatalf("round 2 starts from %q, want the initial model again", st2.Global)
	}
	// Round 2: two updates: closes at the deadline.
	u2 := [][]byte{update(0, 2), update(1, 2)}
	ts.push(t, "c0", 2, u2[0], map[string]string{api.WeightHeader: "3"})
	ts.push(t, "c1", 2, u2[1], map[string]string{api.WeightHeader: "1"})
	st2 = ts.waitState(t, 2, api.StateClosed)
	if st2.Reason != "closed at its deadline" || st2.Report == nil || st2.Report.Clients != 2 {
		t.Fatalf("round 2: %+v", st2)
	}
	st3 := ts.waitState(t, 3, api.StateOpen)
	if st3.Global != filepath.Join("rounds", "000002", modelFile) {
		t.Fatalf("round 3 starts from %q, want round 2's model", st3.Global)
	}
	// The engine run directly gives the same bits.
	state := filepath.Join(t.TempDir(), "opt.safetensors")
	rule, err := optim.New("fedadam", optim.WithStateFile(state), optim.WithServerLR(0.05))
	if err != nil {
		t.Fatal(err)
	}
	r, err := aggregate.NewRound(context.Background(), rule, aggregate.WithGlobalFile(initial))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for k, w := range []float64{3, 1} {
		set, err := safetensors.Parse(u2[k])
		if err != nil {
			t.Fatal(err)
		}
		set.Source = fmt.Sprintf("c%d", k)
		if err := r.Add(context.Background(), set, w); err != nil {
			t.Fatal(err)
		}
	}
	want := filepath.Join(t.TempDir(), "want.safetensors")
	if _, err := r.WriteFile(context.Background(), want); err != nil {
		t.Fatal(err)
	}
	wantSet, err := safetensors.Open(want)
	if err != nil {
		t.Fatal(err)
	}
	defer wantSet.Close()
	got := ts.readModel(t, 2)
	for i := range got.Len() {
		a, b := got.At(i), wantSet.At(i)
		if a.Name != b.Name || !bytes.Equal(a.Bytes(), b.Bytes()) {
			t.Fatalf("tensor %s: the server's model differs from the engine's", a.Name)
		}
	}
}

// TestMedianKeepsSpoolsMapped runs a rule that needs every update at once: the round maps the
// spool files (WithRetainedUpdates) and computes the median at the close.
func TestMedianKeepsSpoolsMapped(t *testing.T) {
	leakCheck(t)
	cfg, tokens, admin := testConfig(t, 5)
	cfg.Round.Rule = "median"
	ts := startServer(t, cfg, tokens, admin)
	vals := []float32{3, -1, 7, 2, 100}
	for k, v := range vals {
		ts.push(t, fmt.Sprintf("c%d", k), 1, encode(t, f32Set(t, [][]int{{9}}, func(_, i int) float32 { return v + float32(i) }), nil), nil)
	}
	ts.waitState(t, 1, api.StateClosed)
	m := ts.readModel(t, 1)
	for i, v := range f32s(t, m.At(0)) {
		if v != 3+float32(i) {
			t.Fatalf("element %d: %v, want the median %v", i, v, 3+float32(i))
		}
	}
}

// TestStreamLimitAndFlood floods the server with 100 clients pushing 4 MiB updates at once
// through 6 stream slots: the others are told 503 with Retry-After and retry (bounded in count
// and time); every update ends up in the round, and the heap never grows by more than the
// streams' buffers and a margin, far below the 400 MiB sent.
func TestStreamLimitAndFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("flood")
	}
	leakCheck(t)
	const clients, streams = 100, 6
	cfg, tokens, admin := testConfig(t, clients)
	cfg.Limits.MaxStreams = streams
	ts := startServer(t, cfg, tokens, admin)
	body := encode(t, f32Set(t, [][]int{{1 << 20}}, func(_, i int) float32 { return float32(i % 7) }), nil)
	growth := sampleHeapGrowth()
	var busy atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(60 * time.Second)
	errs := make(chan error, clients)
	for k := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("c%d", k)
			for try := 0; ; try++ {
				code, b := ts.put(t, tokens[id], 1, bytes.NewReader(body), int64(len(body)), nil)
				switch {
				case code == http.StatusOK:
					return
				case code == http.StatusServiceUnavailable && try < 2000 && time.Now().Before(deadline):
					busy.Add(1)
					time.Sleep(time.Duration(5+k%10) * time.Millisecond)
				default:
					errs <- fmt.Errorf("%s: %d %s", id, code, b)
					return
				}
			}
		}()
	}
	wg.Wait()
	grown := growth()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	st := ts.waitState(t, 1, api.StateClosed)
	if st.Clients != clients {
		t.Fatalf("%d updates in the round, want %d", st.Clients, clients)
	}
	if busy.Load() == 0 {
		t.Fatal("no upload was told the server was busy")
	}
	// The margin covers the test's own 100 clients (same process) and the runtime.
	limit := int64(streams*cfg.Limits.ChunkBytes) + 96<<20
	t.Logf("%d busy answers; heap grew by at most %d MiB (limit %d MiB) while %d MiB arrived",
		busy.Load(), grown>>20, limit>>20, clients*len(body)>>20)
	if grown > limit {
		t.Fatalf("heap grew by %d MiB, over %d MiB", grown>>20, limit>>20)
	}
	_ = tensor.F32
}

// TestRestartResumesRound stops a server in the middle of a median round (the engine's round is
// derived state and simply dropped) and starts another on the same data directory: the
// acknowledged updates are replayed from the log, a spool file no record names (an upload
// that never finished) is removed, and the round completes as if nothing had happened.
func TestRestartResumesRound(t *testing.T) {
	leakCheck(t)
	cfg, tokens, admin := testConfig(t, 3)
	cfg.Round.Rule = "median"
	ts := startServer(t, cfg, tokens, admin)
	vals := []float32{5, -3, 1}
	body := func(k int) []byte {
		return encode(t, f32Set(t, [][]int{{7}}, func(_, i int) float32 { return vals[k] * float32(i+1) }), nil)
	}
	ack0 := ts.push(t, "c0", 1, body(0), nil)
	ack1 := ts.push(t, "c1", 1, body(1), nil)
	ts.stop()
	stray := filepath.Join(cfg.DataDir, "rounds", "000001", spoolDir, "c2.0123456789ab.safetensors")
	if err := os.WriteFile(stray, []byte("half an upload"), 0o600); err != nil {
		t.Fatal(err)
	}
	ts2 := startServer(t, cfg, tokens, admin)
	st, err := ts2.Status(1)
	if err != nil || st.State != api.StateOpen || len(st.Updates) != 2 || st.Updates[0].Client != "c0" || st.Updates[1].Client != "c1" {
		t.Fatalf("resumed round: %+v %v", st, err)
	}
	if _, err := os.Stat(stray); !os.IsNotExist(err) {
		t.Fatalf("the unacknowledged spool file is still there: %v", err)
	}
	// A retry after the restart is still idempotent.
	if again := ts2.push(t, "c0", 1, body(0), nil); !again.Retry || again.Digest != ack0.Digest || again.Seq != ack0.Seq {
		t.Fatalf("retry after restart: %+v", again)
	}
	_ = ack1
	ts2.push(t, "c2", 1, body(2), nil)
	ts2.waitState(t, 1, api.StateClosed)
	for i, v := range f32s(t, ts2.readModel(t, 1).At(0)) {
		if want := float32(i + 1); v != want {
			t.Fatalf("element %d: %v, want the median %v", i, v, want)
		}
	}
}

// TestRestartSumBytes: after a restart the open round's status shows what its running sums hold
// again (rebuilt from the log before the first new update).
func TestRestartSumBytes(t *testing.T) {
	leakCheck(t)
	cfg, tokens, admin := testConfig(t, 2)
	ts := startServer(t, cfg, tokens, admin)
	ts.push(t, "c0", 1, encode(t, f32Set(t, [][]int{{7}, {3}}, func(_, i int) float32 { return float32(i) }), nil), nil)
	st, err := ts.Status(1)
	if err != nil || st.SumBytes != 80 {
		t.Fatalf("before the restart: sum_bytes %d (%v), want 80 (10 parameters in one limb)", st.SumBytes, err)
	}
	ts.stop()
	ts2 := startServer(t, cfg, tokens, admin)
	if st, err := ts2.Status(1); err != nil || st.State != api.StateOpen || st.SumBytes != 80 {
		t.Fatalf("after the restart: %s, sum_bytes %d (%v), want open, 80", st.State, st.SumBytes, err)
	}
}
