package arrowio

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	flatbuffers "github.com/google/flatbuffers/go"

	"github.com/wattagg/wattagg/tensor"
)

// abLayout: tensor a, 4 f32; tensor b, 2 bf16.
var abLayout = layoutJSON(`{"name":"a","dtype":"F32","shape":[4]}`, `{"name":"b","dtype":"BF16","shape":[2]}`)

func abSchema() *arrow.Schema { return chunkSchema(nil, LayoutKey, abLayout, "num_examples", "3") }

var (
	aAll = rawRow{tensor: "a", offset: 0, data: f32Bytes(1, 2, 3, 4)}
	bAll = rawRow{tensor: "b", offset: 0, data: []byte{1, 2, 3, 4}}
)

// errorCase is a stream that must be refused with an error wrapping every one of want and
// reading exactly msg (after the source name).
type errorCase struct {
	name   string
	stream func(t testing.TB) []byte
	opts   []Option
	want   []error
	msg    string
}

func batches(schema *arrow.Schema, b ...[]rawRow) func(t testing.TB) []byte {
	return func(t testing.TB) []byte { return rawStream(t, schema, b) }
}

func layoutCase(name, js, msg string, want ...error) errorCase {
	return errorCase{name: name, stream: batches(chunkSchema(nil, LayoutKey, js)), want: append([]error{ErrSchema}, want...), msg: msg}
}

