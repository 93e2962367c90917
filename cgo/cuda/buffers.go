package cuda

import (
	"fmt"
	"sync"
	"unsafe"
)

// Buffer accounting. Every device allocation and every page-locked host buffer the GPU takes
// from the driver goes through devAlloc/hostAlloc and back through devFree/hostFree, which keep
// them by address and purpose, so that a leak is a number a test can assert on (zero after
// Close) rather than memory a long-running server loses. Page-locked memory matters most: it is
// pinned RAM the kernel cannot reclaim, and the driver frees it only with the process.

// bufferUse is what a buffer is for.
type bufferUse uint8

const (
	usePipeline bufferUse = iota // a lane's slot buffers and scratch: kept between jobs
	useResident                  // tensors in device memory (residents, accumulators)
	usePinned                    // page-locked memory handed to the caller (allocPinned)
	useTemp                      // other short-lived buffers (benchmarks)
	numUses
)

func (u bufferUse) String() string {
	return [...]string{"pipeline", "resident", "pinned", "temporary"}[u]
}

// held counts buffers and their bytes.
type held struct {
	n     int
	bytes int64
}

// bufferCounts is what a GPU holds, by purpose: device allocations and page-locked host buffers.
type bufferCounts struct {
	device, pinned [numUses]held
}

// total sums the device or page-locked buffers of every purpose.
func total(h [numUses]held) held {
	var t held
	for _, x := range h {
		t.n += x.n
		t.bytes += x.bytes
	}
	return t
}

func (c bufferCounts) String() string {
	s := ""
	for u := range numUses {
		d, p := c.device[u], c.pinned[u]
		if d.n != 0 || p.n != 0 {
			s += fmt.Sprintf(" %s: %d device (%d B), %d page-locked (%d B);", u, d.n, d.bytes, p.n, p.bytes)
		}
	}
	if s == "" {
		return "none"
	}
	return s[1 : len(s)-1]
}

// ledger records the live buffers of a GPU.
type ledger struct {
	mu     sync.Mutex
	device map[uint64]bufEntry
	pinned map[unsafe.Pointer]bufEntry
}

type bufEntry struct {
	use   bufferUse
	bytes int64
}

// devAlloc allocates n bytes of device memory for use.
func (g *GPU) devAlloc(n int64, use bufferUse) (uint64, error) {
	p, err := g.drv.alloc(g.ctx, n)
	if err != nil {
		return 0, err
	}
	g.bufs.mu.Lock()
	defer g.bufs.mu.Unlock()
	if g.bufs.device == nil {
		g.bufs.device = map[uint64]bufEntry{}
	}
	g.bufs.device[p] = bufEntry{use, n}
	return p, nil
}

// devFree frees device memory from devAlloc.
func (g *GPU) devFree(p uint64) error {
	g.bufs.mu.Lock()
	_, ok := g.bufs.device[p]
	delete(g.bufs.device, p)
	g.bufs.mu.Unlock()
	if !ok {
		return fmt.Errorf("%s: %w: freeing device address %#x, which this GPU did not allocate (or freed)", g.Name(), ErrDriver, p)
	}
	return g.drv.free(g.ctx, p)
}

// hostAlloc allocates n bytes of page-locked host memory for use.
func (g *GPU) hostAlloc(n int64, use bufferUse) (unsafe.Pointer, error) {
	p, err := g.drv.allocHost(g.ctx, n)
	if err != nil {
		return nil, err
	}
	g.bufs.mu.Lock()
	defer g.bufs.mu.Unlock()
	if g.bufs.pinned == nil {
		g.bufs.pinned = map[unsafe.Pointer]bufEntry{}
	}
	g.bufs.pinned[p] = bufEntry{use, n}
	return p, nil
}

// hostFree frees page-locked memory from hostAlloc.
func (g *GPU) hostFree(p unsafe.Pointer) error {
	g.bufs.mu.Lock()
	_, ok := g.bufs.pinned[p]
	delete(g.bufs.pinned, p)
	g.bufs.mu.Unlock()
	if !ok {
		return fmt.Errorf("%s: %w: freeing page-locked memory at %p, which this GPU did not allocate (or freed)", g.Name(), ErrDriver, p)
	}
	return g.drv.freeHost(g.ctx, p)
}

// buffers returns what the GPU holds now.
func (g *GPU) buffers() bufferCounts {
	g.bufs.mu.Lock()
	defer g.bufs.mu.Unlock()
	var c bufferCounts
	for _, e := range g.bufs.device {
		c.device[e.use].n++
		c.device[e.use].bytes += e.bytes
	}
	for _, e := range g.bufs.pinned {
		c.pinned[e.use].n++
		c.pinned[e.use].bytes += e.bytes
	}
	return c
}
