//go:build !(linux && cgo)

package energy

import "fmt"

// DefaultNVML reports NVML unavailable: loading libnvidia-ml.so.1 with dlopen needs cgo (and
// Linux), and this binary was built without it.
func DefaultNVML() NVML { return noNVML{} }

// NVMLAt is DefaultNVML: without cgo no library can be loaded, wherever it is.
func NVMLAt(string) NVML { return noNVML{} }

type noNVML struct{}

func (noNVML) Init() error {
	return fmt.Errorf("%w: this binary was built without cgo (CGO_ENABLED=0) or not for Linux, and loading libnvidia-ml.so.1 needs cgo", ErrUnavailable)
}
func (noNVML) Shutdown() error { return nil }
func (noNVML) DeviceCount() (int, error) {
	return 0, fmt.Errorf("%w: NVML is not initialised", ErrUnavailable)
}
func (noNVML) Device(int) (NVMLDevice, error) {
	return nil, fmt.Errorf("%w: NVML is not initialised", ErrUnavailable)
}