var errorCases = []errorCase{
	// Chunks.
	{"first chunk not at 0", batches(abSchema(), []rawRow{{tensor: "a", offset: 1, data: f32Bytes(2, 3, 4)}, bAll}),
		nil, []error{ErrChunk}, `bad chunk: tensor "a" at element 1 (batch 1, row 0): gap: elements 0..0 were not sent`},
	{"overlap", batches(abSchema(), []rawRow{{tensor: "a", offset: 0, data: f32Bytes(1, 2, 3)}}, []rawRow{{tensor: "a", offset: 2, data: f32Bytes(3, 4)}}),
		nil, []error{ErrChunk}, `bad chunk: tensor "a" at element 2 (batch 2, row 0): overlaps elements 2..2, already received`},
	{"gap", batches(abSchema(), []rawRow{{tensor: "a", offset: 0, data: f32Bytes(1, 2)}, {tensor: "a", offset: 3, data: f32Bytes(4)}}),
		nil, []error{ErrChunk}, `bad chunk: tensor "a" at element 3 (batch 1, row 1): gap: elements 2..2 were not sent`},
	{"partial element", batches(abSchema(), []rawRow{{tensor: "a", offset: 0, data: make([]byte, 6)}}),
		nil, []error{ErrChunk}, `bad chunk: tensor "a" at element 0 (batch 1, row 0): 6 bytes are not a whole number of 4-byte f32 elements`},
	{"unknown tensor", batches(abSchema(), []rawRow{aAll, {tensor: "c", offset: 0, data: f32Bytes(1)}}),
		nil, []error{ErrChunk}, `bad chunk: batch 1, row 1: tensor "c" is not in the layout`},
	{"past the end", batches(abSchema(), []rawRow{{tensor: "a", offset: 0, data: f32Bytes(1, 2, 3, 4, 5)}}),
		nil, []error{ErrChunk}, `bad chunk: tensor "a" at element 0 (batch 1, row 0): 5 elements run past the end of the tensor's 4`},
	{"chunk after the end", batches(abSchema(), []rawRow{aAll, bAll, {tensor: "a", offset: 4, data: f32Bytes(5)}}),
		nil, []error{ErrChunk}, `bad chunk: tensor "a" at element 4 (batch 1, row 2): 1 elements run past the end of the tensor's 4`},
	{"negative offset", batches(abSchema(), []rawRow{{tensor: "a", offset: -1, data: f32Bytes(1)}}),
		nil, []error{ErrChunk}, `bad chunk: tensor "a" at element -1 (batch 1, row 0): negative offset`},
	{"null tensor", batches(abSchema(), []rawRow{aAll, {nullTensor: true, data: []byte{1, 2}}}),
		nil, []error{ErrChunk}, `bad chunk: batch 1: column "tensor" has 1 nulls`},
	{"null offset", batches(abSchema(), []rawRow{{tensor: "a", nullOffset: true, data: f32Bytes(1)}}),
		nil, []error{ErrChunk}, `bad chunk: batch 1: column "offset" has 1 nulls`},
	{"null data", batches(abSchema(), []rawRow{{tensor: "a"}}),
		nil, []error{ErrChunk}, `bad chunk: batch 1: column "data" has 1 nulls`},
	{"unknown tensor in a dictionary", batches(chunkSchema(map[string]arrow.DataType{
		ColTensor: &arrow.DictionaryType{IndexType: arrow.PrimitiveTypes.Int8, ValueType: arrow.BinaryTypes.String}},
		LayoutKey, abLayout), []rawRow{aAll, {tensor: "zz", offset: 0, data: []byte{1, 2}}}),
		nil, []error{ErrChunk}, `bad chunk: batch 1, row 1: tensor "zz" is not in the layout`},
	// Completeness.
	{"incomplete tensor", batches(abSchema(), []rawRow{aAll, {tensor: "b", offset: 0, data: []byte{1, 2}}}),
		nil, []error{ErrIncomplete}, `incomplete update: tensor "b" has 1 of its 2 elements`},
	{"missing tensor", batches(abSchema(), []rawRow{aAll}),
		nil, []error{ErrIncomplete}, `incomplete update: tensor "b" has 0 of its 2 elements`},
	// Schema and layout.
	{"no layout", batches(chunkSchema(nil, "num_examples", "3")),
		nil, []error{ErrSchema}, `bad schema: no "wattagg.layout" in the schema metadata: the layout must come before the data`},
	layoutCase("layout not JSON", `[{"name":`, `bad schema: entry 0 of wattagg.layout: the JSON ends early`),
	layoutCase("layout not an array", `{"a":1}`, `bad schema: wattagg.layout: found {, want "["`),
	layoutCase("data after the layout", `[] []`, `bad schema: wattagg.layout: data after the closing bracket`),
	layoutCase("no shape", `[{"name":"a","dtype":"F32"}]`, `bad schema: tensor "a" of wattagg.layout: no shape`),
	layoutCase("no name", `[{"dtype":"F32","shape":[1]}]`, `bad schema: entry 0 of wattagg.layout: no name`),
	layoutCase("unknown key", `[{"name":"a","dtype":"F32","shape":[1],"offsets":[0,4]}]`, `bad schema: tensor "a" of wattagg.layout: unknown key "offsets"`),
	layoutCase("duplicate key", `[{"name":"a","dtype":"F32","name":"b","shape":[1]}]`, `bad schema: tensor "a" of wattagg.layout: duplicate key "name"`),
	layoutCase("name not a string", `[{"name":7,"dtype":"F32","shape":[1]}]`, `bad schema: entry 0 of wattagg.layout: name is not a string`),
	layoutCase("empty name", `[{"name":"","dtype":"F32","shape":[1]}]`, `bad schema: entry 0 of wattagg.layout: empty tensor name`),
	layoutCase("unknown dtype", `[{"name":"a","dtype":"F8","shape":[1]}]`,
		`bad schema: unsupported dtype: tensor "a" of wattagg.layout: unknown dtype "F8" (want F32 F64 F16 BF16 I8 U32)`, tensor.ErrDType),
	layoutCase("unsupported dtype", `[{"name":"a","dtype":"I32","shape":[1]}]`,
		`bad schema: unsupported dtype: tensor "a" of wattagg.layout: dtype "I32" is not one wattagg reads (F32 F64 F16 BF16 I8 U32)`, tensor.ErrDType),
	layoutCase("lower-case dtype", `[{"name":"a","dtype":"f32","shape":[1]}]`,
		`bad schema: unsupported dtype: tensor "a" of wattagg.layout: unknown dtype "f32" (want F32 F64 F16 BF16 I8 U32)`, tensor.ErrDType),
	layoutCase("negative dimension", `[{"name":"a","dtype":"F32","shape":[2,-1]}]`,
		`bad schema: invalid shape: tensor "a" of wattagg.layout: negative dimension in [2 -1]`, tensor.ErrShape),
	layoutCase("fractional dimension", `[{"name":"a","dtype":"F32","shape":[1.5]}]`,
		`bad schema: invalid shape: tensor "a" of wattagg.layout: shape dimension "1.5" is not an integer`, tensor.ErrShape),
	layoutCase("null dimension", `[{"name":"a","dtype":"F32","shape":[null]}]`,
		`bad schema: invalid shape: tensor "a" of wattagg.layout: shape dimension "" is not an integer`, tensor.ErrShape),
	layoutCase("huge shape", `[{"name":"a","dtype":"F32","shape":[16777216,16777217]}]`,
		`bad schema: invalid shape: tensor "a" of wattagg.layout: [16777216 16777217] has more than 2^48 elements`, tensor.ErrShape),
	layoutCase("shape not an array", `[{"name":"a","dtype":"F32","shape":4}]`,
		`bad schema: invalid shape: tensor "a" of wattagg.layout: shape is not an array`, tensor.ErrShape),
	layoutCase("scale of an F32 tensor", `[{"name":"a","dtype":"F32","shape":[1],"scale":0.5}]`,
		`bad schema: tensor "a" of wattagg.layout: a scale for a F32 tensor`),
	layoutCase("zero scale", `[{"name":"q","dtype":"I8","shape":[1],"scale":0}]`,
		`bad schema: tensor "q" of wattagg.layout: scale 0 is not a finite non-zero float32`),
	layoutCase("scale out of float32 range", `[{"name":"q","dtype":"I8","shape":[1],"scale":1e39}]`,
		`bad schema: tensor "q" of wattagg.layout: scale 1e39 is not a finite non-zero float32`),
	layoutCase("duplicate tensor", layoutJSON(`{"name":"a","dtype":"F32","shape":[1]}`, `{"name":"a","dtype":"F16","shape":[1]}`),
		`bad schema: duplicate tensor name: "a" in wattagg.layout`, tensor.ErrDuplicateName),
	{"duplicate layout key", batches(chunkSchema(nil, LayoutKey, abLayout, LayoutKey, abLayout)),
		nil, []error{ErrSchema}, `bad schema: duplicate metadata key "wattagg.layout"`},
	{"duplicate metadata key", batches(chunkSchema(nil, LayoutKey, abLayout, "k", "1", "k", "2")),
		nil, []error{ErrSchema}, `bad schema: duplicate metadata key "k"`},
	{"offset int32", batches(chunkSchema(map[string]arrow.DataType{ColOffset: arrow.PrimitiveTypes.Int32}, LayoutKey, abLayout)),
		nil, []error{ErrSchema}, `bad schema: column "offset" is int32, want int64`},
	{"data utf8", batches(chunkSchema(map[string]arrow.DataType{ColData: arrow.BinaryTypes.String}, LayoutKey, abLayout)),
		nil, []error{ErrSchema}, `bad schema: column "data" is utf8, want binary or large_binary`},
	{"tensor int64", batches(chunkSchema(map[string]arrow.DataType{ColTensor: arrow.PrimitiveTypes.Int64}, LayoutKey, abLayout)),
		nil, []error{ErrSchema}, `bad schema: column "tensor" is int64, want utf8, large_utf8 or a dictionary of them`},
	{"tensor binary", batches(chunkSchema(map[string]arrow.DataType{ColTensor: arrow.BinaryTypes.Binary}, LayoutKey, abLayout)),
		nil, []error{ErrSchema}, `bad schema: column "tensor" is binary, want utf8, large_utf8 or a dictionary of them`},
	{"no data column", batches(chunkSchema(map[string]arrow.DataType{ColData: nil}, LayoutKey, abLayout)),
		nil, []error{ErrSchema}, `message at byte 0: bad schema: the schema has 2 columns, want 3 (tensor, offset, data)`},
	{"extra column", batches(chunkSchema(map[string]arrow.DataType{"checksum": arrow.PrimitiveTypes.Uint32}, LayoutKey, abLayout)),
		nil, []error{ErrSchema}, `message at byte 0: bad schema: the schema has 4 columns, want 3 (tensor, offset, data)`},
	{"offset float64", batches(chunkSchema(map[string]arrow.DataType{ColOffset: arrow.PrimitiveTypes.Float64}, LayoutKey, abLayout)),
		nil, []error{ErrSchema}, `message at byte 0: bad schema: column "offset" has Arrow type FloatingPoint, which no column of an update has`},
	{"data list", batches(chunkSchema(map[string]arrow.DataType{ColData: arrow.ListOf(arrow.PrimitiveTypes.Uint8)}, LayoutKey, abLayout)),
		nil, []error{ErrSchema}, `message at byte 0: bad schema: column "data" has Arrow type List, which no column of an update has`},
	// Limits.
	{"too many tensors", batches(abSchema()), []Option{WithMaxTensors(1)},
		[]error{ErrLimit}, `over limit: wattagg.layout lists more than 1 tensors`},
	{"layout larger than the total", batches(chunkSchema(nil, LayoutKey, `[{"name":"a","dtype":"F32","shape":[1000000]}]`)),
		[]Option{WithMaxTotalBytes(1 << 20)},
		[]error{ErrLimit}, `over limit: the layout declares 4000000 bytes of tensor data, more than the limit of 1048576`},
	{"metadata over the limit", batches(abSchema()), []Option{WithMaxMetadataBytes(64)},
		[]error{ErrLimit}, `over limit: message metadata of 408 bytes, more than the limit of 64`},
	{"batch over the limit", batches(abSchema(), []rawRow{aAll, bAll}), []Option{WithMaxBatchBytes(40)},
		[]error{ErrLimit}, `over limit: message body of 80 bytes, more than the limit of 40`},
	{"stream over the total", batches(abSchema(), []rawRow{aAll}, []rawRow{bAll}), []Option{WithMaxTotalBytes(700)},
		[]error{ErrLimit}, `over limit: the stream is longer than the limit of 700 bytes`},
	{"dictionaries over the metadata limit", batches(chunkSchema(map[string]arrow.DataType{
		ColTensor: &arrow.DictionaryType{IndexType: arrow.PrimitiveTypes.Int8, ValueType: arrow.BinaryTypes.String}},
		LayoutKey, abLayout), []rawRow{{tensor: strings.Repeat("x", 2000), offset: 0, data: f32Bytes(1)}}),
		[]Option{WithMaxMetadataBytes(1000)}, []error{ErrLimit}, `over limit: dictionaries of more than 1000 bytes`},
	// Framing.
	{"empty", func(testing.TB) []byte { return nil }, nil, []error{ErrFormat}, `malformed Arrow IPC data: the stream ends before its schema message`},
	{"not Arrow", func(testing.TB) []byte { return []byte("PK\x03\x04 a zip file, not a stream") }, nil,
		[]error{ErrFormat}, `malformed Arrow IPC data: no continuation marker at byte 0 (not an Arrow IPC stream, or one older than format 0.15)`},
	{"compressed", func(t testing.TB) []byte { return rawStream(t, abSchema(), [][]rawRow{{aAll, bAll}}, ipc.WithZstd()) }, nil,
		[]error{ErrFormat}, `message at byte 416: malformed Arrow IPC data: compressed record batch (write uncompressed: tensor data barely compresses)`},
	{"two schemas", func(t testing.TB) []byte {
		a := rawStream(t, abSchema(), [][]rawRow{{aAll, bAll}})
		return append(a[:len(a)-8:len(a)-8], a...) // the second stream after the first's batches
	}, nil, []error{ErrFormat}, `malformed Arrow IPC data: arrow/ipc: invalid message type (got=Schema, want=RecordBatch`},
	{"truncated body", func(t testing.TB) []byte {
		a := rawStream(t, abSchema(), [][]rawRow{{aAll, bAll}})
		return a[:len(a)-8-10]
	}, nil, []error{ErrFormat}, `malformed Arrow IPC data: truncated in a message body after byte 688: unexpected EOF`},
	{"negative length", func(testing.TB) []byte { return []byte{0xff, 0xff, 0xff, 0xff, 0xf0, 0xff, 0xff, 0xff} }, nil,
		[]error{ErrFormat}, `malformed Arrow IPC data: negative message length -16 at byte 4`},
}

