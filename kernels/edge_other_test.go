//go:build !linux

package kernels

import "testing"

// edgeBytes returns n bytes; without mmap and mprotect the edges are not guarded.
func edgeBytes(t *testing.T, n int, atEnd bool) []byte { return make([]byte, n) }
