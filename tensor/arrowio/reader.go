package arrowio

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"

	"github.com/wattagg/wattagg/tensor"
)

// Chunk is a run of consecutive elements of one tensor.
type Chunk struct {
	// Tensor is the index of the tensor in the layout.
	Tensor int
	// Offset is the element offset of the first element in the tensor (row-major order).
	Offset int64
	// Data holds the chunk's elements as raw little-endian bytes, a whole number of them. A
	// reader's Data views its current batch: it is valid until the next call to Next or Close,
	// and may start at any address.
	Data []byte
}

// StreamReader decodes an update chunk by chunk as its record batches arrive, checking each
// chunk against the layout before handing it out. Its memory is one record batch (body buffers
// are reused from batch to batch), whatever the size of the update.
//
// A StreamReader is not safe for concurrent use.
type StreamReader struct {
	o     *options
	arena *arena
	src   source
	rd    *ipc.Reader
	hdr   Header
	cols  columns
	names map[string]int
	esize []int64 // element size per tensor
	numel []int64 // elements per tensor
	next  []int64 // elements received per tensor

	batch    int // batches read: the current one's number, counted from 1
	row      int // next row of the current batch
	rows     int
	tensorOf func(i int) (int, string) // tensor of row i (-1 if unknown) and its name
	dict     []int                     // tensor column dictionary: dictionary index -> tensor or -1
	offs     []int64
	data     interface{ Value(int) []byte }

	lazy lazyBatch // a batch NextInto reads the values of as they come

	err error // sticky: io.EOF at the end
}

// NewStreamReader reads the schema message of an IPC stream from r and checks it: the columns,
// the layout and the limits. Header is then known; no batch has been read.
//
// The stream is read as it is: wrap a network connection in nothing (bodies are read straight
// into reused buffers). Errors wrap ErrFormat, ErrSchema, ErrLimit (tensor.ErrDType,
// tensor.ErrShape for the layout) or the reader's own error.
func NewStreamReader(r io.Reader, opts ...Option) (*StreamReader, error) {
	o, err := newOptions("arrow stream", opts)
	if err != nil {
		return nil, err
	}
	if o.maxTotal == 0 {
		o.maxTotal = DefaultMaxTotalBytes
	}
	a := newArena(o.mem)
	bodies := a
	if o.bodies != nil {
		bodies = newArena(o.bodies)
		a.closeWith(bodies)
	}
	return newReader(newStreamSource(r, o, bodies, o.bodies == nil), o, a)
}

// newReader reads the schema from src; every allocation of the reader goes through a (which
// src allocates from too), and closing the reader closes a.
func newReader(src source, o *options, a *arena) (*StreamReader, error) {
	rd, err := ipc.NewReaderFromMessageReader(src, ipc.WithAllocator(a), ipc.WithEnsureNativeEndian(false))
	if err != nil { // the reader has released src
		a.close()
		return nil, arrowError(src, o, err)
	}
	r := &StreamReader{o: o, arena: a, src: src, rd: rd}
	if r.cols, r.hdr, err = readSchema(rd.Schema(), o); err != nil {
		r.release()
		return nil, fmt.Errorf("%s: %w", o.source, err)
	}
	n := len(r.hdr.Layout)
	r.names = make(map[string]int, n)
	r.esize, r.numel, r.next = make([]int64, n), make([]int64, n), make([]int64, n)
	for i, f := range r.hdr.Layout {
		r.names[f.Name] = i
		r.esize[i] = int64(f.DType.Size())
		r.numel[i], _ = elements(f.Shape) // readSchema checked the shape
	}
	return r, nil
}

// arrowError reports a failure of the Arrow reader: the source's own error if it raised one
// (already naming the source), else Arrow's, on one line.
func arrowError(src source, o *options, err error) error {
	if e := src.failure(); e != nil {
		return e
	}
	return fmt.Errorf("%s: %w: %s", o.source, ErrFormat, foreign(err.Error()))
}

// Header returns the layout, scales and metadata of the update. They belong to the reader: do
// not modify them.
func (r *StreamReader) Header() Header { return r.hdr }

// Layout is Header().Layout.
func (r *StreamReader) Layout() tensor.Layout { return r.hdr.Layout }

// Metadata is Header().Metadata.
func (r *StreamReader) Metadata() map[string]string { return r.hdr.Metadata }

