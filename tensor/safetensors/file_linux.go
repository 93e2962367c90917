package safetensors

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// allocate reserves size bytes of disk for f, so that a full disk fails now rather than in
// the middle of the data. Filesystems without fallocate get a sparse file instead.
func allocate(f *os.File, size int64) error {
	conn, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := conn.Control(func(fd uintptr) {
		ferr = unix.Fallocate(int(fd), 0, 0, size)
	}); err != nil {
		return err
	}
	if errors.Is(ferr, unix.EOPNOTSUPP) || errors.Is(ferr, unix.ENOSYS) {
		return f.Truncate(size)
	}
	if ferr != nil {
		return &os.PathError{Op: "fallocate", Path: f.Name(), Err: ferr}
	}
	return nil
}

// openDirect opens a second, O_DIRECT descriptor on name, or returns nil where the
// filesystem refuses O_DIRECT (EINVAL), so that the writer falls back to buffered writes.
func openDirect(name string) (*os.File, error) {
	f, err := os.OpenFile(name, os.O_WRONLY|unix.O_DIRECT, 0)
	if errors.Is(err, unix.EINVAL) {
		return nil, nil
	}
	return f, err
}

// directUnsupported reports whether a direct write failed because this file or filesystem
// does not take O_DIRECT writes (as opposed to a real I/O error).
func directUnsupported(err error) bool { return errors.Is(err, unix.EINVAL) }

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
