package arrowio

import (
	"cmp"
	"fmt"
	"io"
	"slices"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/wattagg/wattagg/tensor"
)

// Writer writes an update as an Arrow IPC stream, chunk by chunk, with the checks a reader
// applies: chunks of a tensor come in order, cover it, never overlap, hold whole elements.
//
// Tensor bytes are copied only where Arrow's format forces it. A chunk of at least a quarter
// of the batch size is written as record batches of its own whose data buffer is the chunk
// itself (no copy; in a stream, cut at the batch size). Smaller chunks are copied into a
// staging buffer of one batch and written together, because one batch's data column must be
// one contiguous buffer.
//
// A Writer is not safe for concurrent use.
type Writer struct {
	o      *options
	hdr    Header
	schema *arrow.Schema
	enc    recordWriter
	whole  bool // a file: large chunks are not cut at the batch size
	esize  []int64
	numel  []int64
	next   []int64
	stage  []row
	staged int
	slab   *memory.Buffer // staging for small chunks, one batch
	err    error          // sticky write error
	closed bool
}

// recordWriter is what ipc.Writer and ipc.FileWriter have in common.
type recordWriter interface {
	Write(arrow.RecordBatch) error
	Close() error
}

// row is one chunk of a batch being written.
type row struct {
	t    int
	off  int64
	data []byte
}

// NewWriter starts an IPC stream of the update h on w. Write every chunk with WriteChunk, then
// Close, which writes the end-of-stream marker. w receives several small writes per batch and
// the chunks' bytes in single large writes; buffer w if small writes are expensive.
func NewWriter(w io.Writer, h Header, opts ...Option) (*Writer, error) {
	o, err := newOptions("arrow stream", opts)
	if err != nil {
		return nil, err
	}
	if err := h.check(); err != nil {
		return nil, fmt.Errorf("arrowio: %w", err)
	}
	schema := writeSchema(h)
	return newWriter(ipc.NewWriter(w, ipc.WithSchema(schema), ipc.WithAllocator(o.mem)), h, schema, o, false), nil
}

func newWriter(enc recordWriter, h Header, schema *arrow.Schema, o *options, whole bool) *Writer {
	n := len(h.Layout)
	w := &Writer{o: o, hdr: h, schema: schema, enc: enc, whole: whole,
		esize: make([]int64, n), numel: make([]int64, n), next: make([]int64, n)}
	for i, f := range h.Layout {
		w.esize[i] = int64(f.DType.Size())
		w.numel[i], _ = elements(f.Shape) // h.check checked the shape
	}
	w.slab = memory.NewResizableBuffer(o.mem)
	w.slab.Resize(o.batchBytes)
	return w
}

// large is the chunk size from which a chunk gets batches of its own instead of being copied.
func (w *Writer) large() int { return w.o.batchBytes / 4 }

// WriteChunk writes the elements of c (copied or written out before it returns: the caller may
// reuse c.Data). A chunk that does not continue its tensor is refused with an ErrChunk error
// and nothing is written; the Writer stays usable. A write error of the underlying writer is
// final.
func (w *Writer) WriteChunk(c Chunk) error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return fmt.Errorf("arrowio: WriteChunk after Close: %w", tensor.ErrClosed)
	}
	if c.Tensor < 0 || c.Tensor >= len(w.hdr.Layout) {
		return fmt.Errorf("arrowio: %w: no tensor %d in a layout of %d", ErrChunk, c.Tensor, len(w.hdr.Layout))
	}
	t, size := c.Tensor, w.esize[c.Tensor]
	n := int64(len(c.Data)) / size
	bad := func(format string, args ...any) error {
		return fmt.Errorf("arrowio: %w: tensor %s at element %d: %s", ErrChunk, quote(w.hdr.Layout[t].Name), c.Offset, fmt.Sprintf(format, args...))
	}
	switch {
	case int64(len(c.Data))%size != 0:
		return bad("%d bytes are not a whole number of %d-byte elements", len(c.Data), size)
	case c.Offset != w.next[t]:
		return bad("the tensor continues at element %d", w.next[t])
	case n > w.numel[t]-w.next[t]:
		return bad("%d elements run past the end of the tensor's %d", n, w.numel[t])
	case n == 0:
		return nil
	}
	w.next[t] += n
	if len(c.Data) >= w.large() {
		if err := w.flush(); err != nil {
			return err
		}
		return w.writeLarge(row{t, c.Offset, c.Data})
	}
	if w.staged+len(c.Data) > w.o.batchBytes {
		if err := w.flush(); err != nil {
			return err
		}
	}
	dst := w.slab.Bytes()[w.staged : w.staged+len(c.Data)]
	copy(dst, c.Data)
	w.stage = append(w.stage, row{t, c.Offset, dst})
	w.staged += len(c.Data)
	return nil
}

// writeLarge writes r as batches of one row viewing r.data, cut at the batch size in a stream.
func (w *Writer) writeLarge(r row) error {
	for d, off := r.data, r.off; len(d) > 0; {
		k := len(d)
		if !w.whole && k > w.o.batchBytes {
			k = w.o.batchBytes // a multiple of 8, so of every element size
		}
		if err := w.writeBatch([]row{{r.t, off, d[:k]}}, d[:k]); err != nil {
			return err
		}
		off += int64(k) / w.esize[r.t]
		d = d[k:]
	}
	return nil
}

