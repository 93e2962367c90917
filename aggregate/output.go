package aggregate

import (
	"io"
	"sync"
	"unsafe"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
)

// memOutput writes each piece straight into the output tensors.
type memOutput struct {
	dst    [][]byte // per field: the output tensor's bytes
	fields []device.AccField
	chunks []device.Chunk
}

func (m *memOutput) Dest(c, p int) ([]byte, error) {
	pc := m.chunks[c].Pieces[p]
	es := m.fields[pc.Field].Out.Size()
	return m.dst[pc.Field][pc.Lo*es : pc.Hi*es], nil
}

func (m *memOutput) Done(int) error { return nil }

// newResultSet allocates the output tensors in one aligned arena from alloc, laid out like the
// data section (so a result is as compact as a file), in the round's tensor order. The caller
// owns the arena.
func newResultSet(p *plan, alloc tensor.Allocator) (*tensor.Set, *memOutput, []byte, error) {
	arena := alloc.Allocate(int(p.size))
	set := &tensor.Set{Metadata: map[string]string{}}
	out := &memOutput{dst: make([][]byte, len(p.fields)), fields: p.fields, chunks: p.chunks}
	for t, f := range p.fields {
		b := arena[p.offsets[t] : p.offsets[t]+int64(f.Len*f.Out.Size())]
		tt, err := tensor.FromBytes(f.Name, p.setDType(t), p.ref[t].Shape, b)
		if err == nil {
			err = set.Add(tt)
		}
		if err != nil {
			alloc.Free(arena)
			return nil, nil, nil, err
		}
		out.dst[t] = b
	}
	return set, out, arena, nil
}

// pipeOutput hands finished chunks to writer goroutines through a small ring of page-aligned
// buffers, so the disk writes chunk i while the cores compute chunk i+1, and no model-sized
// buffer is ever touched (fresh pages are the most expensive memory there is).
type pipeOutput struct {
	alloc  tensor.Allocator
	raw    []byte // the ring as allocated, freed by close
	w      io.WriterAt
	fields []device.AccField
	chunks []device.Chunk
	free   chan []byte
	bufs   [][]byte // per chunk: its buffer from its first Dest until it is written
	queue  chan int
	wg     sync.WaitGroup

	mu  sync.Mutex
	err error
}

// pageSize is the alignment direct I/O needs of buffers, lengths and offsets.
const pageSize = 4096

func newPipeOutput(w io.WriterAt, p *plan, chunkBytes, buffers, writers int, alloc tensor.Allocator) *pipeOutput {
	o := &pipeOutput{
		alloc: alloc,
		w:     w, fields: p.fields, chunks: p.chunks,
		free:  make(chan []byte, buffers),
		bufs:  make([][]byte, len(p.chunks)),
		queue: make(chan int, buffers),
	}
	// One allocation for the whole ring: from 4 MiB it is of a huge-page class, which the
	// pool may back with huge pages (tensor.PoolAllocator), where 6 buffers of 1 MiB first
	// touched page by page took 13 ms of the Zen 5 VM's 0.12 s `wattagg aggregate`.
	o.raw = alloc.Allocate(buffers * chunkBytes)
	if !tensor.IsAligned(o.raw, pageSize) { // the pool aligns to pages; other allocators may not
		alloc.Free(o.raw)
		o.raw = alloc.Allocate(buffers*chunkBytes + pageSize)
	}
	ring := pageAligned(o.raw, buffers*chunkBytes)
	for i := range buffers {
		o.free <- ring[i*chunkBytes : (i+1)*chunkBytes : (i+1)*chunkBytes]
	}
	for range writers {
		o.wg.Add(1)
		go o.write()
	}
	return o
}

// pageAligned is the page-aligned n bytes inside b (n + pageSize bytes).
func pageAligned(b []byte, n int) []byte {
	off := 0
	if mis := int(uintptr(unsafe.Pointer(unsafe.SliceData(b))) % pageSize); mis != 0 {
		off = pageSize - mis
	}
	return b[off : off+n : off+n]
}

func (o *pipeOutput) Dest(c, p int) ([]byte, error) {
	if o.bufs[c] == nil {
		o.bufs[c] = (<-o.free)[:o.chunks[c].Len]
	}
	pc := o.chunks[c].Pieces[p]
	n := (pc.Hi - pc.Lo) * o.fields[pc.Field].Out.Size()
	return o.bufs[c][pc.Off : pc.Off+n], nil
}

func (o *pipeOutput) Done(c int) error {
	if err := o.failed(); err != nil {
		return err
	}
	o.queue <- c
	return nil
}

// write runs in each writer goroutine. After a failure it keeps recycling buffers so that no
// computing goroutine waits forever for one.
func (o *pipeOutput) write() {
	defer o.wg.Done()
	for c := range o.queue {
		b := o.bufs[c]
		o.bufs[c] = nil
		if b == nil {
			continue
		}
		if o.failed() == nil {
			if _, err := o.w.WriteAt(b, o.chunks[c].Off); err != nil {
				o.fail(err)
			}
		}
		o.free <- b[:cap(b)]
	}
}

func (o *pipeOutput) fail(err error) {
	o.mu.Lock()
	if o.err == nil {
		o.err = err
	}
	o.mu.Unlock()
}

func (o *pipeOutput) failed() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.err
}

// close waits for the queued writes, frees the ring and returns the first write error.
func (o *pipeOutput) close() error {
	close(o.queue)
	o.wg.Wait()
	if o.raw != nil {
		o.alloc.Free(o.raw)
	}
	o.raw = nil
	return o.failed()
}
