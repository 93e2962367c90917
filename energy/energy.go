// Package energy measures the joules a computation spends and says how it knows: every number
// carries its provenance — which counter or model, the domains it covers, the window against the
// counter's granularity, and the wraps and resets seen.
//
// Three sources, best first:
//
//   - RAPL, read from powercap sysfs (top-level package and dram zones, or psys alone where the
//     platform has it), built on github.com/prometheus/procfs;
//   - NVML, libnvidia-ml.so.1 opened with dlopen (the few functions used are declared here, as
//     cgo/cuda does for libcuda): a GPU's total energy counter where it has one (Volta and
//     later), its power integrated over time otherwise;
//   - an estimate where no counter exists: W = idle + (tdp − idle)·u, with u the CPU utilisation
//     measured from /proc/stat. An estimate is labelled source=estimate everywhere it appears,
//     and its formula and parameters travel with every number.
//
// Discover picks the best meter for the CPU and one per GPU, and says why a better one is
// absent. A Window reads meters around a piece of work and returns Measurements.
package energy

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// Errors of the meters.
var (
	// ErrUnavailable reports a counter that does not exist here (no powercap RAPL zones, no
	// NVIDIA driver, a build without cgo).
	ErrUnavailable = errors.New("energy counter unavailable")
	// ErrNotReadable reports a counter that exists but cannot be read: energy_uj is root-only on
	// most kernels since Linux 5.10 (CVE-2020-8694).
	ErrNotReadable = errors.New("energy counter not readable")
	// ErrNotSupported reports a device without the requested counter (NVML energy before Volta).
	ErrNotSupported = errors.New("not supported by the device")
	// ErrOption reports an invalid option or environment variable.
	ErrOption = errors.New("invalid energy option")
	// ErrClosed reports a read from a closed meter.
	ErrClosed = errors.New("energy meter closed")
)

// Source names where joules come from.
type Source string

// The sources, best first.
const (
	SourceRAPL       Source = "rapl"                // powercap energy_uj counters
	SourceNVMLEnergy Source = "nvml-energy"         // nvmlDeviceGetTotalEnergyConsumption
	SourceNVMLPower  Source = "nvml-power-integral" // nvmlDeviceGetPowerUsage integrated over time
	SourceEstimate   Source = "estimate"            // a model, not a counter
)

// Provenance says where a number of joules comes from and how far to trust it.
type Provenance struct {
	Source  Source   `json:"source"`
	Meter   string   `json:"meter"`           // "rapl", "nvml:0", "estimate:cpu"
	Domains []string `json:"domains"`         // what the joules cover: "package-0", "dram-0", "gpu:0 NVIDIA H100"
	Model   string   `json:"model,omitempty"` // an estimate's formula with its parameters
	// Granularity is how often the counter advances, in seconds: a window should be many times
	// longer.
	Granularity float64 `json:"granularity_s"`
	// Wraps counts counter wraparounds corrected with max_energy_range_uj.
	Wraps int `json:"wraps"`
	// Resets counts impossible deltas rejected: a counter that went back (reset) or jumped by
	// more than the hardware can draw in the time elapsed.
	Resets int      `json:"resets"`
	Notes  []string `json:"notes,omitempty"`
}

// Reading is a meter's cumulative count: the joules since the meter was opened.
type Reading struct {
	Joules float64   `json:"joules"`
	Time   time.Time `json:"time"`
	Provenance
}

// Meter counts joules.
type Meter interface {
	// Name identifies the meter: "rapl", "nvml:0", "estimate:cpu".
	Name() string
	// Read returns the joules counted since the meter was opened. It is safe for concurrent
	// use.
	Read() (Reading, error)
	// Close releases the meter; later reads fail with ErrClosed.
	Close() error
}

// Poller is implemented by meters that must be read at least every PollEvery to stay exact: a
// RAPL counter that could wrap twice between two reads, an NVML power reading that is
// integrated over time. A Window reads them in the background while it is open.
type Poller interface {
	PollEvery() time.Duration
}

