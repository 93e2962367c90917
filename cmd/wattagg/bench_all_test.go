package main

import (
	"context"
	"image/png"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/wattagg/wattagg/bench"
	"github.com/wattagg/wattagg/internal/cli"
	"github.com/wattagg/wattagg/internal/clitest"
)

// readReports checks that every file the index links exists, that every JSON report reads
// back, and that every PNG decodes with varying pixels; it returns the reports by suite.
func readReports(t *testing.T, dir string) (string, map[string]*bench.Report) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "index.md"))
	if err != nil {
		t.Fatal(err)
	}
	index := string(b)
	reports := map[string]*bench.Report{}
	for _, m := range regexp.MustCompile(`\]\(([^)]+)\)`).FindAllStringSubmatch(index, -1) {
		path := filepath.Join(dir, m[1])
		f, err := os.Open(path)
		if err != nil {
			t.Fatalf("index.md links %s: %v", m[1], err)
		}
		switch filepath.Ext(path) {
		case ".json":
			r, err := bench.ReadReport(f)
			if err != nil {
				t.Fatalf("%s: %v", m[1], err)
			}
			reports[r.Suite] = r
		case ".png":
			img, err := png.Decode(f)
			if err != nil {
				t.Fatalf("%s: %v", m[1], err)
			}
			first, varies := img.At(0, 0), false
			for y := img.Bounds().Min.Y; y < img.Bounds().Max.Y && !varies; y += 3 {
				for x := img.Bounds().Min.X; x < img.Bounds().Max.X; x += 3 {
					if img.At(x, y) != first {
						varies = true
						break
					}
				}
			}
			if !varies || img.Bounds().Dx() < 400 || img.Bounds().Dy() < 200 {
				t.Fatalf("%s: %v, blank: %v", m[1], img.Bounds(), !varies)
			}
		}
		f.Close()
	}
	return index, reports
}

func TestBenchAllQuickWritesFolder(t *testing.T) {
	t.Setenv(envBenchTiny, "1")
	dir := filepath.Join(t.TempDir(), "out")
	work := t.TempDir()
	stdout, stderr, code := clitest.Run(t, []string{plotter(t)}, "bench", "all", "--quick", "--out", dir, "--dir", work, "--progress", "always",
		"--profile", filepath.Join(t.TempDir(), "profile.json"))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, s := range benchSuiteNames {
		if !strings.Contains(stdout, "\n== "+s+": ") {
			t.Errorf("stdout lacks the %s table:\n%s", s, stdout)
		}
	}
	if !strings.Contains(stderr, "[6/6] energy") || !strings.Contains(stderr, "wrote "+filepath.Join(dir, "index.md")) {
		t.Errorf("stderr lacks the progress bars or the index:\n%s", stderr)
	}
	index, reports := readReports(t, dir)
	cpu := reports["floor"].Machine
	for _, want := range []string{"Measured on **" + cpu.String() + "**", "`--quick`", "| kernels | " + cpu.Kernels,
		"## Not run on this machine", "- energy: always-gpu: no GPU device here"} {
		if !strings.Contains(index, want) {
			t.Errorf("index.md lacks %q:\n%s", want, index)
		}
	}
	for _, s := range benchSuiteNames {
		r := reports[s]
		if r == nil {
			t.Fatalf("no %s.json linked from index.md", s)
		}
		if !r.Quick || len(r.Results) == 0 || !slices.ContainsFunc(r.Notes, func(n string) bool { return strings.Contains(n, envBenchTiny) }) {
			t.Errorf("%s: quick %v, %d results, notes %q", s, r.Quick, len(r.Results), r.Notes)
		}
	}
	// Each throughput plot has its sweeps: 3 client counts and 2 model sizes per rule and dtype.
	for _, s := range []string{"mean", "robust"} {
		r := reports[s]
		if n, p := len(r.Sweep(bench.SweepClients)), len(r.Sweep(bench.SweepParams)); n == 0 || n*2 != p*3 {
			t.Errorf("%s: %d clients-sweep rows, %d params-sweep rows", s, n, p)
		}
		for _, f := range []string{s + "-clients.png", s + "-params.png", s + "-ratio.png"} {
			if !strings.Contains(index, "]("+f+")") {
				t.Errorf("index.md does not link %s", f)
			}
		}
	}
	for _, f := range []string{"floor-bandwidth.png", "stream-ratio.png", "energy-joules.png"} {
		if !strings.Contains(index, "]("+f+")") {
			t.Errorf("index.md does not link %s", f)
		}
	}
	// The energy rows say they are estimated where no counter exists.
	for _, x := range reports["energy"].Main() {
		if x.Skipped == "" && (x.Unit != "nJ/param" || x.Source == "") {
			t.Errorf("energy row %+v", x)
		}
	}
	// The work directory is the caller's: kept.
	if _, err := os.Stat(filepath.Join(work, "e2e", "inputs")); err != nil {
		t.Errorf("work dir: %v", err)
	}
}

