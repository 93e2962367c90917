package arrowio

import (
	"sync"
	"unsafe"

	"github.com/apache/arrow-go/v18/arrow/memory"
)

// arena is the allocator a reader hands to Arrow and to its slabPool: it records every live
// allocation so that closing the reader frees whatever is left. Arrow leaks references when a
// malformed batch makes it panic midway (an array that already retained its buffers is
// dropped unreleased; FuzzStreamReader found such inputs), and a reader must not leak memory
// whatever it is fed. Nothing a closed reader handed out may be used (Chunk.Data says so), so
// freeing at close is safe; a later Free of what close freed is ignored.
type arena struct {
	mem    memory.Allocator
	mu     sync.Mutex
	live   map[*byte][]byte
	closed bool
	with   []*arena // closed with this one
}

func newArena(mem memory.Allocator) *arena {
	return &arena{mem: mem, live: map[*byte][]byte{}}
}

func (a *arena) Allocate(n int) []byte {
	b := a.mem.Allocate(n)
	if len(b) > 0 {
		a.mu.Lock()
		a.live[unsafe.SliceData(b)] = b
		a.mu.Unlock()
	}
	return b
}

func (a *arena) Reallocate(n int, b []byte) []byte {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(b) > 0 {
		delete(a.live, unsafe.SliceData(b))
	}
	out := a.mem.Reallocate(n, b)
	if len(out) > 0 {
		a.live[unsafe.SliceData(out)] = out
	}
	return out
}

func (a *arena) Free(b []byte) {
	if len(b) == 0 {
		return
	}
	a.mu.Lock()
	full, ok := a.live[unsafe.SliceData(b)]
	delete(a.live, unsafe.SliceData(b))
	a.mu.Unlock()
	if ok {
		a.mem.Free(full)
	}
}

// closeWith makes closing a close b too (a reader's bodies from WithBodyAllocator).
func (a *arena) closeWith(b *arena) { a.with = append(a.with, b) }

// close frees every allocation still live.
func (a *arena) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return
	}
	a.closed = true
	for _, b := range a.with {
		b.close()
	}
	for p, b := range a.live {
		a.mem.Free(b)
		delete(a.live, p)
	}
}