// Measurement is what one meter counted over a window.
type Measurement struct {
	Joules  float64 `json:"joules"`
	Seconds float64 `json:"seconds"`
	Watts   float64 `json:"watts"`
	Provenance
}

// Between is the measurement from reading a to reading b of the same meter.
func Between(a, b Reading) Measurement {
	m := Measurement{
		Joules:     b.Joules - a.Joules,
		Seconds:    b.Time.Sub(a.Time).Seconds(),
		Provenance: b.Provenance,
	}
	m.Domains = slices.Clone(b.Domains)
	m.Notes = slices.Clone(b.Notes)
	m.Wraps = b.Wraps - a.Wraps
	m.Resets = b.Resets - a.Resets
	if m.Seconds > 0 {
		m.Watts = m.Joules / m.Seconds
	}
	if m.Resets > 0 {
		m.Notes = append(m.Notes, fmt.Sprintf("%d impossible counter deltas rejected in this window: the joules are a lower bound", m.Resets))
	}
	if g := m.Granularity; g > 0 && m.Seconds < 10*g {
		m.Notes = append(m.Notes, fmt.Sprintf("window of %s is shorter than 10 counter updates (%s each): expect up to ±%.0f%%",
			fmtSeconds(m.Seconds), fmtSeconds(g), math.Min(100, 100*g/math.Max(m.Seconds, 1e-9))))
	}
	return m
}

// Total sums measurements of different meters over the same window: joules add up, the window
// is the longest, and the provenance lists every source ("rapl+nvml-energy").
func Total(ms []Measurement) Measurement {
	var t Measurement
	var sources, models []string
	for _, m := range ms {
		t.Joules += m.Joules
		t.Seconds = math.Max(t.Seconds, m.Seconds)
		t.Granularity = math.Max(t.Granularity, m.Granularity)
		t.Wraps += m.Wraps
		t.Resets += m.Resets
		if !slices.Contains(sources, string(m.Source)) {
			sources = append(sources, string(m.Source))
		}
		if m.Model != "" {
			models = append(models, m.Meter+": "+m.Model)
		}
		for _, d := range m.Domains {
			t.Domains = append(t.Domains, d)
		}
		t.Notes = append(t.Notes, m.Notes...)
		if t.Meter != "" {
			t.Meter += "+"
		}
		t.Meter += m.Meter
	}
	t.Source = Source(strings.Join(sources, "+"))
	t.Model = strings.Join(models, "; ")
	if t.Seconds > 0 {
		t.Watts = t.Joules / t.Seconds
	}
	return t
}

// Accumulate adds the measurements of a later window to ms, meter by meter (matched by Meter
// name), for work measured in several pieces such as a streaming aggregation's Adds.
func Accumulate(ms, more []Measurement) []Measurement {
	for _, m := range more {
		k := slices.IndexFunc(ms, func(x Measurement) bool { return x.Meter == m.Meter })
		if k < 0 {
			m.Domains = slices.Clone(m.Domains)
			m.Notes = slices.Clone(m.Notes)
			ms = append(ms, m)
			continue
		}
		x := &ms[k]
		x.Joules += m.Joules
		x.Seconds += m.Seconds
		x.Wraps += m.Wraps
		x.Resets += m.Resets
		for _, n := range m.Notes {
			if !slices.Contains(x.Notes, n) {
				x.Notes = append(x.Notes, n)
			}
		}
		if x.Seconds > 0 {
			x.Watts = x.Joules / x.Seconds
		}
	}
	return ms
}

func fmtSeconds(s float64) string {
	switch {
	case s >= 1:
		return fmt.Sprintf("%.3g s", s)
	case s >= 1e-3:
		return fmt.Sprintf("%.3g ms", s*1e3)
	}
	return fmt.Sprintf("%.3g µs", s*1e6)
}
