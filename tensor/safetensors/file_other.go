//go:build !linux

package safetensors

import (
	"errors"
	"os"
)

// openNoBlock is 0: only Linux refuses FIFOs before opening them.
const openNoBlock = 0

// openNoFollow is 0: CleanStale removes nothing off Linux.
const openNoFollow = 0

// canLock is false: temporary files are only flocked on Linux, so CleanStale cannot tell a
// stale one from a live one elsewhere and removes nothing.
const canLock = false

// tryLock is unsupported off Linux.
func tryLock(*os.File) (bool, error) { return false, errors.ErrUnsupported }

// lockDir is unsupported off Linux.
func lockDir(string, bool) (func(), error) { return nil, errors.ErrUnsupported }

// fileID is unknown off Linux: journals match files by path alone.
func fileID(os.FileInfo) (dev, ino uint64, ok bool) { return 0, 0, false }

// allocate sets the size of f. Only Linux reserves the disk space up front.
func allocate(f *os.File, size int64) error { return f.Truncate(size) }

// openDirect returns nil: only Linux writes with O_DIRECT.
func openDirect(string) (*os.File, error) { return nil, nil }

// directUnsupported is never asked off Linux, where there is no direct descriptor.
func directUnsupported(error) bool { return true }
