package server

import (
	"slices"
	"sync"
	"sync/atomic"

	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/wattagg/wattagg/tensor"
)

// framePool is the gRPC buffer pool of the Flight server: the frames a message arrives in and
// the buffers gRPC reads the connections into. gRPC's default pool clears every buffer it hands
// out, and a received frame or read overwrites what of its buffer is used (the clearing was 7%
// of the server's CPU in a 64-client Flight ingest here). Two sizes are pooled: frames, at most
// 16 KiB (gRPC's HTTP/2 frame size), and reads, flightReadBuffer (gRPC takes one per read of a
// connection and gives it back once its frames are copied out; left to the collector, those were
// 32 KiB of fresh memory per read). Other sizes are made and left to the collector. A sync.Pool
// lets idle buffers go at the next collections, and buffers gRPC drops without giving back (the
// unread data of a stream it closes) are simply collected.
type framePool struct{ frames, reads sync.Pool }

const frameBytes = 16 << 10

// flightReadBuffer is what gRPC reads a connection into at a time (grpc.ReadBufferSize; its
// default).
const flightReadBuffer = 32 << 10

func (f *framePool) Get(n int) *[]byte {
	pool, size := &f.frames, frameBytes
	switch {
	case n > flightReadBuffer:
		b := make([]byte, n)
		return &b
	case n > frameBytes:
		pool, size = &f.reads, flightReadBuffer
	}
	if b, ok := pool.Get().(*[]byte); ok {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, size)
	return &b
}

func (f *framePool) Put(b *[]byte) {
	switch cap(*b) {
	case frameBytes:
		f.frames.Put(b)
	case flightReadBuffer:
		f.reads.Put(b)
	}
}

// bodyAllocator lends message bodies to the Flight readers (arrowio.WithBodyAllocator): a
// reader reads a message's body into one, decodes the batch, and gives it back before it waits
// for the next message, so the bodies serve whichever streams are decoding instead of one
// being kept by every stream, and an upload that ends leaves no garbage. Measured here (64
// clients × 25M f32 in 1 MiB batches): the server's peak RSS was 394-415 MiB with a body kept
// per reader, 351-367 MiB with this. Classes are powers of two from 64 KiB up to the largest
// body; a body is read over completely, so buffers are not cleared.
type bodyAllocator struct {
	classes []int // capacities, ascending; the last is the largest body, 64-byte rounded
	pools   []sync.Pool
	out     atomic.Int64 // bodies lent and not given back
	lent    atomic.Int64 // bodies lent in all (a batch arrowio reads lazily takes none)
}

func newBodyAllocator(maxBody int) *bodyAllocator {
	a := &bodyAllocator{}
	for c := 64 << 10; c < maxBody; c *= 2 {
		a.classes = append(a.classes, c)
	}
	a.classes = append(a.classes, (maxBody+63)&^63)
	a.pools = make([]sync.Pool, len(a.classes))
	return a
}

// Allocate returns n bytes, 64-byte aligned, not cleared.
func (a *bodyAllocator) Allocate(n int) []byte {
	k, ok := slices.BinarySearch(a.classes, n)
	if !ok && k == len(a.classes) {
		return memory.DefaultAllocator.Allocate(n) // no such body passes gRPC's limit
	}
	a.out.Add(1)
	a.lent.Add(1)
	if b, ok := a.pools[k].Get().(*[]byte); ok {
		return (*b)[:n]
	}
	return tensor.AlignedBytes(a.classes[k])[:n]
}

func (a *bodyAllocator) Reallocate(n int, b []byte) []byte {
	out := a.Allocate(n)
	copy(out, b)
	a.Free(b)
	return out
}

func (a *bodyAllocator) Free(b []byte) {
	k, ok := slices.BinarySearch(a.classes, cap(b))
	if !ok {
		return // the default allocator's: the collector has it
	}
	a.out.Add(-1)
	b = b[:cap(b)]
	a.pools[k].Put(&b)
}

var _ memory.Allocator = (*bodyAllocator)(nil)
