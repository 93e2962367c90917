//go:build !linux

package safetensors

import "os"

// allocate sets the size of f. Only Linux reserves the disk space up front.
func allocate(f *os.File, size int64) error { return f.Truncate(size) }

// openDirect returns nil: only Linux writes with O_DIRECT.
func openDirect(string) (*os.File, error) { return nil, nil }

// directUnsupported is never asked off Linux, where there is no direct descriptor.
func directUnsupported(error) bool { return true }

// syncDir is best effort: Windows cannot open a directory to sync it, and wattagg only
// promises durability on Linux.
func syncDir(dir string) error {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