// Next returns the next chunk. Each chunk belongs to a tensor of the layout, starts where the
// previous chunk of that tensor ended (the first at element 0), holds a whole number of
// elements and does not run past the tensor; empty chunks are skipped. At the end of the
// stream Next checks that every tensor was covered and returns io.EOF.
//
// Errors wrap ErrChunk, ErrIncomplete, ErrFormat, ErrLimit or the underlying reader's error,
// and are final: every later call returns the same error.
func (r *StreamReader) Next() (Chunk, error) {
	if r.err != nil {
		return Chunk{}, r.err
	}
	if r.lazy.on { // NextInto began this batch
		return r.nextInto(r.src.(*streamSource), nil)
	}
	for {
		if r.row < r.rows {
			c, err := r.chunk(r.row)
			r.row++
			if err != nil {
				return Chunk{}, r.fail(err)
			}
			if len(c.Data) == 0 {
				continue
			}
			return c, nil
		}
		if err := r.nextBatch(); err != nil {
			return Chunk{}, r.fail(err)
		}
	}
}

// fail makes err final and releases the Arrow reader and its buffers.
func (r *StreamReader) fail(err error) error {
	r.err = err
	r.release()
	return err
}

// Close releases the reader's buffers. A chunk's Data is invalid afterwards. It does not close
// the underlying io.Reader.
func (r *StreamReader) Close() error {
	if r.err == nil {
		r.err = fmt.Errorf("%s: %w", r.o.source, tensor.ErrClosed)
	}
	r.release()
	return nil
}

func (r *StreamReader) release() {
	r.tensorOf, r.data, r.offs, r.dict = nil, nil, nil, nil
	r.rows = 0
	r.lazy.freeSpare()
	r.lazy.on = false
	if r.rd != nil {
		r.rd.Release()
		r.rd = nil
	}
	r.arena.close()
}

// nextBatch moves to the next record batch; at the end of the stream it checks completeness
// and returns io.EOF.
func (r *StreamReader) nextBatch() (err error) {
	r.tensorOf, r.data, r.offs = nil, nil, nil
	r.rows, r.row = 0, 0
	if r.rd.Next() {
		r.batch++
		return r.load(r.rd.RecordBatch())
	}
	if err := r.rd.Err(); err != nil || r.src.failure() != nil {
		if err == nil {
			err = r.src.failure()
		}
		return arrowError(r.src, r.o, err)
	}
	for i, f := range r.hdr.Layout {
		if r.next[i] != r.numel[i] {
			return fmt.Errorf("%s: %w: tensor %s has %d of its %d elements", r.o.source, ErrIncomplete, quote(f.Name), r.next[i], r.numel[i])
		}
	}
	return io.EOF
}

// load checks the columns of a batch: no nulls, valid offsets, and sets up the row accessors.
// Arrow does not validate what it decodes, so a malformed batch may make an accessor panic;
// that panic is an ErrFormat error here.
func (r *StreamReader) load(rec arrow.RecordBatch) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = r.batchError(ErrFormat, fmt.Sprintf("malformed batch: %v", p))
		}
	}()
	rows := int(rec.NumRows())
	for i, col := range rec.Columns() {
		if col.Len() != rows {
			return r.batchError(ErrFormat, fmt.Sprintf("column %q has %d rows, want %d", rec.ColumnName(i), col.Len(), rows))
		}
		if col.NullN() != 0 {
			return r.batchError(ErrChunk, fmt.Sprintf("column %q has %d nulls", rec.ColumnName(i), col.NullN()))
		}
	}
	switch c := rec.Column(r.cols.tensor).(type) {
	case *array.String:
		if err := c.ValidateFull(); err != nil {
			return r.batchError(ErrFormat, err.Error())
		}
		r.tensorOf = r.byName(c.Value)
	case *array.LargeString:
		if err := c.ValidateFull(); err != nil {
			return r.batchError(ErrFormat, err.Error())
		}
		r.tensorOf = r.byName(c.Value)
	case *array.Dictionary:
		if err := r.loadDict(c); err != nil {
			return err
		}
	default:
		return r.batchError(ErrFormat, fmt.Sprintf("tensor column decoded as %T", c))
	}
	offs, ok := rec.Column(r.cols.offset).(*array.Int64)
	if !ok || len(offs.Int64Values()) != rows {
		return r.batchError(ErrFormat, "offset column is not an int64 array of the batch's length")
	}
	r.offs = offs.Int64Values()
	switch c := rec.Column(r.cols.data).(type) {
	case *array.Binary:
		if err := c.ValidateFull(); err != nil {
			return r.batchError(ErrFormat, err.Error())
		}
		r.data = c
	case *array.LargeBinary:
		if err := c.ValidateFull(); err != nil {
			return r.batchError(ErrFormat, err.Error())
		}
		r.data = c
	default:
		return r.batchError(ErrFormat, fmt.Sprintf("data column decoded as %T", c))
	}
	r.rows = rows
	return nil
}

