package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow/flight"
	"google.golang.org/grpc/metadata"

	"github.com/wattagg/wattagg/aggregate/secagg"
	"github.com/wattagg/wattagg/server/api"
	"github.com/wattagg/wattagg/server/client"
	"github.com/wattagg/wattagg/tensor"
)

// putRecovery PUTs body as round n's recovery with token.
func (ts *testServer) putRecovery(t testing.TB, token string, n int, body []byte) (int, []byte) {
	t.Helper()
	return ts.send(t, http.MethodPut, token, fmt.Sprintf("/v1/rounds/%d/recovery", n), bytes.NewReader(body))
}

// secaggSeeds draws what a key agreement would give n clients: a self-mask seed each and a seed
// per pair, the same in both of its clients' maps.
func secaggSeeds(r *rand.ChaCha8, n int) (self []secagg.Seed, pairs []map[int]secagg.Seed) {
	self = make([]secagg.Seed, n)
	pairs = make([]map[int]secagg.Seed, n)
	for i := range n {
		r.Read(self[i][:])
		pairs[i] = map[int]secagg.Seed{}
	}
	for i := range n {
		for j := i + 1; j < n; j++ {
			var s secagg.Seed
			r.Read(s[:])
			pairs[i][j], pairs[j][i] = s, s
		}
	}
	return self, pairs
}

// maskedUpdate is what client c pushes to a secure-sum round: one f32 tensor "w" of values,
// quantised with q (drawing from r) and masked.
func maskedUpdate(t testing.TB, q *secagg.Quantizer, r *rand.ChaCha8, c *secagg.Client, values []float32) *tensor.Set {
	t.Helper()
	x, err := tensor.FromF32("w", []int{len(values)}, values)
	if err != nil {
		t.Fatal(err)
	}
	set, err := tensor.NewSet(x)
	if err != nil {
		t.Fatal(err)
	}
	u, err := q.QuantizeSet(set, r)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Mask(context.Background(), u); err != nil {
		t.Fatal(err)
	}
	return u
}

