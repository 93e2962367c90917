//go:build linux && cgo

package energy

import (
	"fmt"
	"sync"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// DefaultNVML is the NVIDIA Management Library through github.com/NVIDIA/go-nvml:
// libnvidia-ml.so.1 is opened with dlopen at Init, so a machine without the driver gets
// ErrUnavailable, not a failure to start.
func DefaultNVML() NVML { return &goNVML{lib: nvml.New()} }

// goNVML adapts go-nvml to NVML. No call reaches the library after a failed Init, and the
// energy call, which older drivers lack, is looked up before it is used.
type goNVML struct {
	lib nvml.Interface

	mu        sync.Mutex
	ready     bool
	hasEnergy bool
}

func (g *goNVML) Init() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if r := g.lib.Init(); r != nvml.SUCCESS {
		return nvmlError("nvmlInit", r)
	}
	g.ready = true
	g.hasEnergy = g.lib.Extensions().LookupSymbol("nvmlDeviceGetTotalEnergyConsumption") == nil
	return nil
}

func (g *goNVML) Shutdown() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.ready {
		return nil
	}
	g.ready = false
	if r := g.lib.Shutdown(); r != nvml.SUCCESS {
		return nvmlError("nvmlShutdown", r)
	}
	return nil
}

func (g *goNVML) check() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.ready {
		return fmt.Errorf("%w: NVML is not initialised", ErrUnavailable)
	}
	return nil
}

func (g *goNVML) DeviceCount() (int, error) {
	if err := g.check(); err != nil {
		return 0, err
	}
	n, r := g.lib.DeviceGetCount()
	if r != nvml.SUCCESS {
		return 0, nvmlError("nvmlDeviceGetCount", r)
	}
	return n, nil
}

func (g *goNVML) Device(i int) (NVMLDevice, error) {
	if err := g.check(); err != nil {
		return nil, err
	}
	d, r := g.lib.DeviceGetHandleByIndex(i)
	if r != nvml.SUCCESS {
		return nil, nvmlError("nvmlDeviceGetHandleByIndex", r)
	}
	return &goNVMLDevice{g: g, d: d}, nil
}

type goNVMLDevice struct {
	g *goNVML
	d nvml.Device
}

func (d *goNVMLDevice) Name() (string, error) {
	if err := d.g.check(); err != nil {
		return "", err
	}
	s, r := d.d.GetName()
	if r != nvml.SUCCESS {
		return "", nvmlError("nvmlDeviceGetName", r)
	}
	return s, nil
}

func (d *goNVMLDevice) TotalEnergy() (uint64, error) {
	if err := d.g.check(); err != nil {
		return 0, err
	}
	if !d.g.hasEnergy {
		return 0, fmt.Errorf("%w: this driver has no nvmlDeviceGetTotalEnergyConsumption", ErrNotSupported)
	}
	v, r := d.d.GetTotalEnergyConsumption()
	if r != nvml.SUCCESS {
		return 0, nvmlError("nvmlDeviceGetTotalEnergyConsumption", r)
	}
	return v, nil
}

func (d *goNVMLDevice) Power() (uint32, error) {
	if err := d.g.check(); err != nil {
		return 0, err
	}
	v, r := d.d.GetPowerUsage()
	if r != nvml.SUCCESS {
		return 0, nvmlError("nvmlDeviceGetPowerUsage", r)
	}
	return v, nil
}

// nvmlError maps NVML return codes to the package's sentinels, with NVML's own words.
func nvmlError(call string, r nvml.Return) error {
	switch r {
	case nvml.ERROR_LIBRARY_NOT_FOUND:
		return fmt.Errorf("%w: %s: libnvidia-ml.so.1 not found (no NVIDIA driver installed)", ErrUnavailable, call)
	case nvml.ERROR_DRIVER_NOT_LOADED:
		return fmt.Errorf("%w: %s: the NVIDIA kernel driver is not loaded (libnvidia-ml.so.1 is installed, but there is no GPU or no running driver)", ErrUnavailable, call)
	case nvml.ERROR_NOT_SUPPORTED, nvml.ERROR_FUNCTION_NOT_FOUND:
		return fmt.Errorf("%w: %s: %s", ErrNotSupported, call, r.Error())
	case nvml.ERROR_NO_PERMISSION:
		return fmt.Errorf("%w: %s: %s", ErrNotReadable, call, r.Error())
	}
	return fmt.Errorf("%w: %s: %s", ErrUnavailable, call, r.Error())
}
