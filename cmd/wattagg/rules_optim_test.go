package main

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// writeModel writes a one-tensor f32 model "w" with metadata md (key, value pairs).
func writeModel(t *testing.T, path string, v []float32, md ...string) {
	t.Helper()
	tt, err := tensor.FromF32("w", []int{len(v)}, append([]float32(nil), v...))
	if err != nil {
		t.Fatal(err)
	}
	s := must(tensor.NewSet(tt))(t)
	for i := 0; i+1 < len(md); i += 2 {
		s.Metadata[md[i]] = md[i+1]
	}
	if err := safetensors.WriteFile(path, s); err != nil {
		t.Fatal(err)
	}
}

func readModel(t *testing.T, path, name string) []float32 {
	t.Helper()
	s, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tt, ok := s.Tensor(name)
	if !ok {
		t.Fatalf("%s: no tensor %q", path, name)
	}
	v, err := tt.F32()
	if err != nil {
		t.Fatal(err)
	}
	return append([]float32(nil), v...)
}

// quickExit spares the command run by wattagg the second the race detector waits before a
// successful exit (atexit_sleep_ms), which would make these tests slow under -race; t.Setenv
// restores GORACE when the test ends.
func quickExit(t *testing.T) {
	if os.Getenv("GORACE") == "" {
		t.Setenv("GORACE", "atexit_sleep_ms=0")
	}
}

func jsonReport(t *testing.T, stdout string) *aggregate.Report {
	t.Helper()
	var rep aggregate.Report
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("stdout %q: %v", stdout, err)
	}
	return &rep
}