func TestStreamErrors(t *testing.T) {
	for _, c := range errorCases {
		t.Run(c.name, func(t *testing.T) {
			mem := checkedMem(t)
			stream := c.stream(t)
			s, err := ReadStream(bytes.NewReader(stream), append([]Option{WithAllocator(mem)}, c.opts...)...)
			checkError(t, err, c.want, "arrow stream: "+c.msg)
			if s != nil {
				t.Fatal("a Set with the error")
			}
			// The same error through the chunk decoder, and it is final.
			sr, err := NewStreamReader(bytes.NewReader(stream), append([]Option{WithAllocator(mem)}, c.opts...)...)
			if err == nil {
				for err == nil {
					_, err = sr.Next()
				}
				if _, again := sr.Next(); again != err {
					t.Fatalf("Next after %v: %v", err, again)
				}
				sr.Close()
			}
			checkError(t, err, c.want, "arrow stream: "+c.msg)
		})
	}
}

// checkError fails unless err wraps every one of want and reads msg, on one line.
func checkError(t *testing.T, err error, want []error, msg string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %q", msg)
	}
	for _, w := range want {
		if !errors.Is(err, w) {
			t.Fatalf("error %q does not wrap %q", err, w)
		}
	}
	if got := err.Error(); !strings.HasPrefix(got, msg) || strings.Contains(got, "\n") {
		t.Fatalf("error\n\t%s\nwant\n\t%s", got, msg)
	}
}

