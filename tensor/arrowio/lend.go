package arrowio

import (
	"encoding/binary"
	"fmt"
	"io"

	"github.com/apache/arrow-go/v18/arrow/ipc"
	flatbuffers "github.com/google/flatbuffers/go"
)

// Lend gives NextInto the buffer where the next bytes of tensor t belong, from element off on:
// at most max bytes. It may return fewer (whole elements of the tensor's dtype), or none: the
// reader then reads them into a buffer of its own.
type Lend func(t int, off, max int64) ([]byte, error)

// NextInto is Next, reading the chunk's data into the buffer lend returns: a consumer that
// keeps the data anyway (a spool's write buffer) lends where it goes, and the bytes are copied
// once, from the stream to there, instead of into a batch body first. It does so for record
// batches whose data column's values come last in the body (as Writer and pyarrow lay them
// out) and whose tensor column is not dictionary-encoded: their other buffers are read and
// checked first, then each row's values are read straight into what lend returns, a chunk at a
// time (a row may come as several chunks, each continuing the last). Other batches, and readers
// of files (whose chunks view the mapping already), decode as Next does. The chunks and errors
// are Next's, row for row: mixing the two calls is allowed. A nil lend is Next.
func (r *StreamReader) NextInto(lend Lend) (Chunk, error) {
	ss, ok := r.src.(*streamSource)
	if r.err != nil || lend == nil || !ok || r.cols.kind == tensorDict {
		return r.Next()
	}
	return r.nextInto(ss, lend)
}

// lazyBatch is a record batch whose data values are still on the stream: its rows decoded
// from the buffers before them, and where NextInto stands in its values.
type lazyBatch struct {
	on    bool
	rows  int
	row   int       // next row to start
	t     []int     // tensor of each row, -1 if the name is not in the layout
	name  []string  // the name of each row whose tensor is -1
	off   []int64   // element offset of each row
	start []int64   // rows+1 byte offsets of the rows' values, from the values buffer's start
	pos   int64     // value bytes consumed, from the values buffer's start
	end   int64     // body bytes from the values buffer's start to the body's end
	cur   int       // the tensor of the row being read
	next  int64     // its element at the next byte
	left  int64     // its bytes not yet read
	spare []byte    // the reader's own buffer (no lend), lent by the pool until the next call
	src   *slabPool // spare's pool
}

// nextInto is NextInto on a stream; lend may be nil (Next in the middle of a lazy batch).
func (r *StreamReader) nextInto(ss *streamSource, lend Lend) (Chunk, error) {
	r.lazy.freeSpare()
	for {
		if r.lazy.on {
			c, done, err := r.lazyNext(ss, lend)
			if err != nil {
				return Chunk{}, r.fail(err)
			}
			if !done {
				return c, nil
			}
			r.lazy.on = false
			continue
		}
		if r.row < r.rows {
			c, err := r.chunk(r.row)
			r.row++
			if err != nil {
				return Chunk{}, r.fail(err)
			}
			if len(c.Data) > 0 {
				return c, nil
			}
			continue
		}
		lazy, err := r.beginLazy(ss)
		if err != nil {
			return Chunk{}, r.fail(err)
		}
		if !lazy {
			if err := r.nextBatch(); err != nil {
				return Chunk{}, r.fail(err)
			}
		}
	}
}

func (z *lazyBatch) freeSpare() {
	if z.spare != nil {
		z.src.Free(z.spare)
		z.spare = nil
	}
}

// lazyLayout is where a record batch's buffers lie in its body (byte offset, length).
type lazyLayout struct {
	rows                   int64
	names, nameOffs        [2]int64
	offsets                [2]int64
	dataOffs, values       [2]int64
	nameWidth, offsetWidth int64 // 4 or 8: the offsets' width of the tensor and data columns
}

// RecordBatch's slots (format/Message.fbs) beyond those peekMessage reads, and the size of the
// FieldNode struct {length: long, null_count: long}.
const (
	slotBatchLength   = 4
	slotBatchNodes    = 6
	slotBatchVariadic = 12
	fieldNodeSize     = 16
)

