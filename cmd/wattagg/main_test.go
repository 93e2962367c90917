package main

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/internal/clitest"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// TestMain lets the test binary act as the wattagg command, so that tests can check real exit
// statuses and stderr.
func TestMain(m *testing.M) {
	clitest.Main(main)
	code := m.Run()
	if plotDir != "" {
		os.RemoveAll(plotDir)
	}
	os.Exit(code)
}

// wattagg runs the command and returns stdout, stderr and the exit status.
func wattagg(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	return clitest.Run(t, nil, args...)
}

// writeClient writes a two-tensor f32 client file with values base+k·j/1000.
var writeClient = clitest.WriteClient

// rawFile writes a .safetensors file byte by byte: header JSON then data.
func rawFile(t *testing.T, path, header string, data []byte) {
	t.Helper()
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	b = append(append(b, header...), data...)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestAggregateWritesTheWeightedMean(t *testing.T) {
	dir := t.TempDir()
	writeClient(t, filepath.Join(dir, "a.safetensors"), 1, "100")
	writeClient(t, filepath.Join(dir, "b.safetensors"), 2, "300")
	out := filepath.Join(dir, "out", "global.safetensors")
	os.Mkdir(filepath.Dir(out), 0o755)
	for _, stream := range []bool{false, true} {
		args := []string{"aggregate", "--json", "-o", out, dir}
		if stream {
			args = append(args, "--stream")
		}
		stdout, stderr, code := wattagg(t, args...)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		var rep aggregate.Report
		if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
			t.Fatalf("stdout %q: %v", stdout, err)
		}
		if rep.Clients != 2 || rep.Params != 1007 || rep.Output != out {
			t.Fatalf("report %+v", rep)
		}
		got, err := safetensors.Open(out)
		if err != nil {
			t.Fatal(err)
		}
		w, _ := got.Tensor("layer.weight")
		bias, _ := got.Tensor("layer.bias")
		// (100·(1 + j/1000) + 300·(2 + j/1000)) / 400 = 1.75 + j/1000
		if d := math.Abs(w.Value(500) - 2.25); d > 1e-6 || bias.Value(3) != -1.75 {
			t.Fatalf("stream=%v: weight[500] = %v, bias[3] = %v", stream, w.Value(500), bias.Value(3))
		}
		got.Close()
	}
	stdout, _, code := wattagg(t, "aggregate", "--weights", "1,1", "-o", out, filepath.Join(dir, "a.safetensors"), filepath.Join(dir, "b.safetensors"))
	if code != 0 || !strings.Contains(stdout, "fedavg of 2 updates") || !strings.Contains(stdout, "weights: given") {
		t.Fatalf("exit %d, stdout %q", code, stdout)
	}
}