// The hand-computed FedAdam example of the aggregate package's tests, through the command:
// round 1 from w = [1, -2] with clients [1.5, -2] and [1.1, -1.6] weighted 1 and 3 gives
// [1.061846155, -1.927896681]; round 2, with the state file round 1 wrote, gives
// [1.15708425, -1.851421286].
func TestFedAdamCommandTwoRounds(t *testing.T) {
	quickExit(t)
	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	writeModel(t, p("g0.safetensors"), []float32{1, -2})
	writeModel(t, p("a.safetensors"), []float32{1.5, -2})
	writeModel(t, p("b.safetensors"), []float32{1.1, -1.6})
	hyper := []string{"--rule", "fedadam", "--server-lr", "0.1", "--beta1", "0.9", "--beta2", "0.99", "--tau", "0.01", "--state", p("state.safetensors"), "--json"}
	stdout, stderr, code := wattagg(t, append([]string{"aggregate", "--global", p("g0.safetensors"), "-o", p("g1.safetensors"),
		"--weights", "1,3", p("a.safetensors"), p("b.safetensors")}, hyper...)...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	rep := jsonReport(t, stdout)
	if rep.Rule != "fedadam" || rep.Details["round"] != 1 || rep.Output != p("g1.safetensors") {
		t.Fatalf("report %+v", rep)
	}
	x1 := readModel(t, p("g1.safetensors"), "w")
	for j, want := range []float64{1.061846155, -1.927896681} {
		if math.Abs(float64(x1[j])-want) > 2e-6 {
			t.Fatalf("round 1: w[%d] = %v, want %v", j, x1[j], want)
		}
	}
	if m := readModel(t, p("state.safetensors"), "m/w"); math.Abs(float64(m[0])-0.02) > 1e-8 {
		t.Fatalf("state m/w = %v", m)
	}
	writeModel(t, p("a.safetensors"), []float32{x1[0] - 0.1, x1[1] + 0.2})
	writeModel(t, p("b.safetensors"), []float32{x1[0] + 0.3, x1[1]})
	stdout, stderr, code = wattagg(t, append([]string{"aggregate", "--global", p("g1.safetensors"), "-o", p("g2.safetensors"),
		"--weights", "1,3", p("a.safetensors"), p("b.safetensors")}, hyper...)...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if rep := jsonReport(t, stdout); rep.Details["round"] != 2 {
		t.Fatalf("round 2 report %+v", rep.Details)
	}
	x2 := readModel(t, p("g2.safetensors"), "w")
	for j, want := range []float64{1.15708425, -1.851421286} {
		if math.Abs(float64(x2[j])-want) > 4e-6 {
			t.Fatalf("round 2: w[%d] = %v, want %v", j, x2[j], want)
		}
	}
	// Text output names the rule.
	stdout, _, code = wattagg(t, "aggregate", "--rule", "fedavgm", "--global", p("g2.safetensors"), "-o", p("g3.safetensors"), p("a.safetensors"))
	if code != 0 || !strings.Contains(stdout, "fedavgm of 1 updates") {
		t.Fatalf("exit %d, stdout %q", code, stdout)
	}
}

// Misuse is one line on stderr, exit status 2 for bad flags, 1 for bad files, and nothing is
// written.
func TestOptimizerCommandErrors(t *testing.T) {
	quickExit(t)
	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	writeModel(t, p("g.safetensors"), []float32{1, -2})
	writeModel(t, p("a.safetensors"), []float32{1.5, -2})
	writeModel(t, p("delta.safetensors"), []float32{0.5, 0}, aggregate.UpdateKindKey, "delta")
	out := p("out.safetensors")
	base := []string{"aggregate", "-o", out, "--global", p("g.safetensors")}
	for _, c := range []struct {
		name string
		args []string
		code int
		msg  []string
	}{
		{"no global", []string{"aggregate", "-o", out, "--rule", "fedadam", p("a.safetensors")}, 2, []string{"--rule fedadam needs --global"}},
		{"delta client", append(base, "--rule", "fedadam", p("delta.safetensors")), 1, []string{"delta.safetensors", "wattagg.update=delta", "full client models"}},
		{"negative lr", append(base, "--rule", "fedadam", "--server-lr", "-1", p("a.safetensors")), 2, []string{"server learning rate -1"}},
		{"beta1 1", append(base, "--rule", "fedyogi", "--beta1", "1", p("a.safetensors")), 2, []string{"β1 1: want a value in [0, 1)"}},
		{"beta2 negative", append(base, "--rule", "fedadam", "--beta2", "-0.1", p("a.safetensors")), 2, []string{"β2 -0.1"}},
		{"tau 0", append(base, "--rule", "fedadagrad", "--tau", "0", p("a.safetensors")), 2, []string{"τ 0: want a finite value > 0"}},
		{"tau for fedavgm", append(base, "--rule", "fedavgm", "--tau", "0.1", p("a.safetensors")), 2, []string{"fedavgm has no τ"}},
		{"dp flag", append(base, "--rule", "fedadam", "--clip", "1", p("a.safetensors")), 2, []string{"--clip does not apply to --rule fedadam"}},
		{"missing global", []string{"aggregate", "-o", out, "--rule", "fedadam", "--global", p("nope.safetensors"), p("a.safetensors")}, 1, []string{"nope.safetensors"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, stderr, code := wattagg(t, c.args...)
			checkFailure(t, stderr, code, c.code, c.msg...)
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Fatalf("output written after a failure: %v", err)
			}
		})
	}
}

// The state file appears only after a successful round, is replaced atomically, and a failed
// round leaves it byte for byte as it was; a state of another optimizer is refused.
func TestOptimizerCommandState(t *testing.T) {
	quickExit(t)
	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	state := p("state.safetensors")
	writeModel(t, p("g.safetensors"), []float32{1, -2})
	writeModel(t, p("a.safetensors"), []float32{1.5, -2})
	writeModel(t, p("nan.safetensors"), []float32{float32(math.NaN()), 0})
	// A failing first round leaves no state.
	_, stderr, code := wattagg(t, "aggregate", "--rule", "fedyogi", "--global", p("g.safetensors"), "--state", state, "-o", p("g1.safetensors"), p("a.safetensors"), p("nan.safetensors"))
	checkFailure(t, stderr, code, 1, "nan.safetensors", "non-finite value NaN at element 0")
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Fatalf("state written by a failed round: %v", err)
	}
	if _, stderr, code := wattagg(t, "aggregate", "--rule", "fedyogi", "--global", p("g.safetensors"), "--state", state, "-o", p("g1.safetensors"), p("a.safetensors")); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	before, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	_, stderr, code = wattagg(t, "aggregate", "--rule", "fedyogi", "--global", p("g1.safetensors"), "--state", state, "-o", p("g2.safetensors"), p("a.safetensors"), p("nan.safetensors"))
	checkFailure(t, stderr, code, 1, "nan.safetensors")
	if after, _ := os.ReadFile(state); !bytes.Equal(before, after) {
		t.Fatal("a failed round changed the state file")
	}
	if _, err := os.Stat(p("g2.safetensors")); !os.IsNotExist(err) {
		t.Fatalf("output written by a failed round: %v", err)
	}
	if left, _ := filepath.Glob(p(".*tmp*")); len(left) > 0 {
		t.Fatalf("temporary files left: %v", left)
	}
	_, stderr, code = wattagg(t, "aggregate", "--rule", "fedadam", "--global", p("g1.safetensors"), "--state", state, "-o", p("g2.safetensors"), p("a.safetensors"))
	checkFailure(t, stderr, code, 1, "state.safetensors", "made by fedyogi, this rule is fedadam")
	_, stderr, code = wattagg(t, "aggregate", "--rule", "fedyogi", "--beta2", "0.9", "--global", p("g1.safetensors"), "--state", state, "-o", p("g2.safetensors"), p("a.safetensors"))
	checkFailure(t, stderr, code, 1, "made with β2 0.99, this rule has 0.9")
}
