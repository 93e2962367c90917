//go:build linux

package kernels

import (
	"syscall"
	"testing"
)

// edgeBytes returns n bytes that end just before an inaccessible page (atEnd) or start just
// after one, so that a kernel reading outside them faults.
func edgeBytes(t *testing.T, n int, atEnd bool) []byte {
	t.Helper()
	page := syscall.Getpagesize()
	size := (n+page-1)/page*page + page
	mem, err := syscall.Mmap(-1, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		t.Fatalf("mmap: %v", err)
	}
	t.Cleanup(func() { syscall.Munmap(mem) })
	if atEnd {
		if err := syscall.Mprotect(mem[size-page:], syscall.PROT_NONE); err != nil {
			t.Fatalf("mprotect: %v", err)
		}
		return mem[size-page-n : size-page : size-page]
	}
	if err := syscall.Mprotect(mem[:page], syscall.PROT_NONE); err != nil {
		t.Fatalf("mprotect: %v", err)
	}
	return mem[page : page+n : page+n]
}
