package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// An output that is one of the inputs, and an input given twice, are refused before any work,
// by file identity (device and inode), not by name: batch and --stream alike.
func TestOutputAndDuplicateInputsRefused(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.safetensors"), filepath.Join(dir, "b.safetensors")
	writeClient(t, a, 1, "")
	writeClient(t, b, 2, "")
	aBefore, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	alias := filepath.Join(dir, "alias.safetensors")
	if err := os.Link(a, alias); err != nil {
		t.Fatal(err)
	}
	for _, stream := range []string{"--progress=never", "--stream"} {
		_, stderr, code := wattagg(t, "aggregate", stream, "-o", a, a, b)
		checkFailure(t, stderr, code, 2, "-o "+a+" is the input "+a)
		_, stderr, code = wattagg(t, "aggregate", stream, "-o", alias, a, b) // another name of a
		checkFailure(t, stderr, code, 2, "-o "+alias+" is the input "+a)
		_, stderr, code = wattagg(t, "aggregate", stream, "-o", filepath.Join(dir, "out.safetensors"), a, b, alias)
		checkFailure(t, stderr, code, 2, alias+" is given twice (also as "+a+")")
	}
	if after, err := os.ReadFile(a); err != nil || string(after) != string(aBefore) {
		t.Fatalf("an input was changed (%v)", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "out.safetensors")); !os.IsNotExist(err) {
		t.Fatal("output written")
	}
}

// A named pipe among the inputs is refused before anything blocks on it.
func TestFIFOInputRefused(t *testing.T) {
	dir := t.TempDir()
	writeClient(t, filepath.Join(dir, "a.safetensors"), 1, "")
	if err := syscall.Mkfifo(filepath.Join(dir, "x.safetensors"), 0o644); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, stderr, code := wattagg(t, "aggregate", "-o", filepath.Join(t.TempDir(), "out.safetensors"), dir)
		checkFailure(t, stderr, code, 1, "x.safetensors: a named pipe")
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("aggregate blocked on a named pipe")
	}
}

// --stream says where its weights came from, as the batch does, and writes their total.
func TestStreamReportsWeightSource(t *testing.T) {
	dir := t.TempDir()
	writeClient(t, filepath.Join(dir, "a.safetensors"), 1, "100")
	writeClient(t, filepath.Join(dir, "b.safetensors"), 2, "300")
	for _, stream := range []string{"--progress=never", "--stream"} {
		out := filepath.Join(t.TempDir(), "out.safetensors")
		stdout, stderr, code := wattagg(t, "aggregate", stream, "--json", "-o", out, dir)
		if code != 0 {
			t.Fatalf("%s: exit %d: %s", stream, code, stderr)
		}
		var rep aggregate.Report
		if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
			t.Fatal(err)
		}
		if rep.WeightsFrom != aggregate.WeightsNumExamples {
			t.Fatalf("%s: weights_from %q, want num_examples", stream, rep.WeightsFrom)
		}
		s, err := safetensors.Open(out)
		if err != nil {
			t.Fatal(err)
		}
		if s.Metadata[aggregate.NumExamplesKey] != "400" {
			t.Fatalf("%s: num_examples %q in the output, want 400", stream, s.Metadata[aggregate.NumExamplesKey])
		}
		s.Close()
	}
}

// A dtype a rule cannot take is reported with the file that holds it and the rule.
func TestUnsupportedDTypeNamesTheFile(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"a.safetensors", "b.safetensors"} {
		u, err := tensor.New("w", tensor.U32, 4)
		if err != nil {
			t.Fatal(err)
		}
		s, err := tensor.NewSet(u)
		if err != nil {
			t.Fatal(err)
		}
		if err := safetensors.WriteFile(filepath.Join(dir, name), s); err != nil {
			t.Fatal(err)
		}
	}
	for _, rule := range []string{"fedavg", "median"} {
		_, stderr, code := wattagg(t, "aggregate", "--rule", rule, "-o", filepath.Join(t.TempDir(), "o.safetensors"), dir)
		checkFailure(t, stderr, code, 1, filepath.Join(dir, "a.safetensors")+": ", `tensor "w" is u32`, rule)
	}
}
