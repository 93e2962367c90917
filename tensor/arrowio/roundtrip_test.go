package arrowio

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"

	"github.com/wattagg/wattagg/tensor"
)

// layouts are the Sets every round trip runs on: each dtype alone, a mixed model with odd
// sizes, scalars, empty tensors, and tensors larger than several batches.
var layouts = map[string]tensor.Layout{
	"f32":  {{Name: "w", DType: tensor.F32, Shape: []int{37, 11}}},
	"f64":  {{Name: "w", DType: tensor.F64, Shape: []int{301}}},
	"f16":  {{Name: "w", DType: tensor.F16, Shape: []int{3, 5, 7}}},
	"bf16": {{Name: "w", DType: tensor.BF16, Shape: []int{1023}}},
	"i8":   {{Name: "q", DType: tensor.I8, Shape: []int{17, 3}}},
	"u32":  {{Name: "m", DType: tensor.U32, Shape: []int{65}}},
	"mixed": {
		{Name: "emb", DType: tensor.BF16, Shape: []int{333, 7}},
		{Name: "bias", DType: tensor.F16, Shape: []int{5}},
		{Name: "fc.weight", DType: tensor.F32, Shape: []int{129, 9}},
		{Name: "scalar", DType: tensor.F64, Shape: []int{}},
		{Name: "q", DType: tensor.I8, Shape: []int{13}},
		{Name: "empty", DType: tensor.F32, Shape: []int{0, 4}},
		{Name: "mask", DType: tensor.U32, Shape: []int{3}},
		{Name: "norm", DType: tensor.F64, Shape: []int{3}},
		{Name: "odd", DType: tensor.BF16, Shape: []int{1}},
		{Name: "f32 tail", DType: tensor.F32, Shape: []int{7}},
	},
	"scalars": {{Name: "a", DType: tensor.F32, Shape: []int{}}, {Name: "b", DType: tensor.I8, Shape: []int{}}},
	"empty":   {{Name: "e", DType: tensor.F16, Shape: []int{0}}},
	"none":    {},
}

// batchSizes cut tensors at odd places: 72 is not a multiple of 16 or 64, 200 leaves tails.
var batchSizes = []int{64, 72, 200, 4096, DefaultBatchBytes}

func TestRoundTripStream(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for name, layout := range layouts {
		for _, bs := range batchSizes {
			t.Run(fmt.Sprintf("%s/batch=%d", name, bs), func(t *testing.T) {
				mem := checkedMem(t)
				want := randomSet(t, rng, layout, map[string]string{"num_examples": "120", "client": "ß ☃"})
				var buf bytes.Buffer
				if err := WriteSet(&buf, want, WithBatchBytes(bs), WithAllocator(mem)); err != nil {
					t.Fatal(err)
				}
				got, err := ReadStream(bytes.NewReader(buf.Bytes()), WithAllocator(mem), WithSource("client 7"))
				if err != nil {
					t.Fatal(err)
				}
				sameSet(t, got, want)
				if got.Source != "client 7" {
					t.Fatalf("Source %q", got.Source)
				}
				// arrow-go's own reader reads the stream too, with the same rows.
				checkWithArrow(t, buf.Bytes(), want)
			})
		}
	}
}

// checkWithArrow reads a stream with arrow-go's ipc.Reader alone and reassembles the tensors
// from its rows, independently of this package's reader.
func checkWithArrow(t *testing.T, stream []byte, want *tensor.Set) {
	t.Helper()
	rd, err := ipc.NewReader(bytes.NewReader(stream))
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Release()
	if v, ok := rd.Schema().Metadata().GetValue(LayoutKey); !ok || v == "" {
		t.Fatalf("no %s in the schema metadata", LayoutKey)
	}
	got := map[string][]byte{}
	for rd.Next() {
		rec := rd.RecordBatch()
		names := rec.Column(0).(*array.String)
		offs := rec.Column(1).(*array.Int64)
		data := rec.Column(2).(*array.LargeBinary)
		for i := range int(rec.NumRows()) {
			x, _ := want.Tensor(names.Value(i))
			if int(offs.Value(i))*x.DType.Size() != len(got[x.Name]) {
				t.Fatalf("tensor %q: chunk at element %d after %d bytes", x.Name, offs.Value(i), len(got[x.Name]))
			}
			got[x.Name] = append(got[x.Name], data.Value(i)...)
		}
	}
	if err := rd.Err(); err != nil {
		t.Fatal(err)
	}
	for _, x := range want.Tensors() {
		if !bytes.Equal(got[x.Name], x.Bytes()) {
			t.Fatalf("tensor %q: arrow-go's reader sees other bytes", x.Name)
		}
	}
}

