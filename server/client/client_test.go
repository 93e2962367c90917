package client_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wattagg/wattagg/server"
	"github.com/wattagg/wattagg/server/api"
	"github.com/wattagg/wattagg/server/client"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// serve starts a server of n clients on loopback with manual rounds and max clients 2.
func serve(t *testing.T, n int) (url string, tokens []string, admin string) {
	t.Helper()
	cfg := &server.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir()}
	for k := range n {
		tok := fmt.Sprintf("tok-%d-%d", k, time.Now().UnixNano())
		tokens = append(tokens, tok)
		cfg.Clients = append(cfg.Clients, server.ClientConfig{ID: fmt.Sprintf("c%d", k), TokenSHA256: server.HashToken(tok)})
	}
	admin = fmt.Sprintf("admin-%d", time.Now().UnixNano())
	cfg.AdminTokenSHA256 = server.HashToken(admin)
	cfg.Round = server.RoundConfig{Rule: "fedavg", MaxClients: 2, ManualNext: true}
	s, err := server.New(cfg, server.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln, 5*time.Second) }()
	t.Cleanup(func() { cancel(); <-done })
	return "http://" + ln.Addr().String(), tokens, admin
}

func set(t *testing.T, v ...float32) *tensor.Set {
	t.Helper()
	x, err := tensor.FromF32("w", []int{len(v)}, v)
	if err != nil {
		t.Fatal(err)
	}
	s, err := tensor.NewSet(x)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestPushPullStatus(t *testing.T) {
	url, tokens, admin := serve(t, 3)
	ctx := context.Background()
	c0, err := client.New(url, client.WithToken(tokens[0]))
	if err != nil {
		t.Fatal(err)
	}
	var seen int64
	ack, err := c0.PushSet(ctx, 1, set(t, 1, 2, 3, 4), client.WithWeight(3), client.WithProgress(func(done, total int64) {
		if done > total {
			t.Errorf("progress %d of %d", done, total)
		}
		seen = done
	}))
	if err != nil {
		t.Fatal(err)
	}
	if ack.Round != 1 || ack.Client != "c0" || ack.Weight != 3 || ack.Retry || seen == 0 {
		t.Fatalf("ack %+v, progress %d", ack, seen)
	}
	// A retry of the same update gets the same acknowledgement.
	again, err := c0.PushSet(ctx, 1, set(t, 1, 2, 3, 4), client.WithWeight(3))
	if err != nil || !again.Retry || again.Seq != ack.Seq || again.Digest != ack.Digest {
		t.Fatalf("retry: %+v %v", again, err)
	}
	// A different one is a conflict.
	_, err = c0.PushSet(ctx, 1, set(t, 9, 9, 9, 9))
	var ce *client.Error
	if !errors.Is(err, client.ErrConflict) || !errors.As(err, &ce) || ce.Code != "conflict" {
		t.Fatalf("different update: %v", err)
	}
	// No model yet: the pull fails and leaves the file alone.
	out := filepath.Join(t.TempDir(), "global.safetensors")
	if err := os.WriteFile(out, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := c0.Pull(ctx, 0, out); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("pull before any model: %v", err)
	}
	if b, _ := os.ReadFile(out); string(b) != "old" {
		t.Fatal("a failed pull changed the file")
	}
	c1, err := client.New(url, client.WithToken(tokens[1]))
	if err != nil {
		t.Fatal(err)
	}
	// Weights are given to every update or to none (the round refuses a mix before the body).
	if _, err := c1.PushSet(ctx, 1, set(t, 5, 6, 7, 8)); !errors.Is(err, client.ErrBadUpdate) {
		t.Fatalf("an update without a weight beside weighted ones: %v", err)
	}
	if _, err := c1.PushSet(ctx, 1, set(t, 5, 6, 7, 8), client.WithWeight(1)); err != nil {
		t.Fatal(err)
	}
	var st *api.Round
	for range 1000 {
		if st, err = c1.Status(ctx, 1); err == nil && st.State == api.StateClosed {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if st.State != api.StateClosed || len(st.Updates) != 2 || st.Report == nil {
		t.Fatalf("status %+v", st)
	}
	var done int64
	if err := c1.Pull(ctx, 0, out, client.WithProgress(func(d, _ int64) { done = d })); err != nil {
		t.Fatal(err)
	}
	m, err := safetensors.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	b := m.At(0).Bytes()
	got := make([]float32, 4)
	for i := range got {
		got[i] = float32frombytes(b[4*i:])
	}
	for i, want := range []float32{(3*1 + 5) / 4.0, (3*2 + 6) / 4.0, (3*3 + 7) / 4.0, (3*4 + 8) / 4.0} {
		if got[i] != want {
			t.Fatalf("model %v", got)
		}
	}
	if fi, _ := os.Stat(out); done != fi.Size() {
		t.Fatalf("pull progress %d of %d", done, fi.Size())
	}
	rs, err := c1.Rounds(ctx)
	if err != nil || rs.Latest != 1 || len(rs.Rounds) != 1 {
		t.Fatalf("rounds %+v %v", rs, err)
	}
	// Admin: a client cannot open a round; the admin can.
	if _, err := c1.OpenRound(ctx); !errors.Is(err, client.ErrForbidden) {
		t.Fatalf("client opens a round: %v", err)
	}
	ad, err := client.New(url, client.WithToken(admin))
	if err != nil {
		t.Fatal(err)
	}
	r2, err := ad.OpenRound(ctx)
	if err != nil || r2.Round != 2 {
		t.Fatalf("open: %+v %v", r2, err)
	}
	if _, err := ad.CloseRound(ctx, 2); !errors.Is(err, client.ErrConflict) {
		t.Fatalf("closing an empty round: %v", err)
	}
	// Pushing to a round that does not exist.
	if _, err := c0.Push(ctx, 5, bytes.NewReader([]byte("x")), 1); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("push to round 5: %v", err)
	}
}

func TestNewErrors(t *testing.T) {
	for _, u := range []string{"", "ftp://x", "http://", "::"} {
		if _, err := client.New(u); !errors.Is(err, client.ErrOption) {
			t.Errorf("New(%q): %v", u, err)
		}
	}
	if _, err := client.New("http://127.0.0.1:1", client.WithToken(" ")); !errors.Is(err, client.ErrOption) {
		t.Errorf("empty token: %v", err)
	}
}

func float32frombytes(b []byte) float32 { return math.Float32frombits(binary.LittleEndian.Uint32(b)) }

// TestOptionGivenWhereItDoesNotApply gives every option to each function that does not take it:
// each refuses it with ErrOption, naming the option and the functions it belongs to, before a
// request is sent or a file written.
func TestOptionGivenWhereItDoesNotApply(t *testing.T) {
	var requests atomic.Int64
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { requests.Add(1) }))
	defer ts.Close()
	c, err := client.New(ts.URL)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	dir := t.TempDir()
	update := filepath.Join(dir, "update.safetensors")
	if err := safetensors.WriteFile(update, set(t, 1, 2), safetensors.WithDirectIO(false)); err != nil {
		t.Fatal(err)
	}
	pulled := filepath.Join(dir, "model.safetensors")
	call := map[string]func(client.Option) error{
		"New": func(o client.Option) error {
			_, err := client.New(ts.URL, o)
			return err
		},
		"Push": func(o client.Option) error {
			_, err := c.Push(ctx, 1, bytes.NewReader([]byte("x")), 1, o)
			return err
		},
		"PushFile": func(o client.Option) error {
			_, err := c.PushFile(ctx, 1, update, o)
			return err
		},
		"PushSet": func(o client.Option) error {
			_, err := c.PushSet(ctx, 1, set(t, 1, 2), o)
			return err
		},
		"Pull": func(o client.Option) error { return c.Pull(ctx, 0, pulled, o) },
	}
	pushes := []string{"Push", "PushFile", "PushSet"}
	cases := []struct {
		name  string
		opt   client.Option
		takes []string
		list  string
	}{
		{"WithToken", client.WithToken("t"), []string{"New"}, "New"},
		{"WithHTTPClient", client.WithHTTPClient(ts.Client()), []string{"New"}, "New"},
		{"WithTLS", client.WithTLS(&tls.Config{}), []string{"New"}, "New"},
		{"WithWeight", client.WithWeight(2), pushes, "Push, PushFile and PushSet"},
		{"WithProgress", client.WithProgress(func(int64, int64) {}), append(pushes, "Pull"), "Push, PushFile, PushSet and Pull"},
	}
	refused := 0
	for _, tc := range cases {
		for _, fn := range []string{"New", "Push", "PushFile", "PushSet", "Pull"} {
			if slices.Contains(tc.takes, fn) {
				continue
			}
			err := call[fn](tc.opt)
			want := "invalid client option: " + tc.name + " is an option of " + tc.list + "; " + fn + " does not take it"
			if !errors.Is(err, client.ErrOption) || err.Error() != want {
				t.Errorf("%s(%s): %v, want %q", fn, tc.name, err, want)
			}
			refused++
		}
	}
	if refused != 3*4+2+1 {
		t.Errorf("%d refusals checked, want 15", refused)
	}
	if n := requests.Load(); n != 0 {
		t.Errorf("%d requests reached the server", n)
	}
	if _, err := os.Stat(pulled); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused pull left %s: %v", pulled, err)
	}
	for fn, call := range call {
		if err := call(nil); !errors.Is(err, client.ErrOption) || err.Error() != "invalid client option: nil option given to "+fn {
			t.Errorf("%s(nil): %v", fn, err)
		}
	}
}