// lazyLayoutOf reads the layout of the record batch of meta (checked by peekMessage) and says
// whether its values can be read lazily: three columns without nulls, of the batch's length,
// the data column's values after every buffer the rows are decoded from. Anything else goes to
// Arrow's decoder (and its errors).
func (r *StreamReader) lazyLayoutOf(meta []byte) (l lazyLayout, ok bool) {
	defer func() {
		if recover() != nil { // the flatbuffers runtime panics on offsets outside meta
			ok = false
		}
	}()
	t := flatbuffers.Table{Bytes: meta, Pos: flatbuffers.GetUOffsetT(meta)}
	var rb flatbuffers.Table
	t.Union(&rb, flatbuffers.UOffsetT(t.Offset(slotMessageHeader)))
	if rb.Offset(slotBatchVariadic) != 0 {
		return l, false
	}
	l.rows = rb.GetInt64Slot(slotBatchLength, 0)
	if !fullNodes(&rb, l.rows) || !r.placeBuffers(&l, &rb) {
		return l, false
	}
	l.nameWidth, l.offsetWidth = r.offsetWidths()
	return l, l.valuesLast() && l.holdsRows()
}

// fullNodes says whether the record batch rb has three field nodes, each of rows rows and
// without nulls.
func fullNodes(rb *flatbuffers.Table, rows int64) bool {
	nn, nodes, err := vector(rb, slotBatchNodes, fieldNodeSize)
	if err != nil || nn != 3 || rows < 0 {
		return false
	}
	for i := range nn {
		p := nodes + flatbuffers.UOffsetT(fieldNodeSize*i)
		if rb.GetInt64(p) != rows || rb.GetInt64(p+8) != 0 {
			return false
		}
	}
	return true
}

// placeBuffers reads into l where the buffers of the record batch rb lie; false unless it has
// eight, those of the three columns.
func (r *StreamReader) placeBuffers(l *lazyLayout, rb *flatbuffers.Table) bool {
	nb, bufs, err := vector(rb, slotBatchBuffers, bufferSize)
	if err != nil || nb != 8 {
		return false
	}
	buffer := func(k int) [2]int64 {
		p := bufs + flatbuffers.UOffsetT(bufferSize*k)
		return [2]int64{rb.GetInt64(p), rb.GetInt64(p + 8)}
	}
	// Buffers come column by column in schema order: validity, offsets, values for the tensor
	// and data columns, validity, values for the offset column.
	k := 0
	for col := range 3 {
		switch col {
		case r.cols.tensor:
			l.nameOffs, l.names = buffer(k+1), buffer(k+2)
			k += 3
		case r.cols.offset:
			l.offsets = buffer(k + 1)
			k += 2
		case r.cols.data:
			l.dataOffs, l.values = buffer(k+1), buffer(k+2)
			k += 3
		}
	}
	return true
}

// offsetWidths is the width of the offsets of the tensor and data columns: 4, or 8 for the
// large types.
func (r *StreamReader) offsetWidths() (name, data int64) {
	name, data = 4, 4
	if r.cols.kind == tensorLargeUTF8 {
		name = 8
	}
	if r.cols.dataLarge {
		data = 8
	}
	return name, data
}

// valuesLast says whether every buffer the rows are decoded from ends before the data
// column's values begin.
func (l *lazyLayout) valuesLast() bool {
	for _, b := range [...][2]int64{l.nameOffs, l.names, l.offsets, l.dataOffs} {
		if b[0]+b[1] > l.values[0] {
			return false
		}
	}
	return true
}

// holdsRows says whether the offset and the two offsets buffers are long enough for the
// batch's rows; when not, Arrow says what is short.
func (l *lazyLayout) holdsRows() bool {
	if l.rows <= 0 {
		return true
	}
	// Divisions, not products: a row count from the wire may overflow any product.
	return l.offsets[1]/8 >= l.rows && l.nameOffs[1]/l.nameWidth-1 >= l.rows && l.dataOffs[1]/l.offsetWidth-1 >= l.rows
}

// beginLazy starts a lazy batch if the next message is one (false: Arrow decodes it, or
// reports the end of the stream or the error the message is).
func (r *StreamReader) beginLazy(ss *streamSource) (bool, error) {
	h := ss.peek()
	if h.err != nil || h.info.kind != ipc.MessageRecordBatch {
		return false, nil
	}
	l, ok := r.lazyLayoutOf(h.meta)
	if !ok {
		return false, nil
	}
	ss.take()
	r.batch++
	r.tensorOf, r.data, r.offs = nil, nil, nil
	r.rows, r.row = 0, 0
	head := l.values[0]
	var prefix []byte
	if head > 0 {
		prefix = r.arena.Allocate(int(head)) // names and offsets: small, not a body
		defer r.arena.Free(prefix)
		if err := ss.readFull(prefix, "a message body"); err != nil {
			return false, err
		}
	}
	if err := r.decodeRows(l, prefix, h.info.bodyLen); err != nil {
		return false, err
	}
	return true, nil
}

