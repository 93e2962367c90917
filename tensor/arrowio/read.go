package arrowio

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"os"
	"unsafe"

	"github.com/wattagg/wattagg/tensor"
)

// ReadStream reads a whole update from an IPC stream into a Set whose tensors own aligned
// memory (each chunk is copied once, from the batch body into its tensor; bodies are reused).
// A tensor is allocated when its first chunk arrives, so what a stream can make ReadStream
// allocate is bounded by the data it sends and by WithMaxTotalBytes; a server that must not
// hold whole updates uses NewStreamReader instead. The Set needs no Close.
func ReadStream(r io.Reader, opts ...Option) (*tensor.Set, error) {
	sr, err := NewStreamReader(r, opts...)
	if err != nil {
		return nil, err
	}
	defer sr.Close()
	h := sr.Header()
	ts := make([]*tensor.Tensor, len(h.Layout))
	for {
		c, err := sr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		t := ts[c.Tensor]
		if t == nil {
			if t, err = newTensor(h, c.Tensor); err != nil {
				return nil, fmt.Errorf("%s: %w", sr.o.source, err)
			}
			ts[c.Tensor] = t
		}
		copy(t.Bytes()[c.Offset*sr.esize[c.Tensor]:], c.Data)
	}
	return newSet(h, ts, sr.o.source)
}

// newTensor allocates tensor i of h.
func newTensor(h Header, i int) (*tensor.Tensor, error) {
	f := h.Layout[i]
	t, err := tensor.New(f.Name, f.DType, f.Shape...)
	if err != nil {
		return nil, err
	}
	t.Scale = h.scale(i)
	return t, nil
}

// newSet makes the Set of h from ts, allocating the tensors that received no chunk (they are
// empty: the reader checked completeness).
func newSet(h Header, ts []*tensor.Tensor, source string) (*tensor.Set, error) {
	for i := range ts {
		if ts[i] == nil {
			t, err := newTensor(h, i)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", source, err)
			}
			ts[i] = t
		}
	}
	s, err := tensor.NewSet(ts...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", source, err) // parseLayout refused duplicates; kept as a guard
	}
	s.Source = source
	s.Metadata = h.Metadata
	return s, nil
}

// fileMagic opens and ends an Arrow IPC file; the opening one is padded to 8 bytes.
var fileMagic = []byte("ARROW1")

// ReadFile reads an Arrow IPC file written by WriteFile or any Arrow implementation with the
// chunk schema. The file is mapped: a tensor whose chunks are contiguous in the file and whose
// first byte is aligned to its element size is a view of the mapping (WriteFile lays every
// tensor out so); any other tensor is copied once into aligned memory. Set.Close unmaps the
// file; no Arrow buffer outlives ReadFile.
//
// The file is read through the stream it embeds, with the checks of NewStreamReader; the
// footer (an index for random access to batches) is only located, not read. Limits are those
// of NewStreamReader except WithMaxBatchBytes, which does not apply to mapped bodies, and
// WithMaxTotalBytes, whose default is the file's size.
func ReadFile(path string, opts ...Option) (*tensor.Set, error) {
	o, err := newOptions(path, opts)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close() // the mapping outlives the descriptor
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	if fi.Size() > math.MaxInt {
		return nil, fmt.Errorf("%s: %d bytes do not fit in memory", path, fi.Size())
	}
	if o.maxTotal == 0 {
		o.maxTotal = max(fi.Size(), 1)
	}
	if fi.Size() < int64(len(fileMagic))*2+4+8 {
		return nil, fmt.Errorf("%s: %w: %d bytes is too short for an Arrow IPC file", path, ErrFormat, fi.Size())
	}
	data, closer, err := mapFile(f, fi.Size())
	if err != nil {
		return nil, err
	}
	s, err := readMapped(data, o)
	if err != nil {
		closer.Close()
		return nil, err
	}
	s.SetCloser(closer)
	return s, nil
}

