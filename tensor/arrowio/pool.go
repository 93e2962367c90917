package arrowio

import (
	"sync"
	"unsafe"

	"github.com/apache/arrow-go/v18/arrow/memory"
)

// slabPool hands out message bodies and keeps the largest one returned for the next message,
// so that a stream reader in its steady state reuses one body's memory batch after batch: on
// the development VMs first touch of fresh pages runs at ~1.4 GB/s per thread, far below
// memory bandwidth, and a batch of a few MiB would otherwise be fresh memory each time. At
// most one spare is kept, so a reader's memory stays one batch, not one update.
//
// It is the memory.Allocator of the body buffers (memory.NewBufferWithAllocator), so a body
// comes back through Free when Arrow releases its last reference, whoever held it.
type slabPool struct {
	mem    memory.Allocator
	keep   bool // keep a spare (WithBodyAllocator: every body goes back to mem)
	mu     sync.Mutex
	spare  []byte           // a whole slab, as mem allocated it
	lent   map[*byte][]byte // first byte of a lent body -> its whole slab
	closed bool
}

func newSlabPool(mem memory.Allocator) *slabPool {
	return &slabPool{mem: mem, keep: true, lent: map[*byte][]byte{}}
}

// Allocate returns n bytes (n > 0) starting on a 64-byte boundary; their content is undefined
// (a body is read over completely).
func (p *slabPool) Allocate(n int) []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	slab := p.spare
	p.spare = nil
	if len(slab) < n {
		if slab != nil {
			p.mem.Free(slab)
		}
		slab = p.mem.Allocate((n + 63) &^ 63)
	}
	p.lent[unsafe.SliceData(slab)] = slab
	return slab[:n:n]
}

// Reallocate is part of memory.Allocator; Arrow never resizes a body, but it is correct.
func (p *slabPool) Reallocate(n int, b []byte) []byte {
	out := p.Allocate(n)
	copy(out, b)
	p.Free(b)
	return out
}

// Free takes back a body: it becomes the spare if it is the largest slab seen, else goes back
// to the allocator.
func (p *slabPool) Free(b []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	slab, ok := p.lent[unsafe.SliceData(b)]
	if !ok {
		return
	}
	delete(p.lent, unsafe.SliceData(b))
	if p.closed || !p.keep || len(slab) < len(p.spare) {
		p.mem.Free(slab)
		return
	}
	if p.spare != nil {
		p.mem.Free(p.spare)
	}
	p.spare = slab
}

// close frees the spare. Bodies still lent are freed when their last reference goes.
func (p *slabPool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	if p.spare != nil {
		p.mem.Free(p.spare)
		p.spare = nil
	}
}
