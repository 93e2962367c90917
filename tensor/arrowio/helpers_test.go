package arrowio

import (
	"bytes"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/wattagg/wattagg/tensor"
)

// checkedMem returns a checked allocator that fails the test if anything allocated through it
// is still held when the test ends (cleanups run last-registered first, so register it before
// anything that releases memory in a cleanup).
func checkedMem(t testing.TB) *memory.CheckedAllocator {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	t.Cleanup(func() { mem.AssertSize(t, 0) })
	return mem
}

// peakAlloc is an allocator that records the most bytes it ever had outstanding.
type peakAlloc struct {
	memory.Allocator
	cur, peak atomic.Int64
}

func (p *peakAlloc) Allocate(n int) []byte {
	if c := p.cur.Add(int64(n)); c > p.peak.Load() {
		p.peak.Store(c)
	}
	return p.Allocator.Allocate(n)
}

func (p *peakAlloc) Reallocate(n int, b []byte) []byte {
	if c := p.cur.Add(int64(n - len(b))); c > p.peak.Load() {
		p.peak.Store(c)
	}
	return p.Allocator.Reallocate(n, b)
}

func (p *peakAlloc) Free(b []byte) {
	p.cur.Add(-int64(len(b)))
	p.Allocator.Free(b)
}

// randomSet makes a Set of layout with random bytes, I8 scales and metadata md. Float bit
// patterns include NaNs: the format moves bytes, it does not look at values.
func randomSet(t testing.TB, rng *rand.Rand, layout tensor.Layout, md map[string]string) *tensor.Set {
	t.Helper()
	var ts []*tensor.Tensor
	for _, f := range layout {
		x, err := tensor.New(f.Name, f.DType, f.Shape...)
		if err != nil {
			t.Fatal(err)
		}
		for i := range x.Bytes() {
			x.Bytes()[i] = byte(rng.Uint32())
		}
		if f.DType == tensor.I8 {
			x.Scale = float32(rng.Float64()*2 + 0.001)
		}
		ts = append(ts, x)
	}
	s, err := tensor.NewSet(ts...)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range md {
		s.Metadata[k] = v
	}
	return s
}

// sameSet fails unless got holds want's tensors (order, names, dtypes, shapes, bytes, scales)
// and metadata.
func sameSet(t testing.TB, got, want *tensor.Set) {
	t.Helper()
	if !got.Layout().Equal(want.Layout()) {
		t.Fatalf("layout %v, want %v", got.Layout(), want.Layout())
	}
	for i, w := range want.Tensors() {
		g := got.At(i)
		if !bytes.Equal(g.Bytes(), w.Bytes()) {
			t.Fatalf("tensor %q: bytes differ", w.Name)
		}
		if g.Scale != w.Scale {
			t.Fatalf("tensor %q: scale %v, want %v", w.Name, g.Scale, w.Scale)
		}
		if len(g.Bytes()) > 0 && !tensor.IsAligned(g.Bytes(), w.DType.Size()) {
			t.Fatalf("tensor %q: data not aligned to its %d-byte elements", w.Name, w.DType.Size())
		}
	}
	if len(got.Metadata) != len(want.Metadata) {
		t.Fatalf("metadata %v, want %v", got.Metadata, want.Metadata)
	}
	for k, v := range want.Metadata {
		if got.Metadata[k] != v {
			t.Fatalf("metadata %q = %q, want %q", k, got.Metadata[k], v)
		}
	}
}

// rawRow is one row of a hand-built batch. nullTensor, nullOffset and a nil data make nulls.
type rawRow struct {
	tensor     string
	offset     int64
	data       []byte
	nullTensor bool
	nullOffset bool
}