// TestTruncatedStream cuts a valid stream at every byte: each prefix is refused (ErrFormat,
// or ErrIncomplete where the cut falls between messages), except the one that only lacks the
// end-of-stream marker; nothing leaks on any of these paths.
func TestTruncatedStream(t *testing.T) {
	mem := checkedMem(t)
	stream := rawStream(t, abSchema(), [][]rawRow{{{tensor: "a", offset: 0, data: f32Bytes(1, 2)}}, {{tensor: "a", offset: 2, data: f32Bytes(3, 4)}, bAll}})
	for cut := range len(stream) {
		_, err := ReadStream(bytes.NewReader(stream[:cut]), WithAllocator(mem))
		switch {
		case cut == len(stream)-8:
			if err != nil {
				t.Fatalf("cut before the end marker: %v", err)
			}
		case err == nil:
			t.Fatalf("cut at byte %d of %d: no error", cut, len(stream))
		case !errors.Is(err, ErrFormat) && !errors.Is(err, ErrIncomplete):
			t.Fatalf("cut at byte %d: %v", cut, err)
		}
	}
}

// TestPeekMessage checks the flatbuffer checks that run before Arrow decodes a message, on
// messages built field by field.
func TestPeekMessage(t *testing.T) {
	type buffer struct{ off, size int64 }
	build := func(version int16, kind byte, bodyLen int64, compressed bool, bufs ...buffer) []byte {
		b := flatbuffers.NewBuilder(0)
		var comp flatbuffers.UOffsetT
		if compressed {
			b.StartObject(2)
			b.PrependByteSlot(0, 1, 0) // ZSTD
			comp = b.EndObject()
		}
		b.StartVector(bufferSize, len(bufs), 8)
		for i := len(bufs) - 1; i >= 0; i-- {
			b.Prep(8, bufferSize)
			b.PrependInt64(bufs[i].size)
			b.PrependInt64(bufs[i].off)
		}
		vec := b.EndVector(len(bufs))
		b.StartObject(5)
		b.PrependUOffsetTSlot(2, vec, 0)
		if compressed {
			b.PrependUOffsetTSlot(3, comp, 0)
		}
		batch := b.EndObject()
		b.StartObject(5)
		b.PrependInt16Slot(0, version, 0)
		b.PrependByteSlot(1, kind, 0)
		b.PrependUOffsetTSlot(2, batch, 0)
		b.PrependInt64Slot(3, bodyLen, 0)
		b.Finish(b.EndObject())
		return b.FinishedBytes()
	}
	batch := byte(ipc.MessageRecordBatch)
	for _, c := range []struct {
		name string
		meta []byte
		msg  string
	}{
		{"valid", build(metadataV5, batch, 64, false, buffer{0, 0}, buffer{0, 16}, buffer{16, 48}), ""},
		{"V4", build(metadataV4, batch, 8, false, buffer{0, 8}), ""},
		{"V3", build(2, batch, 8, false, buffer{0, 8}), "metadata version 3 (want V4 or V5: Arrow 0.8 or later)"},
		{"misaligned buffer", build(metadataV5, batch, 64, false, buffer{0, 4}, buffer{4, 8}), "buffer 1 at body offset 4 is not 8-byte aligned"},
		{"buffer past the body", build(metadataV5, batch, 64, false, buffer{56, 16}), "buffer 0 [56, +16) lies outside the body of 64 bytes"},
		{"negative buffer", build(metadataV5, batch, 64, false, buffer{-8, 8}), "buffer 0 [-8, +8) lies outside the body of 64 bytes"},
		{"huge buffer", build(metadataV5, batch, 64, false, buffer{8, 1<<63 - 1}), "buffer 0 [8, +9223372036854775807) lies outside the body of 64 bytes"},
		{"negative body", build(metadataV5, batch, -8, false), "negative body length -8"},
		{"compressed", build(metadataV5, batch, 8, true, buffer{0, 8}), "compressed record batch"},
		{"tensor message", build(metadataV5, byte(ipc.MessageTensor), 0, false), "a Tensor message has no place in an update"},
		{"schema with a body", build(metadataV5, byte(ipc.MessageSchema), 8, false), "schema message with a body of 8 bytes"},
		{"short", []byte{1, 2, 3}, "message metadata of 3 bytes"},
		{"garbage", []byte{0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0}, "message metadata is not a valid flatbuffer"},
	} {
		_, err := peekMessage(c.meta)
		if c.msg == "" {
			if err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			continue
		}
		checkError(t, err, []error{ErrFormat}, "malformed Arrow IPC data: "+c.msg)
	}
}

// TestFileErrors checks what only files have: the magic at both ends, the footer length, bytes
// after the end of the stream; and that a file's batch errors are the stream's.
func TestFileErrors(t *testing.T) {
	mem := checkedMem(t)
	var valid bytes.Buffer
	s := randomSetFromStream(t, rawStream(t, abSchema(), [][]rawRow{{aAll, bAll}}))
	if err := writeFileTo(&valid, s, mem); err != nil {
		t.Fatal(err)
	}
	v := valid.Bytes()
	footer := len(v) - 10 - int(int32(uint32(v[len(v)-10])|uint32(v[len(v)-9])<<8|uint32(v[len(v)-8])<<16|uint32(v[len(v)-7])<<24))
	for _, c := range []struct {
		name string
		file []byte
		want error
		msg  string
	}{
		{"no start magic", append([]byte("ARROW2\x00\x00"), v[8:]...), ErrFormat, "malformed Arrow IPC data: no Arrow file magic at the start"},
		{"no end magic", v[:len(v)-1], ErrFormat, "malformed Arrow IPC data: no Arrow file magic at the end (truncated?)"},
		{"huge footer", append(append(append([]byte{}, v[:len(v)-10]...), 0xff, 0xff, 0xff, 0x7f), fileMagic...), ErrFormat,
			"malformed Arrow IPC data: footer length 2147483647 does not fit in the file"},
		{"bytes after the stream", append(append(append([]byte{}, v[:footer]...), make([]byte, 8)...), v[footer:]...), ErrFormat,
			"malformed Arrow IPC data: 8 bytes between the end of the stream and the footer"},
		{"stream only", append(append([]byte("ARROW1\x00\x00"), v[8:16]...), v[len(v)-10:]...), ErrFormat,
			"malformed Arrow IPC data: footer length"},
	} {
		t.Run(c.name, func(t *testing.T) {
			file := tensor.AlignedBytes(len(c.file))
			copy(file, c.file)
			o, _ := newOptions("f.arrow", []Option{WithAllocator(mem)})
			o.maxTotal = int64(len(file))
			_, err := readMapped(file, o)
			checkError(t, err, []error{c.want}, "f.arrow: "+c.msg)
		})
	}
}

