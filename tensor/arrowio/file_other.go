//go:build !linux

package arrowio

import (
	"io"
	"os"

	"github.com/wattagg/wattagg/tensor"
)

// mapFile reads the first size bytes of f into aligned memory: wattagg runs on Linux, where
// the file is mapped, and this keeps the package building elsewhere.
func mapFile(f *os.File, size int64) ([]byte, io.Closer, error) {
	b := tensor.AlignedBytes(int(size))
	if _, err := f.ReadAt(b, 0); err != nil {
		return nil, nil, err
	}
	return b, io.NopCloser(nil), nil
}
