//go:build !linux

package bench

import (
	"errors"
	"os"
)

// openDirect reports that direct I/O is not used here: writes go through the page cache.
func openDirect(string) (*os.File, error) { return nil, errors.ErrUnsupported }