// TestSecureSumRound runs a secure-sum round over HTTP: four clients mask their quantised
// updates with self and pairwise seeds, one drops out, and the round closes only once a
// recovery that unmasks exactly the three that arrived is given — kept across a restart. The
// model is the mean of what the survivors quantised, against a plain float64 mean of their
// clipped values.
func TestSecureSumRound(t *testing.T) {
	cfg, tokens, admin := testConfig(t, 4)
	cfg.Round.Rule = "secagg"
	cfg.Round.Params = map[string]float64{"bits": 16, "range": 0.5}
	ts := startServer(t, cfg, tokens, admin)
	if st, err := ts.Status(1); err != nil || st.Rule != "secagg" {
		t.Fatalf("round 1: %+v, %v", st, err)
	}

	r := rand.NewChaCha8([32]byte{11})
	const n = 4
	self, pairs := secaggSeeds(r, n)
	q, err := secagg.NewQuantizer(16, 0.5)
	if err != nil {
		t.Fatal(err)
	}
	values := func(k int) []float32 { // some beyond ±0.5: clipped
		v := make([]float32, 1001)
		for j := range v {
			v[j] = float32(math.Sin(float64(j*(k+3)))) * 0.7
		}
		return v
	}
	const dropped = 2
	var survivors []int
	for k := range n {
		u := maskedUpdate(t, q, r, &secagg.Client{ID: k, Self: &self[k], Pairs: pairs[k]}, values(k))
		if k == dropped {
			continue // masked, then lost
		}
		ts.push(t, fmt.Sprintf("c%d", k), 1, encode(t, u, u.Metadata), nil)
		survivors = append(survivors, k)
	}

	// No close without a recovery; the round stays open, and says what it waits for.
	if st, _ := ts.Status(1); st.Recovery != "waiting" {
		t.Fatalf("before its recovery: %+v", st)
	}
	if code, page := ts.send(t, http.MethodGet, "", "/", nil); code != http.StatusOK || !bytes.Contains(page, []byte("secure sum: waiting for the recovery that unmasks it")) {
		t.Fatalf("status page (%d) does not say the round waits for its recovery", code)
	}
	code, b := ts.post(t, admin, "/v1/rounds/1/close")
	wantRefused(t, code, b, http.StatusConflict, "conflict", "round 1 is a secure sum with 3 updates: PUT the seeds of its unmasking round to /v1/rounds/1/recovery first")
	// A recovery is an admin's, and JSON.
	full := &secagg.Recovery{Clients: []int{0, 1, 2, 3}, Self: map[int]secagg.Seed{}, Dropped: map[int]map[int]secagg.Seed{dropped: {}}}
	for _, k := range survivors {
		full.Self[k] = self[k]
		full.Dropped[dropped][k] = pairs[dropped][k]
	}
	good, err := json.Marshal(full)
	if err != nil {
		t.Fatal(err)
	}
	code, b = ts.putRecovery(t, tokens["c0"], 1, good)
	wantRefused(t, code, b, http.StatusForbidden, "forbidden", "not permitted")
	code, b = ts.putRecovery(t, admin, 1, []byte(`{"clients": [0], "self": {"0": "abc"}}`))
	wantRefused(t, code, b, http.StatusBadRequest, "bad_request", "self seed of client 0: want 64 hex digits")
	// One that lacks a seed is stored, and the close says what it lacks.
	short := &secagg.Recovery{Clients: full.Clients, Self: full.Self, Dropped: map[int]map[int]secagg.Seed{dropped: {0: pairs[dropped][0]}}}
	sb, _ := json.Marshal(short)
	if code, b := ts.putRecovery(t, admin, 1, sb); code != http.StatusOK {
		t.Fatalf("short recovery stored: %d %s", code, b)
	}
	code, b = ts.post(t, admin, "/v1/rounds/1/close")
	wantRefused(t, code, b, http.StatusConflict, "conflict", "the recovery does not unmask its 3 updates: invalid option: no seed shared by dropped client 2 and survivor 1")
	if st, _ := ts.Status(1); st.State != api.StateOpen || st.Clients != 3 || st.Recovery != "stored" {
		t.Fatalf("after a refused close: %+v", st)
	}

	// The full recovery, then a restart: the round closes with the stored recovery.
	if code, b := ts.putRecovery(t, admin, 1, good); code != http.StatusOK {
		t.Fatalf("recovery: %d %s", code, b)
	}
	ts.stop()
	ts = startServer(t, cfg, tokens, admin)
	if code, b := ts.post(t, admin, "/v1/rounds/1/close"); code != http.StatusOK {
		t.Fatalf("close: %d %s", code, b)
	}
	st := ts.waitState(t, 1, api.StateClosed)
	if st.Report == nil || st.Report.Details["dropped"] != 1 || st.Report.Details["masks_removed"] != 3+3 {
		t.Fatalf("report %+v", st.Report)
	}
	got := f32s(t, ts.readModel(t, 1).At(0))
	step := 2 * 0.5 / float64(uint64(1)<<16-1)
	for j, g := range got {
		var want float64
		for _, k := range survivors {
			want += math.Max(-0.5, math.Min(0.5, float64(values(k)[j])))
		}
		want /= float64(len(survivors))
		if math.Abs(float64(g)-want) > step+1e-7 {
			t.Fatalf("w[%d] = %v, mean of the survivors' clipped values %v (step %v)", j, g, want, step)
		}
	}
	// A closed round takes no recovery.
	code, b = ts.putRecovery(t, admin, 1, good)
	wantRefused(t, code, b, http.StatusConflict, "round_closed", "round 1 is closed")
}

// TestRecoveryOnlyForSecureSums: a round of another rule refuses a recovery.
func TestRecoveryOnlyForSecureSums(t *testing.T) {
	cfg, tokens, admin := testConfig(t, 2)
	ts := startServer(t, cfg, tokens, admin)
	code, b := ts.putRecovery(t, admin, 1, []byte(`{"clients": [0, 1], "no_self_masks": true}`))
	wantRefused(t, code, b, http.StatusConflict, "conflict", "round 1's rule fedavg takes no recovery: only a secure sum (secagg) does")
}