func TestRoundTripFile(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	dir := t.TempDir()
	for name, layout := range layouts {
		for _, bs := range batchSizes {
			t.Run(fmt.Sprintf("%s/batch=%d", name, bs), func(t *testing.T) {
				mem := checkedMem(t)
				want := randomSet(t, rng, layout, map[string]string{"round": "3"})
				path := filepath.Join(dir, name+".arrow")
				if err := WriteFile(path, want, WithBatchBytes(bs), WithAllocator(mem)); err != nil {
					t.Fatal(err)
				}
				got, err := ReadFile(path, WithAllocator(mem))
				if err != nil {
					t.Fatal(err)
				}
				sameSet(t, got, want)
				if got.Source != path {
					t.Fatalf("Source %q", got.Source)
				}
				// Every tensor of a file WriteFile wrote is a view of the file.
				file, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				buf := tensor.AlignedBytes(len(file))
				copy(buf, file)
				o, _ := newOptions(path, []Option{WithAllocator(mem)})
				o.maxTotal = int64(len(buf))
				viewed, err := readMapped(buf, o)
				if err != nil {
					t.Fatal(err)
				}
				for _, x := range viewed.Tensors() {
					if x.Len() > 0 && !inside(x.Bytes(), buf) {
						t.Fatalf("tensor %q was copied, want a view of the file", x.Name)
					}
				}
				if err := got.Close(); err != nil {
					t.Fatal(err)
				}
				if got.Len() > 0 && len(got.At(0).Bytes()) != 0 {
					t.Fatal("tensors still view the file after Close")
				}
				// arrow-go's file reader reads it too.
				f, err := os.Open(path)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				fr, err := ipc.NewFileReader(f)
				if err != nil {
					t.Fatal(err)
				}
				defer fr.Close()
				var rows int64
				for i := range fr.NumRecords() {
					rec, err := fr.RecordBatch(i)
					if err != nil {
						t.Fatal(err)
					}
					rows += rec.NumRows()
				}
				nonEmpty := 0
				for _, x := range want.Tensors() {
					if x.Len() > 0 {
						nonEmpty++
					}
				}
				if rows != int64(nonEmpty) {
					t.Fatalf("arrow-go's file reader sees %d rows, want one per non-empty tensor (%d)", rows, nonEmpty)
				}
			})
		}
	}
}

// inside reports whether b lies within buf.
func inside(b, buf []byte) bool {
	p := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	lo := uintptr(unsafe.Pointer(unsafe.SliceData(buf)))
	return p >= lo && p+uintptr(len(b)) <= lo+uintptr(len(buf))
}

