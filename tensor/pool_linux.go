package tensor

import (
	"golang.org/x/sys/unix"
)

// prefault maps every page of b now, as zero pages written by this goroutine: one
// MADV_POPULATE_WRITE call (Linux 5.14) does in the kernel what a fault per page would do from
// user space (30 ms against 43 ms for 64 MiB of new small pages on two goroutines here). Older
// kernels refuse the advice; then each page is written once. b is new zeroed memory or memory
// already cleared, so writing a zero changes nothing.
func prefault(b []byte) {
	if len(b) == 0 {
		return
	}
	if err := unix.Madvise(b, unix.MADV_POPULATE_WRITE); err == nil {
		return
	}
	touchPages(b)
}

// adviseHuge asks for transparent huge pages for b (whole 2 MiB pages of it); where THP is off
// or the advice is refused it changes nothing, which is fine: it is advice.
func adviseHuge(b []byte) { _ = unix.Madvise(b, unix.MADV_HUGEPAGE) }
