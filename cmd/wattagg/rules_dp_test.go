package main

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wattagg/wattagg/aggregate/dp"
)

func TestDPCommand(t *testing.T) {
	quickExit(t)
	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	writeModel(t, p("g.safetensors"), []float32{0, 0, 0, 0})
	writeModel(t, p("a.safetensors"), []float32{3, 4, 0, 0})      // delta norm 5: clipped to 1
	writeModel(t, p("b.safetensors"), []float32{0, 0, 0.3, -0.4}) // norm 0.5: kept
	args := []string{"aggregate", "--rule", "dp-fixed", "--global", p("g.safetensors"), "--clip", "1", "--noise-multiplier", "0",
		"--json", p("a.safetensors"), p("b.safetensors")}
	stdout, stderr, code := wattagg(t, append(args, "-o", p("out.safetensors"))...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	rep := jsonReport(t, stdout)
	if rep.Rule != "dp-fixed" || len(rep.PerClient) != 2 || !*rep.PerClient[0].Clipped || *rep.PerClient[1].Clipped ||
		*rep.PerClient[0].Norm != 5 || rep.Details["clip_bound"] != 1 || rep.Details["epsilon_infinite"] != 1 {
		t.Fatalf("report %+v %+v", rep.Details, rep.PerClient)
	}
	// (0.2·[3,4,0,0] + [0,0,0.3,-0.4]) / 2
	got := readModel(t, p("out.safetensors"), "w")
	for j, want := range []float64{0.3, 0.4, 0.15, -0.2} {
		if math.Abs(float64(got[j])-want) > 1e-7 {
			t.Fatalf("w = %v", got)
		}
	}

	// Noise from an insecure seed: a warning, and the same seed gives the same bits.
	noisy := []string{"aggregate", "--rule", "dp-adaptive", "--global", p("g.safetensors"), "--noise-multiplier", "0.5",
		"--clipped-count-stddev", "1", "--sampling-rate", "0.01", "--delta", "1e-6", "--insecure-seed", "42", "--json",
		"--state", p("dp.safetensors"), p("a.safetensors"), p("b.safetensors")}
	stdout, stderr, code = wattagg(t, append(noisy, "-o", p("n1.safetensors"))...)
	if code != 0 || !strings.Contains(stderr, "NOT differentially private") {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	rep = jsonReport(t, stdout)
	if rep.Details["insecure_seed"] != 1 || rep.Details["rounds"] != 1 || !(rep.Details["epsilon"] > 0) || rep.Details["delta"] != 1e-6 {
		t.Fatalf("details %v", rep.Details)
	}
	os.Remove(p("dp.safetensors"))
	if _, _, code := wattagg(t, append(noisy, "-o", p("n2.safetensors"))...); code != 0 {
		t.Fatal("second run failed")
	}
	b1, _ := os.ReadFile(p("n1.safetensors"))
	b2, _ := os.ReadFile(p("n2.safetensors"))
	if !bytes.Equal(b1, b2) {
		t.Fatal("the same insecure seed gave different models")
	}
	// Round 2 on the same state: the accountant counts two rounds.
	stdout, stderr, code = wattagg(t, append(noisy, "-o", p("n3.safetensors"))...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	rep2 := jsonReport(t, stdout)
	if rep2.Details["rounds"] != 2 || !(rep2.Details["epsilon"] > rep.Details["epsilon"]) || rep2.Details["clip_bound"] != rep.Details["next_clip_bound"] {
		t.Fatalf("round 2 details %v after %v", rep2.Details, rep.Details)
	}
	st, err := dp.LoadPrivacyState(p("dp.safetensors"))
	if err != nil || st.Round != 2 {
		t.Fatalf("state %+v, %v", st, err)
	}
}

func TestDPCommandErrors(t *testing.T) {
	quickExit(t)
	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	writeModel(t, p("g.safetensors"), []float32{0, 0})
	writeModel(t, p("a.safetensors"), []float32{1, 0})
	out := p("out.safetensors")
	base := []string{"aggregate", "-o", out, "--global", p("g.safetensors"), p("a.safetensors")}
	for _, c := range []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"negative z", []string{"--rule", "dp-fixed", "--clip", "1", "--noise-multiplier", "-1"}, 2, "noise multiplier -1"},
		{"clip 0", []string{"--rule", "dp-fixed", "--clip", "0", "--noise-multiplier", "1"}, 2, "clipping bound 0"},
		{"no z", []string{"--rule", "dp-fixed", "--clip", "1"}, 2, "needs a noise multiplier"},
		{"sampling 0", []string{"--rule", "dp-fixed", "--clip", "1", "--noise-multiplier", "1", "--sampling-rate", "0"}, 2, "sampling rate 0"},
		{"delta 1", []string{"--rule", "dp-fixed", "--clip", "1", "--noise-multiplier", "1", "--delta", "1"}, 2, "δ 1: want a value in (0, 1)"},
		{"quantile 1", []string{"--rule", "dp-adaptive", "--noise-multiplier", "0", "--target-quantile", "1"}, 2, "target quantile 1"},
		{"quantile for fixed", []string{"--rule", "dp-fixed", "--clip", "1", "--noise-multiplier", "0", "--target-quantile", "0.5"}, 2, "dp-fixed has no target quantile"},
		{"optimizer flag", []string{"--rule", "dp-fixed", "--clip", "1", "--noise-multiplier", "0", "--server-lr", "1"}, 2, "--server-lr does not apply to --rule dp-fixed"},
		{"bad seed", []string{"--rule", "dp-fixed", "--clip", "1", "--noise-multiplier", "0", "--insecure-seed", "x"}, 2, "--insecure-seed"},
		{"count noise too small", []string{"--rule", "dp-adaptive", "--noise-multiplier", "1"}, 1, "needs a clipped-count noise above 0.5"},
		{"weights", []string{"--rule", "dp-fixed", "--clip", "1", "--noise-multiplier", "0", "--weights", "2"}, 0, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, stderr, code := wattagg(t, append(append([]string(nil), base...), c.args...)...)
			if c.code == 0 {
				if code != 0 {
					t.Fatalf("exit %d: %s", code, stderr) // one weight is equal to itself
				}
				os.Remove(out)
				return
			}
			checkFailure(t, stderr, code, c.code, c.msg)
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Fatalf("output written after a failure: %v", err)
			}
		})
	}
}
