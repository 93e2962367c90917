package federation

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wattagg/wattagg/energy"
)

// checkRounds checks what every round of res must hold: all clients acknowledged, every
// client's model bytes, the inference node answering with the model just loaded, and joules
// with a source from the server's round report.
func checkRounds(t *testing.T, res *Result, clients int) {
	t.Helper()
	const modelBytes = 4 * (32*64 + 32 + 10*32 + 10) // the f32 MLP 64-32-10
	for i, rd := range res.Rounds {
		if rd.Round != i+1 {
			t.Fatalf("round %d reported as %d", i+1, rd.Round)
		}
		if rd.Clients != clients || rd.Bytes != int64(clients*modelBytes) || len(rd.Dropped) != 0 {
			t.Errorf("round %d: %d clients, %d bytes, dropped %v; want %d clients of %d bytes", rd.Round, rd.Clients, rd.Bytes, rd.Dropped, clients, modelBytes)
		}
		if rd.Generation != uint64(i+1) {
			t.Errorf("round %d answered by the inference node's model generation %d, want %d", rd.Round, rd.Generation, i+1)
		}
		if !(rd.Accuracy >= 0 && rd.Accuracy <= 1) {
			t.Errorf("round %d: accuracy %v", rd.Round, rd.Accuracy)
		}
		if rd.Joules == nil || math.IsNaN(*rd.Joules) || *rd.Joules < 0 {
			t.Errorf("round %d: joules %v (%s)", rd.Round, rd.Joules, rd.JoulesReason)
		}
		if rd.JoulesSource == "" || len(rd.Energy) == 0 {
			t.Errorf("round %d: joules without a source: source %q, %d measurements", rd.Round, rd.JoulesSource, len(rd.Energy))
		}
		for _, m := range rd.Energy {
			if m.Source == "" || m.Meter == "" {
				t.Errorf("round %d: a measurement without provenance: %+v", rd.Round, m)
			}
			if m.Source == energy.SourceEstimate && m.Model == "" {
				t.Errorf("round %d: an estimate without its model: %+v", rd.Round, m)
			}
		}
		if rd.Seconds <= 0 {
			t.Errorf("round %d: aggregation took %v s", rd.Round, rd.Seconds)
		}
	}
}

// TestFederationLoopback runs short federations on loopback, each through the real server,
// clients and inference node: FedAvg and the median, a few rounds. Accuracy must rise from
// the first round to the last, every round must report joules with a source, and the
// requests kept on the inference node while it reloaded every round's model must all succeed.
func TestFederationLoopback(t *testing.T) {
	rounds, floor := 4, 0.85
	if testing.Short() { // the race detector slows gorgonia's training tenfold
		rounds, floor = 2, 0.6
	}
	for _, rule := range []Rule{{Name: "fedavg"}, {Name: "median"}} {
		t.Run(rule.Name, func(t *testing.T) {
			dir := t.TempDir()
			var seen []int
			res, err := Run(context.Background(), WithRule(rule.Name, rule.Params), WithRounds(rounds),
				WithDir(dir), WithInferenceLoad(2*time.Millisecond),
				WithProgress(func(rd Round) { seen = append(seen, rd.Round) }))
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Rounds) != rounds || len(seen) != rounds || res.Collapsed != "" {
				t.Fatalf("%d rounds, progress saw %v, collapsed %q; want %d rounds", len(res.Rounds), seen, res.Collapsed, rounds)
			}
			checkRounds(t, res, 10)
			first, last := res.Rounds[0].Accuracy, res.Final()
			t.Logf("%s: accuracy by round %v; inference load %+v; %v", rule.Name, accuracyList(res), res.Load, res.Wall.Round(time.Millisecond))
			if !(last > first) || last < floor {
				t.Errorf("accuracy went from %.3f to %.3f in %d rounds: want a rise to at least %.2f", first, last, rounds, floor)
			}
			if res.Load.Requests == 0 || res.Load.Failed != 0 {
				t.Errorf("inference load: %+v: want requests, none failed", res.Load)
			}
			if res.Load.Generations < 2 {
				t.Errorf("inference load answered by %d models: the reloads did not happen under load", res.Load.Generations)
			}
			// The run's files stay in the directory given: the server's rounds and the
			// inference node's model.
			for _, p := range []string{"initial.safetensors", "inference/global.safetensors", "server/rounds/000001/model.safetensors"} {
				if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
					t.Error(err)
				}
			}
		})
	}
}

func accuracyList(res *Result) []float64 {
	var out []float64
	for _, rd := range res.Rounds {
		out = append(out, math.Round(rd.Accuracy*1000)/1000)
	}
	return out
}