// decodeRows decodes the rows of a lazy batch from its body's first bytes, checking the
// offsets as Arrow's ValidateFull would.
func (r *StreamReader) decodeRows(l lazyLayout, prefix []byte, bodyLen int64) error {
	z := &r.lazy
	n := int(l.rows)
	z.on, z.rows, z.row, z.pos, z.left, z.src = true, n, 0, 0, 0, nil
	z.end = bodyLen - l.values[0]
	z.t, z.off, z.start = grow(z.t, n), grow(z.off, n), grow(z.start, n+1)
	z.name = z.name[:0]
	if n == 0 {
		return nil
	}
	names := prefix[l.names[0] : l.names[0]+l.names[1]]
	nameAt := offsetsOf(prefix[l.nameOffs[0]:], l.nameWidth)
	dataAt := offsetsOf(prefix[l.dataOffs[0]:], l.offsetWidth)
	for i := range n + 1 {
		z.start[i] = dataAt(i)
		if z.start[i] < 0 || z.start[i] > l.values[1] || (i > 0 && z.start[i] < z.start[i-1]) {
			return r.batchError(ErrFormat, fmt.Sprintf("column %q: value offset %d of row %d is out of order or outside the %d value bytes", ColData, z.start[i], i, l.values[1]))
		}
	}
	prev := nameAt(0)
	for i := range n {
		b, e := prev, nameAt(i+1)
		if b < 0 || e < b || e > int64(len(names)) {
			return r.batchError(ErrFormat, fmt.Sprintf("column %q: name offsets %d..%d of row %d are out of order or outside the %d name bytes", ColTensor, b, e, i, len(names)))
		}
		prev = e
		name := names[b:e]
		if t, ok := r.names[string(name)]; ok {
			z.t[i] = t
		} else {
			z.t[i] = -1
			z.name = append(z.name, string(name))
		}
		z.off[i] = int64(binary.LittleEndian.Uint64(prefix[l.offsets[0]+8*int64(i):]))
	}
	return nil
}

// offsetsOf reads the i-th offset of an offsets buffer of the given width.
func offsetsOf(b []byte, width int64) func(i int) int64 {
	if width == 8 {
		return func(i int) int64 { return int64(binary.LittleEndian.Uint64(b[8*i:])) }
	}
	return func(i int) int64 { return int64(int32(binary.LittleEndian.Uint32(b[4*i:]))) }
}

func grow[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	return s[:n]
}

// lazyNext reads the next chunk of a lazy batch's values; done once its rows are read and the
// rest of its body skipped.
func (r *StreamReader) lazyNext(ss *streamSource, lend Lend) (c Chunk, done bool, err error) {
	z := &r.lazy
	for z.left == 0 {
		if z.row == z.rows {
			return c, true, ss.discard(z.end - z.pos)
		}
		i := z.row
		z.row++
		t, name := z.t[i], ""
		if t < 0 {
			name, z.name = z.name[0], z.name[1:]
		} else {
			name = r.hdr.Layout[t].Name
		}
		if err := r.checkRow(t, name, i, z.off[i], z.start[i+1]-z.start[i]); err != nil {
			return c, false, err
		}
		if err := ss.discard(z.start[i] - z.pos); err != nil {
			return c, false, err
		}
		z.pos, z.cur, z.next, z.left = z.start[i], t, z.off[i], z.start[i+1]-z.start[i]
	}
	es := r.esize[z.cur]
	var b []byte
	if lend != nil {
		if b, err = lend(z.cur, z.next, z.left); err != nil {
			return c, false, err
		}
		b = b[:min(int64(len(b)), z.left)/es*es]
	}
	if len(b) == 0 {
		z.spare, z.src = ss.pool.Allocate(int(min(z.left, lazySpare))), ss.pool
		b = z.spare
	}
	if err := ss.readFull(b, "a message body"); err != nil {
		return c, false, err
	}
	c = Chunk{Tensor: z.cur, Offset: z.next, Data: b}
	n := int64(len(b))
	z.pos, z.left, z.next = z.pos+n, z.left-n, z.next+n/es
	return c, false, nil
}

// lazySpare bounds the reader's own buffer for a lazy batch's values: a multiple of every
// element size.
const lazySpare = 1 << 20

// readFull reads len(b) bytes of a body being read lazily.
func (s *streamSource) readFull(b []byte, what string) error {
	if _, err := io.ReadFull(s.r, b); err != nil {
		s.err = s.ioError(what, err)
		return s.err
	}
	s.read += int64(len(b))
	return nil
}

// discard skips n bytes of a body being read lazily.
func (s *streamSource) discard(n int64) error {
	if n <= 0 {
		return nil
	}
	if _, err := io.CopyN(io.Discard, s.r, n); err != nil {
		s.err = s.ioError("a message body", err)
		return s.err
	}
	s.read += n
	return nil
}
