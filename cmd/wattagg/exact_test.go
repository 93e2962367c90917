package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/wattagg/wattagg/tensor/safetensors"
)

// TestAggregateExact checks --acc exact from the command line: the same output bytes for the
// inputs in another order, with --stream and without, for FedAvg weighted by example counts; a
// value beyond --exact-bound is one error line naming the file, tensor and element (exit 1);
// the exact flags without --acc exact are a usage error (exit 2).
func TestAggregateExact(t *testing.T) {
	dir := t.TempDir()
	var files []string
	for k, base := range []float32{0.1, -0.3, 0.7, 1e-3, 0.25} {
		p := filepath.Join(dir, string(rune('a'+k))+".safetensors")
		writeClient(t, p, base, []string{"120", "80", "7", "3000", "41"}[k])
		files = append(files, p)
	}
	run := func(name string, extra []string, inputs []string) []byte {
		t.Helper()
		out := filepath.Join(dir, name)
		args := append([]string{"aggregate", "-o", out, "--acc", "exact", "--exact-bound", "4", "--progress", "never"}, extra...)
		if _, stderr, code := wattagg(t, append(args, inputs...)...); code != 0 {
			t.Fatalf("%v: exit %d: %s", extra, code, stderr)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	want := run("one.safetensors", nil, files)
	rev := []string{files[3], files[0], files[4], files[2], files[1]}
	for name, got := range map[string][]byte{
		"reordered": run("two.safetensors", nil, rev),
		"streamed":  run("three.safetensors", []string{"--stream"}, rev),
	} {
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: the output differs from the first run's", name)
		}
	}
	// One limb: its own grid, the same bits batch and streamed, in any order.
	one := []string{"--exact-max-weight", "4096", "--exact-one-limb"}
	want1 := run("one-limb.safetensors", one, files)
	if got := run("one-limb-streamed.safetensors", append(one, "--stream"), rev); !bytes.Equal(got, want1) {
		t.Fatal("--exact-one-limb --stream differs from the batch")
	}

	bad := filepath.Join(dir, "bad.safetensors")
	writeClient(t, bad, 0.5, "10")
	s := must(safetensors.Open(bad))(t)
	c := s.Clone()
	s.Close()
	must(c.At(0).F32())(t)[321] = 5 // beyond the bound 4
	if err := safetensors.WriteFile(bad, c); err != nil {
		t.Fatal(err)
	}
	for _, mode := range [][]string{nil, {"--stream"}} {
		args := append([]string{"aggregate", "-o", filepath.Join(dir, "x.safetensors"), "--acc", "exact", "--exact-bound", "4"}, mode...)
		_, stderr, code := wattagg(t, append(args, files[0], bad)...)
		checkFailure(t, stderr, code, 1, "bad.safetensors", `"layer.weight"`, "element 321", "out of the exact sum's range")
	}
	_, stderr, code := wattagg(t, "aggregate", "-o", filepath.Join(dir, "y.safetensors"), "--exact-bound", "4", files[0])
	checkFailure(t, stderr, code, 2, "--acc exact")
	_, stderr, code = wattagg(t, "aggregate", "-o", filepath.Join(dir, "y.safetensors"), "--exact-one-limb", files[0])
	checkFailure(t, stderr, code, 2, "--acc exact")
	_, stderr, code = wattagg(t, "aggregate", "-o", filepath.Join(dir, "y.safetensors"), "--acc", "exact", "--exact-one-limb", files[0])
	checkFailure(t, stderr, code, 2, "--exact-one-limb needs --exact-max-weight")
	for _, bad := range [][]string{{"--exact-bound", "0"}, {"--exact-bound", "-1"}, {"--exact-max-weight", "0"}, {"--exact-max-weight", "NaN"}} {
		args := append([]string{"aggregate", "-o", filepath.Join(dir, "y.safetensors"), "--acc", "exact"}, bad...)
		_, stderr, code := wattagg(t, append(args, files[0])...)
		checkFailure(t, stderr, code, 2, bad[0])
	}
}