// chunkSchema is a chunk schema with the given column types (nil: the default type, an
// absent name: no such column) and metadata keys and values in order (duplicates allowed).
func chunkSchema(types map[string]arrow.DataType, kv ...string) *arrow.Schema {
	var fields []arrow.Field
	for _, name := range []string{ColTensor, ColOffset, ColData} {
		dt, ok := types[name]
		if !ok {
			dt = map[string]arrow.DataType{ColTensor: arrow.BinaryTypes.String,
				ColOffset: arrow.PrimitiveTypes.Int64, ColData: arrow.BinaryTypes.Binary}[name]
		} else if dt == nil {
			continue
		}
		fields = append(fields, arrow.Field{Name: name, Type: dt, Nullable: true})
	}
	var extra []string
	for name := range types {
		if name != ColTensor && name != ColOffset && name != ColData {
			extra = append(extra, name)
		}
	}
	sort.Strings(extra)
	for _, name := range extra {
		fields = append(fields, arrow.Field{Name: name, Type: types[name], Nullable: true})
	}
	var keys, vals []string
	for i := 0; i+1 < len(kv); i += 2 {
		keys, vals = append(keys, kv[i]), append(vals, kv[i+1])
	}
	md := arrow.NewMetadata(keys, vals)
	return arrow.NewSchema(fields, &md)
}

// rawStream writes batches with arrow-go's own IPC writer, bypassing every check of this
// package, so that tests can build the invalid streams a hostile or buggy client would send.
// Columns of types other than the chunk schema's are filled with zero values. opts go to
// ipc.NewWriter (compression, ...).
func rawStream(t testing.TB, schema *arrow.Schema, batches [][]rawRow, opts ...ipc.Option) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := ipc.NewWriter(&buf, append([]ipc.Option{ipc.WithSchema(schema)}, opts...)...)
	for _, rows := range batches {
		rec := rawBatch(t, schema, rows)
		if err := w.Write(rec); err != nil {
			t.Fatal(err)
		}
		rec.Release()
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func rawBatch(t testing.TB, schema *arrow.Schema, rows []rawRow) arrow.RecordBatch {
	t.Helper()
	mem := memory.NewGoAllocator()
	b := array.NewRecordBuilder(mem, schema)
	defer b.Release()
	for i, f := range schema.Fields() {
		fb := b.Field(i)
		for _, r := range rows {
			switch {
			case f.Name == ColTensor && r.nullTensor, f.Name == ColOffset && r.nullOffset, f.Name == ColData && r.data == nil:
				fb.AppendNull()
				continue
			}
			switch x := fb.(type) {
			case *array.StringBuilder:
				x.Append(r.tensor)
			case *array.LargeStringBuilder:
				x.Append(r.tensor)
			case *array.BinaryDictionaryBuilder:
				if err := x.AppendString(r.tensor); err != nil {
					t.Fatal(err)
				}
			case *array.Int64Builder:
				x.Append(r.offset)
			case *array.BinaryBuilder:
				if f.Name == ColData {
					x.Append(r.data)
				} else {
					x.Append([]byte(r.tensor))
				}
			default:
				fb.AppendEmptyValue()
			}
		}
	}
	return b.NewRecordBatch()
}

// layoutJSON is the layout JSON of fields given as name, dtype, shape triples.
func layoutJSON(entries ...string) string {
	return "[" + strings.Join(entries, ",") + "]"
}

// f32Bytes returns the little-endian bytes of v.
func f32Bytes(v ...float32) []byte {
	b := make([]byte, 0, 4*len(v))
	for _, x := range v {
		u := math.Float32bits(x)
		b = append(b, byte(u), byte(u>>8), byte(u>>16), byte(u>>24))
	}
	return b
}

// chunksOf reads every chunk of a stream, copying the data.
func chunksOf(t testing.TB, sr *StreamReader) []Chunk {
	t.Helper()
	var out []Chunk
	for {
		c, err := sr.Next()
		if err != nil {
			if err.Error() == "EOF" {
				return out
			}
			t.Fatal(err)
		}
		c.Data = slices.Clone(c.Data)
		out = append(out, c)
	}
}