// readMapped reads the IPC file held in data; the Set's tensors may view data.
func readMapped(data []byte, o *options) (*tensor.Set, error) {
	end, err := fileStream(data, o.source)
	if err != nil {
		return nil, err
	}
	src := newMappedSource(data[8:end], 8, o)
	sr, err := newReader(src, o, newArena(o.mem))
	if err != nil {
		return nil, err
	}
	defer sr.Close()
	h := sr.Header()
	asm := make([]assembly, len(h.Layout))
	for {
		c, err := sr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if err := asm[c.Tensor].add(h, c, sr.esize[c.Tensor]); err != nil {
			return nil, fmt.Errorf("%s: %w", o.source, err)
		}
	}
	if !src.ended || src.pos != len(src.data) {
		return nil, fmt.Errorf("%s: %w: %d bytes between the end of the stream and the footer", o.source, ErrFormat, len(src.data)-src.pos)
	}
	ts := make([]*tensor.Tensor, len(h.Layout))
	for i := range asm {
		if ts[i], err = asm[i].tensor(h, i); err != nil {
			return nil, fmt.Errorf("%s: %w", o.source, err)
		}
	}
	return newSet(h, ts, o.source)
}

// fileStream checks the magic at both ends of an IPC file and returns where the footer starts,
// which is where the embedded stream ends.
func fileStream(data []byte, source string) (int, error) {
	n := len(data)
	if !bytes.HasPrefix(data, fileMagic) || !bytes.Equal(data[6:8], []byte{0, 0}) {
		return 0, fmt.Errorf("%s: %w: no Arrow file magic at the start", source, ErrFormat)
	}
	if !bytes.HasSuffix(data, fileMagic) {
		return 0, fmt.Errorf("%s: %w: no Arrow file magic at the end (truncated?)", source, ErrFormat)
	}
	footer := int64(int32(binary.LittleEndian.Uint32(data[n-len(fileMagic)-4:])))
	end := int64(n-len(fileMagic)-4) - footer
	if footer <= 0 || end < 8 {
		return 0, fmt.Errorf("%s: %w: footer length %d does not fit in the file", source, ErrFormat, footer)
	}
	return int(end), nil
}

// assembly gathers the chunks of one tensor of a mapped file: while they are contiguous in
// the mapping and the first is aligned, the tensor is a growing view; at the first chunk that
// is not, the view so far is copied into aligned memory, and later chunks are copied after it.
type assembly struct {
	view []byte // the contiguous run so far (mapped)
	own  *tensor.Tensor
}

func (a *assembly) add(h Header, c Chunk, size int64) error {
	switch {
	case a.own != nil:
	case len(a.view) == 0:
		if tensor.IsAligned(c.Data, int(size)) {
			a.view = c.Data
			return nil
		}
	case uintptr(unsafe.Pointer(unsafe.SliceData(a.view)))+uintptr(len(a.view)) == uintptr(unsafe.Pointer(unsafe.SliceData(c.Data))):
		// The next chunk starts where the view ends: the same mapping, so the run extends.
		a.view = unsafe.Slice(unsafe.SliceData(a.view), len(a.view)+len(c.Data))
		return nil
	}
	if a.own == nil {
		t, err := newTensor(h, c.Tensor)
		if err != nil {
			return err
		}
		copy(t.Bytes(), a.view)
		a.own, a.view = t, nil
	}
	copy(a.own.Bytes()[c.Offset*size:], c.Data)
	return nil
}

// tensor returns tensor i: the copy, the view, or an empty tensor.
func (a *assembly) tensor(h Header, i int) (*tensor.Tensor, error) {
	if a.own != nil {
		return a.own, nil
	}
	if len(a.view) == 0 {
		return nil, nil // empty: newSet allocates it
	}
	f := h.Layout[i]
	t, err := tensor.FromBytes(f.Name, f.DType, f.Shape, a.view[:len(a.view):len(a.view)])
	if err != nil {
		return nil, err
	}
	t.Scale = h.scale(i)
	return t, nil
}
