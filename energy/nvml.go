package energy

import (
	"errors"
	"fmt"
	"sync"
	"time"
)

// NVML is the part of the NVIDIA Management Library the GPU meters use. DefaultNVML is
// libnvidia-ml.so.1 behind it (opened with dlopen at Init, so wattagg builds and runs without a
// driver); tests use a fake.
type NVML interface {
	// Init loads and initialises the library. Nothing else is called when it fails.
	Init() error
	// Shutdown releases it.
	Shutdown() error
	// DeviceCount is the number of GPUs.
	DeviceCount() (int, error)
	// Device returns GPU i, in NVML's order (PCI bus order).
	Device(i int) (NVMLDevice, error)
}

// NVMLDevice is one GPU as the meters see it.
type NVMLDevice interface {
	Name() (string, error)
	// TotalEnergy is the energy counted since the driver loaded, in millijoules. It fails with
	// ErrNotSupported on GPUs without the counter (before Volta) or drivers without the call.
	TotalEnergy() (uint64, error)
	// Power is the current draw in milliwatts.
	Power() (uint32, error)
}

// NVMLMeter meters one GPU: with its total energy counter where it has one (source
// nvml-energy), else by integrating its power readings over time (source
// nvml-power-integral, which needs a Window's background reads).
type NVMLMeter struct {
	dev      NVMLDevice
	index    int
	model    string
	source   Source
	lib      *nvmlRef
	now      func() time.Time
	every    time.Duration
	ceilingW float64

	mu     sync.Mutex
	lastMJ uint64
	lastW  float64
	lastT  time.Time
	joules float64
	resets int
	closed bool
}

// nvmlRef shuts the library down when its last meter closes.
type nvmlRef struct {
	mu   sync.Mutex
	lib  NVML
	refs int
}

func (r *nvmlRef) release() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.refs--
	if r.refs == 0 {
		return r.lib.Shutdown()
	}
	return nil
}

// NewNVMLMeters initialises NVML (WithNVML, else DefaultNVML) and returns one meter per GPU. It
// fails with ErrUnavailable when there is no library, no driver or no GPU; the library is shut
// down when the last meter closes (at once when it fails).
func NewNVMLMeters(opts ...Option) ([]*NVMLMeter, error) {
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	return newNVMLMeters(cfg)
}

func newNVMLMeters(cfg *config) ([]*NVMLMeter, error) {
	lib := cfg.nvml
	if lib == nil {
		lib = DefaultNVML()
	}
	if err := lib.Init(); err != nil {
		return nil, fmt.Errorf("nvml: %w", err)
	}
	n, err := lib.DeviceCount()
	if err == nil && n == 0 {
		err = fmt.Errorf("%w: no GPU", ErrUnavailable)
	}
	if err != nil {
		_ = lib.Shutdown()
		return nil, fmt.Errorf("nvml: %w", err)
	}
	ref := &nvmlRef{lib: lib}
	var meters []*NVMLMeter
	fail := func(err error) ([]*NVMLMeter, error) {
		for _, m := range meters {
			_ = m.Close()
		}
		if len(meters) == 0 {
			_ = lib.Shutdown()
		}
		return nil, err
	}
	for i := range n {
		d, err := lib.Device(i)
		if err != nil {
			return fail(fmt.Errorf("nvml: gpu %d: %w", i, err))
		}
		m := &NVMLMeter{dev: d, index: i, lib: ref, now: cfg.now, every: cfg.nvmlPollEvery, ceilingW: cfg.nvmlCeilingW}
		if m.model, err = d.Name(); err != nil {
			m.model = "unknown GPU"
		}
		if mj, err := d.TotalEnergy(); err == nil {
			m.source, m.lastMJ = SourceNVMLEnergy, mj
		} else if errors.Is(err, ErrNotSupported) {
			mw, err := d.Power()
			if err != nil {
				return fail(fmt.Errorf("nvml: gpu %d has neither an energy counter nor a power reading: %w", i, err))
			}
			m.source, m.lastW = SourceNVMLPower, float64(mw)/1e3
		} else {
			return fail(fmt.Errorf("nvml: gpu %d: energy counter: %w", i, err))
		}
		m.lastT = m.now()
		ref.refs++
		meters = append(meters, m)
	}
	return meters, nil
}

// Name is "nvml:N".
func (m *NVMLMeter) Name() string { return fmt.Sprintf("nvml:%d", m.index) }

// Index is the GPU's NVML index.
func (m *NVMLMeter) Index() int { return m.index }

// Model is the GPU's name.
func (m *NVMLMeter) Model() string { return m.model }

// Source is nvml-energy or nvml-power-integral.
func (m *NVMLMeter) Source() Source { return m.source }

// PollEvery asks a Window to sample power while it is open when the GPU has no energy counter.
func (m *NVMLMeter) PollEvery() time.Duration {
	if m.source == SourceNVMLPower {
		return m.every
	}
	return 0
}

// Read implements Meter.
func (m *NVMLMeter) Read() (Reading, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return Reading{}, ErrClosed
	}
	now := m.now()
	dt := now.Sub(m.lastT)
	p := Provenance{
		Source:  m.source,
		Meter:   m.Name(),
		Domains: []string{fmt.Sprintf("gpu:%d %s", m.index, m.model)},
	}
	switch m.source {
	case SourceNVMLEnergy:
		mj, err := m.dev.TotalEnergy()
		if err != nil {
			return Reading{}, fmt.Errorf("nvml: gpu %d: %w", m.index, err)
		}
		d, ev := counterDelta(m.lastMJ*1000, mj*1000, 0, dt, m.ceilingW)
		if ev != deltaOK {
			m.resets++
		}
		m.joules += float64(d) / 1e6
		m.lastMJ = mj
		// The driver refreshes the counter on the order of 100 ms.
		p.Granularity = 0.1
	default:
		mw, err := m.dev.Power()
		if err != nil {
			return Reading{}, fmt.Errorf("nvml: gpu %d: %w", m.index, err)
		}
		w := float64(mw) / 1e3
		m.joules += (m.lastW + w) / 2 * dt.Seconds() // trapezoid between samples
		m.lastW = w
		p.Granularity = m.every.Seconds()
		p.Model = fmt.Sprintf("power sampled every %s and integrated (trapezoid)", m.every)
	}
	m.lastT = now
	p.Resets = m.resets
	return Reading{Joules: m.joules, Time: now, Provenance: p}, nil
}

// Close implements Meter; the last meter to close shuts NVML down.
func (m *NVMLMeter) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	return m.lib.release()
}