// TestFileCopyPath checks the tensors that cannot be views: a tensor split over batches (not
// contiguous in the file) and one whose chunk starts at an odd address (after 3 bf16 elements
// in the same batch) are copied once into aligned memory; a tensor whose chunks are adjacent
// rows of one batch stays a view.
func TestFileCopyPath(t *testing.T) {
	mem := checkedMem(t)
	rng := rand.New(rand.NewPCG(5, 6))
	want := randomSet(t, rng, tensor.Layout{
		{Name: "split", DType: tensor.F32, Shape: []int{100}},
		{Name: "odd", DType: tensor.BF16, Shape: []int{3}},
		{Name: "after odd", DType: tensor.F32, Shape: []int{5}},
		{Name: "rows", DType: tensor.F64, Shape: []int{6}},
	}, nil)
	h := HeaderOf(want)
	var buf bytes.Buffer
	schema := writeSchema(h)
	fw, err := ipc.NewFileWriter(&buf, ipc.WithSchema(schema), ipc.WithAllocator(mem))
	if err != nil {
		t.Fatal(err)
	}
	wr := newWriter(fw, h, schema, &options{mem: mem, batchBytes: 4096}, true)
	split := want.At(0).Bytes()
	for _, c := range []Chunk{
		{Tensor: 0, Offset: 0, Data: split[:160]}, // batches of their own (>= a quarter batch)...
		{Tensor: 0, Offset: 40, Data: split[160:]},
		{Tensor: 1, Offset: 0, Data: want.At(1).Bytes()}, // ...then one staged batch: 6 bytes of bf16,
		{Tensor: 2, Offset: 0, Data: want.At(2).Bytes()}, // so this f32 chunk starts at an odd place
	} {
		if c.Tensor == 0 {
			// Make the split tensor's chunks batches of their own whatever their size.
			if err := wr.writeBatch([]row{{c.Tensor, c.Offset, c.Data}}, c.Data); err != nil {
				t.Fatal(err)
			}
			wr.next[0] += int64(len(c.Data)) / 4
			continue
		}
		if err := wr.WriteChunk(c); err != nil {
			t.Fatal(err)
		}
	}
	if err := wr.flush(); err != nil {
		t.Fatal(err)
	}
	// Tensor 3 as three adjacent rows of one batch.
	rows := want.At(3).Bytes()
	if err := wr.writeBatch([]row{{3, 0, rows[:8]}, {3, 1, rows[8:32]}, {3, 4, rows[32:]}}, rows); err != nil {
		t.Fatal(err)
	}
	wr.next[3] = 6
	if err := wr.Close(); err != nil {
		t.Fatal(err)
	}
	file := tensor.AlignedBytes(buf.Len())
	copy(file, buf.Bytes())
	o, _ := newOptions("copy path", []Option{WithAllocator(mem)})
	o.maxTotal = int64(len(file))
	got, err := readMapped(file, o)
	if err != nil {
		t.Fatal(err)
	}
	sameSet(t, got, want) // sameSet also checks alignment
	for i, view := range []bool{false, true, false, true} {
		x := got.At(i)
		if inside(x.Bytes(), file) != view {
			t.Fatalf("tensor %q: view=%v, want %v", x.Name, !view, view)
		}
		if !view && !tensor.IsAligned(x.Bytes(), tensor.Alignment) {
			t.Fatalf("tensor %q: copy not %d-byte aligned", x.Name, tensor.Alignment)
		}
	}
}

