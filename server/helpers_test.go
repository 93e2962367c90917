package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wattagg/wattagg/server/api"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// testServer is a Server serving HTTP on a loopback port.
type testServer struct {
	*Server
	url    string
	cfg    *Config
	tokens map[string]string // client id -> token
	admin  string
	cancel context.CancelFunc
	done   chan error
	logs   *bytes.Buffer
}

// testConfig makes a configuration of n clients ("c0".."c{n-1}") in a fresh data directory,
// with their tokens.
func testConfig(t testing.TB, n int) (*Config, map[string]string, string) {
	t.Helper()
	cfg := &Config{Listen: "127.0.0.1:0", DataDir: t.TempDir()}
	tokens := map[string]string{}
	for i := range n {
		id := fmt.Sprintf("c%d", i)
		tok := fmt.Sprintf("token-%d-%x", i, rand.Uint64())
		tokens[id] = tok
		cfg.Clients = append(cfg.Clients, ClientConfig{ID: id, TokenSHA256: HashToken(tok)})
	}
	admin := fmt.Sprintf("admin-%x", rand.Uint64())
	cfg.AdminTokenSHA256 = HashToken(admin)
	cfg.Round.Rule = "fedavg"
	return cfg, tokens, admin
}

// startServer starts a server of cfg on a loopback listener; the test stops it.
func startServer(t testing.TB, cfg *Config, tokens map[string]string, admin string, opts ...Option) *testServer {
	t.Helper()
	logs := &bytes.Buffer{}
	opts = append([]Option{WithLogger(slog.New(slog.NewTextHandler(&lockedWriter{w: logs}, &slog.HandlerOptions{Level: slog.LevelDebug})))}, opts...)
	s, err := New(cfg, opts...)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		s.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts := &testServer{Server: s, cfg: cfg, tokens: tokens, admin: admin, cancel: cancel, done: make(chan error, 1), logs: logs}
	scheme := "http"
	if cfg.TLS != nil {
		scheme = "https"
	}
	ts.url = scheme + "://" + ln.Addr().String()
	go func() { ts.done <- s.Serve(ctx, ln, 5*time.Second) }()
	t.Cleanup(ts.stop)
	return ts
}

func (ts *testServer) stop() {
	if ts.cancel == nil {
		return
	}
	ts.cancel()
	<-ts.done
	ts.cancel = nil
}

// lockedWriter serialises log writes.
type lockedWriter struct {
	mu chanMutex
	w  io.Writer
}

type chanMutex struct{ c chan struct{} }

func (m *chanMutex) lock() {
	if m.c == nil {
		m.c = make(chan struct{}, 1)
	}
	m.c <- struct{}{}
}
func (m *chanMutex) unlock() { <-m.c }

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.lock()
	defer l.mu.unlock()
	return l.w.Write(p)
}