// Every kind of bad input: a one-line error naming the file (and tensor), a non-zero exit, no
// panic, and nothing written at the output path.
func TestAggregateBadInput(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.safetensors")
	writeClient(t, good, 1, "")
	f32 := func(n int) []byte { return make([]byte, 4*n) }
	nan := f32(4)
	binary.LittleEndian.PutUint32(nan[8:], 0x7fc00000)
	bad := map[string]func(string){
		"truncated": func(p string) {
			b, _ := os.ReadFile(good)
			os.WriteFile(p, b[:len(b)-10], 0o644)
		},
		"corrupt":       func(p string) { rawFile(t, p, `{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]`, f32(4)) },
		"absurd-header": func(p string) { os.WriteFile(p, binary.LittleEndian.AppendUint64(nil, 1<<62), 0o644) },
		"out-of-range":  func(p string) { rawFile(t, p, `{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,32]}}`, f32(4)) },
		"overlap": func(p string) {
			rawFile(t, p, `{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}`, f32(4))
		},
		"unknown-dtype": func(p string) { rawFile(t, p, `{"w":{"dtype":"F31","shape":[4],"data_offsets":[0,16]}}`, f32(4)) },
		"other-layout": func(p string) {
			rawFile(t, p, `{"layer.weight":{"dtype":"F32","shape":[10,100],"data_offsets":[0,4000]},"layer.bias":{"dtype":"F32","shape":[8],"data_offsets":[4000,4032]}}`, f32(1008))
		},
		"nan": func(p string) {
			rawFile(t, p, `{"layer.weight":{"dtype":"F32","shape":[10,100],"data_offsets":[0,4000]},"layer.bias":{"dtype":"F32","shape":[7],"data_offsets":[4000,4028]}}`, append(f32(1000), append(nan, f32(3)...)...))
		},
	}
	for _, tc := range []struct {
		name string
		code int
		msg  []string // parts the one-line message must contain
	}{
		{"truncated", 1, []string{"truncated.safetensors"}},
		{"corrupt", 1, []string{"corrupt.safetensors", "malformed header"}},
		{"absurd-header", 1, []string{"absurd-header.safetensors", "header"}},
		{"out-of-range", 1, []string{"out-of-range.safetensors", `"w"`}},
		{"overlap", 1, []string{"overlap.safetensors"}},
		{"unknown-dtype", 1, []string{"unknown-dtype.safetensors", "F31"}},
		{"other-layout", 1, []string{"other-layout.safetensors", `tensor "layer.bias" has shape [8], want [7]`}},
		{"nan", 1, []string{"nan.safetensors", `tensor "layer.bias": non-finite value NaN at element 2`}},
	} {
		for _, stream := range []string{"", "--stream"} {
			t.Run(tc.name+stream, func(t *testing.T) {
				p := filepath.Join(dir, tc.name+".safetensors")
				bad[tc.name](p)
				out := filepath.Join(dir, "out.safetensors")
				args := []string{"aggregate", "-o", out, good, p}
				if stream != "" {
					args = append(args, stream)
				}
				_, stderr, code := wattagg(t, args...)
				checkFailure(t, stderr, code, tc.code, tc.msg...)
				if _, err := os.Stat(out); !os.IsNotExist(err) {
					t.Fatalf("output exists after a failure: %v", err)
				}
				os.Remove(p)
				leftovers, _ := filepath.Glob(filepath.Join(dir, ".*tmp*"))
				if len(leftovers) > 0 {
					t.Fatalf("temporary files left: %v", leftovers)
				}
			})
		}
	}
}

func checkFailure(t *testing.T, stderr string, code, wantCode int, parts ...string) {
	t.Helper()
	if code != wantCode {
		t.Fatalf("exit %d, want %d; stderr %q", code, wantCode, stderr)
	}
	if strings.Count(stderr, "\n") != 1 || !strings.HasPrefix(stderr, "wattagg: ") || strings.Contains(stderr, "goroutine") {
		t.Fatalf("stderr is not one error line: %q", stderr)
	}
	for _, p := range parts {
		if !strings.Contains(stderr, p) {
			t.Fatalf("stderr %q does not mention %q", stderr, p)
		}
	}
}