// TestFederationTargets checks the targets on the full-length runs: FedAvg reaches
// 0.90 held-out accuracy within 20 rounds; with 3 of 10 clients scaling their updates by −10
// FedAvg collapses while the median keeps most of the clean accuracy, and the median, trimmed
// mean and Krum after nearest-neighbour mixing end within 3 points of clean FedAvg.
func TestFederationTargets(t *testing.T) {
	if testing.Short() {
		t.Skip("20-round federations")
	}
	clean, err := Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	checkRounds(t, clean, 10)
	t.Logf("fedavg: %v", accuracyList(clean))
	if r := clean.FirstReaching(0.90); r == 0 || r > 20 {
		t.Errorf("fedavg never reached 0.90 in %d rounds", len(clean.Rounds))
	}
	mixed := []Rule{{Name: "median", Params: map[string]float64{"nnm": 3}},
		{Name: "trimmed-mean", Params: map[string]float64{"beta": 0.3, "nnm": 3}},
		{Name: "krum", Params: map[string]float64{"f": 3, "m": 1, "nnm": 3}}}
	tab, err := NewTable(append([]Rule{{Name: "fedavg"}, {Name: "median"}}, mixed...), []Attack{ScaleAttack}, 3)
	if err != nil {
		t.Fatal(err)
	}
	if err := tab.Run(context.Background(), 2, nil); err != nil {
		t.Fatal(err)
	}
	fedavg, median := tab.Results[0][0], tab.Results[1][0]
	t.Logf("fedavg under attack: %v (%s)", accuracyList(fedavg), fedavg.Collapsed)
	t.Logf("median under attack: %v", accuracyList(median))
	if fedavg.Final() > 0.3 {
		t.Errorf("fedavg with 3 clients scaled by −10 ends at %.3f: it should collapse", fedavg.Final())
	}
	if median.Final() < clean.Final()-0.15 {
		t.Errorf("median with 3 clients scaled by −10 ends at %.3f, clean fedavg at %.3f", median.Final(), clean.Final())
	}
	if poisoned := median.Poisoned; len(poisoned) != 3 || poisoned[0] != "client-00" {
		t.Errorf("poisoned clients %v", poisoned)
	}
	for i, r := range mixed {
		res := tab.Results[2+i][0]
		t.Logf("%s under attack: %v", ruleLabel(r), accuracyList(res))
		if res.Final() < clean.Final()-0.03 {
			t.Errorf("%s with 3 clients scaled by −10 ends at %.3f, more than 3 points below clean fedavg's %.3f", ruleLabel(r), res.Final(), clean.Final())
		}
	}
}

func TestOptions(t *testing.T) {
	for name, o := range map[string]Option{
		"rule":           WithRule("", nil),
		"rounds":         WithRounds(0),
		"clients":        WithClients(65),
		"alpha":          WithDirichlet(math.Inf(1)),
		"hidden":         WithHidden(0),
		"attack":         WithAttack(Attack(7), 3),
		"attack none":    WithAttack(NoAttack, 3),
		"attack zero":    WithAttack(ScaleAttack, 0),
		"dir":            WithDir(""),
		"scratch":        WithScratch(""),
		"meters":         WithMeters(),
		"nil meter":      WithMeters(nil),
		"logger":         WithLogger(nil),
		"progress":       WithProgress(nil),
		"inference load": WithInferenceLoad(time.Nanosecond),
	} {
		if _, err := Run(context.Background(), o); !errors.Is(err, ErrOption) {
			t.Errorf("%s: %v, want ErrOption", name, err)
		}
	}
	if _, err := Run(context.Background(), WithAttack(FlipAttack, 10)); !errors.Is(err, ErrOption) {
		t.Errorf("every client poisoned: %v, want ErrOption", err)
	}
	if _, err := Run(context.Background(), WithRule("no-such-rule", nil)); err == nil || !strings.Contains(err.Error(), "no-such-rule") {
		t.Errorf("unknown rule: %v", err)
	}
	if _, err := NewTable(nil, DefaultAttacks(), 3); !errors.Is(err, ErrOption) {
		t.Errorf("table without rules: %v", err)
	}
	if _, err := NewTable(DefaultRules(), DefaultAttacks(), 0); !errors.Is(err, ErrOption) {
		t.Errorf("attacks without attackers: %v", err)
	}
}

