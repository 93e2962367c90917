package server

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/arrowio"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// safetensorsSource decodes a .safetensors file as it is read from a stream (an HTTP body)
// whose total length is known: the header first, validated by the safetensors package exactly
// as a file on disk would be, then the data section in file order, cut into chunks of at most
// len(buf) bytes that never straddle two tensors. Its memory is buf, whatever the update's size.
type safetensorsSource struct {
	r      io.Reader
	source string
	hdr    arrowio.Header
	order  []int   // tensor indices in data order
	begin  []int64 // byte range of each tensor in the data section
	end    []int64
	k      int   // position in order
	pos    int64 // bytes of the data section read
	off    int64 // where the data section starts in the body
	size   int64 // of the body
	buf    []byte
	err    error
}

// newSafetensorsSource reads the length prefix and the header of a .safetensors file of size
// bytes from r and validates them; no data byte is read yet. maxHeader bounds the header JSON.
func newSafetensorsSource(r io.Reader, size, maxHeader int64, source string, buf []byte) (*safetensorsSource, error) {
	if size < 8 {
		return nil, fmt.Errorf("%s: %w: %d bytes: less than the 8-byte header length of a .safetensors file", source, ErrTruncated, size)
	}
	var lenBuf [8]byte
	if _, err := io.ReadFull(r, lenBuf[:]); err != nil {
		return nil, readErr(source, err, 0, size)
	}
	n := binary.LittleEndian.Uint64(lenBuf[:])
	if n > uint64(maxHeader) {
		return nil, fmt.Errorf("%s: %w: header of %d bytes, over the %d-byte limit (limits.max_header_bytes)", source, safetensors.ErrLimit, n, maxHeader)
	}
	if n > uint64(size-8) {
		return nil, fmt.Errorf("%s: %w: header length %d but the body is %d bytes", source, safetensors.ErrHeaderSize, n, size)
	}
	head := make([]byte, 8+n)
	copy(head, lenBuf[:])
	if _, err := io.ReadFull(r, head[8:]); err != nil {
		return nil, readErr(source, err, 8, size)
	}
	lim := safetensors.DefaultLimits()
	lim.HeaderSize = maxHeader
	h, err := safetensors.ReadHeaderAt(prefix(head), size, safetensors.WithSource(source), safetensors.WithLimits(lim))
	if err != nil {
		return nil, err
	}
	s := &safetensorsSource{r: r, source: source, buf: buf, begin: h.Begin, end: h.End, off: h.DataOffset, size: size}
	s.hdr = arrowio.Header{Layout: tensor.Layout(h.Fields), Scales: h.Scales, Metadata: h.Metadata}
	s.order = make([]int, len(h.Fields))
	for i := range s.order {
		s.order[i] = i
	}
	slices.SortStableFunc(s.order, func(a, b int) int {
		return cmp.Compare(h.Begin[a], h.Begin[b])
	})
	return s, nil
}

// readErr explains a failed read at byte off of a size-byte body.
func readErr(source string, err error, off, size int64) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%s: %w: the body ended after about %d of its %d bytes", source, ErrTruncated, off, size)
	}
	return err
}

func (s *safetensorsSource) Header() arrowio.Header { return s.hdr }

// Next reads the next chunk of the data section.
func (s *safetensorsSource) Next() (arrowio.Chunk, error) { return s.NextInto(nil) }

// NextInto reads the next chunk of the data section into the buffer lend gives, if any.
func (s *safetensorsSource) NextInto(lend lendFunc) (arrowio.Chunk, error) {
	if s.err != nil {
		return arrowio.Chunk{}, s.err
	}
	for s.k < len(s.order) && s.pos >= s.end[s.order[s.k]] {
		s.k++
	}
	if s.k == len(s.order) {
		s.err = io.EOF
		return arrowio.Chunk{}, io.EOF
	}
	t := s.order[s.k]
	es := int64(s.hdr.Layout[t].DType.Size())
	n := min(int64(len(s.buf))/8*8, s.end[t]-s.pos) // buffer lengths are multiples of 8: whole elements
	data := s.buf[:n]
	if lend != nil {
		b, err := lend(t, (s.pos-s.begin[t])/es, n)
		if err != nil {
			s.err = err
			return arrowio.Chunk{}, err
		}
		if len(b) > 0 {
			data = b
			n = int64(len(b))
		}
	}
	if _, err := io.ReadFull(s.r, data); err != nil {
		s.err = readErr(s.source, err, s.off+s.pos, s.size)
		return arrowio.Chunk{}, s.err
	}
	c := arrowio.Chunk{Tensor: t, Offset: (s.pos - s.begin[t]) / es, Data: data}
	s.pos += n
	return c, nil
}

// prefix is the received start of a body, read as a file: a read of nothing at its end is not
// an error (bytes.Reader says io.EOF there, a file does not).
type prefix []byte

func (p prefix) ReadAt(b []byte, off int64) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	return bytes.NewReader(p).ReadAt(b, off)
}
