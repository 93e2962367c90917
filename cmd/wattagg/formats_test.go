package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/wattagg/wattagg/tensor/safetensors"
)

// convert round-trips a model through an Arrow stream and an Arrow file byte for byte, and
// aggregate takes Arrow inputs beside .safetensors ones with the same result, batch and
// --stream.
func TestConvertAndArrowInputs(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.safetensors"), filepath.Join(dir, "b.safetensors")
	writeClient(t, a, 1, "100")
	writeClient(t, b, 2, "300")
	as, af, back := filepath.Join(dir, "a.arrows"), filepath.Join(dir, "a.arrow"), filepath.Join(dir, "back.safetensors")
	for _, step := range [][2]string{{a, as}, {as, af}, {af, back}} {
		if _, stderr, code := wattagg(t, "convert", step[0], step[1]); code != 0 {
			t.Fatalf("convert %s %s: exit %d: %s", step[0], step[1], code, stderr)
		}
	}
	x, err := safetensors.Open(a)
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	y, err := safetensors.Open(back)
	if err != nil {
		t.Fatal(err)
	}
	defer y.Close()
	for _, tt := range x.Tensors() {
		u, ok := y.Tensor(tt.Name)
		if !ok || !bytes.Equal(u.Bytes(), tt.Bytes()) || u.DType != tt.DType {
			t.Fatalf("tensor %q changed through Arrow", tt.Name)
		}
	}
	if y.Metadata["num_examples"] != "100" {
		t.Fatalf("metadata %v: num_examples lost", y.Metadata)
	}
	_, stderr, code := wattagg(t, "convert", a, a)
	checkFailure(t, stderr, code, 2, "is the input")

	mixed := filepath.Join(t.TempDir(), "in")
	if err := os.Mkdir(mixed, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(af, filepath.Join(mixed, "a.arrow")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(b, filepath.Join(mixed, "b.safetensors")); err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(t.TempDir(), "want.safetensors")
	if _, stderr, code := wattagg(t, "aggregate", "-o", want, a, b); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	wantBytes, err := os.ReadFile(want)
	if err != nil {
		t.Fatal(err)
	}
	for _, stream := range []string{"--progress=never", "--stream"} {
		got := filepath.Join(t.TempDir(), "got.safetensors")
		if _, stderr, code := wattagg(t, "aggregate", stream, "-o", got, mixed); code != 0 {
			t.Fatalf("%s: exit %d: %s", stream, code, stderr)
		}
		gotBytes, err := os.ReadFile(got)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(gotBytes, wantBytes) {
			t.Fatalf("%s: aggregating an Arrow file beside a .safetensors one differs from both .safetensors", stream)
		}
	}
}