func TestTableMarkdown(t *testing.T) {
	tab, err := NewTable([]Rule{{Name: "fedavg"}, {Name: "krum", Params: map[string]float64{"m": 1, "f": 3}}},
		[]Attack{NoAttack, ScaleAttack}, 3)
	if err != nil {
		t.Fatal(err)
	}
	rounds := func(accs ...float64) []Round {
		var out []Round
		for i, a := range accs {
			out = append(out, Round{Round: i + 1, Accuracy: a})
		}
		return out
	}
	for _, r := range []*Result{
		{Rule: Rule{Name: "fedavg"}, Attack: NoAttack, Rounds: rounds(0.5, 0.9667)},
		{Rule: Rule{Name: "fedavg"}, Attack: ScaleAttack, Rounds: rounds(0.2, 0.097), Collapsed: "federation collapsed: round 3: ..."},
		{Rule: Rule{Name: "krum"}, Attack: ScaleAttack, Rounds: rounds(0.4, 0.8)},
		{Rule: Rule{Name: "krum"}, Attack: NoAttack, Rounds: append(rounds(0.4), Round{Round: 2, Accuracy: 0.1, Dropped: []string{"x"}})},
	} {
		if !tab.Set(r) {
			t.Fatalf("%s/%s not in the table", r.Rule, r.Attack)
		}
	}
	if tab.Set(&Result{Rule: Rule{Name: "median"}}) {
		t.Error("Set took a rule the table does not have")
	}
	var b strings.Builder
	if err := tab.WriteMarkdown(&b); err != nil {
		t.Fatal(err)
	}
	want := "| rule (parameters) | no attack | scaled ×−10 (3 clients) |\n" +
		"|---|---:|---:|\n" +
		"| fedavg | 0.967 | 0.097 (collapsed in round 3) |\n" +
		"| krum (f=3, m=1) | 0.100 (clients drop out from round 2) | 0.800 |\n"
	if b.String() != want {
		t.Errorf("markdown:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestProvenance(t *testing.T) {
	got := Provenance([]energy.Measurement{
		{Joules: 1, Provenance: energy.Provenance{Source: energy.SourceRAPL, Meter: "rapl", Domains: []string{"package-0", "dram-0"}}},
		{Joules: 2, Provenance: energy.Provenance{Source: energy.SourceEstimate, Meter: "estimate:cpu", Domains: []string{"cpu"}, Model: "W = 1 + 2u"}},
	})
	want := "rapl from rapl over package-0, dram-0; estimate from estimate:cpu over cpu (W = 1 + 2u)"
	if got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
}

// withScale changes the scaling attack's factor.
func withScale(s float64) Option {
	return func(c *config) error { c.scale = s; return nil }
}

// TestDroppedClients: two clients scale their updates by 1e39, which overflows float32, so
// the server refuses them (non-finite values) every round. The federation goes on without
// them: the admin closes each round with the 8 updates acknowledged, and the honest clients
// still train the model.
func TestDroppedClients(t *testing.T) {
	rounds := 3
	if testing.Short() {
		rounds = 2
	}
	res, err := Run(context.Background(), WithRounds(rounds), WithAttack(ScaleAttack, 2), withScale(1e39))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Rounds) != rounds || res.Collapsed != "" {
		t.Fatalf("%d rounds, collapsed %q", len(res.Rounds), res.Collapsed)
	}
	for _, rd := range res.Rounds {
		if rd.Clients != 8 || len(rd.Dropped) != 2 {
			t.Fatalf("round %d: %d clients, dropped %q: want 8 and the 2 attackers", rd.Round, rd.Clients, rd.Dropped)
		}
		for _, d := range rd.Dropped {
			if !strings.HasPrefix(d, "client-0") || !strings.Contains(d, "400") {
				t.Errorf("round %d: dropped %q: want client-00 and client-01 refused with 400", rd.Round, d)
			}
		}
	}
	t.Logf("accuracy %v; dropped in round 1: %q", accuracyList(res), res.Rounds[0].Dropped)
	if res.Final() < 0.8 {
		t.Errorf("8 honest clients reached %.3f in %d rounds", res.Final(), rounds)
	}
}

// TestTableRunFailure: a run that fails (Krum told to tolerate 9 attackers among 10 clients,
// which the server refuses) marks its cell, the other runs go on, and Run returns the failure.
func TestTableRunFailure(t *testing.T) {
	tab, err := NewTable([]Rule{{Name: "fedavg"}, {Name: "krum", Params: map[string]float64{"f": 9}}}, []Attack{NoAttack}, 3)
	if err != nil {
		t.Fatal(err)
	}
	var done []string
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil)) // the server logs the failed round
	err = tab.Run(context.Background(), 2, func(r *Result) { done = append(done, r.Rule.Name) }, WithRounds(1), WithLogger(quiet))
	if err == nil || !strings.Contains(err.Error(), "rule krum, attack none") {
		t.Fatalf("Run: %v, want krum's failure", err)
	}
	ok, bad := tab.Results[0][0], tab.Results[1][0]
	if ok == nil || ok.Error != "" || len(ok.Rounds) != 1 {
		t.Errorf("fedavg's run: %+v", ok)
	}
	if bad == nil || bad.Error == "" || len(bad.Rounds) != 0 {
		t.Fatalf("krum's run: %+v", bad)
	}
	if len(done) != 2 {
		t.Errorf("done called for %v", done)
	}
	var b strings.Builder
	if err := tab.WriteMarkdown(&b); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "| krum (f=9) | failed (see the run's error) |") {
		t.Errorf("markdown:\n%s", b.String())
	}
}
