package arrowio

import (
	"bytes"
	"encoding/binary"
	"math"
	"strconv"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/wattagg/wattagg/tensor"
)

// These tests build with arrow-go's low-level API the streams that the package doc's pyarrow
// client writes, so that they run where pyarrow is not (TestPyarrowWriteUpdate runs the client
// itself in pyarrow where WATTAGG_PYARROW names one): fields nullable (pyarrow's default), json.dumps spacing in the layout, a batch per
// chunk with one row, numpy bytes, no chunk for an empty tensor; and the other shape a pyarrow
// client may take, one table with a dictionary-encoded tensor column and binary data.

// pyTensor is a numpy array as the client sees it.
type pyTensor struct {
	name  string
	dtype string // the layout's dtype
	shape []int
	raw   []byte // a.reshape(-1).view(np.uint8)
}

// pyClientStream writes tensors as write_update in the package doc does.
func pyClientStream(t *testing.T, tensors []pyTensor, metadata map[string]string, chunkBytes int, data arrow.DataType) []byte {
	t.Helper()
	// json.dumps(layout): ", " and ": " separators.
	js := "["
	for i, x := range tensors {
		if i > 0 {
			js += ", "
		}
		js += `{"name": "` + x.name + `", "dtype": "` + x.dtype + `", "shape": [`
		for j, d := range x.shape {
			if j > 0 {
				js += ", "
			}
			js += strconv.Itoa(d)
		}
		js += "]}"
	}
	js += "]"
	keys, vals := []string{LayoutKey}, []string{js}
	for k, v := range metadata {
		keys, vals = append(keys, k), append(vals, v)
	}
	md := arrow.NewMetadata(keys, vals)
	schema := arrow.NewSchema([]arrow.Field{
		{Name: "tensor", Type: arrow.BinaryTypes.String, Nullable: true},
		{Name: "offset", Type: arrow.PrimitiveTypes.Int64, Nullable: true},
		{Name: "data", Type: data, Nullable: true},
	}, &md)
	var buf bytes.Buffer
	w := ipc.NewWriter(&buf, ipc.WithSchema(schema))
	mem := memory.NewGoAllocator()
	for _, x := range tensors {
		size := dtypeSize(x.dtype)
		step := max(chunkBytes/size, 1) * size
		for lo := 0; lo < len(x.raw); lo += step {
			hi := min(lo+step, len(x.raw))
			b := array.NewRecordBuilder(mem, schema)
			b.Field(0).(*array.StringBuilder).Append(x.name)
			b.Field(1).(*array.Int64Builder).Append(int64(lo / size))
			switch d := b.Field(2).(type) {
			case *array.BinaryBuilder:
				d.Append(x.raw[lo:hi])
			}
			rec := b.NewRecordBatch()
			if err := w.Write(rec); err != nil {
				t.Fatal(err)
			}
			rec.Release()
			b.Release()
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func dtypeSize(dt string) int {
	return map[string]int{"F32": 4, "F64": 8, "F16": 2, "BF16": 2, "I8": 1, "U32": 4}[dt]
}

func TestPyarrowClientStream(t *testing.T) {
	// numpy values: float32 weights, bf16 from torch as int16 bits, float64 scalar, empty.
	w := make([]float32, 3*50)
	for i := range w {
		w[i] = float32(i) * 0.25
	}
	bf := []uint16{0x3f80, 0x4000, 0xbf80} // 1, 2, -1 in bfloat16
	tensors := []pyTensor{
		{"fc.weight", "F32", []int{3, 50}, f32Bytes(w...)},
		{"emb", "BF16", []int{3}, binary.LittleEndian.AppendUint16(binary.LittleEndian.AppendUint16(binary.LittleEndian.AppendUint16(nil, bf[0]), bf[1]), bf[2])},
		{"step", "F64", []int{}, binary.LittleEndian.AppendUint64(nil, math.Float64bits(7))},
		{"none", "F32", []int{0}, nil},
	}
	for _, data := range []arrow.DataType{arrow.BinaryTypes.LargeBinary, arrow.BinaryTypes.Binary} {
		mem := checkedMem(t)
		stream := pyClientStream(t, tensors, map[string]string{"num_examples": "120"}, 64, data)
		s, err := ReadStream(bytes.NewReader(stream), WithAllocator(mem))
		if err != nil {
			t.Fatal(err)
		}
		want := tensor.Layout{
			{Name: "fc.weight", DType: tensor.F32, Shape: []int{3, 50}},
			{Name: "emb", DType: tensor.BF16, Shape: []int{3}},
			{Name: "step", DType: tensor.F64, Shape: []int{}},
			{Name: "none", DType: tensor.F32, Shape: []int{0}},
		}
		if !s.Layout().Equal(want) || s.Metadata["num_examples"] != "120" {
			t.Fatalf("%v %v", s.Layout(), s.Metadata)
		}
		got, _ := s.At(0).F32()
		for i := range w {
			if got[i] != w[i] {
				t.Fatalf("%s: fc.weight[%d] = %v, want %v", data, i, got[i], w[i])
			}
		}
		if e := s.At(1).Float64s(); e[0] != 1 || e[1] != 2 || e[2] != -1 {
			t.Fatalf("emb = %v", e)
		}
		if s.At(2).Value(0) != 7 || s.At(3).Len() != 0 {
			t.Fatalf("step %v, none %d elements", s.At(2).Value(0), s.At(3).Len())
		}
	}
}

// TestPyarrowTableStream is a client that builds one table (pa.table({...}) with
// pa.array(names).dictionary_encode() and pa.binary() data) and writes it as a single batch.
func TestPyarrowTableStream(t *testing.T) {
	mem := checkedMem(t)
	schema := chunkSchema(map[string]arrow.DataType{
		ColTensor: &arrow.DictionaryType{IndexType: arrow.PrimitiveTypes.Int32, ValueType: arrow.BinaryTypes.String}},
		LayoutKey, `[{"name": "a", "dtype": "F32", "shape": [4]}, {"name": "q", "dtype": "I8", "shape": [3], "scale": 0.015625}]`,
		"client", "7")
	stream := rawStream(t, schema, [][]rawRow{{
		{tensor: "a", offset: 0, data: f32Bytes(1, 2)},
		{tensor: "q", offset: 0, data: []byte{1, 0xff, 2}},
		{tensor: "a", offset: 2, data: f32Bytes(3, 4)},
	}})
	s, err := ReadStream(bytes.NewReader(stream), WithAllocator(mem))
	if err != nil {
		t.Fatal(err)
	}
	if a := s.At(0).Float64s(); a[0] != 1 || a[3] != 4 {
		t.Fatalf("a = %v", a)
	}
	if q := s.At(1).Float64s(); q[0] != 0.015625 || q[1] != -0.015625 || q[2] != 0.03125 || s.Metadata["client"] != "7" {
		t.Fatalf("q = %v (scale %v), metadata %v", q, s.At(1).Scale, s.Metadata)
	}
}