func TestBenchSuiteOut(t *testing.T) {
	t.Setenv(envBenchTiny, "1")
	dir := t.TempDir()
	args := []string{"bench", "mean", "--out", dir, "--clients", "2", "--params", "4096", "--runs", "1",
		"--sweep-runs", "1", "--dtypes", "f32", "--progress", "never"}
	stdout, stderr, code := clitest.Run(t, []string{plotter(t)}, args...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.Contains(stdout, "fedavg 2 x 4k f32") || !strings.Contains(stdout, "sweep over clients [3 4 6], 4k params each") {
		t.Errorf("stdout:\n%s", stdout)
	}
	for _, f := range []string{"mean.json", "mean.md", "mean-clients.png", "mean-params.png", "mean-ratio.png"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
	// Without wattagg-plot the report is written without plots, and one line says why.
	bare := t.TempDir()
	_, stderr, code = clitest.Run(t, []string{cli.PlotEnv + "=" + filepath.Join(bare, "nothing-here")}, append(args[:3:3], append([]string{bare}, args[4:]...)...)...)
	if code != 0 || !strings.Contains(stderr, "wattagg: mean: no plots: ") || !strings.Contains(stderr, "$"+cli.PlotEnv+"=") {
		t.Fatalf("without wattagg-plot: exit %d, stderr %s", code, stderr)
	}
	for f, want := range map[string]bool{"mean.json": true, "mean.md": true, "mean-ratio.png": false} {
		if _, err := os.Stat(filepath.Join(bare, f)); (err == nil) != want {
			t.Errorf("without wattagg-plot, %s: %v", f, err)
		}
	}
	// Without --out there is no sweep and no file; --json prints the main rows.
	stdout, stderr, code = wattagg(t, "bench", "mean", "--clients", "2", "--params", "4096", "--runs", "1", "--dtypes", "f32", "--json")
	if code != 0 || !strings.HasPrefix(stdout, `[{"name":"fedavg 2 x 4k f32"`) || strings.Contains(stdout, "sweep") {
		t.Fatalf("exit %d, stdout %s, stderr %s", code, stdout, stderr)
	}
}

// TestBenchMeanComparesDTypes checks that the mean suite measures its dtypes in interleaved
// runs and says how their params/s compare, run by run.
func TestBenchMeanComparesDTypes(t *testing.T) {
	t.Setenv(envBenchTiny, "1")
	stdout, stderr, code := wattagg(t, "bench", "mean", "--clients", "2", "--params", "4096", "--runs", "3", "--dtypes", "f32,bf16", "--progress", "never")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{"fedavg 2 x 4k f32", "fedavg 2 x 4k bf16", "bf16 / f32 params/s: "} {
		if !strings.Contains(stdout, want) {
			t.Errorf("stdout has no %q:\n%s", want, stdout)
		}
	}
	if !strings.Contains(stdout, "(median of 3 interleaved runs, ") {
		t.Errorf("stdout:\n%s", stdout)
	}
}

func TestSpeedupIsTheMedianRatio(t *testing.T) {
	// Times of interleaved runs: the base takes 2, 3, 4 s, the other 1, 1, 1 s.
	got := speedup("bf16", "f32", []float64{2, 3, 4}, []float64{1, 1, 1})
	if want := "bf16 / f32 params/s: 3.00x (median of 3 interleaved runs, 2.00-4.00)"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestBenchAllBadFlags(t *testing.T) {
	out := filepath.Join(t.TempDir(), "out")
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"--suites", "floor,gpu"}, `--suites: unknown suite "gpu" (want some of floor, mean, e2e, stream, robust, energy)`},
		{[]string{"--progress", "sometimes"}, `--progress "sometimes": want auto, always or never`},
		{[]string{"--workers", "0"}, "--workers 0: want at least 1"},
		{[]string{"--cpu-tdp", "-1"}, "--cpu-tdp -1"},
	} {
		_, stderr, code := wattagg(t, append([]string{"bench", "all", "--out", out}, tc.args...)...)
		checkFailure(t, stderr, code, 2, tc.msg)
		if _, err := os.Stat(out); !os.IsNotExist(err) {
			t.Fatalf("%v: the folder was made", tc.args)
		}
	}
	_, stderr, code := wattagg(t, "bench", "mean", "--dtypes", "f32,f64", "--progress", "never")
	checkFailure(t, stderr, code, 2, "--dtypes: f64: synthetic updates are f32, bf16 or f16")
}

