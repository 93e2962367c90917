package arrowio

import (
	"bytes"
	"encoding/json"
	"math"
	"slices"
	"testing"

	"github.com/wattagg/wattagg/internal/pyarrowtest"
	"github.com/wattagg/wattagg/tensor"
)

// pyWriteScript runs the README's write_update (pyarrow) on numpy arrays of every dtype it
// maps, 4 KiB chunks (fc.weight takes three), and writes the stream to stdout.
const pyWriteScript = `
import sys
tensors = [
    ("fc.weight", np.arange(3000, dtype=np.float32).reshape(3, 1000) * np.float32(0.25) - np.float32(100)),
    ("fc.bias", np.arange(7, dtype=np.float64) * 1e-3),
    ("h", (np.arange(10, dtype=np.float16) - np.float16(3)) * np.float16(0.5)),
    ("q", (np.arange(5) * 7 - 14).astype(np.int8)),
    ("u", np.arange(6, dtype=np.uint32) * np.uint32(7)),
    ("empty", np.zeros((0, 4), dtype=np.float32)),
]
write_update(sys.stdout.buffer, tensors, {"num_examples": "1200", "client": "py"}, chunk_bytes=4096)
`

// pyReadScript reads an IPC stream from stdin with pyarrow the way the README describes the
// schema (the layout in wattagg.layout, rows of tensor, offset, data) and prints every tensor's
// layout and values as JSON (BF16 as its bit patterns).
const pyReadScript = `
import sys, json, numpy as np, pyarrow as pa
r = pa.ipc.open_stream(sys.stdin.buffer)
md = {k.decode(): v.decode() for k, v in r.schema.metadata.items()}
layout = json.loads(md.pop("wattagg.layout"))
np_dtype = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "BF16": "<u2", "I8": "i1", "U32": "<u4"}
parts = {t["name"]: [] for t in layout}
for batch in r:
    for name, off, data in zip(*(batch.column(c).to_pylist() for c in ("tensor", "offset", "data"))):
        parts[name].append((off, data))
out = []
for t in layout:
    raw = b"".join(d for _, d in sorted(parts[t["name"]]))
    v = np.frombuffer(raw, dtype=np_dtype[t["dtype"]])
    out.append({**t, "values": [float(x) if t["dtype"] in ("F32", "F64", "F16") else int(x) for x in v]})
print(json.dumps({"metadata": md, "tensors": out, "pyarrow": pa.__version__}))
`