// TestWriterChunks writes tensors in chunks cut at odd element boundaries with the incremental
// Writer and checks that the reader hands out exactly those elements, in order, per tensor.
func TestWriterChunks(t *testing.T) {
	mem := checkedMem(t)
	rng := rand.New(rand.NewPCG(7, 8))
	want := randomSet(t, rng, layouts["mixed"], map[string]string{"k": "v"})
	for _, bs := range []int{64, 128, 1000} {
		var buf bytes.Buffer
		w, err := NewWriter(&buf, HeaderOf(want), WithBatchBytes(bs), WithAllocator(mem))
		if err != nil {
			t.Fatal(err)
		}
		cuts := []int{1, 3, 7, 2, 50, 11}
		for i, x := range want.Tensors() {
			size := x.DType.Size()
			for off, k := 0, 0; off < x.Len(); k++ {
				n := min(cuts[(i+k)%len(cuts)], x.Len()-off)
				if err := w.WriteChunk(Chunk{Tensor: i, Offset: int64(off), Data: x.Bytes()[off*size : (off+n)*size]}); err != nil {
					t.Fatal(err)
				}
				off += n
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		sr, err := NewStreamReader(bytes.NewReader(buf.Bytes()), WithAllocator(mem))
		if err != nil {
			t.Fatal(err)
		}
		got := make([][]byte, want.Len())
		for _, c := range chunksOf(t, sr) {
			size := want.At(c.Tensor).DType.Size()
			if int(c.Offset)*size != len(got[c.Tensor]) {
				t.Fatalf("batch %d: tensor %d chunk at element %d after %d bytes", bs, c.Tensor, c.Offset, len(got[c.Tensor]))
			}
			got[c.Tensor] = append(got[c.Tensor], c.Data...)
		}
		sr.Close()
		for i, x := range want.Tensors() {
			if !bytes.Equal(got[i], x.Bytes()) {
				t.Fatalf("batch %d: tensor %q differs", bs, x.Name)
			}
		}
	}
}

// TestHeaderBeforeData reads a stream whose bytes stop right after the schema message: the
// header is complete, and only Next sees the missing data.
func TestHeaderBeforeData(t *testing.T) {
	mem := checkedMem(t)
	want := randomSet(t, rand.New(rand.NewPCG(9, 9)), layouts["mixed"], map[string]string{"num_examples": "7"})
	var buf bytes.Buffer
	if err := WriteSet(&buf, want, WithAllocator(mem)); err != nil {
		t.Fatal(err)
	}
	// The schema message is the first: continuation, length, metadata.
	b := buf.Bytes()
	schemaEnd := 8 + int(int32(uint32(b[4])|uint32(b[5])<<8|uint32(b[6])<<16|uint32(b[7])<<24))
	stuck := errors.New("connection stalled")
	sr, err := NewStreamReader(io.MultiReader(bytes.NewReader(b[:schemaEnd]), failingReader{stuck}), WithAllocator(mem))
	if err != nil {
		t.Fatal(err)
	}
	defer sr.Close()
	if !sr.Layout().Equal(want.Layout()) || sr.Metadata()["num_examples"] != "7" {
		t.Fatalf("header %+v", sr.Header())
	}
	for i, x := range want.Tensors() {
		if got := sr.Header().Scales[i]; got != x.Scale {
			t.Fatalf("tensor %q: scale %v, want %v", x.Name, got, x.Scale)
		}
	}
	if _, err := sr.Next(); err == nil || !errors.Is(err, stuck) {
		t.Fatalf("Next: %v, want the reader's error", err)
	}
}

type failingReader struct{ err error }

func (f failingReader) Read([]byte) (int, error) { return 0, f.err }

// TestStreamMemory streams an update of 64 batches and checks that the reader never holds
// more than about one batch, and that the writer copies no large tensor.
func TestStreamMemory(t *testing.T) {
	const bs = 64 << 10
	want := randomSet(t, rand.New(rand.NewPCG(1, 1)), tensor.Layout{
		{Name: "a", DType: tensor.F32, Shape: []int{16 * bs / 4}},
		{Name: "b", DType: tensor.BF16, Shape: []int{48 * bs / 2}},
	}, nil)
	wmem := &peakAlloc{Allocator: checkedMem(t)}
	var buf bytes.Buffer
	if err := WriteSet(&buf, want, WithBatchBytes(bs), WithAllocator(wmem)); err != nil {
		t.Fatal(err)
	}
	// The writer's staging buffer and small builders: no tensor byte went through Arrow memory.
	if p := wmem.peak.Load(); p > bs+16<<10 {
		t.Fatalf("writer peak %d bytes of Arrow memory, want about one staging batch (%d)", p, bs)
	}
	rmem := &peakAlloc{Allocator: checkedMem(t)}
	sr, err := NewStreamReader(bytes.NewReader(buf.Bytes()), WithAllocator(rmem))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		c, err := sr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		n += len(c.Data)
	}
	sr.Close()
	if int64(n) != want.NumBytes() {
		t.Fatalf("read %d bytes, want %d", n, want.NumBytes())
	}
	if p := rmem.peak.Load(); p > bs+16<<10 {
		t.Fatalf("reader peak %d bytes for a %d-byte stream, want about one batch (%d)", p, buf.Len(), bs)
	}
}

// TestDictionaryTensorColumn reads a stream whose tensor column is dictionary-encoded (as
// pa.array(names).dictionary_encode() makes it), with large_utf8 names in another.
func TestDictionaryTensorColumn(t *testing.T) {
	js := layoutJSON(`{"name":"a","dtype":"F32","shape":[3]}`, `{"name":"b","dtype":"F32","shape":[2]}`)
	for name, typ := range map[string]arrow.DataType{
		"dictionary": &arrow.DictionaryType{IndexType: arrow.PrimitiveTypes.Int32, ValueType: arrow.BinaryTypes.String},
		"large_utf8": arrow.BinaryTypes.LargeString,
	} {
		t.Run(name, func(t *testing.T) {
			mem := checkedMem(t)
			schema := chunkSchema(map[string]arrow.DataType{ColTensor: typ, ColData: arrow.BinaryTypes.LargeBinary}, LayoutKey, js)
			stream := rawStream(t, schema, [][]rawRow{
				{{tensor: "b", offset: 0, data: f32Bytes(4)}, {tensor: "a", offset: 0, data: f32Bytes(1, 2)}},
				{{tensor: "a", offset: 2, data: f32Bytes(3)}, {tensor: "b", offset: 1, data: f32Bytes(5)}},
			})
			got, err := ReadStream(bytes.NewReader(stream), WithAllocator(mem))
			if err != nil {
				t.Fatal(err)
			}
			if a := got.At(0).Float64s(); fmt.Sprint(a) != "[1 2 3]" {
				t.Fatalf("a = %v", a)
			}
			if b := got.At(1).Float64s(); fmt.Sprint(b) != "[4 5]" {
				t.Fatalf("b = %v", b)
			}
		})
	}
}
