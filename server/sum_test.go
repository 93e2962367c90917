package server

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/server/api"
	"github.com/wattagg/wattagg/tensor"
)

// sumUpdates are updates whose float sum depends on the order they are added in: large and
// small values of both signs in every coordinate.
func sumUpdates(t *testing.T, n, size int) ([]*tensor.Set, [][]float32) {
	t.Helper()
	var sets []*tensor.Set
	var flat [][]float32
	for k := range n {
		s := f32Set(t, [][]int{{size}}, func(_, i int) float32 {
			x := float32(math.Sin(float64(17*k+3*i+1))) * 3e4
			if (k+i)%3 == 0 {
				x = float32(math.Cos(float64(k*i+5))) * 1e-3
			}
			return x
		})
		sets = append(sets, s)
		flat = append(flat, f32s(t, s.At(0)))
	}
	return sets, flat
}

// runRound pushes the updates in order to a fresh server of cfg's kind and returns the model's
// bytes and the round's status.
func runRound(t *testing.T, sets []*tensor.Set, weights []float64, order []int) ([]byte, api.Round) {
	t.Helper()
	cfg, tokens, admin := testConfig(t, len(sets))
	ts := startServer(t, cfg, tokens, admin)
	for _, k := range order {
		ts.push(t, fmt.Sprintf("c%d", k), 1, encode(t, sets[k], nil),
			map[string]string{api.WeightHeader: strconv.FormatFloat(weights[k], 'g', -1, 64)})
	}
	st := ts.waitState(t, 1, api.StateClosed)
	return bytes.Clone(ts.readModel(t, 1).At(0).Bytes()), st
}

// TestServerSumsExactlyByDefault: a FedAvg round sums exactly unless configured otherwise, so
// its model has the same bits whatever order the updates arrive in, and every coordinate is
// within one f32 ulp of the float64 weighted mean.
func TestServerSumsExactlyByDefault(t *testing.T) {
	leakCheck(t)
	const n, size = 5, 4099
	sets, flat := sumUpdates(t, n, size)
	weights := []float64{1, 7, 2.5, 1e3, 3}
	a, st := runRound(t, sets, weights, []int{0, 1, 2, 3, 4})
	if st.Sum != SumExact || st.Exact == nil || st.Exact.Bound != aggregate.DefaultExactBound ||
		st.Exact.MaxWeight != aggregate.DefaultExactMaxWeight || st.Report == nil || st.Report.AccDType != "exact" {
		t.Fatalf("status: sum %q, exact %+v, report %+v", st.Sum, st.Exact, st.Report)
	}
	b, _ := runRound(t, sets, weights, []int{3, 1, 4, 0, 2})
	if !bytes.Equal(a, b) {
		t.Fatal("the same updates in another order gave other bits")
	}
	want := meanRef(flat, weights)
	for i, w := range want {
		got := math.Float32frombits(uint32(a[4*i]) | uint32(a[4*i+1])<<8 | uint32(a[4*i+2])<<16 | uint32(a[4*i+3])<<24)
		ulp := math.Nextafter32(float32(math.Abs(w)), float32(math.Inf(1))) - float32(math.Abs(w))
		if math.Abs(float64(got)-w) > float64(ulp) {
			t.Fatalf("element %d: %v, want %v within one ulp", i, got, w)
		}
	}
}

// TestExactSumRefusals: an update exact sums cannot take is refused with a status that says
// which setting would take it, and leaves the round as it was.
func TestExactSumRefusals(t *testing.T) {
	leakCheck(t)
	cfg, tokens, admin := testConfig(t, 3)
	cfg.Round.Exact = &ExactConfig{Bound: 100, MaxWeight: 10}
	ts := startServer(t, cfg, tokens, admin)
	weight := func(w float64) map[string]string {
		return map[string]string{api.WeightHeader: strconv.FormatFloat(w, 'g', -1, 64)}
	}
	in := encode(t, f32Set(t, [][]int{{8}}, func(_, i int) float32 { return float32(i) }), nil)
	beyond := encode(t, f32Set(t, [][]int{{8}}, func(_, i int) float32 { return float32(i) * 20 }), nil)
	f64t, err := tensor.New("w0", tensor.F64, 8)
	if err != nil {
		t.Fatal(err)
	}
	f64s, err := tensor.NewSet(f64t)
	if err != nil {
		t.Fatal(err)
	}
	wide := encode(t, f64s, nil)

	code, b := ts.put(t, tokens["c0"], 1, bytes.NewReader(beyond), int64(len(beyond)), weight(1))
	wantRefused(t, code, b, http.StatusBadRequest, "out_of_range", "round.exact sets the bounds")
	if e := errorBody(t, b); !strings.Contains(e.Error, "w0") {
		t.Fatalf("refusal %q does not name the tensor", e.Error)
	}
	code, b = ts.put(t, tokens["c0"], 1, bytes.NewReader(wide), int64(len(wide)), weight(1))
	wantRefused(t, code, b, http.StatusBadRequest, "dtype", `round.sum: "float" takes f64 updates`)
	ts.push(t, "c1", 1, in, weight(8))
	code, b = ts.put(t, tokens["c2"], 1, bytes.NewReader(in), int64(len(in)), weight(5))
	wantRefused(t, code, b, http.StatusBadRequest, "out_of_range", "max_weight")
	if st := ts.waitState(t, 1, api.StateOpen); st.Clients != 1 {
		t.Fatalf("round holds %d clients after the refusals, want 1", st.Clients)
	}
	// The refused clients can still push an update the round takes.
	ts.push(t, "c0", 1, in, weight(1))
	ts.push(t, "c2", 1, in, weight(1))
	st := ts.waitState(t, 1, api.StateClosed)
	if st.Clients != 3 || st.Exact == nil || st.Exact.Bound != 100 || st.Exact.MaxWeight != 10 {
		t.Fatalf("status %+v", st)
	}
	got := f32s(t, ts.readModel(t, 1).At(0))
	for i, v := range got {
		if v != float32(i) {
			t.Fatalf("element %d: %v, want %v", i, v, i)
		}
	}
}

