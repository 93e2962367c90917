package sched

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/energy"
)

// Machine is this machine's devices and the meters that cover them.
type Machine struct {
	// Devices are the CPU, then the GPUs of the registered device backends.
	Devices []device.Device
	// Energy is the meters: the CPU's (RAPL or the estimate), one per GPU NVML sees.
	Energy *energy.Inventory
	// Backends is what each registered device backend found, with why it found nothing.
	Backends []device.Found
	// Notes say what could not be paired or opened.
	Notes []string

	meterOf map[string]energy.Meter // device name -> meter
	others  []energy.Meter          // meters of no device
	owned   []device.Device         // devices Discover opened (closed by Close)
}

// discovery is what Discover's options set.
type discovery struct {
	cpu    device.Device
	energy []energy.Option
	noGPUs bool
}

// WithCPU uses cpu (say with a chosen number of workers) instead of a default CPU device. It
// applies to Discover.
func WithCPU(cpu device.Device) Option {
	return option("WithCPU", forDiscover, func(o *options) error {
		if cpu == nil {
			return fmt.Errorf("%w: nil CPU device", ErrOption)
		}
		o.disc.cpu = cpu
		return nil
	})
}

// WithEnergyOptions passes options to energy.Discover (sysfs root, CPU TDP, a fake NVML). It
// applies to Discover.
func WithEnergyOptions(opts ...energy.Option) Option {
	return option("WithEnergyOptions", forDiscover, func(o *options) error {
		o.disc.energy = append(o.disc.energy, opts...)
		return nil
	})
}

// WithoutGPUs uses the CPU only. It applies to Discover.
func WithoutGPUs() Option {
	return option("WithoutGPUs", forDiscover, func(o *options) error { o.disc.noGPUs = true; return nil })
}

// Discover finds the devices and meters. A GPU device "cuda:N" is metered by NVML's GPU N
// (both count GPUs in PCI bus order when CUDA_DEVICE_ORDER=PCI_BUS_ID); GPUs that NVML sees
// but no backend drives still count for their idle power.
func Discover(opts ...Option) (*Machine, error) {
	cfg, err := applyOptions(forDiscover, opts)
	if err != nil {
		return nil, err
	}
	d := &cfg.disc
	inv, err := energy.Discover(d.energy...)
	if err != nil {
		return nil, err
	}
	m := &Machine{Energy: inv, meterOf: map[string]energy.Meter{}}
	cpu := d.cpu
	if cpu == nil {
		c, err := device.NewCPU()
		if err != nil {
			inv.Close()
			return nil, err
		}
		cpu = c
		m.owned = append(m.owned, c)
	}
	m.Devices = append(m.Devices, cpu)
	m.meterOf[cpu.Name()] = inv.CPU
	used := map[int]bool{}
	if !d.noGPUs {
		m.Backends = device.Discover()
		for _, f := range m.Backends {
			for _, info := range f.Devices {
				dev, err := device.Open(info.Name)
				if err != nil {
					m.Notes = append(m.Notes, fmt.Sprintf("%s: %v", info.Name, err))
					continue
				}
				m.Devices = append(m.Devices, dev)
				m.owned = append(m.owned, dev)
				_, idx, _ := strings.Cut(info.Name, ":")
				i, err := strconv.Atoi(idx)
				if err == nil && i < len(inv.GPUs) {
					m.meterOf[info.Name] = inv.GPUs[i]
					used[i] = true
				} else {
					m.Notes = append(m.Notes, fmt.Sprintf("%s: no NVML meter covers it: it is not calibrated or planned", info.Name))
				}
			}
		}
	}
	for i, g := range inv.GPUs {
		if !used[i] {
			m.others = append(m.others, g)
			m.Notes = append(m.Notes, fmt.Sprintf("%s (%s): no device backend drives it; its idle power is counted", g.Name(), g.Model()))
		}
	}
	return m, nil
}

// Meter returns the meter of the named device.
func (m *Machine) Meter(name string) (energy.Meter, bool) {
	mt, ok := m.meterOf[name]
	return mt, ok
}

// Targets pairs each metered device with its meter, for Calibrate.
func (m *Machine) Targets() []Target {
	var ts []Target
	for _, d := range m.Devices {
		if mt, ok := m.meterOf[d.Name()]; ok {
			ts = append(ts, Target{Device: d, Meter: mt})
		}
	}
	return ts
}

// Others are the meters that cover no device.
func (m *Machine) Others() []energy.Meter { return m.others }

// Meters are all meters: what a round's energy is measured with.
func (m *Machine) Meters() []energy.Meter { return m.Energy.Meters() }

// Names lists the devices' names.
func (m *Machine) Names() []string {
	var n []string
	for _, d := range m.Devices {
		n = append(n, d.Name())
	}
	return n
}

// Device returns the device called name.
func (m *Machine) Device(name string) (device.Device, bool) {
	for _, d := range m.Devices {
		if d.Name() == name {
			return d, true
		}
	}
	return nil, false
}

// Close closes the meters and the devices Discover opened.
func (m *Machine) Close() error {
	errs := []error{m.Energy.Close()}
	for _, d := range m.owned {
		errs = append(errs, d.Close())
	}
	return errors.Join(errs...)
}