// loadDict maps the dictionary of a dictionary-encoded tensor column to tensor indices once
// per batch, so that rows cost an index lookup.
func (r *StreamReader) loadDict(c *array.Dictionary) error {
	var value func(int) string
	switch d := c.Dictionary().(type) {
	case *array.String:
		if err := d.ValidateFull(); err != nil {
			return r.batchError(ErrFormat, "tensor dictionary: "+err.Error())
		}
		value = d.Value
	case *array.LargeString:
		if err := d.ValidateFull(); err != nil {
			return r.batchError(ErrFormat, "tensor dictionary: "+err.Error())
		}
		value = d.Value
	default:
		return r.batchError(ErrFormat, fmt.Sprintf("tensor dictionary decoded as %T", d))
	}
	dict := c.Dictionary()
	if len(r.dict) < dict.Len() {
		r.dict = make([]int, dict.Len())
	}
	r.dict = r.dict[:dict.Len()]
	for k := range r.dict {
		r.dict[k] = -1
		if dict.IsValid(k) {
			if t, ok := r.names[value(k)]; ok {
				r.dict[k] = t
			}
		}
	}
	r.tensorOf = func(i int) (int, string) {
		k := c.GetValueIndex(i)
		switch {
		case k < 0 || k >= len(r.dict):
			return -1, fmt.Sprintf("<dictionary index %d of %d>", k, len(r.dict))
		case !dict.IsValid(k):
			return -1, "<null>"
		}
		return r.dict[k], value(k)
	}
	return nil
}

// byName maps rows of a plain tensor column to tensors by name.
func (r *StreamReader) byName(value func(int) string) func(int) (int, string) {
	return func(i int) (int, string) {
		name := value(i)
		if t, ok := r.names[name]; ok {
			return t, name
		}
		return -1, name
	}
}

func (r *StreamReader) batchError(sentinel error, msg string) error {
	return fmt.Errorf("%s: %w: batch %d: %s", r.o.source, sentinel, r.batch, foreign(msg))
}

// foreignMax bounds what an error quotes of a message it did not write.
const foreignMax = 200

// foreign makes a message that may quote the input (Arrow's errors quote invalid strings
// whole) one printable line of at most about foreignMax bytes: control characters and invalid
// UTF-8 escaped as Go escapes them (\n, \x87), the rest cut with "...".
func foreign(msg string) string {
	var b strings.Builder
	for i := 0; i < len(msg); {
		if b.Len() >= foreignMax {
			b.WriteString("...")
			break
		}
		r, size := utf8.DecodeRuneInString(msg[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, msg[i])
		case unicode.IsPrint(r):
			b.WriteString(msg[i : i+size])
		default:
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		}
		i += size
	}
	return b.String()
}

// chunk decodes and checks row i of the current batch.
func (r *StreamReader) chunk(i int) (c Chunk, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = r.batchError(ErrFormat, fmt.Sprintf("row %d: malformed batch: %v", i, p))
		}
	}()
	t, name := r.tensorOf(i)
	off, d := r.offs[i], r.data.Value(i)
	if err := r.checkRow(t, name, i, off, int64(len(d))); err != nil {
		return c, err
	}
	return Chunk{Tensor: t, Offset: off, Data: d}, nil
}

// checkRow checks row i of the current batch, bytes of tensor t (-1: the name is not in the
// layout) from element off, and counts its elements as received.
func (r *StreamReader) checkRow(t int, name string, i int, off, bytes int64) error {
	if t < 0 {
		return fmt.Errorf("%s: %w: batch %d, row %d: tensor %s is not in the layout", r.o.source, ErrChunk, r.batch, i, quote(name))
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%s: %w: tensor %s at element %d (batch %d, row %d): %s",
			r.o.source, ErrChunk, quote(name), off, r.batch, i, fmt.Sprintf(format, args...))
	}
	size, have, numel := r.esize[t], r.next[t], r.numel[t]
	n := bytes / size
	switch {
	case off < 0:
		return bad("negative offset")
	case bytes%size != 0:
		return bad("%d bytes are not a whole number of %d-byte %s elements", bytes, size, r.hdr.Layout[t].DType)
	case off < have:
		return bad("overlaps elements %d..%d, already received", off, min(have, off+n)-1)
	case off > have:
		return bad("gap: elements %d..%d were not sent", have, off-1)
	case n > numel-have:
		return bad("%d elements run past the end of the tensor's %d", n, numel)
	}
	r.next[t] += n
	return nil
}
