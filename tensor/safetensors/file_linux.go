package safetensors

import (
	"errors"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// openNoBlock is or-ed into the flags of every open of a file to read, so that opening a
// named pipe returns at once instead of waiting for a writer.
const openNoBlock = unix.O_NONBLOCK

// openNoFollow keeps CleanStale from following a symbolic link named like a temporary file.
const openNoFollow = unix.O_NOFOLLOW

// canLock says that temporary files are flocked, so that CleanStale can tell stale ones.
const canLock = true

// tryLock takes an exclusive flock on f without waiting; false if another holds it. The lock
// lives as long as f's open file description, so it dies with the process that holds it.
func tryLock(f *os.File) (bool, error) {
	conn, err := f.SyscallConn()
	if err != nil {
		return false, err
	}
	var ferr error
	if err := conn.Control(func(fd uintptr) {
		for {
			ferr = unix.Flock(int(fd), unix.LOCK_EX|unix.LOCK_NB)
			if ferr != unix.EINTR {
				return
			}
		}
	}); err != nil {
		return false, err
	}
	if ferr == unix.EWOULDBLOCK {
		return false, nil
	}
	if ferr != nil {
		return false, &os.PathError{Op: "flock", Path: f.Name(), Err: ferr}
	}
	return true, nil
}

// lockDir flocks directory dir, exclusive or shared, waiting for it, and returns the unlock.
func lockDir(dir string, exclusive bool) (func(), error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	how := unix.LOCK_SH
	if exclusive {
		how = unix.LOCK_EX
	}
	for {
		err = unix.Flock(fd, how)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "flock", Path: dir, Err: err}
	}
	return func() { unix.Close(fd) }, nil
}

// fileID is the device and inode of fi, which a journal records to recognise its files.
func fileID(fi os.FileInfo) (dev, ino uint64, ok bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0, false
	}
	return uint64(st.Dev), st.Ino, true
}

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
