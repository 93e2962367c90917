package arrowio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"unsafe"

	"github.com/apache/arrow-go/v18/arrow/ipc"
	"github.com/apache/arrow-go/v18/arrow/memory"
)

// continuation starts every encapsulated message since Arrow format 0.15; a zero length after
// it is the end-of-stream marker.
const continuation = 0xFFFFFFFF

// source is an ipc.MessageReader that frames, bounds and checks messages itself, so that
// Arrow only decodes what passed peekMessage and the limits. failure returns the error of the
// call that failed (already one line naming the source), which a reader reports instead of
// Arrow's wrapping of it.
type source interface {
	ipc.MessageReader
	failure() error
}

// streamSource reads messages from an io.Reader into bodies from a slabPool.
type streamSource struct {
	r         io.Reader
	o         *options
	pool      *slabPool
	msg       *ipc.Message
	refs      atomic.Int64
	read      int64 // bytes consumed
	messages  int
	dictBytes int64
	err       error // sticky; io.EOF after the end
	prefix    [4]byte
	peeked    *head // read ahead by peek, for the next Message
}

func newStreamSource(r io.Reader, o *options, mem memory.Allocator, keep bool) *streamSource {
	s := &streamSource{r: r, o: o, pool: newSlabPool(mem)}
	s.pool.keep = keep
	s.refs.Add(1)
	return s
}

func (s *streamSource) Retain() { s.refs.Add(1) }

func (s *streamSource) Release() {
	if s.refs.Add(-1) == 0 {
		s.drop()
		s.pool.close()
	}
}

// drop releases the previous message: its body returns to the pool once the record batch
// decoded from it is released too.
func (s *streamSource) drop() {
	if s.msg != nil {
		s.msg.Release()
		s.msg = nil
	}
}

func (s *streamSource) failure() error {
	if s.err == io.EOF {
		return nil
	}
	return s.err
}

func (s *streamSource) Message() (*ipc.Message, error) {
	s.drop()
	if s.err != nil {
		return nil, s.err
	}
	msg, err := s.next()
	if err == io.EOF && s.messages == 0 {
		err = fmt.Errorf("%s: %w: the stream ends before its schema message", s.o.source, ErrFormat)
	}
	if err != nil {
		s.err = err
		return nil, err
	}
	s.messages++
	s.msg = msg
	return msg, nil
}

// head is a message whose prefix and metadata have been read and whose body has not (peek).
type head struct {
	meta []byte
	info msgInfo
	err  error // io.EOF at the end of the stream
}

func (s *streamSource) next() (*ipc.Message, error) {
	h := s.peeked
	if h == nil {
		h = s.readHead()
	}
	s.peeked = nil
	if h.err != nil {
		return nil, h.err
	}
	return s.readBody(h.meta, h.info)
}

// peek reads the next message's prefix and metadata, checked as next checks them, and keeps
// them for the next call of Message (or take). Its error is the one Message will return.
func (s *streamSource) peek() *head {
	if s.peeked == nil {
		if s.err != nil {
			s.peeked = &head{err: s.err}
		} else {
			s.peeked = s.readHead()
		}
	}
	return s.peeked
}

// take consumes the peeked message: its body is the caller's to read from s.r.
func (s *streamSource) take() {
	s.drop()
	s.peeked = nil
	s.messages++
}

// readHead reads a message's prefix and metadata and checks them (peekMessage, the limits).
func (s *streamSource) readHead() *head {
	meta, info, err := s.readMeta()
	return &head{meta: meta, info: info, err: err}
}

