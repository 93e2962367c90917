package arrowio

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"slices"
	"testing"
	"unsafe"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/wattagg/wattagg/tensor"
)

// lender lends NextInto the bytes of the tensors it assembles, in pieces of random sizes (none
// at times), and records how many chunks arrived where it lent them.
type lender struct {
	rng          *rand.Rand
	dst          [][]byte // per tensor
	esize        []int64
	inPlace, own int
	lent         []byte // the last loan
}

func newLender(rng *rand.Rand, l tensor.Layout) *lender {
	d := &lender{rng: rng}
	for _, f := range l {
		d.dst = append(d.dst, make([]byte, f.Len()*f.DType.Size()))
		d.esize = append(d.esize, int64(f.DType.Size()))
	}
	return d
}

func (d *lender) lend(t int, off, max int64) ([]byte, error) {
	d.lent = nil
	switch d.random(4) {
	case 0:
		return nil, nil // no room: the reader's own buffer
	case 1: // a short loan, whole elements or not (the reader rounds down)
		max = d.rng.Int64N(max) + 1
	}
	p := off * d.esize[t]
	d.lent = d.dst[t][p : p+max]
	return d.lent, nil
}

// random is rng.IntN(n), or n-1 without rng: a lender without one lends in full, always.
func (d *lender) random(n int) int {
	if d.rng == nil {
		return n - 1
	}
	return d.rng.IntN(n)
}

// take puts a chunk where it belongs, unless it arrived there.
func (d *lender) take(c Chunk) {
	if len(d.lent) > 0 && unsafe.SliceData(c.Data) == unsafe.SliceData(d.lent) {
		d.inPlace++
		return
	}
	d.own++
	copy(d.dst[c.Tensor][c.Offset*d.esize[c.Tensor]:], c.Data)
}

// readLending reads a whole stream with NextInto (and Next at random), checking that each chunk
// continues its tensor, and returns the tensors' bytes.
func readLending(t *testing.T, sr *StreamReader, rng *rand.Rand) (*lender, error) {
	t.Helper()
	d := newLender(rng, sr.Layout())
	next := make([]int64, len(d.dst))
	for {
		var c Chunk
		var err error
		if d.random(8) == 0 {
			d.lent = nil
			c, err = sr.Next()
		} else {
			c, err = sr.NextInto(d.lend)
		}
		if err == io.EOF {
			return d, nil
		}
		if err != nil {
			return d, err
		}
		if c.Offset != next[c.Tensor] || len(c.Data) == 0 || int64(len(c.Data))%d.esize[c.Tensor] != 0 {
			t.Fatalf("chunk of tensor %d at element %d, %d bytes: want element %d, whole elements", c.Tensor, c.Offset, len(c.Data), next[c.Tensor])
		}
		next[c.Tensor] += int64(len(c.Data)) / d.esize[c.Tensor]
		d.take(c)
	}
}