// randomSetFromStream reads a stream into a Set (for tests that need a small valid Set).
func randomSetFromStream(t *testing.T, stream []byte) *tensor.Set {
	t.Helper()
	s, err := ReadStream(bytes.NewReader(stream))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// writeFileTo writes s in the IPC file format to w, as WriteFile does.
func writeFileTo(w *bytes.Buffer, s *tensor.Set, mem interface {
	Allocate(int) []byte
	Reallocate(int, []byte) []byte
	Free([]byte)
}) error {
	o, err := newOptions("file", []Option{WithAllocator(mem)})
	if err != nil {
		return err
	}
	h := HeaderOf(s)
	schema := writeSchema(h)
	enc, err := ipc.NewFileWriter(w, ipc.WithSchema(schema), ipc.WithAllocator(mem))
	if err != nil {
		return err
	}
	wr := newWriter(enc, h, schema, o, true)
	err = wr.writeSet(s)
	if cerr := wr.Close(); err == nil {
		err = cerr
	}
	return err
}

// TestWriterErrors checks the writer's refusals: they leave it usable and write nothing.
func TestWriterErrors(t *testing.T) {
	mem := checkedMem(t)
	h := Header{Layout: tensor.Layout{{Name: "a", DType: tensor.F32, Shape: []int{4}}, {Name: "q", DType: tensor.I8, Shape: []int{2}}},
		Scales: []float32{1, 0.5}, Metadata: map[string]string{"k": "v"}}
	for _, c := range []struct {
		name string
		h    Header
		want []error
		msg  string
	}{
		{"reserved key", Header{Layout: h.Layout, Metadata: map[string]string{LayoutKey: "x"}}, []error{ErrSchema}, `bad schema: metadata key "wattagg.layout" is reserved for the layout`},
		{"duplicate", Header{Layout: tensor.Layout{h.Layout[0], h.Layout[0]}}, []error{ErrSchema, tensor.ErrDuplicateName}, `bad schema: duplicate tensor name: "a"`},
		{"bad dtype", Header{Layout: tensor.Layout{{Name: "x", Shape: []int{1}}}}, []error{ErrSchema, tensor.ErrDType}, `bad schema: unsupported dtype: tensor "x": dtype(0)`},
		{"bad shape", Header{Layout: tensor.Layout{{Name: "x", DType: tensor.F32, Shape: []int{-2}}}}, []error{ErrSchema, tensor.ErrShape}, `bad schema: invalid shape: tensor "x": negative dimension in [-2]`},
		{"zero scale", Header{Layout: h.Layout, Scales: []float32{1, 0}}, []error{ErrSchema}, `bad schema: tensor "q": I8 scale 0 is not finite and non-zero`},
		{"scales", Header{Layout: h.Layout, Scales: []float32{1}}, []error{ErrSchema}, `bad schema: 1 scales for 2 tensors`},
		{"empty name", Header{Layout: tensor.Layout{{Name: "", DType: tensor.F32}}}, []error{ErrSchema}, `bad schema: tensor 0: empty tensor name`},
	} {
		_, err := NewWriter(&bytes.Buffer{}, c.h, WithAllocator(mem))
		checkError(t, err, c.want, "arrowio: "+c.msg)
	}

	var buf bytes.Buffer
	w, err := NewWriter(&buf, h, WithAllocator(mem))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		c   Chunk
		msg string
	}{
		{Chunk{Tensor: 2, Data: []byte{1}}, `bad chunk: no tensor 2 in a layout of 2`},
		{Chunk{Tensor: 0, Offset: 1, Data: f32Bytes(1)}, `bad chunk: tensor "a" at element 1: the tensor continues at element 0`},
		{Chunk{Tensor: 0, Data: []byte{1, 2, 3}}, `bad chunk: tensor "a" at element 0: 3 bytes are not a whole number of 4-byte elements`},
		{Chunk{Tensor: 0, Data: f32Bytes(1, 2, 3, 4, 5)}, `bad chunk: tensor "a" at element 0: 5 elements run past the end of the tensor's 4`},
	} {
		checkError(t, w.WriteChunk(c.c), []error{ErrChunk}, "arrowio: "+c.msg)
	}
	if err := w.WriteChunk(Chunk{Tensor: 0, Data: f32Bytes(1, 2, 3, 4)}); err != nil {
		t.Fatal(err)
	}
	checkError(t, w.Close(), []error{ErrIncomplete}, `arrowio: incomplete update: tensor "q" has 0 of its 2 elements`)
	checkError(t, w.WriteChunk(Chunk{Tensor: 1, Data: []byte{1, 2}}), []error{ErrIncomplete}, `arrowio: incomplete update`)
	// What was written is a complete Arrow stream that the reader refuses as incomplete.
	_, err = ReadStream(bytes.NewReader(buf.Bytes()), WithAllocator(mem))
	checkError(t, err, []error{ErrIncomplete}, `arrow stream: incomplete update: tensor "q" has 0 of its 2 elements`)
}

func TestOptionErrors(t *testing.T) {
	for _, opt := range []Option{WithAllocator(nil), WithMaxMetadataBytes(10), WithMaxTensors(0), WithMaxBatchBytes(7),
		WithMaxTotalBytes(0), WithBatchBytes(63), WithBatchBytes(1 << 31)} {
		if _, err := ReadStream(bytes.NewReader(nil), opt); !errors.Is(err, ErrOption) {
			t.Fatalf("%v, want ErrOption", err)
		}
	}
}