// TestNumpyGram checks the --numpy row: numpyGram runs the script with the given interpreter and
// sizes, reads its seconds and numpy's version, and compares them with the Gram row; a failing
// interpreter is an error with its last line. The interpreter here is a shell script standing
// in for python3 (numpy is not a test dependency); `bench robust --numpy /usr/bin/python3` runs
// the real one.
func TestNumpyGram(t *testing.T) {
	dir := t.TempDir()
	fake := filepath.Join(dir, "python3")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\n[ \"$1\" = -c ] && [ \"$3\" = 128 ] && [ \"$4\" = 4096 ] && echo 0.5 1.24.2\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	gram := bench.Row{Rule: "krum distances (gram)", Seconds: 0.25, FloorGBps: 10, FloorName: "FMA"}
	r, err := numpyGram(context.Background(), fake, 128, 4096, []bench.Row{gram})
	if err != nil {
		t.Fatal(err)
	}
	if r.Seconds != 0.5 || r.Bytes != 4*128*4096 || r.FloorGBps != 10 || !strings.Contains(r.Note, "numpy 1.24.2") || !strings.Contains(r.Note, "2.00x faster") {
		t.Fatalf("row %+v", r)
	}
	broken := filepath.Join(dir, "broken")
	if err := os.WriteFile(broken, []byte("#!/bin/sh\necho Traceback >&2\necho \"ModuleNotFoundError: No module named 'numpy'\" >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err = numpyGram(context.Background(), broken, 8, 16, nil)
	if err == nil || !strings.HasSuffix(err.Error(), "exit status 1: ModuleNotFoundError: No module named 'numpy'") {
		t.Fatalf("err = %v", err)
	}
}

// `bench robust --rules` measures the rules named and no others; an unknown name is a usage
// error that lists the names.
func TestBenchRobustRules(t *testing.T) {
	t.Setenv(envBenchTiny, "1")
	stdout, stderr, code := clitest.Run(t, nil, "bench", "robust", "--clients", "5", "--params", "4096", "--runs", "1",
		"--rules", "median,gram", "--progress", "never")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{"read floor 5 x 4k f32", "krum distances (gram)", "median"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, stdout)
		}
	}
	for _, not := range []string{"trimmed-mean", "bulyan", "geomed", "norm-clip"} {
		if strings.Contains(stdout, not) {
			t.Errorf("stdout has %q:\n%s", not, stdout)
		}
	}
	_, stderr, code = clitest.Run(t, nil, "bench", "robust", "--rules", "median,medain")
	if code != 2 || !strings.Contains(stderr, `--rules: unknown rule "medain" (want all or some of gram,median,`) {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
}