func TestAggregateBadArguments(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.safetensors"), filepath.Join(dir, "b.safetensors")
	writeClient(t, a, 1, "")
	writeClient(t, b, 2, "")
	out := filepath.Join(dir, "out.safetensors")
	for i, tc := range []struct {
		args []string
		code int
		msg  []string
	}{
		{[]string{"aggregate", "-o", out}, 2, []string{"at least one input"}},
		{[]string{"aggregate", a}, 2, []string{"-o OUT.safetensors"}},
		// A bad flag value is a usage error (exit status 2), whichever way it is bad.
		{[]string{"aggregate", "-o", out, "--weights", "1,0", a, b}, 2, []string{`--weights: value 2 "0": want a positive, finite number`}},
		{[]string{"aggregate", "-o", out, "--weights", "1,-2", a, b}, 2, []string{`value 2 "-2"`}},
		{[]string{"aggregate", "-o", out, "--weights", "1,NaN", a, b}, 2, []string{`value 2 "NaN"`}},
		{[]string{"aggregate", "-o", out, "--weights", "1,1e400", a, b}, 2, []string{`value 2 "1e400"`}},
		{[]string{"aggregate", "-o", out, "--weights", "1", a, b}, 2, []string{"--weights has 1 values for 2 input files"}},
		{[]string{"aggregate", "-o", out, "--weights", "1,x", a, b}, 2, []string{`value 2 "x"`}},
		{[]string{"aggregate", "-o", out, "--acc", "f16", a}, 2, []string{"accumulator dtype f16"}},
		{[]string{"aggregate", "-o", out, "--acc", "f16", "--rule", "median", a}, 2, []string{"accumulator dtype f16"}},
		{[]string{"aggregate", "-o", out, "--workers", "100000", a}, 2, []string{"--workers 100000: want 1 to"}},
		{[]string{"aggregate", "-o", out, "--rule", "nope", a}, 2, []string{`unknown rule "nope"`}},
		{[]string{"aggregate", "-o", out, "--out-dtype", "f8", a}, 2, []string{"--out-dtype", `"f8"`}},
		{[]string{"aggregate", "-o", out, filepath.Join(dir, "missing.safetensors")}, 1, []string{"missing.safetensors", "no such file"}},
		{[]string{"aggregate", "-o", filepath.Join(dir, "no", "dir", "out.safetensors"), a}, 1, []string{filepath.Join(dir, "no", "dir")}},
		{[]string{"aggregate", "--bogus"}, 2, []string{"unknown flag: --bogus"}},
	} {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			_, stderr, code := wattagg(t, tc.args...)
			checkFailure(t, stderr, code, tc.code, tc.msg...)
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Fatal("output written")
			}
		})
	}
}

func TestDevicesAndDemo(t *testing.T) {
	stdout, stderr, code := wattagg(t, "devices")
	if code != 0 || !strings.Contains(stdout, "kernels:") || !strings.Contains(stdout, "energy:") {
		t.Fatalf("devices: exit %d, %q %q", code, stdout, stderr)
	}
	stdout, stderr, code = wattagg(t, "demo", "--clients", "3", "--bf16", "1", "--params", "200000")
	if code != 0 {
		t.Fatalf("demo: exit %d: %s", code, stderr)
	}
	for _, want := range []string{"3 clients", "2 f32, 1 bf16", "memory read (", "durable write (", "of floor", "one pass over all files", "streaming", "of which the first add (", "and the other 2 adds and the write", "max |error|"} {
		if !strings.Contains(stdout, want) {
			t.Fatalf("demo output lacks %q:\n%s", want, stdout)
		}
	}
	fmt.Println(stdout)
}

// --stream resolves weights as the batch path does, from the headers, before adding anything.
func TestStreamWeightsLikeBatch(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.safetensors"), filepath.Join(dir, "b.safetensors")
	writeClient(t, a, 1, "100")
	writeClient(t, b, 2, "")
	out := filepath.Join(dir, "out.safetensors")
	for _, stream := range []string{"--stream", "--progress=never"} {
		_, stderr, code := wattagg(t, "aggregate", stream, "-o", out, a, b)
		checkFailure(t, stderr, code, 1, a+" has num_examples but "+b+" has none: give weights explicitly")
		_, stderr, code = wattagg(t, "aggregate", stream, "--weights", "1,-1", "-o", out, a, b)
		checkFailure(t, stderr, code, 2, `--weights: value 2 "-1"`)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatal("output written")
	}
}

// wattagg collects garbage at gcPercent unless $GOGC is set, which wins.
func TestSetGC(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	t.Setenv("GOGC", "")
	setGC()
	if got := debug.SetGCPercent(100); got != gcPercent {
		t.Fatalf("GOGC unset: GC percent %d, want %d", got, gcPercent)
	}
	t.Setenv("GOGC", "50")
	setGC()
	if got := debug.SetGCPercent(100); got != 100 {
		t.Fatalf("GOGC=50: setGC changed the GC percent to %d", got)
	}
}
