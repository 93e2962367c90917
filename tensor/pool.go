package tensor

import (
	"fmt"
	"runtime"
	"sync"
	"time"
	"unsafe"
)

// PoolAllocator is an Allocator for buffers that would otherwise be fresh memory on every call:
// results, accumulators, read buffers. Fresh memory is the dearest memory there is on the
// development VMs: the first write to each new page costs a fault and, under their balloon's
// free-page reporting, often a fault on the host too (1.4-2.3 GB/s for new 4 KiB pages here,
// 0.3-0.6 GB/s for new 2 MiB pages, against 35 GB/s for rewriting memory already touched). So
// buffers given back with Free are kept, and handed out again by the next Allocate of the same
// size class, cleared in parallel; only what the pool cannot serve is new, and new buffers are
// first-touched by the pool (MADV_POPULATE_WRITE and a write to each page, in parallel from 4
// MiB) rather than faulted page by page by whoever writes them first, with huge pages or not
// as the pool measured (hugeMode).
//
// The memory is Go memory (aligned inside a larger make), and the pool remembers only the
// address, size class and number of what it hands out, so a buffer that is never given back
// is collected like any other instead of leaking, and a slice kept past Free cannot fault: it
// can only see the next owner's data, which is the bug Free's contract forbids. Buffers under
// MinPooledBytes come straight from AlignedBytes. It is safe for concurrent use.
type PoolAllocator struct {
	huge    hugeMode // set by the options, then only read
	workers int
	limit   int64

	mu    sync.Mutex
	live  map[uintptr]pooledLive // handed out, by address of the first byte
	gen   uint64                 // numbers the buffers handed out
	idle  map[int64][]*pooled    // given back, by size class
	lru   []*pooled              // given back, oldest first (evicted first past limit)
	kept  int64                  // bytes of the idle buffers
	stats PoolStats
	// slices counts the slices touchAdaptive measured; hugeAt and smallAt are the counts at
	// each way's last measurement.
	slices, hugeAt, smallAt int
}

// pooledLive is what the pool remembers of a buffer it handed out: not the memory (a buffer
// never given back must stay collectable), only its class, and the number that tells it from
// a later buffer at the same address.
type pooledLive struct {
	class int64
	gen   uint64
}

// pooled is an idle buffer of the pool: data is its class bytes.
type pooled struct {
	data  []byte
	class int64
}

// MinPooledBytes is the smallest allocation the pool keeps: smaller ones are cheap to fault
// (a few pages) and plentiful, and go to the Go heap.
const MinPooledBytes = 256 << 10

// poolClass is the granularity of the size classes from hugeFrom bytes, and their alignment: a
// huge page, so that such a buffer can be backed by huge pages when asked. Smaller buffers
// (a file writer's ring, a model of a few MiB) round to smallClass and are page-aligned, so
// that rounding does not double what they touch. A model of any size reuses the buffer of the
// previous round of the same model.
const (
	poolClass  = 2 << 20
	hugeFrom   = 4 << 20
	smallClass = 64 << 10
	pageBytes  = 4096
)

// classOf is the size class of an n-byte buffer and its alignment.
func classOf(n int) (class int64, align int) {
	if n < hugeFrom {
		return (int64(n) + smallClass - 1) / smallClass * smallClass, pageBytes
	}
	return (int64(n) + poolClass - 1) / poolClass * poolClass, poolClass
}

// PoolOption configures a PoolAllocator.
type PoolOption func(*PoolAllocator) error

// WithHugePages says whether new pooled buffers of the huge-page classes (from 4 MiB) ask for
// transparent huge pages (MADV_HUGEPAGE, which matters where THP is in madvise mode). Without
// it the pool measures which is cheaper, slice by slice (see hugeMode): no rule held on both
// kinds of development VM, nor on one VM over an hour.
func WithHugePages(on bool) PoolOption {
	return func(p *PoolAllocator) error {
		p.huge = hugeOff
		if on {
			p.huge = hugeOn
		}
		return nil
	}
}