func (s *streamSource) readMeta() ([]byte, msgInfo, error) {
	var info msgInfo
	if _, err := io.ReadFull(s.r, s.prefix[:]); err != nil {
		if err == io.EOF {
			return nil, info, io.EOF // the stream ends at a message boundary without the end marker
		}
		return nil, info, s.ioError("a message prefix", err)
	}
	s.read += 4
	if binary.LittleEndian.Uint32(s.prefix[:]) != continuation {
		return nil, info, fmt.Errorf("%s: %w: no continuation marker at byte %d (not an Arrow IPC stream, or one older than format 0.15)",
			s.o.source, ErrFormat, s.read-4)
	}
	if _, err := io.ReadFull(s.r, s.prefix[:]); err != nil {
		return nil, info, s.ioError("a message length", err)
	}
	s.read += 4
	metaLen := int64(int32(binary.LittleEndian.Uint32(s.prefix[:])))
	switch {
	case metaLen == 0:
		return nil, info, io.EOF
	case metaLen < 0:
		return nil, info, fmt.Errorf("%s: %w: negative message length %d at byte %d", s.o.source, ErrFormat, metaLen, s.read-4)
	case metaLen > s.o.maxMeta:
		return nil, info, fmt.Errorf("%s: %w: message metadata of %d bytes, more than the limit of %d", s.o.source, ErrLimit, metaLen, s.o.maxMeta)
	}
	if err := s.account(metaLen); err != nil {
		return nil, info, err
	}
	meta := make([]byte, metaLen)
	if _, err := io.ReadFull(s.r, meta); err != nil {
		return nil, info, s.ioError("message metadata", err)
	}
	s.read += metaLen
	info, err := peekMessage(meta)
	if err != nil {
		return nil, info, fmt.Errorf("%s: message at byte %d: %w", s.o.source, s.read-metaLen-8, err)
	}
	if info.bodyLen > s.o.maxBatch {
		return nil, info, fmt.Errorf("%s: %w: message body of %d bytes, more than the limit of %d", s.o.source, ErrLimit, info.bodyLen, s.o.maxBatch)
	}
	if err := s.account(info.bodyLen); err != nil {
		return nil, info, err
	}
	if info.kind == ipc.MessageDictionaryBatch {
		if s.dictBytes += metaLen + info.bodyLen; s.dictBytes > s.o.maxMeta {
			return nil, info, fmt.Errorf("%s: %w: dictionaries of more than %d bytes", s.o.source, ErrLimit, s.o.maxMeta)
		}
	}
	return meta, info, nil
}

// readBody reads the body of the message whose metadata readMeta returned.
func (s *streamSource) readBody(meta []byte, info msgInfo) (*ipc.Message, error) {
	body := memory.NewBufferBytes(nil)
	if info.bodyLen > 0 {
		slab := s.pool.Allocate(int(info.bodyLen))
		if _, err := io.ReadFull(s.r, slab); err != nil {
			s.pool.Free(slab)
			return nil, s.ioError("a message body", err)
		}
		s.read += info.bodyLen
		body = memory.NewBufferWithAllocator(slab, s.pool)
	}
	msg := ipc.NewMessage(memory.NewBufferBytes(meta), body)
	body.Release() // the message holds it now
	return msg, nil
}

// account adds n bytes about to be read and checks the total limit before they are read.
func (s *streamSource) account(n int64) error {
	if n > s.o.maxTotal-s.read {
		return fmt.Errorf("%s: %w: the stream is longer than the limit of %d bytes", s.o.source, ErrLimit, s.o.maxTotal)
	}
	return nil
}

// ioError reports a failed read of what: a stream cut short is ErrFormat; any other error of
// the reader is passed on (wrapped), so that a network error stays one.
func (s *streamSource) ioError(what string, err error) error {
	if errors.Is(err, io.ErrUnexpectedEOF) || err == io.EOF {
		return fmt.Errorf("%s: %w: truncated in %s after byte %d: %w", s.o.source, ErrFormat, what, s.read, io.ErrUnexpectedEOF)
	}
	return fmt.Errorf("%s: reading %s after byte %d: %w", s.o.source, what, s.read, err)
}

