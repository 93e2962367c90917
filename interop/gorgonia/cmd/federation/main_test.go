package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wattagg/wattagg/interop/gorgonia/federation"
)

// TestShowcase runs the command end to end, shortened: 2 rounds, an attack table of two rules
// and the two attacks. Every file it names is written, the PNGs decode, the table has its rows,
// and results.json holds every run.
func TestShowcase(t *testing.T) {
	out := t.TempDir()
	rounds, rules, runs := "2", "fedavg,median", 5 // the main run and 2 rules × 2 attacks
	if testing.Short() {                           // the race detector slows gorgonia's training tenfold
		rounds, rules, runs = "1", "fedavg", 3
	}
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"-out", out, "-dir", t.TempDir(), "-rounds", rounds, "-rules", rules,
		"-clean=false", "-parallel", "2"}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("%v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	for _, want := range []string{"round  accuracy", "joules' provenance", "inference node:", "| fedavg |", "showcase:"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, stdout.String())
		}
	}
	for _, name := range []string{"federation.png", "attacks.png"} {
		f, err := os.Open(filepath.Join(out, name))
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := png.DecodeConfig(f)
		f.Close()
		if err != nil || cfg.Width < 800 || cfg.Height < 400 {
			t.Errorf("%s: %v, %dx%d", name, err, cfg.Width, cfg.Height)
		}
	}
	md, err := os.ReadFile(filepath.Join(out, "attack-table.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(md), "| rule (parameters) | scaled ×−10 (3 clients) | label flip (3 clients) |") {
		t.Errorf("attack-table.md:\n%s", md)
	}
	if b, err := os.ReadFile(filepath.Join(out, "federation.md")); err != nil || !strings.Contains(string(b), "| "+rounds+" | ") {
		t.Errorf("federation.md: %v\n%s", err, b)
	}
	b, err := os.ReadFile(filepath.Join(out, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var results []federation.Result
	if err := json.Unmarshal(b, &results); err != nil {
		t.Fatal(err)
	}
	if len(results) != runs {
		t.Fatalf("results.json holds %d runs, want %d", len(results), runs)
	}
	for _, r := range results {
		if len(r.Rounds) == 0 {
			t.Errorf("%s/%s: no rounds", r.Rule, r.Attack)
		}
	}
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{
		{"-poisoned", "0"},
		{"-poisoned", "10"},
		{"-rules", "fedavg,nope"},
		{"-parallel", "0"},
		{"-load", "-1s"},
		{"-bogus"},
		{"extra"},
	} {
		var stderr bytes.Buffer
		if err := run(context.Background(), args, &bytes.Buffer{}, &stderr); !errors.Is(err, errUsage) {
			t.Errorf("%q: %v, want a usage error", args, err)
		}
	}
}
