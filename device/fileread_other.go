//go:build !unix

package device

import "errors"

// preadFull is never called where no file is registered to be copied from (only Linux
// registers them).
func preadFull(int, []byte, int64) (int, error) {
	return 0, errors.New("device: pread is not available on this system")
}
