package arrowio

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/wattagg/wattagg/tensor"
)

// fuzzLimits keep what one input can make the reader allocate small, so that the fuzzer spends
// its time on decoding paths rather than on large allocations.
func fuzzLimits(mem memory.Allocator) []Option {
	return []Option{WithAllocator(mem), WithMaxTotalBytes(1 << 20), WithMaxBatchBytes(1 << 16),
		WithMaxMetadataBytes(1 << 16), WithMaxTensors(64)}
}

// fuzzSeeds are valid streams of every shape the writer and pyarrow make, and every stream of
// the error table: the fuzzer mutates them.
func fuzzSeeds(f *testing.F) [][]byte {
	var seeds [][]byte
	rng := rand.New(rand.NewPCG(11, 12))
	for _, name := range []string{"mixed", "scalars", "empty", "i8", "none"} {
		var buf bytes.Buffer
		if err := WriteSet(&buf, randomSet(f, rng, layouts[name], map[string]string{"k": "v"}), WithBatchBytes(64)); err != nil {
			f.Fatal(err)
		}
		seeds = append(seeds, buf.Bytes())
	}
	dict := &arrow.DictionaryType{IndexType: arrow.PrimitiveTypes.Int16, ValueType: arrow.BinaryTypes.String}
	for _, types := range []map[string]arrow.DataType{nil, {ColTensor: dict}, {ColTensor: arrow.BinaryTypes.LargeString, ColData: arrow.BinaryTypes.LargeBinary}} {
		seeds = append(seeds, rawStream(f, chunkSchema(types, LayoutKey, abLayout),
			[][]rawRow{{{tensor: "a", offset: 0, data: f32Bytes(1, 2)}, {tensor: "b", offset: 0, data: []byte{1, 2}}},
				{{tensor: "a", offset: 2, data: f32Bytes(3, 4)}, {tensor: "b", offset: 1, data: []byte{3, 4}}}}))
	}
	for _, c := range errorCases {
		seeds = append(seeds, c.stream(f))
	}
	return seeds
}

// FuzzStreamReader checks that no input makes the stream reader panic, leak Arrow memory or
// return an error that wraps no sentinel or spans lines, and that whatever it accepts is a
// Set that writes and reads back unchanged.
func FuzzStreamReader(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
		s, err := ReadStream(bytes.NewReader(b), fuzzLimits(mem)...)
		mem.AssertSize(t, 0)
		if err != nil {
			checkFuzzError(t, err, "arrow stream: ")
			return
		}
		var buf bytes.Buffer
		if err := WriteSet(&buf, s, WithAllocator(mem)); err != nil {
			t.Fatalf("an accepted update does not write: %v", err)
		}
		got, err := ReadStream(&buf, WithAllocator(mem))
		if err != nil {
			t.Fatalf("an accepted update does not read back: %v", err)
		}
		sameSet(t, got, s)
		mem.AssertSize(t, 0)
	})
}

// FuzzReadFile does the same for the file reader, on inputs mapped as ReadFile maps them.
func FuzzReadFile(f *testing.F) {
	rng := rand.New(rand.NewPCG(13, 14))
	for _, name := range []string{"mixed", "scalars", "empty"} {
		var buf bytes.Buffer
		if err := writeFileTo(&buf, randomSet(f, rng, layouts[name], map[string]string{"k": "v"}), memory.NewGoAllocator()); err != nil {
			f.Fatal(err)
		}
		f.Add(buf.Bytes())
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
		file := tensor.AlignedBytes(len(b))
		copy(file, b)
		o, err := newOptions("f.arrow", fuzzLimits(mem))
		if err != nil {
			t.Fatal(err)
		}
		if len(file) < len(fileMagic)*2+4+8 {
			return // ReadFile refuses these before mapping
		}
		s, err := readMapped(file, o)
		mem.AssertSize(t, 0)
		if err != nil {
			checkFuzzError(t, err, "f.arrow: ")
			return
		}
		for i, x := range s.Tensors() {
			if x.Len() > 0 && !tensor.IsAligned(x.Bytes(), x.DType.Size()) {
				t.Fatalf("tensor %d not aligned", i)
			}
		}
	})
}

func checkFuzzError(t *testing.T, err error, prefix string) {
	t.Helper()
	known := false
	for _, s := range []error{ErrFormat, ErrSchema, ErrChunk, ErrIncomplete, ErrLimit} {
		known = known || errors.Is(err, s)
	}
	if !known {
		t.Fatalf("error wraps no sentinel: %v", err)
	}
	if msg := err.Error(); !strings.HasPrefix(msg, prefix) || strings.Contains(msg, "\n") {
		t.Fatalf("error is not one line naming the source: %q", msg)
	}
}
