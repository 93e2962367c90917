package serving

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wattagg/wattagg/interop/gorgonia/digits"
	"github.com/wattagg/wattagg/interop/gorgonia/mlp"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

func newService(t *testing.T, opts ...Option) *Service {
	t.Helper()
	s, err := New(opts...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func model(t *testing.T, seed uint64) *tensor.Set {
	t.Helper()
	m, err := mlp.Init(16, seed)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// testRows returns n held-out images as the JSON API takes them (pixels 0..16) and as the
// model takes them (scaled).
func testRows(t *testing.T, n int) ([][]float64, []float32) {
	t.Helper()
	d, err := digits.Load()
	if err != nil {
		t.Fatal(err)
	}
	rows := make([][]float64, n)
	for i := range rows {
		for _, v := range d.Row(i) {
			rows[i] = append(rows[i], float64(v*digits.MaxPixel))
		}
	}
	return rows, d.X[:n*digits.Features]
}

// expected returns what a model answers for x, computed directly.
func expected(t *testing.T, s *tensor.Set, x []float32) ([]float32, []int) {
	t.Helper()
	m, err := mlp.Load(s)
	if err != nil {
		t.Fatal(err)
	}
	logits, classes, err := m.Predict(x)
	if err != nil {
		t.Fatal(err)
	}
	return logits, classes
}

func post(client *http.Client, url string, body []byte) (int, []byte, error) {
	resp, err := client.Post(url+"/predict", "application/json", bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// TestReloadUnderLoad: clients keep posting while the model file is replaced and reloaded
// over and over. Every request must succeed, and its logits must be exactly those of the model whose
// generation the response names; every replaced model must be closed (unmapped) once, after
// its last request.
func TestReloadUnderLoad(t *testing.T) {
	svc := newService(t)
	var closed atomic.Int64
	svc.onClose = func(_ ModelInfo, err error) {
		if err != nil {
			t.Errorf("closing a retired model: %v", err)
		}
		closed.Add(1)
	}
	rows, x := testRows(t, 8)
	sets := []*tensor.Set{model(t, 1), model(t, 2)}
	var want [2][]float32
	var wantClasses [2][]int
	for i, s := range sets {
		want[i], wantClasses[i] = expected(t, s, x)
	}
	if slices.Equal(want[0], want[1]) {
		t.Fatal("the two models answer the same: the test could not tell them apart")
	}

	path := filepath.Join(t.TempDir(), "global.safetensors")
	var which sync.Map // generation -> index into sets
	reload := func(i int) {
		if err := safetensors.WriteFile(path, sets[i]); err != nil {
			t.Error(err)
			return
		}
		info, err := svc.Reload(path)
		if err != nil {
			t.Error(err)
			return
		}
		which.Store(info.Generation, i)
	}
	reload(0)

	srv := httptest.NewServer(svc.Handler())
	defer srv.Close()
	body, err := json.Marshal(PredictRequest{Inputs: rows})
	if err != nil {
		t.Fatal(err)
	}

	const clients, perClient, minReloads = 4, 150, 40
	type answer struct {
		resp PredictResponse
		err  error
	}
	answers := make(chan answer, clients*perClient)
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for range perClient {
				code, b, err := post(srv.Client(), srv.URL, body)
				if err == nil && code != http.StatusOK {
					err = fmt.Errorf("status %d: %s", code, b)
				}
				var r PredictResponse
				if err == nil {
					err = json.Unmarshal(b, &r)
				}
				answers <- answer{r, err}
			}
		})
	}
	// Reload until every client is done, at least minReloads times, so reloads overlap the
	// requests from first to last.
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	reloads := 0
	for running := true; running || reloads < minReloads; {
		select {
		case <-finished:
			running = false
		default:
		}
		reloads++
		reload(reloads % 2)
		time.Sleep(time.Millisecond)
	}
	close(answers)

	seen := map[int]int{}
	gens := map[uint64]bool{}
	for a := range answers {
		gens[a.resp.Model.Generation] = true
		if a.err != nil {
			t.Fatalf("request failed during reloads: %v", a.err)
		}
		v, ok := which.Load(a.resp.Model.Generation)
		if !ok {
			t.Fatalf("response names generation %d, never loaded", a.resp.Model.Generation)
		}
		i := v.(int)
		seen[i]++
		if got := slices.Concat(a.resp.Logits...); !slices.Equal(got, want[i]) || !slices.Equal(a.resp.Classes, wantClasses[i]) {
			t.Fatalf("generation %d (model %d): logits %v, want %v", a.resp.Model.Generation, i, got, want[i])
		}
	}
	t.Logf("%d requests during %d reloads: %d answered by model A, %d by model B, %d generations seen",
		clients*perClient, reloads, seen[0], seen[1], len(gens))
	if len(gens) < 10 {
		t.Fatalf("requests saw only %d generations: reloads did not overlap them", len(gens))
	}
	if n := closed.Load(); n != int64(reloads) {
		t.Fatalf("%d retired models closed, want %d", n, reloads)
	}
	svc.Close()
	if n := closed.Load(); n != int64(reloads)+1 {
		t.Fatalf("after Close: %d models closed, want %d", n, reloads+1)
	}
}

// TestReloadKeepsModelOnError: a bad file leaves the current model serving.
func TestReloadKeepsModelOnError(t *testing.T) {
	svc := newService(t)
	dir := t.TempDir()
	good := filepath.Join(dir, "good.safetensors")
	if err := safetensors.WriteFile(good, model(t, 1)); err != nil {
		t.Fatal(err)
	}
	info, err := svc.Reload(good)
	if err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.safetensors")
	if err := os.WriteFile(bad, []byte("not a model"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Reload(bad); !errors.Is(err, safetensors.ErrFormat) && !errors.Is(err, safetensors.ErrHeaderSize) {
		t.Fatalf("garbage file: %v, want a safetensors format error", err)
	}
	other := filepath.Join(dir, "other.safetensors")
	u, err := tensor.New("w", tensor.F32, 3)
	if err != nil {
		t.Fatal(err)
	}
	us, err := tensor.NewSet(u)
	if err != nil {
		t.Fatal(err)
	}
	if err := safetensors.WriteFile(other, us); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Reload(other); !errors.Is(err, mlp.ErrModel) {
		t.Fatalf("another model: %v, want mlp.ErrModel", err)
	}
	if _, err := svc.Reload(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v, want ErrNotExist", err)
	}
	cur, err := svc.Current()
	if err != nil || cur != info {
		t.Fatalf("current model %+v (%v), want %+v", cur, err, info)
	}
}

func TestHandlerErrors(t *testing.T) {
	svc := newService(t, WithMaxRows(3), WithMaxBodyBytes(4096))
	srv := httptest.NewServer(svc.Handler())
	defer srv.Close()
	rows, _ := testRows(t, 4)
	enc := func(v any) []byte {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	// No model yet.
	if code, b, err := post(srv.Client(), srv.URL, enc(PredictRequest{Inputs: rows[:1]})); err != nil || code != http.StatusServiceUnavailable {
		t.Fatalf("no model: %d %s %v", code, b, err)
	}
	resp, err := srv.Client().Get(srv.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("healthz without a model: %d", resp.StatusCode)
	}
	m, err := mlp.Load(model(t, 1))
	if err != nil {
		t.Fatal(err)
	}
	svc.Install(m, "test")

	short := slices.Clone(rows[0][:63])
	neg := slices.Clone(rows[0])
	neg[5] = -1
	over := slices.Clone(rows[0])
	over[63] = 16.5
	for name, tc := range map[string]struct {
		body []byte
		code int
		msg  string
	}{
		"not json":      {[]byte("{"), http.StatusBadRequest, "not a JSON"},
		"unknown field": {[]byte(`{"input": []}`), http.StatusBadRequest, "unknown field"},
		"trailing data": {append(enc(PredictRequest{Inputs: rows[:1]}), []byte(" {}")...), http.StatusBadRequest, "after the JSON"},
		"no rows":       {enc(PredictRequest{}), http.StatusBadRequest, "no inputs"},
		"too many rows": {enc(PredictRequest{Inputs: rows}), http.StatusBadRequest, "at most 3"},
		"short row":     {enc(PredictRequest{Inputs: [][]float64{short}}), http.StatusBadRequest, "row 0 has 63 values"},
		"negative":      {enc(PredictRequest{Inputs: [][]float64{neg}}), http.StatusBadRequest, "row 0 pixel 5 is -1"},
		"over 16":       {enc(PredictRequest{Inputs: [][]float64{over}}), http.StatusBadRequest, "pixel 63 is 16.5"},
		"too large":     {[]byte(`{"inputs": [[` + strings.Repeat("0,", 4096) + `0]]}`), http.StatusRequestEntityTooLarge, "over 4096 bytes"},
	} {
		code, b, err := post(srv.Client(), srv.URL, tc.body)
		if err != nil {
			t.Fatal(err)
		}
		var e errorResponse
		if code != tc.code || json.Unmarshal(b, &e) != nil || !strings.Contains(e.Error, tc.msg) {
			t.Errorf("%s: %d %s, want %d with %q", name, code, b, tc.code, tc.msg)
		}
	}
	resp, err = srv.Client().Get(srv.URL + "/predict")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("GET /predict: %d", resp.StatusCode)
	}
	resp, err = srv.Client().Get(srv.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	var info ModelInfo
	err = json.NewDecoder(resp.Body).Decode(&info)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || info.Generation != 1 || info.Source != "test" || info.Hidden != 16 {
		t.Fatalf("healthz: %d %+v %v", resp.StatusCode, info, err)
	}
}

// TestNonFiniteLogits: a model whose finite weights overflow the logits answers 500 with the
// reason, not a 200 with a body JSON cannot carry.
func TestNonFiniteLogits(t *testing.T) {
	set := model(t, 1)
	for _, x := range set.Tensors() {
		v, err := x.F32()
		if err != nil {
			t.Fatal(err)
		}
		for i := range v {
			v[i] = 1e30
		}
	}
	m, err := mlp.Load(set)
	if err != nil {
		t.Fatal(err)
	}
	svc := newService(t)
	svc.Install(m, "huge")
	srv := httptest.NewServer(svc.Handler())
	defer srv.Close()
	rows, _ := testRows(t, 1)
	body, err := json.Marshal(PredictRequest{Inputs: rows})
	if err != nil {
		t.Fatal(err)
	}
	code, b, err := post(srv.Client(), srv.URL, body)
	if err != nil {
		t.Fatal(err)
	}
	var e errorResponse
	if code != http.StatusInternalServerError || json.Unmarshal(b, &e) != nil || !strings.Contains(e.Error, "non-finite logit (+Inf, row 0, class 0)") {
		t.Fatalf("%d %s: want 500 naming the non-finite logit", code, b)
	}
}

func TestOptions(t *testing.T) {
	for name, o := range map[string]Option{
		"rows 0":    WithMaxRows(0),
		"body 10":   WithMaxBodyBytes(10),
		"body 2^40": WithMaxBodyBytes(1 << 40),
	} {
		if _, err := New(o); !errors.Is(err, ErrOption) {
			t.Errorf("%s: %v, want ErrOption", name, err)
		}
	}
}

// TestWatch: replacing the file makes the watcher load it; a bad replacement is skipped and
// the model before it keeps serving.
// startWatch runs svc.Watch on path (polling every 5 ms) until the test ends.
func startWatch(t *testing.T, svc *Service, path string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		svc.Watch(ctx, path, 5*time.Millisecond, slog.New(slog.NewTextHandler(t.Output(), nil)))
	}()
	t.Cleanup(func() { cancel(); <-done })
}

// waitGen waits up to 5 s for the service's current model to be generation gen.
func waitGen(t *testing.T, svc *Service, gen uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if info, err := svc.Current(); err == nil && info.Generation == gen {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	info, _ := svc.Current()
	t.Fatalf("generation %d after 5 s, want %d", info.Generation, gen)
}

// servingFile is a service serving model 1 from a file, and the file's path.
func servingFile(t *testing.T) (*Service, string) {
	t.Helper()
	svc := newService(t)
	path := filepath.Join(t.TempDir(), "global.safetensors")
	if err := safetensors.WriteFile(path, model(t, 1)); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Reload(path); err != nil {
		t.Fatal(err)
	}
	return svc, path
}

func TestWatch(t *testing.T) {
	svc, path := servingFile(t)
	startWatch(t, svc, path)
	if err := safetensors.WriteFile(path, model(t, 2)); err != nil {
		t.Fatal(err)
	}
	waitGen(t, svc, 2)
	_, x := testRows(t, 2)
	want, _ := expected(t, model(t, 2), x)
	got, _, _, err := svc.Predict(x)
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("after the watcher's reload: %v %v, want model 2's %v", got, err, want)
	}
	// A broken file is not loaded; the next good one is.
	if err := os.WriteFile(path+".tmp", []byte("junk"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if info, err := svc.Current(); err != nil || info.Generation != 2 {
		t.Fatalf("after a broken file: %+v %v, want generation 2 still", info, err)
	}
	if err := safetensors.WriteFile(path, model(t, 3)); err != nil {
		t.Fatal(err)
	}
	waitGen(t, svc, 3)
}

// A model written after the service loaded the file but before the watcher started is loaded:
// the watcher compares against the file the service loaded, not the one it first sees.
func TestWatchSeesAModelWrittenBeforeItStarted(t *testing.T) {
	svc, path := servingFile(t)
	if err := safetensors.WriteFile(path, model(t, 2)); err != nil {
		t.Fatal(err)
	}
	startWatch(t, svc, path)
	waitGen(t, svc, 2)
	info, _ := svc.Current()
	if info.Source != path {
		t.Fatalf("source %q, want %q", info.Source, path)
	}
}

// A service whose model did not come from the watched path loads the file there at once; an
// unchanged file is then not loaded again.
func TestWatchLoadsAPathTheServiceDidNotLoad(t *testing.T) {
	svc := newService(t)
	m, err := mlp.Load(model(t, 1))
	if err != nil {
		t.Fatal(err)
	}
	svc.Install(m, "memory")
	path := filepath.Join(t.TempDir(), "global.safetensors")
	if err := safetensors.WriteFile(path, model(t, 2)); err != nil {
		t.Fatal(err)
	}
	startWatch(t, svc, path)
	waitGen(t, svc, 2)
	time.Sleep(50 * time.Millisecond)
	if info, err := svc.Current(); err != nil || info.Generation != 2 || info.Source != path {
		t.Fatalf("after an unchanged file: %+v %v, want generation 2 from %s", info, err, path)
	}
}
