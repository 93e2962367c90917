//go:build linux

package energy

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/procfs/sysfs"
)

// RAPLMeter reads the RAPL energy counters of powercap sysfs: the top-level package zones of
// every socket plus their dram zones, summed; or the psys zone alone where the platform has one
// (psys covers the packages and dram, so they are never added to it). Duplicate zones of the
// intel-rapl-mmio interface are dropped. Each counter's wraparound is corrected with its
// max_energy_range_uj, and a delta no hardware could draw in the time elapsed (a counter reset,
// a jump) is rejected and counted.
type RAPLMeter struct {
	zones    []raplZone
	notes    []string
	read     func(string) ([]byte, error)
	now      func() time.Time
	ceilingW float64

	mu     sync.Mutex
	last   []uint64
	lastT  time.Time
	joules float64
	wraps  int
	resets int
	closed bool
}

type raplZone struct {
	domain string // "package-0", "dram-1", "psys"
	path   string // the zone's directory
	maxUJ  uint64 // max_energy_range_uj: the counter wraps after it
}

var (
	raplTop   = regexp.MustCompile(`^intel-rapl(-mmio)?:(\d+)$`)
	raplChild = regexp.MustCompile(`^intel-rapl(-mmio)?:(\d+):(\d+)$`)
)

// NewRAPL opens the RAPL counters under the sysfs root (WithSysfsRoot, $WATTAGG_SYSFS or
// /sys). It fails with ErrUnavailable when there are no RAPL zones and with ErrNotReadable
// when a counter exists but this process may not read it.
func NewRAPL(opts ...Option) (*RAPLMeter, error) {
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	return newRAPL(cfg)
}

func newRAPL(cfg *config) (*RAPLMeter, error) {
	root := filepath.Join(cfg.sysfs, "class", "powercap")
	sfs, err := sysfs.NewFS(cfg.sysfs)
	if err != nil {
		return nil, fmt.Errorf("%w: rapl: sysfs root %s: %v", ErrUnavailable, cfg.sysfs, err)
	}
	all, err := sysfs.GetRaplZones(sfs)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: rapl: %s does not exist", ErrUnavailable, root)
		}
		return nil, fmt.Errorf("%w: rapl: %s: %v", ErrUnavailable, root, err)
	}
	m := &RAPLMeter{read: cfg.readFile, now: cfg.now, ceilingW: cfg.raplCeilingW}
	m.zones, m.notes = selectZones(all)
	if len(m.zones) == 0 {
		return nil, fmt.Errorf("%w: rapl: %s has no RAPL package, dram or psys zone", ErrUnavailable, root)
	}
	// A zone without a counter (energy_uj missing) is left out and said so; a counter that
	// exists but cannot be read fails the meter: its energy would silently be missing.
	var zones []raplZone
	for _, z := range m.zones {
		v, err := m.readZone(z)
		if errors.Is(err, ErrUnavailable) {
			m.notes = append(m.notes, fmt.Sprintf("zone %s (%s) left out: it has no energy_uj", filepath.Base(z.path), z.domain))
			continue
		}
		if err != nil {
			return nil, err
		}
		zones = append(zones, z)
		m.last = append(m.last, v)
	}
	if m.zones = zones; len(zones) == 0 {
		return nil, fmt.Errorf("%w: rapl: no zone under %s has an energy_uj counter", ErrUnavailable, root)
	}
	m.lastT = m.now()
	return m, nil
}

// selectZones keeps the zones whose counters add up to the energy of the machine without
// counting anything twice.
func selectZones(all []sysfs.RaplZone) ([]raplZone, []string) {
	var sel zoneSelection
	zones := sel.dropDuplicates(sel.candidates(all))
	zones = sel.psysAlone(zones)
	slices.SortStableFunc(zones, func(a, b raplZone) int { return strings.Compare(a.domain, b.domain) })
	return zones, sel.notes
}

// zoneSelection is selectZones' progress: the notes on the zones it leaves out.
type zoneSelection struct {
	notes []string
}

// raplCand is a zone that may be summed, named by its domain.
type raplCand struct {
	raplZone
	mmio bool   // a zone of the intel-rapl-mmio interface
	dir  string // the zone directory's name
}

// note says why a zone is left out.
func (s *zoneSelection) note(format string, a ...any) {
	s.notes = append(s.notes, fmt.Sprintf(format, a...))
}

// candidates lists the package, dram and psys zones of all, in order.
func (s *zoneSelection) candidates(all []sysfs.RaplZone) []raplCand {
	var cands []raplCand
	for _, z := range all {
		if c, ok := s.candidate(z); ok {
			cands = append(cands, c)
		}
	}
	return cands
}

// candidate names the domain of zone z, or reports false when z is not summed: a core or
// uncore zone silently, any other zone with a note.
func (s *zoneSelection) candidate(z sysfs.RaplZone) (raplCand, bool) {
	dir := filepath.Base(z.Path)
	c := raplCand{raplZone: raplZone{path: z.Path, maxUJ: z.MaxMicrojoules}, dir: dir}
	if g := raplTop.FindStringSubmatch(dir); g != nil {
		c.mmio = g[1] != ""
		switch z.Name {
		case "package", "psys":
			c.domain = z.Name + "-" + strconv.Itoa(z.Index)
			if z.Name == "psys" && z.Index == 0 {
				c.domain = "psys"
			}
		case "dram":
			c.domain = "dram-" + g[2]
		default:
			s.note("zone %s (%s) skipped: not a package, dram or psys zone", dir, z.Name)
			return c, false
		}
		return c, true
	}
	if g := raplChild.FindStringSubmatch(dir); g != nil {
		// Children of a package: core and uncore are inside the package's count; dram is
		// not (it is its own RAPL domain, listed under the package by the driver).
		if z.Name != "dram" {
			return c, false
		}
		c.mmio = g[1] != ""
		c.domain = "dram-" + g[2]
		return c, true
	}
	s.note("zone %s skipped: not a RAPL zone", dir)
	return c, false
}

