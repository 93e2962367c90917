package arrowio

import (
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// mapFile maps the first size bytes of f read-only. Pages are mapped at first touch, by
// whichever goroutine reads them (as tensor/safetensors does, for the same reason).
func mapFile(f *os.File, size int64) ([]byte, io.Closer, error) {
	b, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, nil, &os.PathError{Op: "mmap", Path: f.Name(), Err: err}
	}
	return b, mapping(b), nil
}

// mapping is a mapped file; Close unmaps it.
type mapping []byte

func (m mapping) Close() error { return unix.Munmap(m) }
