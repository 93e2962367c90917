package tensor

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"unsafe"
)

// Allocator hands out the aligned buffers of results, accumulators and scratch, so that an
// engine's memory can be counted (CheckedAllocator) and, later, placed (huge pages, pools). Free
// returns a buffer Allocate gave; Free of a buffer from elsewhere is a bug.
type Allocator interface {
	// Allocate returns n zeroed bytes whose first byte is Alignment-aligned.
	Allocate(n int) []byte
	// Free gives b back. b must not be used afterwards.
	Free(b []byte)
}

// DefaultAllocator allocates from the Go heap (AlignedBytes); Free leaves the buffer to the
// garbage collector.
var DefaultAllocator Allocator = goAllocator{}

type goAllocator struct{}

func (goAllocator) Allocate(n int) []byte { return AlignedBytes(n) }
func (goAllocator) Free([]byte)           {}

// TestingT is the part of testing.TB a CheckedAllocator reports to.
type TestingT interface {
	Helper()
	Errorf(format string, args ...any)
}

// CheckedAllocator counts the bytes allocated and not yet freed through it, and where each live
// buffer was allocated, so that tests can assert that nothing leaks (AssertSize(t, 0)), as
// arrow-go's memory.CheckedAllocator does. It is safe for concurrent use.
type CheckedAllocator struct {
	a Allocator

	mu   sync.Mutex
	live map[uintptr]liveBuffer
	size int64
}

type liveBuffer struct {
	n     int
	stack string
}

// NewCheckedAllocator counts the allocations made through a (nil: DefaultAllocator).
func NewCheckedAllocator(a Allocator) *CheckedAllocator {
	if a == nil {
		a = DefaultAllocator
	}
	return &CheckedAllocator{a: a, live: map[uintptr]liveBuffer{}}
}

// Allocate implements Allocator.
func (c *CheckedAllocator) Allocate(n int) []byte {
	b := c.a.Allocate(n)
	if n == 0 {
		return b
	}
	var pcs [16]uintptr
	frames := runtime.CallersFrames(pcs[:runtime.Callers(2, pcs[:])])
	var sb strings.Builder
	for {
		f, more := frames.Next()
		fmt.Fprintf(&sb, "\n\t%s %s:%d", f.Function, f.File, f.Line)
		if !more {
			break
		}
	}
	c.mu.Lock()
	c.live[bufferKey(b)] = liveBuffer{n: n, stack: sb.String()}
	c.size += int64(n)
	c.mu.Unlock()
	return b
}

// Free implements Allocator. Freeing a buffer this allocator did not hand out (or twice)
// panics: it is a bug that the count would otherwise hide.
func (c *CheckedAllocator) Free(b []byte) {
	if len(b) == 0 {
		return
	}
	c.mu.Lock()
	lb, ok := c.live[bufferKey(b)]
	if ok {
		delete(c.live, bufferKey(b))
		c.size -= int64(lb.n)
	}
	c.mu.Unlock()
	if !ok {
		panic(fmt.Sprintf("tensor: CheckedAllocator: free of %d bytes it did not allocate (or freed twice)", len(b)))
	}
	c.a.Free(b)
}

// Size is the bytes allocated and not freed.
func (c *CheckedAllocator) Size() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.size
}

// AssertSize reports an error on t unless exactly want bytes are live, listing where each live
// buffer was allocated.
func (c *CheckedAllocator) AssertSize(t TestingT, want int64) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.size == want {
		return
	}
	var sb strings.Builder
	for _, lb := range c.live {
		fmt.Fprintf(&sb, "\n%d bytes allocated at:%s", lb.n, lb.stack)
	}
	t.Errorf("tensor: %d bytes live, want %d:%s", c.size, want, sb.String())
}

func bufferKey(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }
