package safetensors

import (
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A named pipe among the inputs used to block Open forever (issue 9 item 4). Every reader
// refuses non-regular files at once, saying what they are.
func TestOpenNotRegularKinds(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "x.safetensors")
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "s.safetensors")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, c := range []struct{ path, what string }{
		{fifo, "named pipe"}, {dir, "directory"}, {"/dev/null", "character device"}, {sock, "socket"},
	} {
		errs := make(chan error, 3)
		go func() {
			_, err := Open(c.path)
			errs <- err
			_, err = ReadHeader(c.path)
			errs <- err
			_, err = OpenAll([]string{c.path})
			errs <- err
		}()
		for range 3 {
			select {
			case err := <-errs:
				if !errors.Is(err, ErrNotRegular) || !strings.HasPrefix(err.Error(), c.path+": ") ||
					!strings.HasSuffix(err.Error(), "it is a "+c.what) {
					t.Errorf("%s: %v, want ErrNotRegular saying %q", c.path, err, c.what)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("%s: blocked", c.path)
			}
		}
	}
}