// mappedSource reads the messages of the stream embedded in a mapped IPC file; bodies view
// the mapping (no copy, no allocation), so a tensor whose bytes are contiguous there becomes a
// view of the file.
type mappedSource struct {
	data      []byte // from the first message to the footer
	base      int64  // file offset of data[0], for errors
	pos       int
	o         *options
	msg       *ipc.Message
	refs      atomic.Int64
	dictBytes int64
	messages  int
	err       error
	ended     bool // the end-of-stream marker was read
}

func newMappedSource(data []byte, base int64, o *options) *mappedSource {
	s := &mappedSource{data: data, base: base, o: o}
	s.refs.Add(1)
	return s
}

func (s *mappedSource) Retain() { s.refs.Add(1) }

func (s *mappedSource) Release() {
	if s.refs.Add(-1) == 0 && s.msg != nil {
		s.msg.Release()
		s.msg = nil
	}
}

func (s *mappedSource) failure() error {
	if s.err == io.EOF {
		return nil
	}
	return s.err
}

func (s *mappedSource) Message() (*ipc.Message, error) {
	if s.msg != nil {
		s.msg.Release()
		s.msg = nil
	}
	if s.err != nil {
		return nil, s.err
	}
	msg, err := s.next()
	if err == io.EOF && s.messages == 0 {
		err = fmt.Errorf("%s: %w: the file's stream ends before its schema message", s.o.source, ErrFormat)
	}
	if err != nil {
		s.err = err
		return nil, err
	}
	s.messages++
	s.msg = msg
	return msg, nil
}

func (s *mappedSource) next() (*ipc.Message, error) {
	rest := s.data[s.pos:]
	at := s.base + int64(s.pos)
	switch {
	case len(rest) == 0:
		return nil, io.EOF
	case len(rest) < 8:
		return nil, fmt.Errorf("%s: %w: truncated message prefix at byte %d", s.o.source, ErrFormat, at)
	case uintptr(unsafe.Pointer(&rest[0]))%8 != 0:
		return nil, fmt.Errorf("%s: %w: message at byte %d is not 8-byte aligned", s.o.source, ErrFormat, at)
	case binary.LittleEndian.Uint32(rest) != continuation:
		return nil, fmt.Errorf("%s: %w: no continuation marker at byte %d", s.o.source, ErrFormat, at)
	}
	metaLen := int64(int32(binary.LittleEndian.Uint32(rest[4:])))
	switch {
	case metaLen == 0:
		s.pos += 8
		s.ended = true
		return nil, io.EOF
	case metaLen < 0 || metaLen%8 != 0:
		return nil, fmt.Errorf("%s: %w: message length %d at byte %d is not a positive multiple of 8", s.o.source, ErrFormat, metaLen, at)
	case metaLen > s.o.maxMeta:
		return nil, fmt.Errorf("%s: %w: message metadata of %d bytes, more than the limit of %d", s.o.source, ErrLimit, metaLen, s.o.maxMeta)
	case metaLen > int64(len(rest)-8):
		return nil, fmt.Errorf("%s: %w: message at byte %d runs past the end of the stream", s.o.source, ErrFormat, at)
	}
	meta := rest[8 : 8+metaLen : 8+metaLen]
	info, err := peekMessage(meta)
	if err != nil {
		return nil, fmt.Errorf("%s: message at byte %d: %w", s.o.source, at, err)
	}
	if info.bodyLen > int64(len(rest))-8-metaLen {
		return nil, fmt.Errorf("%s: %w: body of the message at byte %d runs past the end of the stream", s.o.source, ErrFormat, at)
	}
	if info.kind == ipc.MessageDictionaryBatch {
		if s.dictBytes += metaLen + info.bodyLen; s.dictBytes > s.o.maxMeta {
			return nil, fmt.Errorf("%s: %w: dictionaries of more than %d bytes", s.o.source, ErrLimit, s.o.maxMeta)
		}
	}
	lo := 8 + metaLen
	hi := lo + info.bodyLen
	s.pos += int(hi)
	return ipc.NewMessage(memory.NewBufferBytes(meta), memory.NewBufferBytes(rest[lo:hi:hi])), nil
}
