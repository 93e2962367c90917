package tensor

import (
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// resident is how many of b's pages are mapped (mincore).
func resident(t *testing.T, b []byte) (in, all int) {
	t.Helper()
	vec := make([]byte, (len(b)+PageSize-1)/PageSize)
	_, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)), uintptr(unsafe.Pointer(unsafe.SliceData(vec))))
	if e != 0 {
		t.Fatal(e)
	}
	for _, v := range vec {
		in += int(v & 1)
	}
	return in, len(vec)
}

// New buffers are mapped before anyone writes them, one call per range instead of a fault per
// page: pooled buffers of every class, and PageAligned buffers from prefaultFrom bytes.
func TestFreshBuffersArePrefaulted(t *testing.T) {
	p, err := NewPoolAllocator()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{MinPooledBytes, 1 << 20, 6 << 20} {
		b := p.Allocate(n)
		if in, all := resident(t, b[:n&^(PageSize-1)]); in != all {
			t.Errorf("a fresh pooled buffer of %d bytes: %d of %d pages mapped before its first write", n, in, all)
		}
		p.Free(b)
	}
	// A buffer of a huge-page class is mapped slice by slice, each slice the way measured
	// faster, both ways measured on its first two. A slice grows with the workers (a huge page
	// each): the buffer is two slices and a part, so that 16 workers probe both ways too (a
	// fixed 21 MiB was one slice there, and the test failed on a 16-vCPU Xeon).
	q, err := NewPoolAllocator()
	if err != nil {
		t.Fatal(err)
	}
	n := 2*max(touchSlice, q.workers*poolClass) + 5<<20
	if in, all := resident(t, q.Allocate(n)[:n]); in != all || !q.Stats().HugeProbed {
		t.Errorf("the first %d-byte buffer (probed: %v): %d of %d pages mapped before its first write", n, q.Stats().HugeProbed, in, all)
	}
	b := PageAligned(prefaultFrom)
	if in, all := resident(t, b); in != all {
		t.Errorf("PageAligned(%d): %d of %d pages mapped before its first write", prefaultFrom, in, all)
	}
}

// touchAdaptive's choice: huge pages for a first slice, small ones for the second, then the way
// last measured faster, leaving it as soon as a slice of it measures slower than the other
// way's last, and measuring the slower way again after retrySlices slices of the faster.
func TestTouchAdaptiveChoice(t *testing.T) {
	p, err := NewPoolAllocator()
	if err != nil {
		t.Fatal(err)
	}
	defer func(n int) { retrySlices = n }(retrySlices)
	retrySlices = 3
	step := func(want bool, gbps float64) {
		t.Helper()
		if got := p.nextWay(); got != want {
			t.Fatalf("next slice huge %v, want %v (stats %+v)", got, want, p.Stats())
		}
		p.measured(want, gbps)
	}
	step(true, 9)    // never measured: huge first (a lucky 9 GB/s: free 2 MiB blocks)
	step(false, 2.5) // then small
	step(true, 9)    // huge is faster
	step(true, 0.2)  // the kernel has to compact now: huge turns slow
	step(false, 2.4) // left after one slice
	step(false, 2.6) // and kept: huge's measurement is 1 slice old,
	step(false, 2.5) // 2,
	step(false, 2.5) // 3 (not more than retrySlices),
	step(true, 0.3)  // 4: huge is measured once more
	step(false, 2.5) // still slower: back
	if st := p.Stats(); !st.HugeProbed || st.HugePages || st.HugeGBps != 0.3 || st.SmallGBps != 2.5 {
		t.Fatalf("stats %+v", st)
	}
	step(false, 2.5)
	step(false, 2.5)
	step(false, 0.1) // small pages turn slow (a PVM guest's traps): huge again
	step(true, 4)
	if st := p.Stats(); !st.HugePages {
		t.Fatalf("stats %+v", st)
	}
}
