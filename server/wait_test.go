package server

import (
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/wattagg/wattagg/server/api"
	"github.com/wattagg/wattagg/server/client"
)

// A status request with ?wait= returns when the round ends (closed into its model, or failed),
// not before and not long after; on an ended round, or with a zero wait, at once; a bad wait is
// a 400. client.WaitEnded long-polls until then.
func TestWaitStatus(t *testing.T) {
	leakCheck(t)
	cfg, tokens, admin := testConfig(t, 2)
	cfg.Round.MinClients, cfg.Round.MaxClients = 1, 2
	ts := startServer(t, cfg, tokens, admin)
	ts.waitState(t, 1, api.StateOpen)

	type got struct {
		st   api.Round
		code int
		at   time.Time
	}
	waited := make(chan got, 1)
	go func() {
		var st api.Round
		code := ts.getJSON(t, "/v1/rounds/1?wait=20s", &st)
		waited <- got{st, code, time.Now()}
	}()
	c, err := client.New(ts.url)
	if err != nil {
		t.Fatal(err)
	}
	viaClient := make(chan *api.Round, 1)
	go func() {
		st, err := c.WaitEnded(context.Background(), 1)
		if err != nil {
			t.Error(err)
		}
		viaClient <- st
	}()
	select {
	case g := <-waited:
		t.Fatalf("the wait returned while the round was open: %d %+v", g.code, g.st)
	case <-time.After(300 * time.Millisecond):
	}
	ts.push(t, "c0", 1, encode(t, f32Set(t, [][]int{{8}}, func(_, i int) float32 { return float32(i) }), nil), nil)
	closed := time.Now()
	if code, b := ts.post(t, admin, "/v1/rounds/1/close"); code != http.StatusOK {
		t.Fatalf("close: %d %s", code, b)
	}
	g := <-waited
	if g.code != http.StatusOK || g.st.State != api.StateClosed || g.st.Report == nil {
		t.Fatalf("wait: %d %+v, want the closed round with its report", g.code, g.st)
	}
	if d := g.at.Sub(closed); d > 5*time.Second {
		t.Fatalf("the wait returned %v after the close", d)
	}
	if st := <-viaClient; st == nil || st.State != api.StateClosed {
		t.Fatalf("WaitEnded: %+v", st)
	}
	start := time.Now()
	var st api.Round
	if code := ts.getJSON(t, "/v1/rounds/1?wait=20s", &st); code != http.StatusOK || st.State != api.StateClosed || time.Since(start) > 5*time.Second {
		t.Fatalf("wait on an ended round: %d %+v after %v", code, st, time.Since(start))
	}
	for _, bad := range []string{"soon", "-1s", "11m"} {
		resp, err := ts.httpClient().Get(ts.url + "/v1/rounds/1?wait=" + bad)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		wantRefused(t, resp.StatusCode, b, http.StatusBadRequest, "bad_request", "wait")
	}
}
