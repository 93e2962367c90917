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
	// The first buffer of a huge-page class probes the two ways on its first 2 × hugeProbeBytes
	// and maps the rest the chosen way.
	q, err := NewPoolAllocator()
	if err != nil {
		t.Fatal(err)
	}
	n := 4*hugeProbeBytes + 5<<20
	if in, all := resident(t, q.Allocate(n)[:n]); in != all || !q.Stats().HugeProbed {
		t.Errorf("the first %d-byte buffer (probed: %v): %d of %d pages mapped before its first write", n, q.Stats().HugeProbed, in, all)
	}
	b := PageAligned(prefaultFrom)
	if in, all := resident(t, b); in != all {
		t.Errorf("PageAligned(%d): %d of %d pages mapped before its first write", prefaultFrom, in, all)
	}
}
