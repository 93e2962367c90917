package server

import (
	"fmt"
	"math"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/wattagg/wattagg/server/api"
)

// meanRef is the weighted mean of updates, plainly, in float64.
func meanRef(updates [][]float32, weights []float64) []float64 {
	out := make([]float64, len(updates[0]))
	var total float64
	for _, w := range weights {
		total += w
	}
	for k, u := range updates {
		for i, v := range u {
			out[i] += weights[k] * float64(v)
		}
	}
	for i := range out {
		out[i] /= total
	}
	return out
}

func TestRoundClosesAtMaxClientsIntoWeightedMean(t *testing.T) {
	leakCheck(t)
	cfg, tokens, admin := testConfig(t, 3)
	ts := startServer(t, cfg, tokens, admin)
	shapes := [][]int{{3, 5}, {7}}
	var flat [][]float32
	weights := []float64{1, 2.5, 4}
	for k := range 3 {
		s := f32Set(t, shapes, func(tn, i int) float32 { return float32(k*100+tn*10+i) * 0.25 })
		body := encode(t, s, nil)
		ack := ts.push(t, fmt.Sprintf("c%d", k), 1, body, map[string]string{api.WeightHeader: strconv.FormatFloat(weights[k], 'g', -1, 64)})
		if ack.Seq != k || ack.Round != 1 || ack.Weight != weights[k] || ack.From != "given" || ack.Bytes != 4*(15+7) {
			t.Fatalf("ack %d: %+v", k, ack)
		}
		var u []float32
		for tn := range s.Tensors() {
			u = append(u, f32s(t, s.At(tn))...)
		}
		flat = append(flat, u)
	}
	st := ts.waitState(t, 1, api.StateClosed)
	if st.Clients != 3 || st.Report == nil || st.Report.Clients != 3 {
		t.Fatalf("status %+v", st)
	}
	want := meanRef(flat, weights)
	m := ts.readModel(t, 1)
	var got []float32
	for i := range m.Len() {
		got = append(got, f32s(t, m.At(i))...)
	}
	for i := range want {
		if math.Abs(float64(got[i])-want[i]) > 1e-5*math.Abs(want[i])+1e-6 {
			t.Fatalf("element %d: %v, want %v", i, got[i], want[i])
		}
	}
	if ts.waitState(t, 2, api.StateOpen).Round != 2 {
		t.Fatal("round 2 did not open")
	}
	var rounds api.Rounds
	if code := ts.getJSON(t, "/v1/rounds", &rounds); code != http.StatusOK || len(rounds.Rounds) != 2 || rounds.Latest != 1 {
		t.Fatalf("rounds: %d %+v", code, rounds)
	}
	_ = time.Second
}
