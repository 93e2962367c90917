package energy

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
)

// Status says whether a counter is in use, and why not when it is not.
type Status struct {
	Used   bool   `json:"used"`
	Detail string `json:"detail"` // what is measured, or why nothing is
}

// Inventory is the meters of this machine: one for the CPU (RAPL where it can be read, else
// the estimate) and one per GPU that NVML sees.
type Inventory struct {
	CPU  Meter
	GPUs []*NVMLMeter
	RAPL Status
	NVML Status
	// CPUEstimate is the estimate's formula when the CPU meter is an estimate.
	CPUEstimate string
}

// Discover opens the best meters available. Absent counters are not errors: the CPU falls
// back to the estimate and RAPL and NVML say why they are not used. It fails only for bad
// options and when not even the estimate can be made (no /proc/stat).
func Discover(opts ...Option) (*Inventory, error) {
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	inv := &Inventory{}
	if r, err := newRAPL(cfg); err == nil {
		inv.CPU = r
		inv.RAPL = Status{Used: true, Detail: fmt.Sprintf("%s under %s (%s)", strings.Join(r.Domains(), " + "), filepath.Join(cfg.sysfs, "class", "powercap"), cfg.sysfsFrom)}
	} else {
		inv.RAPL = Status{Detail: raplAbsence(cfg, err)}
		est, err := newEstimate(cfg)
		if err != nil {
			return nil, err
		}
		inv.CPU = est
		inv.CPUEstimate = est.Model()
	}
	if cfg.noNVML {
		inv.NVML = Status{Detail: "not probed (disabled)"}
		return inv, nil
	}
	gpus, err := newNVMLMeters(cfg)
	if err != nil {
		inv.NVML = Status{Detail: err.Error()}
		return inv, nil
	}
	inv.GPUs = gpus
	var ds []string
	for _, g := range gpus {
		ds = append(ds, fmt.Sprintf("gpu %d %s (%s)", g.index, g.model, g.source))
	}
	inv.NVML = Status{Used: true, Detail: strings.Join(ds, "; ")}
	return inv, nil
}

// raplAbsence explains in one sentence why RAPL cannot be used here.
func raplAbsence(cfg *config, err error) string {
	if errors.Is(err, ErrNotReadable) {
		return err.Error()
	}
	root := filepath.Join(cfg.sysfs, "class", "powercap")
	msg := err.Error()
	if !strings.Contains(msg, "does not exist") {
		return msg
	}
	flags := cpuFlags(cfg)
	vm := slices.Contains(flags, "hypervisor")
	rapl := slices.Contains(flags, "rapl")
	switch {
	case flags == nil:
		return fmt.Sprintf("%s does not exist: the kernel exposes no RAPL counters here", root)
	case vm && !rapl:
		return fmt.Sprintf("%s does not exist: this is a virtual machine (cpu flag \"hypervisor\") whose virtual CPU does not advertise RAPL (no \"rapl\" flag in %s/cpuinfo), so the hypervisor passes no energy counters to it",
			root, cfg.proc)
	case !rapl:
		return fmt.Sprintf("%s does not exist: the CPU does not advertise RAPL (no \"rapl\" flag in %s/cpuinfo)", root, cfg.proc)
	}
	return fmt.Sprintf("%s does not exist although the CPU has RAPL: load the powercap driver (modprobe intel_rapl_msr), or bind-mount the host's /sys and set %s", root, EnvSysfs)
}

// Meters lists every meter: the CPU's, then the GPUs'.
func (inv *Inventory) Meters() []Meter {
	ms := []Meter{inv.CPU}
	for _, g := range inv.GPUs {
		ms = append(ms, g)
	}
	return ms
}

// Close closes every meter.
func (inv *Inventory) Close() error {
	var errs []error
	for _, m := range inv.Meters() {
		if m != nil {
			errs = append(errs, m.Close())
		}
	}
	return errors.Join(errs...)
}