// TestPyarrowWriteUpdate runs the README's pyarrow client, write_update, in real pyarrow
// (internal/pyarrowtest: Debian unstable's python3-pyarrow where scripts/pyarrow-sid.sh made it)
// and reads its stream back value for value; then pyarrow reads a stream of WriteSet (what a
// server's DoGet sends), value for value.
func TestPyarrowWriteUpdate(t *testing.T) {
	py := pyarrowtest.Python(t)
	def := pyarrowtest.ReadmeBlock(t, "../../README.md", "def write_update(")
	stdout, stderr, err := pyarrowtest.Run(py, def+pyWriteScript, nil)
	if err != nil {
		t.Fatalf("write_update: %v\n%s", err, stderr)
	}
	s, err := ReadStream(bytes.NewReader(stdout), WithAllocator(checkedMem(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	want := tensor.Layout{
		{Name: "fc.weight", DType: tensor.F32, Shape: []int{3, 1000}},
		{Name: "fc.bias", DType: tensor.F64, Shape: []int{7}},
		{Name: "h", DType: tensor.F16, Shape: []int{10}},
		{Name: "q", DType: tensor.I8, Shape: []int{5}},
		{Name: "u", DType: tensor.U32, Shape: []int{6}},
		{Name: "empty", DType: tensor.F32, Shape: []int{0, 4}},
	}
	if !s.Layout().Equal(want) {
		t.Fatalf("layout %v, want %v", s.Layout(), want)
	}
	if s.Metadata["num_examples"] != "1200" || s.Metadata["client"] != "py" || len(s.Metadata) != 2 {
		t.Fatalf("metadata %v", s.Metadata)
	}
	value := []func(i int) float64{
		func(i int) float64 { return float64(float32(i)*0.25 - 100) },
		func(i int) float64 { return float64(i) * 1e-3 },
		func(i int) float64 { return (float64(i) - 3) * 0.5 },
		func(i int) float64 { return float64(i*7 - 14) },
		func(i int) float64 { return float64(i * 7) },
	}
	for k, f := range value {
		tt := s.At(k)
		for i := range tt.Len() {
			if got := tt.Value(i); got != f(i) {
				t.Fatalf("%s[%d] = %v, want %v", tt.Name, i, got, f(i))
			}
		}
	}

	// The other way: pyarrow reads what WriteSet writes, in batches of 4 KiB.
	sent := goSetForPyarrow(t)
	var buf bytes.Buffer
	if err := WriteSet(&buf, sent, WithBatchBytes(4096)); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, err = pyarrowtest.Run(py, pyReadScript, buf.Bytes())
	if err != nil {
		t.Fatalf("pyarrow reading WriteSet's stream: %v\n%s", err, stderr)
	}
	var got struct {
		Metadata map[string]string
		Tensors  []struct {
			Name   string
			DType  string
			Shape  []int
			Scale  *float32
			Values []float64
		}
		Pyarrow string
	}
	if err := json.Unmarshal(stdout, &got); err != nil {
		t.Fatalf("%v: %s", err, stdout)
	}
	t.Logf("pyarrow %s", got.Pyarrow)
	if got.Metadata["num_examples"] != "64" || len(got.Metadata) != 1 || len(got.Tensors) != sent.Len() {
		t.Fatalf("pyarrow read metadata %v and %d tensors", got.Metadata, len(got.Tensors))
	}
	for k, g := range got.Tensors {
		tt := sent.At(k)
		if g.Name != tt.Name || g.DType != tt.DType.SafetensorsName() || !slices.Equal(g.Shape, tt.Shape) || len(g.Values) != tt.Len() {
			t.Fatalf("tensor %d: pyarrow read %s %s %v (%d values), sent %s %s %v", k, g.Name, g.DType, g.Shape, len(g.Values), tt.Name, tt.DType, tt.Shape)
		}
		if tt.DType == tensor.I8 && (g.Scale == nil || *g.Scale != tt.Scale) {
			t.Fatalf("%s: scale %v, sent %v", tt.Name, g.Scale, tt.Scale)
		}
		for i, v := range g.Values {
			want := tt.Value(i)
			switch tt.DType {
			case tensor.I8:
				want = float64(int8(tt.Bytes()[i]))
			case tensor.BF16:
				want = float64(uint16(tt.Bytes()[2*i]) | uint16(tt.Bytes()[2*i+1])<<8)
			}
			if v != want {
				t.Fatalf("%s[%d]: pyarrow read %v, sent %v", tt.Name, i, v, want)
			}
		}
	}
}

// goSetForPyarrow is a Set of every dtype: f32 over several batches, f64, f16, bf16, i8 with a
// scale, u32.
func goSetForPyarrow(t *testing.T) *tensor.Set {
	t.Helper()
	w := make([]float32, 2500)
	for i := range w {
		w[i] = float32(math.Sin(float64(i)))
	}
	f64 := []float64{1e-300, -2.5, math.Pi}
	mk := func(tt *tensor.Tensor, err error) *tensor.Tensor {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return tt
	}
	q := mk(tensor.FromBytes("q", tensor.I8, []int{4}, []byte{0x80, 0xff, 0, 0x7f}))
	q.Scale = 0.0125
	s, err := tensor.NewSet(
		mk(tensor.FromF32("w", []int{50, 50}, w)),
		mk(tensor.FromF64("d", []int{3}, f64)),
		mk(tensor.FromBytes("h", tensor.F16, []int{2}, []byte{0x00, 0x3c, 0x00, 0xc0})),   // 1, -2
		mk(tensor.FromBytes("bf", tensor.BF16, []int{2}, []byte{0x80, 0x3f, 0x49, 0x40})), // 1, 3.140625
		q,
		mk(tensor.FromBytes("u", tensor.U32, []int{2}, []byte{1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff})),
	)
	if err != nil {
		t.Fatal(err)
	}
	s.Metadata = map[string]string{"num_examples": "64"}
	return s
}