// dropDuplicates keeps one zone of each domain.
func (s *zoneSelection) dropDuplicates(cands []raplCand) []raplZone {
	// The mmio interface exposes the same package counters again on some Intel parts: keep the
	// MSR zone and drop its mmio twin.
	var zones []raplZone
	for _, c := range cands {
		if c.mmio && slices.ContainsFunc(cands, func(o raplCand) bool { return !o.mmio && o.domain == c.domain }) {
			s.note("zone %s dropped: duplicates %s of intel-rapl", c.dir, c.domain)
			continue
		}
		if slices.ContainsFunc(zones, func(z raplZone) bool { return z.domain == c.domain }) {
			s.note("zone %s dropped: a second %s zone", c.dir, c.domain)
			continue
		}
		zones = append(zones, c.raplZone)
	}
	return zones
}

// psysAlone returns the psys zones alone where there are any, and zones otherwise.
func (s *zoneSelection) psysAlone(zones []raplZone) []raplZone {
	// psys covers the packages and dram: use it alone, never summed with them.
	if !slices.ContainsFunc(zones, isPsys) {
		return zones
	}
	var ps []raplZone
	var inside []string
	for _, z := range zones {
		if isPsys(z) {
			ps = append(ps, z)
		} else {
			inside = append(inside, z.domain)
		}
	}
	if len(inside) > 0 {
		s.note("psys covers %s: they are not added to it", strings.Join(inside, ", "))
	}
	return ps
}

// isPsys reports whether z is a psys zone.
func isPsys(z raplZone) bool { return strings.HasPrefix(z.domain, "psys") }

func (m *RAPLMeter) readZone(z raplZone) (uint64, error) {
	p := filepath.Join(z.path, "energy_uj")
	b, err := m.read(p)
	if err != nil {
		if errors.Is(err, fs.ErrPermission) {
			return 0, fmt.Errorf("%w: rapl: %s: permission denied (energy_uj is readable by root only on Linux 5.10 and later, CVE-2020-8694: run as root or grant read access)", ErrNotReadable, p)
		}
		if errors.Is(err, fs.ErrNotExist) {
			return 0, fmt.Errorf("%w: rapl: %s is missing", ErrUnavailable, p)
		}
		return 0, fmt.Errorf("%w: rapl: %v", ErrNotReadable, err)
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: rapl: %s: %q is not a counter", ErrNotReadable, p, strings.TrimSpace(string(b)))
	}
	return v, nil
}

// Name is "rapl".
func (m *RAPLMeter) Name() string { return "rapl" }

// Domains lists the zones summed: "package-0", "dram-0", ... or "psys".
func (m *RAPLMeter) Domains() []string {
	d := make([]string, len(m.zones))
	for i, z := range m.zones {
		d[i] = z.domain
	}
	return d
}

// PollEvery is a quarter of the shortest time in which a counter could wrap at the power
// ceiling, so that a window never sees two wraps between reads.
func (m *RAPLMeter) PollEvery() time.Duration {
	var every time.Duration
	for _, z := range m.zones {
		if z.maxUJ == 0 {
			continue
		}
		d := time.Duration(float64(z.maxUJ) / 1e6 / m.ceilingW / 4 * float64(time.Second))
		if every == 0 || d < every {
			every = d
		}
	}
	return max(every, time.Millisecond)
}

// Read implements Meter.
func (m *RAPLMeter) Read() (Reading, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return Reading{}, ErrClosed
	}
	now := m.now()
	dt := now.Sub(m.lastT)
	var notes []string
	cur := make([]uint64, len(m.zones))
	for i, z := range m.zones {
		v, err := m.readZone(z)
		if err != nil {
			return Reading{}, err
		}
		cur[i] = v
	}
	for i, z := range m.zones {
		d, ev := counterDelta(m.last[i], cur[i], z.maxUJ, dt, m.ceilingW)
		switch ev {
		case deltaWrap:
			m.wraps++
		case deltaReset, deltaJump:
			m.resets++
		}
		if z.maxUJ > 0 && dt.Seconds() > float64(z.maxUJ)/1e6/m.ceilingW {
			notes = append(notes, fmt.Sprintf("%s read %.0f s after the previous read: more than one wrap may have been missed", z.domain, dt.Seconds()))
		}
		m.joules += float64(d) / 1e6
		m.last[i] = cur[i]
	}
	m.lastT = now
	return Reading{
		Joules: m.joules,
		Time:   now,
		Provenance: Provenance{
			Source:  SourceRAPL,
			Meter:   "rapl",
			Domains: m.Domains(),
			// The hardware updates the counters about every millisecond.
			Granularity: 1e-3,
			Wraps:       m.wraps,
			Resets:      m.resets,
			Notes:       append(slices.Clone(m.notes), notes...),
		},
	}, nil
}

// Close implements Meter.
func (m *RAPLMeter) Close() error {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	return nil
}

// cpuFlags returns the flags of the first processor in cpuinfo, for explaining why RAPL is
// absent.
func cpuFlags(cfg *config) []string {
	if cfg.cpuinfoOverride != nil {
		return cfg.cpuinfoOverride
	}
	b, err := os.ReadFile(filepath.Join(cfg.proc, "cpuinfo"))
	if err != nil {
		return nil
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && strings.TrimSpace(k) == "flags" {
			return strings.Fields(v)
		}
	}
	return nil
}
