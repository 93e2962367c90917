//go:build !(linux && cgo)

package energy

import "fmt"

// DefaultNVML reports NVML unavailable: go-nvml needs cgo (and Linux) to dlopen the library,
// and this binary was built without it.
func DefaultNVML() NVML { return noNVML{} }

type noNVML struct{}

func (noNVML) Init() error {
	return fmt.Errorf("%w: this binary was built without cgo (CGO_ENABLED=0) or not for Linux, and go-nvml needs cgo to load libnvidia-ml.so.1", ErrUnavailable)
}
func (noNVML) Shutdown() error { return nil }
func (noNVML) DeviceCount() (int, error) {
	return 0, fmt.Errorf("%w: NVML is not initialised", ErrUnavailable)
}
func (noNVML) Device(int) (NVMLDevice, error) {
	return nil, fmt.Errorf("%w: NVML is not initialised", ErrUnavailable)
}