// WithPoolWorkers sets how many goroutines pre-fault and clear a buffer (default GOMAXPROCS).
func WithPoolWorkers(n int) PoolOption {
	return func(p *PoolAllocator) error {
		if n < 1 {
			return fmt.Errorf("tensor: pool with %d workers: want at least 1", n)
		}
		p.workers = n
		return nil
	}
}

// WithPoolLimit bounds the bytes the pool keeps while nobody uses them (default
// DefaultPoolLimit); past it the oldest idle buffers are left to the garbage collector.
// 0 keeps nothing (every buffer is still pre-faulted in parallel).
func WithPoolLimit(bytes int64) PoolOption {
	return func(p *PoolAllocator) error {
		if bytes < 0 {
			return fmt.Errorf("tensor: pool limit %d bytes is negative", bytes)
		}
		p.limit = bytes
		return nil
	}
}

// DefaultPoolLimit is the idle memory a pool keeps by default: enough for a few results,
// accumulators and optimizer moments of a 100M-parameter model.
const DefaultPoolLimit = 2 << 30

// NewPoolAllocator returns an empty pool.
func NewPoolAllocator(opts ...PoolOption) (*PoolAllocator, error) {
	p := &PoolAllocator{workers: runtime.GOMAXPROCS(0), limit: DefaultPoolLimit,
		live: map[uintptr]pooledLive{}, idle: map[int64][]*pooled{}}
	for _, o := range opts {
		if err := o(p); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// SharedPool is the process's pool: the default allocator of rounds' results and of the CPU
// device's accumulators, so that one round's buffers serve the next.
var SharedPool = mustPool()

func mustPool() *PoolAllocator {
	p, err := NewPoolAllocator()
	if err != nil {
		panic(err) // the defaults are valid
	}
	return p
}

// PoolStats counts what a pool did.
type PoolStats struct {
	Reused    int64 // allocations served from idle buffers
	New       int64 // allocations that took new memory
	NewBytes  int64 // bytes of new memory (whole size classes)
	Evicted   int64 // idle buffers left to the collector past the limit
	LiveBytes int64 // class bytes handed out and not given back
	IdleBytes int64 // class bytes kept for reuse

	// HugePages says whether the next new slice of a huge-page class asks for huge pages: set
	// by WithHugePages, or by the rates measured so far (HugeProbed once both ways have been):
	// HugeGBps and SmallGBps, first touch included, each the last slice's that went that way.
	HugePages           bool
	HugeProbed          bool
	HugeGBps, SmallGBps float64
}

// Stats reports the pool's counters.
func (p *PoolAllocator) Stats() PoolStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.stats
	s.IdleBytes = p.kept
	s.HugePages = p.huge == hugeOn || p.huge == hugeAuto && s.HugeGBps > s.SmallGBps
	return s
}

// Allocate implements Allocator.
func (p *PoolAllocator) Allocate(n int) []byte {
	if n < MinPooledBytes {
		return AlignedBytes(n)
	}
	class, align := classOf(n)
	p.mu.Lock()
	b := p.takeIdle(class)
	if b != nil {
		p.stats.Reused++
	} else {
		p.stats.New++
		p.stats.NewBytes += class
	}
	p.stats.LiveBytes += class
	p.mu.Unlock()
	var data []byte
	if b != nil {
		// Touched before: clearing it runs at memory speed, spread over the workers.
		data = b.data
		parallelRanges(data[:n], p.workers, func(r []byte) { clear(r) })
	} else {
		data = p.fresh(class, align)
	}
	p.mu.Lock()
	p.gen++
	gen := p.gen
	if stale, ok := p.live[addr(data)]; ok {
		// A buffer never given back was collected and its memory handed out again before its
		// cleanup ran: that cleanup will find another number and do nothing, so drop its
		// bytes here (they were counted live forever: a flaky TestPoolForgetsCollectedBuffers).
		p.stats.LiveBytes -= stale.class
	}
	p.live[addr(data)] = pooledLive{class: class, gen: gen}
	p.mu.Unlock()
	if b == nil {
		// A buffer never given back is collected with its memory; then forget it, unless its
		// address has been handed out again since.
		runtime.AddCleanup(unsafe.SliceData(data), p.forget, liveKey{addr(data), gen})
	}
	return data[:n:n]
}

// liveKey names a buffer handed out: its address and number.
type liveKey struct {
	addr uintptr
	gen  uint64
}

// forget drops the record of a buffer that was collected while handed out.
func (p *PoolAllocator) forget(k liveKey) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if lb, ok := p.live[k.addr]; ok && lb.gen == k.gen {
		delete(p.live, k.addr)
		p.stats.LiveBytes -= lb.class
	}
}

