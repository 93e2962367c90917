//go:build unix

package device

import (
	"fmt"
	"syscall"
)

// preadFull reads len(b) bytes of fd at off, retrying interrupted and partial reads; it
// returns the bytes read and errShortRead when the file ended first.
func preadFull(fd int, b []byte, off int64) (int, error) {
	n := 0
	for n < len(b) {
		k, err := syscall.Pread(fd, b[n:], off+int64(n))
		switch {
		case err == syscall.EINTR:
			continue
		case err != nil:
			return n, fmt.Errorf("pread at byte %d: %w", off+int64(n), err)
		case k == 0:
			return n, errShortRead
		}
		n += k
	}
	return n, nil
}