// f32Set makes a set of f32 tensors with the given shapes (names w0, w1, ...), values from fn.
func f32Set(t testing.TB, shapes [][]int, fn func(tensor, i int) float32) *tensor.Set {
	t.Helper()
	var ts []*tensor.Tensor
	for k, sh := range shapes {
		n := 1
		for _, d := range sh {
			n *= d
		}
		v := make([]float32, n)
		for i := range v {
			v[i] = fn(k, i)
		}
		tt, err := tensor.FromF32(fmt.Sprintf("w%d", k), sh, v)
		if err != nil {
			t.Fatal(err)
		}
		ts = append(ts, tt)
	}
	s, err := tensor.NewSet(ts...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// encode returns the .safetensors bytes of s (with metadata md).
func encode(t testing.TB, s *tensor.Set, md map[string]string) []byte {
	t.Helper()
	s.Metadata = md
	path := filepath.Join(t.TempDir(), "u.safetensors")
	if err := safetensors.WriteFile(path, s, safetensors.WithDirectIO(false)); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// put sends body as client's update of round; hdr adds headers. It returns the status and
// decoded body (an api.Ack or api.Error as a map).
func (ts *testServer) put(t testing.TB, token string, round int, body io.Reader, length int64, hdr map[string]string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, fmt.Sprintf("%s/v1/rounds/%d/update", ts.url, round), body)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = length
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if length != 0 {
		req.Header.Set("Expect", "100-continue")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := ts.httpClient().Do(req)
	if err != nil {
		return 0, []byte(err.Error())
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func (ts *testServer) httpClient() *http.Client { return testHTTPClient }

// testHTTPClient waits for 100 Continue before it sends a body, as client.Client does, so that
// a refusal answered before the body is read reaches it intact.
var testHTTPClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true, ExpectContinueTimeout: 10 * time.Second}}

// push sends an update and fails the test unless it is acknowledged.
func (ts *testServer) push(t testing.TB, client string, round int, body []byte, hdr map[string]string) api.Ack {
	t.Helper()
	code, b := ts.put(t, ts.tokens[client], round, bytes.NewReader(body), int64(len(body)), hdr)
	if code != http.StatusOK {
		t.Fatalf("push %s to round %d: %d %s", client, round, code, b)
	}
	var ack api.Ack
	if err := json.Unmarshal(b, &ack); err != nil {
		t.Fatal(err)
	}
	return ack
}

// errorBody decodes an error answer.
func errorBody(t testing.TB, b []byte) api.Error {
	t.Helper()
	var e api.Error
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatalf("not an error body: %q", b)
	}
	return e
}

// wantRefused checks a refusal's status, reason word and message.
func wantRefused(t testing.TB, code int, b []byte, status int, reason, msg string) {
	t.Helper()
	if code != status {
		t.Fatalf("status %d, want %d: %s", code, status, b)
	}
	e := errorBody(t, b)
	if e.Code != reason || !strings.Contains(e.Error, msg) {
		t.Fatalf("refusal %q (%s), want reason %q and a message containing %q", e.Error, e.Code, reason, msg)
	}
}

// getJSON GETs path into out.
func (ts *testServer) getJSON(t testing.TB, path string, out any) int {
	t.Helper()
	resp, err := ts.httpClient().Get(ts.url + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil && resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatal(err)
		}
	}
	return resp.StatusCode
}

// post sends an admin POST.
func (ts *testServer) post(t testing.TB, token, path string) (int, []byte) {
	t.Helper()
	return ts.send(t, http.MethodPost, token, path, nil)
}

// send sends a request with token (none if empty) and returns the status and body.
func (ts *testServer) send(t testing.TB, method, token, path string, body io.Reader) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, ts.url+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := ts.httpClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// waitState waits until round n is in state.
func (ts *testServer) waitState(t testing.TB, n int, state string) api.Round {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := ts.Status(n)
		if err == nil && st.State == state {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("round %d is %q (%v), want %q", n, st.State, err, state)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// readModel maps round n's model.
func (ts *testServer) readModel(t testing.TB, n int) *tensor.Set {
	t.Helper()
	p, err := ts.ModelPath(n)
	if err != nil {
		t.Fatal(err)
	}
	s, err := safetensors.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// f32s decodes an f32 tensor.
func f32s(t testing.TB, tt *tensor.Tensor) []float32 {
	t.Helper()
	b := tt.Bytes()
	out := make([]float32, len(b)/4)
	for i := range out {
		out[i] = math.Float32frombits(uint32(b[4*i]) | uint32(b[4*i+1])<<8 | uint32(b[4*i+2])<<16 | uint32(b[4*i+3])<<24)
	}
	return out
}

// leakCheck records goroutines and open file descriptors, and checks at the end of the test
// that they came back (after the servers the test started have stopped), as goleak does.
func leakCheck(t *testing.T) {
	t.Helper()
	g0, fd0 := runtime.NumGoroutine(), openFDs(t)
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			testHTTPClient.CloseIdleConnections()
			g, fd := runtime.NumGoroutine(), openFDs(t)
			if g <= g0 && fd <= fd0 {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Fatalf("leak: %d goroutines (was %d), %d file descriptors (was %d)\n%s", g, g0, fd, fd0, buf)
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

func openFDs(t testing.TB) int {
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(es)
}

// sampleHeapGrowth collects garbage, then samples the heap in use every 5 ms until the returned
// function is called, which gives the largest growth seen over the starting heap.
func sampleHeapGrowth() func() int64 {
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var peak atomic.Uint64
	stop := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Add(1)
	go func() {
		defer sampler.Done()
		for {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			if m.HeapInuse > peak.Load() {
				peak.Store(m.HeapInuse)
			}
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	return func() int64 {
		close(stop)
		sampler.Wait()
		return int64(peak.Load()) - int64(base.HeapInuse)
	}
}