// takeIdle pops the most recently given back buffer of class (nil if none). p.mu is held.
func (p *PoolAllocator) takeIdle(class int64) *pooled {
	bs := p.idle[class]
	if len(bs) == 0 {
		return nil
	}
	b := bs[len(bs)-1]
	p.idle[class] = bs[:len(bs)-1]
	p.kept -= class
	for i, x := range p.lru {
		if x == b {
			p.lru = append(p.lru[:i], p.lru[i+1:]...)
			break
		}
	}
	return b
}

// fresh makes a new buffer of class bytes, aligned to align, and pre-faults it in parallel when
// it is of a huge-page class. Go hands out large allocations zeroed (new memory from the OS is
// zero and is not cleared again), so the pre-fault writes nothing.
func (p *PoolAllocator) fresh(class int64, align int) []byte {
	raw := make([]byte, class+int64(align))
	off := 0
	if mis := int(addr(raw) % uintptr(align)); mis != 0 {
		off = align - mis
	}
	data := raw[off : off+int(class) : off+int(class)]
	if align == poolClass {
		switch p.huge {
		case hugeOn:
			adviseHuge(data)
		case hugeAuto:
			p.touchAdaptive(data)
			return data
		}
	}
	// Small classes too: the class's rounding (under 64 KiB) is the most it maps for nothing.
	parallelRanges(data, p.workers, firstTouch)
	return data
}

// hugeMode is whether new buffers of the huge-page classes ask for huge pages: hugeAuto (the
// default) measures it as it goes (touchAdaptive).
//
// Neither way wins everywhere, nor for long. On the Zen 4 development VMs (KVM) a new huge
// page was 3-5x slower to fault in than the same bytes of small pages (0.3-0.6 against 1.4-2.3
// GB/s: the host backs freshly reported free memory lazily), and where the guest has free 2 MiB
// blocks left a few huge pages come fast (3-9 GB/s) before the kernel must compact memory for
// the next ones (0.12-0.58 GB/s for 8 MiB buffers, measured 2026-12-03 in `wattagg demo`, whose
// first streaming add then took 0.56-0.75 s for 200 MB of sums instead of 0.09). On the Zen 5 VM
// of 2026-12-02 (a PVM guest: shadow page tables, so the first write to each new 4 KiB mapping
// traps to the hypervisor) small pages first-touched at 0.43-0.63 GB/s, MADV_POPULATE_WRITE
// included, and huge pages at 0.85-6.2 GB/s: 25-27 ms against 1-19 ms for a 16 MiB
// accumulator, which was the extra time of `wattagg aggregate --stream`'s first group.
type hugeMode uint8

const (
	hugeAuto hugeMode = iota
	hugeOn
	hugeOff
)

// touchSlice is the least unit of touchAdaptive: two huge pages, so that on two cores the first
// 8 MiB buffer measures both ways. A slice is at least a huge page per worker, so that every
// worker first-touches a part of each.
const touchSlice = 4 << 20

// retrySlices is how many slices may pass after the slower way's last measurement before it is
// measured again, in case it got cheaper (memory freed, compacted): one slice in 65 pays it.
var retrySlices = 64

