package server

import (
	"sync"
	"sync/atomic"

	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/wattagg/wattagg/tensor"
)

// framePool is the gRPC buffer pool of the Flight server: the frames a message arrives in.
// gRPC's default pool clears every buffer it hands out, and a received frame overwrites all of
// its buffer anyway (the clearing was 7% of the server's CPU in a 64-client Flight ingest
// here). Frames are at most 16 KiB (gRPC's HTTP/2 frame size); other sizes are made and left to
// the collector. A sync.Pool lets idle frames go at the next collections, and frames gRPC
// drops without giving back (the unread data of a stream it closes) are simply collected.
type framePool struct{ p sync.Pool }

const frameBytes = 16 << 10

func (f *framePool) Get(n int) *[]byte {
	if n > frameBytes {
		b := make([]byte, n)
		return &b
	}
	if b, ok := f.p.Get().(*[]byte); ok {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, frameBytes)
	return &b
}

func (f *framePool) Put(b *[]byte) {
	if cap(*b) == frameBytes {
		f.p.Put(b)
	}
}

// bodyAllocator is the memory.Allocator of the Flight readers: a reader reads each message's
// body into a buffer it keeps for the next (arrowio's slabPool), and the buffers of uploads
// that ended serve the next uploads, instead of a new MiB of garbage per upload (with a
// thousand small clients, that garbage is what would make the collector let the heap double).
// Buffers of other sizes are Arrow's GoAllocator's.
type bodyAllocator struct {
	size int // a buffer's capacity: the largest body, 64-byte rounded
	p    sync.Pool
	out  atomic.Int64 // buffers of size handed out and not given back
}

func newBodyAllocator(maxBody int) *bodyAllocator {
	return &bodyAllocator{size: (maxBody + 63) &^ 63}
}

// Allocate returns n bytes, 64-byte aligned; a reused buffer is cleared, as Arrow expects.
func (a *bodyAllocator) Allocate(n int) []byte {
	if n <= a.size/2 || n > a.size {
		return memory.DefaultAllocator.Allocate(n)
	}
	a.out.Add(1)
	if b, ok := a.p.Get().(*[]byte); ok {
		clear(*b)
		return (*b)[:n]
	}
	return tensor.AlignedBytes(a.size)[:n]
}

func (a *bodyAllocator) Reallocate(n int, b []byte) []byte {
	out := a.Allocate(n)
	copy(out, b)
	a.Free(b)
	return out
}

func (a *bodyAllocator) Free(b []byte) {
	if cap(b) != a.size {
		memory.DefaultAllocator.Free(b)
		return
	}
	a.out.Add(-1)
	b = b[:cap(b)]
	a.p.Put(&b)
}

var _ memory.Allocator = (*bodyAllocator)(nil)
