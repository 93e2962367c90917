package tensor_test

import (
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wattagg/wattagg/tensor"
)

func newPool(t *testing.T, opts ...tensor.PoolOption) *tensor.PoolAllocator {
	t.Helper()
	p, err := tensor.NewPoolAllocator(opts...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func allZero(b []byte) int {
	for i, v := range b {
		if v != 0 {
			return i
		}
	}
	return -1
}

// A reused buffer is zeroed again, aligned (to a page, and to a huge page from 4 MiB), of the
// length asked, and it is the same memory (the point of the pool); sizes in the same class
// (64 KiB steps, 2 MiB from 4 MiB) share buffers.
func TestPoolReusesZeroedAlignedMemory(t *testing.T) {
	p := newPool(t, tensor.WithPoolWorkers(3))
	for _, n := range []int{tensor.MinPooledBytes + 3, 3<<20 + 5, 16 << 20} {
		a := p.Allocate(n)
		if len(a) != n || cap(a) != n {
			t.Fatalf("n=%d: len %d cap %d", n, len(a), cap(a))
		}
		if align := map[bool]int{true: 2 << 20, false: 4096}[n >= 4<<20]; !tensor.IsAligned(a, align) {
			t.Fatalf("n=%d: not %d-byte aligned", n, align)
		}
		if i := allZero(a); i >= 0 {
			t.Fatalf("n=%d: new buffer byte %d is %d", n, i, a[i])
		}
		for i := range a {
			a[i] = byte(i*7 + 1)
		}
		p.Free(a)
		b := p.Allocate(n - 1) // same class
		if &a[0] != &b[0] {
			t.Fatalf("n=%d: the freed buffer was not reused", n)
		}
		if i := allZero(b); i >= 0 {
			t.Fatalf("n=%d: reused buffer byte %d is %d, want 0", n, i, b[i])
		}
		p.Free(b)
	}
	st := p.Stats()
	if st.New != 3 || st.Reused != 3 || st.LiveBytes != 0 {
		t.Fatalf("stats %+v: want 3 new, 3 reused, nothing live", st)
	}
	if want := int64(320<<10 + 3<<20 + 64<<10 + 16<<20); st.IdleBytes != want {
		t.Fatalf("idle %d bytes, want %d", st.IdleBytes, want)
	}
}

// Small buffers come from the Go heap, aligned and zeroed, and Free ignores them.
func TestPoolSmallBuffers(t *testing.T) {
	p := newPool(t)
	for _, n := range []int{0, 1, 63, 4096, tensor.MinPooledBytes - 1} {
		b := p.Allocate(n)
		if len(b) != n || (n > 0 && !tensor.IsAligned(b, tensor.Alignment)) || allZero(b) >= 0 {
			t.Fatalf("n=%d: len %d aligned %v", n, len(b), tensor.IsAligned(b, tensor.Alignment))
		}
		p.Free(b)
	}
	if st := p.Stats(); st.New != 0 || st.Reused != 0 || st.IdleBytes != 0 {
		t.Fatalf("small buffers were pooled: %+v", st)
	}
}

// Idle memory is bounded: past the limit the oldest idle buffers go, and a class larger than
// the limit is never kept.
func TestPoolLimit(t *testing.T) {
	p := newPool(t, tensor.WithPoolLimit(5<<20))
	a, b, c := p.Allocate(2<<20), p.Allocate(2<<20), p.Allocate(2<<20)
	big := p.Allocate(6 << 20)
	p.Free(a)
	p.Free(b)
	p.Free(c) // 6 MiB idle > 5 MiB: a goes
	p.Free(big)
	st := p.Stats()
	if st.IdleBytes != 4<<20 || st.Evicted != 2 {
		t.Fatalf("stats %+v: want 4 MiB idle, 2 evicted", st)
	}
	// The survivors are the most recently freed: c first, then b.
	if x := p.Allocate(2 << 20); &x[0] != &c[0] {
		t.Fatal("the most recently freed buffer was not reused first")
	}
	if x := p.Allocate(2 << 20); &x[0] != &b[0] {
		t.Fatal("b was not kept")
	}
	if x := p.Allocate(2 << 20); &x[0] == &a[0] {
		t.Fatal("the evicted buffer was handed out again")
	}
	p.Trim()
	if st := p.Stats(); st.IdleBytes != 0 {
		t.Fatalf("after Trim %d bytes idle", st.IdleBytes)
	}
}

// Freeing what the pool did not hand out, or twice, panics naming the mistake.
func TestPoolFreeForeign(t *testing.T) {
	p := newPool(t)
	for name, free := range map[string]func(){
		"foreign": func() { p.Free(make([]byte, 1<<20)) },
		"twice": func() {
			b := p.Allocate(1 << 20)
			p.Free(b)
			p.Free(b)
		},
	} {
		func() {
			defer func() {
				r := recover()
				if s, _ := r.(string); !strings.Contains(s, "did not allocate (or freed twice)") {
					t.Fatalf("%s: recovered %v", name, r)
				}
			}()
			free()
		}()
	}
}

func TestPoolOptions(t *testing.T) {
	if _, err := tensor.NewPoolAllocator(tensor.WithPoolWorkers(0)); err == nil || !strings.Contains(err.Error(), "0 workers") {
		t.Fatalf("0 workers: %v", err)
	}
	if _, err := tensor.NewPoolAllocator(tensor.WithPoolLimit(-1)); err == nil || !strings.Contains(err.Error(), "negative") {
		t.Fatalf("negative limit: %v", err)
	}
	// Huge pages are advice: the memory is the same either way.
	p := newPool(t, tensor.WithHugePages(true), tensor.WithPoolLimit(0))
	b := p.Allocate(4 << 20)
	if allZero(b) >= 0 || !tensor.IsAligned(b, 2<<20) {
		t.Fatal("huge-page buffer not zeroed or not aligned")
	}
	b[len(b)-1] = 1
	p.Free(b)
	if st := p.Stats(); st.IdleBytes != 0 || st.Evicted != 1 {
		t.Fatalf("limit 0 kept memory: %+v", st)
	}
}

// Concurrent users never share a buffer: each writes its own pattern and finds it intact.
func TestPoolConcurrent(t *testing.T) {
	p := newPool(t, tensor.WithPoolLimit(64<<20))
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range 20 {
				b := p.Allocate((1 + (g+k)%3) << 20)
				if i := allZero(b); i >= 0 {
					errs <- "not zeroed"
					return
				}
				for i := 0; i < len(b); i += 4096 {
					b[i] = byte(g + 1)
				}
				for i := 0; i < len(b); i += 4096 {
					if b[i] != byte(g+1) {
						errs <- "buffer shared between goroutines"
						return
					}
				}
				p.Free(b)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	if st := p.Stats(); st.LiveBytes != 0 {
		t.Fatalf("%d bytes live after every buffer was freed", st.LiveBytes)
	}
}

// A CheckedAllocator over a pool counts the same way it counts over the Go heap.
func TestPoolUnderCheckedAllocator(t *testing.T) {
	c := tensor.NewCheckedAllocator(newPool(t))
	b := c.Allocate(3 << 20)
	c.AssertSize(t, 3<<20)
	c.Free(b)
	c.AssertSize(t, 0)
}

// A buffer that is never given back is collected like any Go memory (the pool keeps no
// reference to it) and then forgotten: nothing is counted live any more.
func TestPoolForgetsCollectedBuffers(t *testing.T) {
	p := newPool(t)
	for range 4 {
		b := p.Allocate(4 << 20)
		b[0] = 1
	}
	for try := 0; p.Stats().LiveBytes != 0; try++ {
		if try == 200 {
			t.Fatalf("%d bytes still counted live after the buffers became garbage", p.Stats().LiveBytes)
		}
		runtime.GC()
		time.Sleep(5 * time.Millisecond)
	}
	b := p.Allocate(4 << 20) // possibly at a collected buffer's address
	p.Free(b)
	if st := p.Stats(); st.LiveBytes != 0 || st.IdleBytes != 4<<20 {
		t.Fatalf("stats %+v after the last Free", st)
	}
}

// Without WithHugePages a buffer of a huge-page class is first-touched in slices (4 MiB on two
// workers), the first 8 MiB buffer's two slices one with huge pages and one without, each later slice the
// way that measured faster (TestTouchAdaptiveChoice has the rules); with the option nothing is
// measured.
func TestPoolProbesHugePages(t *testing.T) {
	p := newPool(t, tensor.WithPoolWorkers(2)) // slices of 4 MiB: a huge page a worker
	if st := p.Stats(); st.HugeProbed {
		t.Fatalf("probed before any buffer: %+v", st)
	}
	small := p.Allocate(3 << 20) // not a huge-page class: no probe
	if st := p.Stats(); st.HugeProbed || st.HugeGBps != 0 || st.SmallGBps != 0 {
		t.Fatalf("a %d-byte buffer probed huge pages: %+v", len(small), st)
	}
	b := p.Allocate(8 << 20)
	if allZero(b) >= 0 {
		t.Fatal("the probed buffer is not zero")
	}
	for i := range b { // the two halves are one buffer: write all of it
		b[i] = byte(i)
	}
	st := p.Stats()
	if !st.HugeProbed || !(st.HugeGBps > 0) || !(st.SmallGBps > 0) {
		t.Fatalf("no probe after an 8 MiB buffer: %+v", st)
	}
	if st.HugePages != (st.HugeGBps > st.SmallGBps) {
		t.Fatalf("chose huge pages %v with huge %.2f GB/s against small %.2f GB/s", st.HugePages, st.HugeGBps, st.SmallGBps)
	}
	c := p.Allocate(4 << 20) // one slice, the faster way: the other way's rate stays
	if allZero(c) >= 0 {
		t.Fatal("a new buffer is not zero")
	}
	st2 := p.Stats()
	if st.HugePages && st2.SmallGBps != st.SmallGBps || !st.HugePages && st2.HugeGBps != st.HugeGBps {
		t.Fatalf("the slice after %+v went the slower way: %+v", st, st2)
	}
	p.Free(b)
	p.Free(c)
	p.Free(small)
	for _, on := range []bool{false, true} {
		q := newPool(t, tensor.WithHugePages(on))
		q.Free(q.Allocate(8 << 20))
		if st := q.Stats(); st.HugeProbed || st.HugePages != on {
			t.Fatalf("WithHugePages(%v): %+v", on, st)
		}
	}
}
