//go:build !linux

package safetensors

import (
	"io"
	"os"

	"github.com/wattagg/wattagg/tensor"
)

// mapFile reads the first size bytes of f into a page-aligned buffer: wattagg only runs on
// Linux, where the file is mapped, and this keeps the package building elsewhere.
func mapFile(f *os.File, size int64, _ bool) ([]byte, io.Closer, error) {
	b := tensor.PageAligned(int(size))
	if _, err := f.ReadAt(b, 0); err != nil {
		return nil, nil, err
	}
	return b, io.NopCloser(nil), nil
}

// planReads reads every file in place: here it is in memory already.
func planReads(_ *os.File, _ []byte, _ int64, _, _ ReadMode, _ *readVote, m io.Closer) (io.Closer, ReadMode, bool) {
	return m, ReadMap, false
}
