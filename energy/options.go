package energy

import (
	"fmt"
	"math"
	"os"
	"strconv"
	"time"
)

// Environment variables read when the matching option is not given.
const (
	// EnvSysfs is the sysfs root (default /sys), for containers that bind-mount the host's
	// sysfs elsewhere, and for tests.
	EnvSysfs = "WATTAGG_SYSFS"
	// EnvProcfs is the procfs root (default /proc).
	EnvProcfs = "WATTAGG_PROCFS"
	// EnvCPUTDP is the CPU estimate's full-load power in watts (default DefaultTDPPerCPU per
	// logical CPU).
	EnvCPUTDP = "WATTAGG_CPU_TDP_W"
	// EnvCPUIdle is the CPU estimate's idle power in watts (default DefaultIdleFraction of the
	// TDP).
	EnvCPUIdle = "WATTAGG_CPU_IDLE_W"
)

// Defaults of the CPU estimate. A 360 W, 192-thread EPYC 9654 spends 1.9 W per logical CPU at
// its TDP and a 200 W, 32-thread EPYC 9124 spends 6.3 W; 4 W sits between, and also fits a
// 65 W, 16-thread desktop part. Server packages idle at roughly a third of their TDP.
const (
	DefaultTDPPerCPU    = 4.0
	DefaultIdleFraction = 0.3
)

// Option configures meters and discovery. Options check their values.
type Option func(*config) error

type config struct {
	sysfs, proc     string
	sysfsFrom       string // where sysfs came from: "default", EnvSysfs, "option"
	tdp, idle       float64
	tdpFrom         string
	idleFrom        string
	nvml            NVML
	noNVML          bool
	readFile        func(string) ([]byte, error) // energy_uj reads; tests inject permission errors
	now             func() time.Time
	raplCeilingW    float64
	nvmlCeilingW    float64
	nvmlPollEvery   time.Duration
	cpuinfoOverride []string // tests: cpu flags
}

func newConfig(opts []Option) (*config, error) {
	c := &config{
		sysfs: "/sys", sysfsFrom: "default",
		proc:         "/proc",
		tdpFrom:      "default",
		idleFrom:     "default",
		readFile:     os.ReadFile,
		now:          time.Now,
		raplCeilingW: 1000,
		nvmlCeilingW: 2000,
		// NVML refreshes power readings every few tens of milliseconds.
		nvmlPollEvery: 50 * time.Millisecond,
	}
	if v := os.Getenv(EnvSysfs); v != "" {
		c.sysfs, c.sysfsFrom = v, EnvSysfs
	}
	if v := os.Getenv(EnvProcfs); v != "" {
		c.proc = v
	}
	var err error
	if c.tdp, err = envWatts(EnvCPUTDP); err != nil {
		return nil, err
	} else if c.tdp > 0 {
		c.tdpFrom = EnvCPUTDP
	}
	if c.idle, err = envWatts(EnvCPUIdle); err != nil {
		return nil, err
	} else if c.idle > 0 {
		c.idleFrom = EnvCPUIdle
	}
	for _, o := range opts {
		if err := o(c); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func envWatts(name string) (float64, error) {
	v := os.Getenv(name)
	if v == "" {
		return 0, nil
	}
	w, err := strconv.ParseFloat(v, 64)
	if err != nil || !(w > 0) || math.IsInf(w, 0) {
		return 0, fmt.Errorf("%w: %s=%q: want a positive number of watts", ErrOption, name, v)
	}
	return w, nil
}

// WithSysfsRoot reads powercap from dir/class/powercap instead of /sys (or $WATTAGG_SYSFS).
func WithSysfsRoot(dir string) Option {
	return func(c *config) error {
		if dir == "" {
			return fmt.Errorf("%w: empty sysfs root", ErrOption)
		}
		c.sysfs, c.sysfsFrom = dir, "option"
		return nil
	}
}

// WithProcRoot reads stat and cpuinfo from dir instead of /proc (or $WATTAGG_PROCFS).
func WithProcRoot(dir string) Option {
	return func(c *config) error {
		if dir == "" {
			return fmt.Errorf("%w: empty procfs root", ErrOption)
		}
		c.proc = dir
		return nil
	}
}

// WithCPUTDP sets the CPU estimate's full-load power in watts (0 keeps the default or
// $WATTAGG_CPU_TDP_W).
func WithCPUTDP(watts float64) Option {
	return func(c *config) error {
		if watts < 0 || math.IsNaN(watts) || math.IsInf(watts, 0) {
			return fmt.Errorf("%w: CPU TDP %v W: want a positive number of watts", ErrOption, watts)
		}
		if watts > 0 {
			c.tdp, c.tdpFrom = watts, "option"
		}
		return nil
	}
}

// WithCPUIdle sets the CPU estimate's idle power in watts (0 keeps the default or
// $WATTAGG_CPU_IDLE_W). It must not exceed the TDP.
func WithCPUIdle(watts float64) Option {
	return func(c *config) error {
		if watts < 0 || math.IsNaN(watts) || math.IsInf(watts, 0) {
			return fmt.Errorf("%w: CPU idle power %v W: want a positive number of watts", ErrOption, watts)
		}
		if watts > 0 {
			c.idle, c.idleFrom = watts, "option"
		}
		return nil
	}
}

// WithNVML uses lib instead of DefaultNVML, libnvidia-ml.so.1 (NVMLAt for another path; tests
// use a fake).
func WithNVML(lib NVML) Option {
	return func(c *config) error {
		if lib == nil {
			return fmt.Errorf("%w: nil NVML", ErrOption)
		}
		c.nvml = lib
		return nil
	}
}

// WithoutNVML skips GPU meters: Discover does not load the NVIDIA library.
func WithoutNVML() Option {
	return func(c *config) error {
		c.noNVML = true
		return nil
	}
}