// TestSecureSumDeadlineWithoutRecovery: at its deadline, a secure-sum round with no recovery
// fails and says why, since its sum cannot be unmasked.
func TestSecureSumDeadlineWithoutRecovery(t *testing.T) {
	cfg, tokens, admin := testConfig(t, 2)
	cfg.Round.Rule = "secagg"
	cfg.Round.Deadline = Duration(2 * time.Second) // long enough for one push on a loaded machine
	cfg.Round.ManualNext = true
	ts := startServer(t, cfg, tokens, admin)
	q, err := secagg.NewQuantizer(16, 1)
	if err != nil {
		t.Fatal(err)
	}
	u := maskedUpdate(t, q, rand.NewChaCha8([32]byte{1}), &secagg.Client{ID: 0}, []float32{0.25, -0.5, 1})
	ts.push(t, "c0", 1, encode(t, u, u.Metadata), nil)
	st := ts.waitState(t, 1, api.StateFailed)
	if want := "the deadline passed with 1 updates, but round 1 is a secure sum with 1 updates: PUT the seeds of its unmasking round to /v1/rounds/1/recovery first"; !strings.Contains(st.Reason, want) {
		t.Fatalf("reason %q, want %q", st.Reason, want)
	}
}

// TestSecureSumRecoveryByFlightAndClient: a full secure-sum round waits for its recovery and
// closes as it comes, given as a Flight action (round 1) or with the Go client (round 2).
func TestSecureSumRecoveryByFlightAndClient(t *testing.T) {
	cfg, tokens, admin := testConfig(t, 2)
	cfg.Round.Rule = "secagg"
	ts := startServer(t, cfg, tokens, admin)
	fc, _ := flightServe(t, ts)
	hc, err := client.New(ts.url, client.WithToken(admin))
	if err != nil {
		t.Fatal(err)
	}
	q, err := secagg.NewQuantizer(16, 1)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.NewChaCha8([32]byte{2})
	rec := &secagg.Recovery{Clients: []int{0, 1}, NoSelfMasks: true} // nobody dropped: the pairwise masks cancel
	for round := 1; round <= 2; round++ {
		var pair secagg.Seed
		r.Read(pair[:])
		for k := range 2 {
			u := maskedUpdate(t, q, r, &secagg.Client{ID: k, Pairs: map[int]secagg.Seed{1 - k: pair}}, []float32{0.25 * float32(k+1), -0.5})
			ts.push(t, fmt.Sprintf("c%d", k), round, encode(t, u, u.Metadata), nil)
		}
		if st, _ := ts.Status(round); st.State != api.StateOpen || st.Clients != 2 {
			t.Fatalf("round %d, full, before its recovery: %+v", round, st)
		}
		var st api.Round
		if round == 1 {
			body, _ := json.Marshal(rec)
			ctx := metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+admin)
			act, err := fc.DoAction(ctx, &flight.Action{Type: "recovery", Body: append([]byte("1\n"), body...)})
			if err != nil {
				t.Fatal(err)
			}
			res, err := act.Recv()
			if err != nil || json.Unmarshal(res.GetBody(), &st) != nil {
				t.Fatalf("recovery action: %v", err)
			}
		} else {
			got, err := hc.SetRecovery(t.Context(), round, rec)
			if err != nil {
				t.Fatal(err)
			}
			st = *got
		}
		if st.State != api.StateClosed {
			t.Fatalf("round %d after its recovery: %+v", round, st)
		}
		w := f32s(t, ts.readModel(t, round).At(0))
		step := 2.0 / float64(uint64(1)<<16-1)
		if math.Abs(float64(w[0])-0.375) > step || math.Abs(float64(w[1])+0.5) > step {
			t.Fatalf("round %d: model %v, want [0.375 -0.5]", round, w)
		}
	}
}
