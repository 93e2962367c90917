package servebench

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// receiveFile writes exactly what it was sent, in whole blocks with O_DIRECT (the last one cut
// back), for sizes around the write and block sizes; and the TCP-into-disk floor runs.
func TestReceiveFile(t *testing.T) {
	dir := t.TempDir()
	for _, direct := range []bool{false, true} {
		for _, n := range []int{0, 1, 4095, 4096, 512<<10 - 1, 512 << 10, 3<<20 + 123} {
			body := make([]byte, n)
			for i := range body {
				body[i] = byte(i*31 + n)
			}
			path := filepath.Join(dir, "f")
			err := receiveFile(path, bytes.NewReader(body), direct)
			if direct && errors.Is(err, unix.EINVAL) {
				t.Skipf("no O_DIRECT on %s", dir)
			}
			if err != nil {
				t.Fatalf("direct=%v n=%d: %v", direct, n, err)
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, body) {
				t.Fatalf("direct=%v n=%d: the file has %d bytes, not what was sent", direct, n, len(got))
			}
			os.Remove(path)
		}
	}
	body := bytes.Repeat([]byte{7}, 1<<20+5)
	if d, err := tcpDiskFloor(filepath.Join(dir, "floor"), body, 3, false); err != nil || d <= 0 {
		t.Fatalf("tcpDiskFloor: %v, %v", d, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "floor")); !os.IsNotExist(err) {
		t.Fatalf("the floor's files are still there: %v", err)
	}
}