func TestNextIntoReadsWhatNextReads(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 22))
	dict := &arrow.DictionaryType{IndexType: arrow.PrimitiveTypes.Int16, ValueType: arrow.BinaryTypes.String}
	type input struct {
		name   string
		stream []byte
		lazy   bool // NextInto receives in place
	}
	var inputs []input
	for _, name := range []string{"mixed", "scalars", "empty", "i8", "none", "f32"} {
		for _, bb := range []int{64, 1000, 1 << 20} {
			var buf bytes.Buffer
			if err := WriteSet(&buf, randomSet(t, rng, layouts[name], map[string]string{"k": "v"}), WithBatchBytes(bb)); err != nil {
				t.Fatal(err)
			}
			inputs = append(inputs, input{name, buf.Bytes(), name != "empty" && name != "none"})
		}
	}
	rows := [][]rawRow{{{tensor: "a", offset: 0, data: f32Bytes(1, 2)}, {tensor: "b", offset: 0, data: []byte{1, 2}}},
		{{tensor: "a", offset: 2, data: f32Bytes(3, 4)}, {tensor: "b", offset: 1, data: []byte{3, 4}}}}
	for _, c := range []struct {
		name  string
		types map[string]arrow.DataType
		lazy  bool
	}{
		{"binary", nil, true},
		{"large", map[string]arrow.DataType{ColTensor: arrow.BinaryTypes.LargeString, ColData: arrow.BinaryTypes.LargeBinary}, true},
		{"dictionary", map[string]arrow.DataType{ColTensor: dict}, false},
	} {
		inputs = append(inputs, input{c.name, rawStream(t, chunkSchema(c.types, LayoutKey, abLayout), rows), c.lazy})
	}
	// Values before the names: Arrow decodes the batch.
	inputs = append(inputs, input{"data first", rawStream(t, arrow.NewSchema([]arrow.Field{
		{Name: ColData, Type: arrow.BinaryTypes.Binary}, {Name: ColOffset, Type: arrow.PrimitiveTypes.Int64},
		{Name: ColTensor, Type: arrow.BinaryTypes.String}}, metaOf(LayoutKey, abLayout)), rows), false})
	for _, in := range inputs {
		t.Run(in.name, func(t *testing.T) {
			mem := checkedMem(t)
			want, err := ReadStream(bytes.NewReader(in.stream), WithAllocator(mem))
			if err != nil {
				t.Fatal(err)
			}
			defer want.Close()
			for try := range 4 {
				sr, err := NewStreamReader(bytes.NewReader(in.stream), WithAllocator(mem))
				if err != nil {
					t.Fatal(err)
				}
				var rng *rand.Rand // the first try lends in full
				if try > 0 {
					rng = rand.New(rand.NewPCG(uint64(try), 5))
				}
				d, err := readLending(t, sr, rng)
				if err != nil {
					t.Fatal(err)
				}
				sr.Close()
				for i, x := range want.Tensors() {
					if !bytes.Equal(d.dst[i], x.Bytes()) {
						t.Fatalf("try %d: tensor %d differs", try, i)
					}
				}
				if in.lazy && try == 0 && d.own != 0 {
					t.Fatalf("%d chunks not received where they were lent", d.own)
				}
				if in.lazy && try == 0 && d.inPlace == 0 {
					t.Fatalf("try %d: no chunk arrived where it was lent (%d in the reader's buffers)", try, d.own)
				}
				if !in.lazy && d.inPlace != 0 {
					t.Fatalf("try %d: %d chunks arrived in place from a batch Arrow decodes", try, d.inPlace)
				}
			}
		})
	}
}

func metaOf(kv ...string) *arrow.Metadata {
	md := arrow.NewMetadata([]string{kv[0]}, []string{kv[1]})
	return &md
}

// Every stream of the error table fails through NextInto as through Next: the same error, on
// the same row, and final.
func TestNextIntoErrors(t *testing.T) {
	for _, c := range errorCases {
		t.Run(c.name, func(t *testing.T) {
			mem := checkedMem(t)
			sr, err := NewStreamReader(bytes.NewReader(c.stream(t)), append([]Option{WithAllocator(mem)}, c.opts...)...)
			if err == nil {
				_, err = readLending(t, sr, rand.New(rand.NewPCG(1, 2)))
				if err == nil {
					t.Fatal("no error")
				}
				if _, again := sr.NextInto(func(int, int64, int64) ([]byte, error) { return nil, nil }); again != err {
					t.Fatalf("NextInto after %v: %v", err, again)
				}
				sr.Close()
			}
			checkError(t, err, c.want, "arrow stream: "+c.msg)
		})
	}
}