// touchAdaptive first-touches data (whole huge pages: poolClass-aligned, a multiple of it) in
// slices (touchSlice), each spread over the workers and taken with huge pages or without,
// whichever way was faster at its last measurement (a way never measured goes first, huge pages
// before small ones, and the slower way again after retrySlices slices); each slice's rate
// becomes its way's. A way that turns slow is thus left after one slice, where a single probe
// that met the guest's last free 2 MiB blocks chose huge pages for good.
func (p *PoolAllocator) touchAdaptive(data []byte) {
	slice := max(touchSlice, p.workers*poolClass)
	for len(data) > 0 {
		s := data[:min(len(data), slice)]
		data = data[len(s):]
		huge := p.nextWay()
		if huge {
			adviseHuge(s)
		}
		t0 := time.Now()
		parallelRanges(s, p.workers, firstTouch)
		p.measured(huge, float64(len(s))/max(time.Since(t0).Seconds(), 1e-9)/1e9)
	}
}

// nextWay says whether the next slice asks for huge pages.
func (p *PoolAllocator) nextWay() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := &p.stats
	switch {
	case st.HugeGBps == 0:
		return true
	case st.SmallGBps == 0:
		return false
	}
	huge := st.HugeGBps > st.SmallGBps
	other := p.smallAt
	if !huge {
		other = p.hugeAt
	}
	if p.slices-other > retrySlices {
		return !huge
	}
	return huge
}

// measured records a slice's first-touch rate in GB/s as its way's.
func (p *PoolAllocator) measured(huge bool, gbps float64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := &p.stats
	p.slices++
	if huge {
		st.HugeGBps, p.hugeAt = gbps, p.slices
	} else {
		st.SmallGBps, p.smallAt = gbps, p.slices
	}
	st.HugeProbed = st.HugeGBps > 0 && st.SmallGBps > 0
}

// Free implements Allocator: a pooled buffer is kept for the next Allocate of its class (or,
// past the limit, an older one is dropped). Freeing a pooled-size buffer the pool did not hand
// out, or freeing one twice, panics: it is a bug that would otherwise hand one buffer to two
// owners.
func (p *PoolAllocator) Free(b []byte) {
	if cap(b) < MinPooledBytes {
		return // from the Go heap (or empty): the collector has it
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	lb, ok := p.live[addr(b)]
	if !ok {
		panic(fmt.Sprintf("tensor: PoolAllocator: free of %d bytes it did not allocate (or freed twice)", len(b)))
	}
	delete(p.live, addr(b))
	p.stats.LiveBytes -= lb.class
	// The whole class: b's allocation holds it (b's length is what was asked for).
	x := &pooled{data: unsafe.Slice(unsafe.SliceData(b), lb.class), class: lb.class}
	if x.class > p.limit {
		p.stats.Evicted++
		return
	}
	for p.kept+x.class > p.limit && len(p.lru) > 0 {
		old := p.lru[0]
		p.lru = p.lru[1:]
		bs := p.idle[old.class]
		for i, y := range bs {
			if y == old {
				p.idle[old.class] = append(bs[:i], bs[i+1:]...)
				break
			}
		}
		p.kept -= old.class
		p.stats.Evicted++
	}
	p.idle[x.class] = append(p.idle[x.class], x)
	p.lru = append(p.lru, x)
	p.kept += x.class
}

// Trim drops every idle buffer (to the collector), for a process that is done aggregating.
func (p *PoolAllocator) Trim() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stats.Evicted += int64(len(p.lru))
	p.idle, p.lru, p.kept = map[int64][]*pooled{}, nil, 0
}

// parallelRanges runs fn over b cut into up to workers pieces, split at poolClass boundaries
// (whole huge pages to each goroutine), and waits.
func parallelRanges(b []byte, workers int, fn func([]byte)) {
	pieces := min(workers, (len(b)+poolClass-1)/poolClass)
	if pieces <= 1 {
		fn(b)
		return
	}
	step := (len(b)/pieces + poolClass - 1) / poolClass * poolClass
	var wg sync.WaitGroup
	for lo := 0; lo < len(b); lo += step {
		r := b[lo:min(lo+step, len(b))]
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(r)
		}()
	}
	wg.Wait()
}

func addr(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }

// touchPages writes a zero to every 4 KiB of b (zeroed memory), faulting each page in.
func touchPages(b []byte) {
	for i := 0; i < len(b); i += 4096 {
		b[i] = 0
	}
}