// TestSumConfig: round.sum and round.exact are checked when the server starts, and "auto"
// picks float sums for the rules that need every update at once.
func TestSumConfig(t *testing.T) {
	for _, c := range []struct {
		rule  string
		sum   string
		exact *ExactConfig
		want  string // the resolved sum, or a fragment of the configuration error
	}{
		{"fedavg", "", nil, SumExact},
		{"fedavg", SumFloat, nil, SumFloat},
		{"median", "", nil, SumFloat},
		{"krum", SumAuto, nil, SumFloat},
		{"norm-clip,fedavg", "", nil, SumExact},
		{"fedavg", "sometimes", nil, `sum "sometimes"`},
		{"median", SumExact, nil, "rule median does not take exact sums"},
		{"median", "", &ExactConfig{Bound: 10}, "remove round.exact"},
		{"fedavg", SumFloat, &ExactConfig{Bound: 10}, "exact is set but sum is \"float\""},
		{"fedavg", "", &ExactConfig{Bound: -1}, "round.exact.bound"},
		{"fedavg", "", &ExactConfig{MaxWeight: math.Inf(1)}, "round.exact.max_weight"},
		{"fedavg", "", &ExactConfig{TensorBounds: map[string]float64{"w0": 0}}, `round.exact.tensor_bounds["w0"]`},
		{"fedavg", "", &ExactConfig{Bound: 16, OneLimb: true}, "round.exact.one_limb needs round.exact.max_weight"},
		{"fedavg", "", &ExactConfig{Bound: 16, MaxWeight: 1 << 20, OneLimb: true}, SumExact},
	} {
		cfg, _, _ := testConfig(t, 3)
		cfg.Round.Rule, cfg.Round.Sum, cfg.Round.Exact = c.rule, c.sum, c.exact
		if c.rule == "norm-clip,fedavg" {
			cfg.Round.Params = map[string]float64{"clip_bound": 1}
		}
		if c.rule == "krum" {
			cfg.Round.Params = map[string]float64{"f": 0}
		}
		err := cfg.check()
		var s *Server
		if err == nil {
			s, err = New(cfg)
		}
		switch {
		case c.want == SumExact || c.want == SumFloat:
			if err != nil {
				t.Errorf("%s sum %q: %v", c.rule, c.sum, err)
				continue
			}
			if s.sum != c.want {
				t.Errorf("%s sum %q resolved to %q, want %q", c.rule, c.sum, s.sum, c.want)
			}
			s.Close()
		case !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), c.want):
			if s != nil {
				s.Close()
			}
			t.Errorf("%s sum %q exact %+v: error %v, want ErrConfig mentioning %q", c.rule, c.sum, c.exact, err, c.want)
		}
	}
}

// TestOneLimbRound: a round configured with round.exact.one_limb keeps its exact sums in one
// limb: the status says so, the model has the same bits in any arrival order and after a
// restart in the middle of the round (the setting is the round's own, in round.json), and every
// coordinate is within one f32 ulp plus the coarser grid's error of the float64 weighted mean.
func TestOneLimbRound(t *testing.T) {
	leakCheck(t)
	const n, size = 5, 4099
	sets, flat := sumUpdates(t, n, size)
	weights := []float64{1, 7, 2.5, 1e3, 3}
	exact := &ExactConfig{Bound: 1 << 15, MaxWeight: 1 << 11, OneLimb: true} // grid 2^(15+11-61)
	run := func(order []int, restartAfter int) ([]byte, api.Round) {
		cfg, tokens, admin := testConfig(t, n)
		cfg.Round.Exact = exact
		ts := startServer(t, cfg, tokens, admin)
		for i, k := range order {
			if i == restartAfter {
				ts.stop()
				ts = startServer(t, cfg, tokens, admin)
			}
			ts.push(t, fmt.Sprintf("c%d", k), 1, encode(t, sets[k], nil),
				map[string]string{api.WeightHeader: strconv.FormatFloat(weights[k], 'g', -1, 64)})
		}
		st := ts.waitState(t, 1, api.StateClosed)
		return bytes.Clone(ts.readModel(t, 1).At(0).Bytes()), st
	}
	a, st := run([]int{0, 1, 2, 3, 4}, -1)
	if st.Sum != SumExact || st.Exact == nil || !st.Exact.OneLimb || st.Exact.Bound != 1<<15 {
		t.Fatalf("status: sum %q, exact %+v", st.Sum, st.Exact)
	}
	b, _ := run([]int{3, 1, 4, 0, 2}, 2)
	if !bytes.Equal(a, b) {
		t.Fatal("the same updates in another order, with a restart, gave other bits")
	}
	grid := math.Ldexp(1, 15+11-61)
	d := 0.0
	for _, w := range weights {
		d += w
	}
	for i, w := range meanRef(flat, weights) {
		got := math.Float32frombits(uint32(a[4*i]) | uint32(a[4*i+1])<<8 | uint32(a[4*i+2])<<16 | uint32(a[4*i+3])<<24)
		ulp := math.Nextafter32(float32(math.Abs(w)), float32(math.Inf(1))) - float32(math.Abs(w))
		if math.Abs(float64(got)-w) > float64(ulp)+n*grid/d {
			t.Fatalf("element %d: %v, want %v within one ulp and the grid", i, got, w)
		}
	}
}