// flush writes the staged chunks as one batch.
func (w *Writer) flush() error {
	if len(w.stage) == 0 {
		return nil
	}
	err := w.writeBatch(w.stage, w.slab.Bytes()[:w.staged])
	w.stage, w.staged = w.stage[:0], 0
	return err
}

// writeBatch writes rows as one record batch whose data column's buffer is values, which holds
// the rows' data back to back in row order.
func (w *Writer) writeBatch(rows []row, values []byte) error {
	mem := w.o.mem
	names := array.NewStringBuilder(mem)
	defer names.Release()
	elems := array.NewInt64Builder(mem)
	defer elems.Release()
	offs := make([]int64, len(rows)+1)
	for i, r := range rows {
		names.Append(w.hdr.Layout[r.t].Name)
		elems.Append(r.off)
		offs[i+1] = offs[i] + int64(len(r.data))
	}
	nameCol := names.NewStringArray()
	defer nameCol.Release()
	offCol := elems.NewInt64Array()
	defer offCol.Release()
	data := array.NewData(arrow.BinaryTypes.LargeBinary, len(rows),
		[]*memory.Buffer{nil, memory.NewBufferBytes(arrow.Int64Traits.CastToBytes(offs)), memory.NewBufferBytes(values)}, nil, 0, 0)
	defer data.Release()
	dataCol := array.NewLargeBinaryData(data)
	defer dataCol.Release()
	rec := array.NewRecordBatch(w.schema, []arrow.Array{nameCol, offCol, dataCol}, int64(len(rows)))
	defer rec.Release()
	if err := w.enc.Write(rec); err != nil {
		w.err = fmt.Errorf("arrowio: writing a batch: %w", err)
		return w.err
	}
	return nil
}

// Close writes what is staged and ends the stream (end-of-stream marker; a file's footer). A
// tensor not written completely is an ErrIncomplete error naming it; the stream is ended all
// the same, and a reader will refuse it. Close does not close the underlying io.Writer.
func (w *Writer) Close() error {
	if w.closed {
		return w.err
	}
	w.closed = true
	err := w.err
	if err == nil {
		err = w.flush()
	}
	if err == nil {
		for i, f := range w.hdr.Layout {
			if w.next[i] != w.numel[i] {
				err = fmt.Errorf("arrowio: %w: tensor %s has %d of its %d elements", ErrIncomplete, quote(f.Name), w.next[i], w.numel[i])
				break
			}
		}
	}
	if cerr := w.enc.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("arrowio: ending the stream: %w", cerr)
	}
	w.slab.Release()
	w.stage = nil
	w.err = err
	return err
}

// WriteSet writes s as an IPC stream on w: the schema message with the header, record batches
// of about the batch size (WithBatchBytes), the end-of-stream marker.
func WriteSet(w io.Writer, s *tensor.Set, opts ...Option) error {
	o, err := newOptions("arrow stream", opts)
	if err != nil {
		return err
	}
	h := HeaderOf(s)
	if err := h.check(); err != nil {
		return fmt.Errorf("arrowio: %w", err)
	}
	schema := writeSchema(h)
	wr := newWriter(ipc.NewWriter(w, ipc.WithSchema(schema), ipc.WithAllocator(o.mem)), h, schema, o, false)
	err = wr.writeSet(s)
	if cerr := wr.Close(); err == nil {
		err = cerr
	}
	return err
}

// writeSet writes the tensors of s in batches planned over the whole Set: chunks of at least a
// quarter batch get batches of their own (views, no copy), smaller ones are grouped into
// batches of at most the batch size, each group ordered by element size, widest first. Every
// chunk then starts at a multiple of its element size inside its batch's 8-byte aligned data
// buffer, so that ReadFile can view all of them in place.
func (w *Writer) writeSet(s *tensor.Set) error {
	var (
		group []row
		bytes int
	)
	flushGroup := func() error {
		slices.SortStableFunc(group, func(a, b row) int { return cmp.Compare(w.esize[b.t], w.esize[a.t]) })
		for _, r := range group {
			if err := w.WriteChunk(Chunk{Tensor: r.t, Offset: r.off, Data: r.data}); err != nil {
				return err
			}
		}
		group, bytes = group[:0], 0
		return w.flush()
	}
	for t, x := range s.Tensors() {
		d := x.Bytes()
		if want := w.numel[t] * w.esize[t]; int64(len(d)) != want {
			return fmt.Errorf("arrowio: %w: tensor %s holds %d bytes, its shape needs %d (closed Set?)", tensor.ErrShape, quote(x.Name), len(d), want)
		}
		for off := int64(0); len(d) > 0; {
			k := len(d)
			if !w.whole && k > w.o.batchBytes {
				k = w.o.batchBytes
			}
			r := row{t, off, d[:k]}
			if k >= w.large() {
				if err := w.WriteChunk(Chunk{Tensor: r.t, Offset: r.off, Data: r.data}); err != nil {
					return err
				}
			} else {
				if bytes+k > w.o.batchBytes {
					if err := flushGroup(); err != nil {
						return err
					}
				}
				group, bytes = append(group, r), bytes+k
			}
			off += int64(k) / w.esize[t]
			d = d[k:]
		}
	}
	return flushGroup()
}
