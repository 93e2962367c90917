//go:build !linux

package kernels

import "time"

// threadCPU returns 0: the thread CPU clock is read on Linux only, and timed then reports
// nothing.
func threadCPU() time.Duration { return 0 }