// A stream cut anywhere fails as truncated through NextInto, as through Next, and a lend that
// fails stops the reader with its error.
func TestNextIntoTruncatedAndLendErrors(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	var buf bytes.Buffer
	if err := WriteSet(&buf, randomSet(t, rng, layouts["mixed"], nil), WithBatchBytes(1000)); err != nil {
		t.Fatal(err)
	}
	stream := buf.Bytes()
	for cut := 0; cut < len(stream); cut += 1 + rng.IntN(97) {
		mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
		sr, err := NewStreamReader(bytes.NewReader(stream[:cut]), WithAllocator(mem))
		if err == nil {
			_, err = readLending(t, sr, rng)
			sr.Close()
		}
		if !errors.Is(err, ErrFormat) && !errors.Is(err, ErrIncomplete) {
			t.Fatalf("cut at %d of %d: %v", cut, len(stream), err)
		}
		mem.AssertSize(t, 0)
	}
	errFull := errors.New("disk full")
	sr, err := NewStreamReader(bytes.NewReader(stream))
	if err != nil {
		t.Fatal(err)
	}
	defer sr.Close()
	for err == nil {
		_, err = sr.NextInto(func(int, int64, int64) ([]byte, error) { return nil, errFull })
	}
	if err != errFull {
		t.Fatalf("got %v, want the lend's error", err)
	}
	if _, again := sr.Next(); again != errFull {
		t.Fatalf("Next after the lend's error: %v", again)
	}
}

// NextInto reads from the stream what it returns and little else: bytes it copied from a body
// it held would show as chunks outside the loans.
func TestNextIntoHoldsNoBody(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	set := randomSet(t, rng, tensor.Layout{{Name: "w", DType: tensor.F32, Shape: []int{1 << 18}}}, nil)
	var buf bytes.Buffer
	if err := WriteSet(&buf, set, WithBatchBytes(64<<10)); err != nil {
		t.Fatal(err)
	}
	peak := &peakAlloc{Allocator: memory.NewGoAllocator()}
	sr, err := NewStreamReader(bytes.NewReader(buf.Bytes()), WithAllocator(peak))
	if err != nil {
		t.Fatal(err)
	}
	dst := make([]byte, 1<<20)
	for {
		c, err := sr.NextInto(func(_ int, off, max int64) ([]byte, error) { return dst[4*off : 4*off+max], nil })
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if unsafe.SliceData(c.Data) != &dst[4*c.Offset] {
			t.Fatalf("chunk at element %d not received in place", c.Offset)
		}
	}
	sr.Close()
	if !bytes.Equal(dst, set.Tensors()[0].Bytes()) {
		t.Fatal("bytes differ")
	}
	// The reader's allocations: the batches' first bytes (names and offsets), never a body.
	if p := peak.peak.Load(); p >= 64<<10 {
		t.Fatalf("peak allocation %d bytes: a body was allocated", p)
	}
	if !slices.Equal(sr.Layout()[0].Shape, []int{1 << 18}) {
		t.Fatal("layout")
	}
}

// FuzzNextInto checks that NextInto, with loans of any size and Next mixed in, accepts what
// Next accepts, with the same bytes, and refuses what it refuses with an error of the package.
func FuzzNextInto(f *testing.F) {
	for i, s := range fuzzSeeds(f) {
		f.Add(s, uint64(i))
	}
	f.Fuzz(func(t *testing.T, b []byte, seed uint64) {
		mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
		sr, err := NewStreamReader(bytes.NewReader(b), fuzzLimits(mem)...)
		if err != nil {
			mem.AssertSize(t, 0)
			return
		}
		want := newLender(nil, sr.Layout())
		for err == nil {
			var c Chunk
			if c, err = sr.Next(); err == nil {
				want.take(c)
			}
		}
		sr.Close()
		nextErr := err
		if sr, err = NewStreamReader(bytes.NewReader(b), fuzzLimits(mem)...); err != nil {
			t.Fatalf("the schema read once, not twice: %v", err)
		}
		err = nextErr
		got, gotErr := readLending(t, sr, rand.New(rand.NewPCG(seed, 1)))
		sr.Close()
		mem.AssertSize(t, 0)
		// Both accept or both refuse; the error may differ, since NextInto checks a row before
		// it reads the rest of the body (a bad row in a cut-short batch is a bad chunk to it, a
		// truncated stream to Next).
		if (err == io.EOF) != (gotErr == nil) {
			t.Fatalf("Next: %v; NextInto: %v", err, gotErr)
		}
		if gotErr != nil {
			checkFuzzError(t, gotErr, "arrow stream: ")
		}
		if err == io.EOF {
			for i := range want.dst {
				if !bytes.Equal(want.dst[i], got.dst[i]) {
					t.Fatalf("tensor %d differs", i)
				}
			}
		}
	})
}
