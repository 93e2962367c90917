//go:build !cgo

package cuda

import "fmt"

// openDriver cannot load a C library into a binary built without cgo.
func openDriver(path string) (driver, error) {
	return nil, fmt.Errorf("cannot load %s: %w (rebuild with CGO_ENABLED=1 and a C compiler)", path, ErrNoCgo)
}
