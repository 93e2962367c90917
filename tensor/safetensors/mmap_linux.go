package safetensors

import (
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// mapFile maps the first size bytes of f read-only. populate pre-faults every page now
// (MAP_POPULATE) rather than at first touch.
func mapFile(f *os.File, size int64, populate bool) ([]byte, io.Closer, error) {
	flags := unix.MAP_SHARED
	if populate {
		flags |= unix.MAP_POPULATE
	}
	b, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, flags)
	if err != nil {
		return nil, nil, &os.PathError{Op: "mmap", Path: f.Name(), Err: err}
	}
	return b, mapping(b), nil
}

// mapping is a mapped file; Close unmaps it.
type mapping []byte

func (m mapping) Close() error { return unix.Munmap(m) }
