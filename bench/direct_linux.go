//go:build linux

package bench

import (
	"os"
	"syscall"
)

// openDirect opens name for writing past the page cache.
func openDirect(name string) (*os.File, error) {
	return os.OpenFile(name, os.O_WRONLY|syscall.O_DIRECT, 0)
}
