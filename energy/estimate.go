package energy

import (
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/prometheus/procfs"
)

// EstimateMeter estimates the CPU's energy where no counter exists:
//
//	W = idle + (tdp − idle)·u
//
// with u the utilisation of all logical CPUs measured from /proc/stat (user + nice + system +
// irq + softirq time over wall time × CPUs; steal time is another guest's and is left out).
// Power is linear in u, so the energy of a window is exact for the model whatever happens
// inside it:
//
//	J = idle·Δt + (tdp − idle)·Δbusy / CPUs
//
// The TDP defaults to DefaultTDPPerCPU watts per logical CPU and idle to DefaultIdleFraction
// of it; WithCPUTDP and WithCPUIdle (or $WATTAGG_CPU_TDP_W and $WATTAGG_CPU_IDLE_W) set the
// real figures. Every reading says source=estimate and carries the formula.
type EstimateMeter struct {
	fs        procfs.FS
	proc      string
	idle, tdp float64
	cpus      int
	model     string
	now       func() time.Time

	mu     sync.Mutex
	t0     time.Time
	busy0  float64
	closed bool
}

// NewCPUEstimate opens the CPU estimate.
func NewCPUEstimate(opts ...Option) (*EstimateMeter, error) {
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	return newEstimate(cfg)
}

func newEstimate(cfg *config) (*EstimateMeter, error) {
	pfs, err := procfs.NewFS(cfg.proc)
	if err != nil {
		return nil, fmt.Errorf("%w: estimate: procfs root %s: %v", ErrUnavailable, cfg.proc, err)
	}
	m := &EstimateMeter{fs: pfs, proc: cfg.proc, now: cfg.now}
	st, err := pfs.Stat()
	if err != nil {
		return nil, fmt.Errorf("%w: estimate: %s/stat: %v", ErrUnavailable, cfg.proc, err)
	}
	m.cpus = len(st.CPU)
	if m.cpus == 0 {
		return nil, fmt.Errorf("%w: estimate: %s/stat lists no CPU", ErrUnavailable, cfg.proc)
	}
	m.tdp, m.idle = cfg.tdp, cfg.idle
	tdpFrom, idleFrom := cfg.tdpFrom, cfg.idleFrom
	if m.tdp == 0 {
		m.tdp = DefaultTDPPerCPU * float64(m.cpus)
		tdpFrom = fmt.Sprintf("default %g W per logical CPU", DefaultTDPPerCPU)
	}
	if m.idle == 0 {
		m.idle = DefaultIdleFraction * m.tdp
		idleFrom = fmt.Sprintf("default %g of the TDP", DefaultIdleFraction)
	}
	if m.idle > m.tdp {
		return nil, fmt.Errorf("%w: CPU idle power %g W exceeds the TDP %g W", ErrOption, m.idle, m.tdp)
	}
	m.model = fmt.Sprintf("W = %.3g + (%.3g − %.3g)·u, u = busy CPU time (user+nice+system+irq+softirq in %s/stat) / (wall × %d logical CPUs); TDP %.3g W (%s), idle %.3g W (%s)",
		m.idle, m.tdp, m.idle, cfg.proc, m.cpus, m.tdp, tdpFrom, m.idle, idleFrom)
	m.t0 = m.now()
	m.busy0 = busySeconds(st.CPUTotal)
	return m, nil
}

func busySeconds(s procfs.CPUStat) float64 {
	return s.User + s.Nice + s.System + s.IRQ + s.SoftIRQ
}

// Name is "estimate:cpu".
func (m *EstimateMeter) Name() string { return "estimate:cpu" }

// Model is the formula with its parameters.
func (m *EstimateMeter) Model() string { return m.model }

// Watts returns the model's idle and full-load power.
func (m *EstimateMeter) Watts() (idle, tdp float64) { return m.idle, m.tdp }

// Read implements Meter.
func (m *EstimateMeter) Read() (Reading, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return Reading{}, ErrClosed
	}
	st, err := m.fs.Stat()
	if err != nil {
		return Reading{}, fmt.Errorf("%w: estimate: %s/stat: %v", ErrUnavailable, m.proc, err)
	}
	now := m.now()
	wall := now.Sub(m.t0).Seconds()
	// /proc/stat counts in ticks of 10 ms: the busy time may run a tick ahead of the wall clock.
	busy := math.Min(math.Max(0, busySeconds(st.CPUTotal)-m.busy0)/float64(m.cpus), wall+0.01)
	return Reading{
		Joules: m.idle*wall + (m.tdp-m.idle)*busy,
		Time:   now,
		Provenance: Provenance{
			Source:      SourceEstimate,
			Meter:       m.Name(),
			Domains:     []string{fmt.Sprintf("cpu (%d logical CPUs, estimated)", m.cpus)},
			Model:       m.model,
			Granularity: 0.01, // USER_HZ ticks
		},
	}, nil
}

// Close implements Meter.
func (m *EstimateMeter) Close() error {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	return nil
}
