//go:build linux

package energy

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/procfs/sysfs"
)

// powercap builds a fake powercap tree under t.TempDir(): zones by directory name.
type powercap struct {
	t    *testing.T
	root string // the sysfs root
}

func newPowercap(t *testing.T) *powercap {
	t.Helper()
	root := t.TempDir()
	// The control type directory has no name file: it is not a zone.
	if err := os.MkdirAll(filepath.Join(root, "class", "powercap", "intel-rapl"), 0o755); err != nil {
		t.Fatal(err)
	}
	return &powercap{t: t, root: root}
}

func (p *powercap) dir(zone string) string { return filepath.Join(p.root, "class", "powercap", zone) }

// zone adds a zone with a name, a wrap range and a counter (µJ); energy < 0 leaves energy_uj out.
func (p *powercap) zone(dir, name string, maxUJ uint64, energy int64) {
	p.t.Helper()
	d := p.dir(dir)
	if err := os.MkdirAll(d, 0o755); err != nil {
		p.t.Fatal(err)
	}
	p.write(dir, "name", name)
	p.write(dir, "max_energy_range_uj", strconv.FormatUint(maxUJ, 10))
	if energy >= 0 {
		p.set(dir, uint64(energy))
	}
}

func (p *powercap) set(dir string, uj uint64) { p.write(dir, "energy_uj", strconv.FormatUint(uj, 10)) }

func (p *powercap) write(dir, file, v string) {
	p.t.Helper()
	if err := os.WriteFile(filepath.Join(p.dir(dir), file), []byte(v+"\n"), 0o444); err != nil {
		p.t.Fatal(err)
	}
}

const bigRange = 262143328850 // a real package's max_energy_range_uj

func openRAPL(t *testing.T, p *powercap, c *clock, opts ...Option) *RAPLMeter {
	t.Helper()
	m, err := NewRAPL(append([]Option{WithSysfsRoot(p.root), withClock(c)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func TestRAPLSumsSocketsAndDRAMButNotCores(t *testing.T) {
	p := newPowercap(t)
	p.zone("intel-rapl:0", "package-0", bigRange, 1_000_000)
	p.zone("intel-rapl:0:0", "core", bigRange, 500_000)
	p.zone("intel-rapl:0:1", "dram", bigRange, 2_000_000)
	p.zone("intel-rapl:1", "package-1", bigRange, 3_000_000)
	p.zone("intel-rapl:1:0", "dram", bigRange, 4_000_000)
	c := &clock{t: time.Unix(1000, 0)}
	m := openRAPL(t, p, c)
	if got, want := m.Domains(), []string{"dram-0", "dram-1", "package-0", "package-1"}; !slices.Equal(got, want) {
		t.Fatalf("domains %v, want %v", got, want)
	}
	c.advance(time.Second)
	p.set("intel-rapl:0", 1_000_000+20_000_000)  // 20 J
	p.set("intel-rapl:0:0", 500_000+15_000_000)  // inside package-0: not added
	p.set("intel-rapl:0:1", 2_000_000+3_000_000) // 3 J
	p.set("intel-rapl:1", 3_000_000+30_000_000)  // 30 J
	p.set("intel-rapl:1:0", 4_000_000+4_000_000) // 4 J
	r, err := m.Read()
	if err != nil {
		t.Fatal(err)
	}
	if !near(r.Joules, 57) || r.Source != SourceRAPL || r.Wraps != 0 || r.Resets != 0 {
		t.Fatalf("reading %+v, want 57 J from rapl", r)
	}
}

func TestRAPLWraparound(t *testing.T) {
	p := newPowercap(t)
	p.zone("intel-rapl:0", "package-0", 10_000_000, 9_000_000) // wraps after 10 J
	c := &clock{t: time.Unix(1000, 0)}
	m := openRAPL(t, p, c)
	w, err := Start(m)
	if err != nil {
		t.Fatal(err)
	}
	c.advance(time.Second)
	p.set("intel-rapl:0", 2_000_000) // 9 J -> 10 J (wrap) -> 2 J: 3 J spent
	ms, err := w.Stop()
	if err != nil {
		t.Fatal(err)
	}
	if got := ms[0]; !near(got.Joules, 3) || got.Wraps != 1 || got.Resets != 0 || !near(got.Watts, 3) {
		t.Fatalf("measurement %+v, want 3 J with one wrap", got)
	}
	// The poller must read often enough that the counter cannot wrap twice between reads:
	// 10 J at the 1000 W ceiling wraps in 10 ms at the soonest.
	if got := m.PollEvery(); got != 2500*time.Microsecond {
		t.Fatalf("PollEvery %v, want 2.5ms", got)
	}
	real := openRAPL(t, func() *powercap {
		q := newPowercap(t)
		q.zone("intel-rapl:0", "package-0", bigRange, 0)
		return q
	}(), c)
	if got := real.PollEvery().Round(time.Second); got != 66*time.Second {
		t.Fatalf("PollEvery of a 262 kJ counter %v, want ~66s", got)
	}
}

func TestRAPLRejectsImpossibleDeltas(t *testing.T) {
	p := newPowercap(t)
	p.zone("intel-rapl:0", "package-0", bigRange, 200_000_000_000) // 200 kJ
	c := &clock{t: time.Unix(1000, 0)}
	m := openRAPL(t, p, c)

	// Back to 5 J a second later: a wrap would mean 62 kJ in 1 s, so the counter was reset.
	// The 5 J since the reset are kept.
	c.advance(time.Second)
	p.set("intel-rapl:0", 5_000_000)
	r, err := m.Read()
	if err != nil {
		t.Fatal(err)
	}
	if !near(r.Joules, 5) || r.Resets != 1 || r.Wraps != 0 {
		t.Fatalf("after a reset: %+v, want 5 J and one reset", r)
	}
	// A jump of 1 MJ in a second is no hardware's: rejected.
	c.advance(time.Second)
	p.set("intel-rapl:0", 5_000_000+1_000_000_000_000)
	if r, err = m.Read(); err != nil {
		t.Fatal(err)
	}
	if !near(r.Joules, 5) || r.Resets != 2 {
		t.Fatalf("after a jump: %+v, want 5 J and two resets", r)
	}
	// Normal counting goes on from the new value.
	c.advance(time.Second)
	p.set("intel-rapl:0", 5_000_000+1_000_000_000_000+7_000_000)
	if r, err = m.Read(); err != nil {
		t.Fatal(err)
	}
	if !near(r.Joules, 12) {
		t.Fatalf("after resuming: %v J, want 12", r.Joules)
	}
	ms := Between(Reading{Provenance: Provenance{Resets: 0}, Time: c.now().Add(-3 * time.Second)}, r)
	if !strings.Contains(strings.Join(ms.Notes, ";"), "lower bound") {
		t.Fatalf("a window with resets must say its joules are a lower bound: %v", ms.Notes)
	}
}

func TestRAPLMissingZones(t *testing.T) {
	// No powercap at all: unavailable, and discovery explains why and falls back to the estimate.
	empty := t.TempDir()
	_, err := NewRAPL(WithSysfsRoot(empty))
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("no powercap: %v", err)
	}
	inv, err := Discover(WithSysfsRoot(empty), WithProcRoot(fakeProc(t, 2, 0)), withCPUFlags("fpu", "avx2", "hypervisor"), WithoutNVML())
	if err != nil {
		t.Fatal(err)
	}
	defer inv.Close()
	if inv.RAPL.Used || !strings.Contains(inv.RAPL.Detail, "virtual machine") || !strings.Contains(inv.RAPL.Detail, `no "rapl" flag`) {
		t.Fatalf("RAPL status %+v", inv.RAPL)
	}
	if inv.CPU.Name() != "estimate:cpu" || inv.CPUEstimate == "" {
		t.Fatalf("CPU meter %s, estimate %q", inv.CPU.Name(), inv.CPUEstimate)
	}
	inv2, err := Discover(WithSysfsRoot(empty), WithProcRoot(fakeProc(t, 2, 0)), withCPUFlags("rapl"), WithoutNVML())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(inv2.RAPL.Detail, "modprobe intel_rapl_msr") {
		t.Fatalf("RAPL status %+v", inv2.RAPL)
	}

	// A socket without a dram zone, and a zone without a counter: the rest is measured.
	p := newPowercap(t)
	p.zone("intel-rapl:0", "package-0", bigRange, 0)
	p.zone("intel-rapl:0:0", "dram", bigRange, 0)
	p.zone("intel-rapl:1", "package-1", bigRange, 0)
	p.zone("intel-rapl:2", "package-2", bigRange, -1) // no energy_uj
	c := &clock{t: time.Unix(1000, 0)}
	m := openRAPL(t, p, c)
	if got := m.Domains(); !slices.Equal(got, []string{"dram-0", "package-0", "package-1"}) {
		t.Fatalf("domains %v", got)
	}
	r, _ := m.Read()
	if !strings.Contains(strings.Join(r.Notes, ";"), "intel-rapl:2 (package-2) left out") {
		t.Fatalf("notes %v", r.Notes)
	}
	// Only zones without counters: unavailable.
	q := newPowercap(t)
	q.zone("intel-rapl:0", "package-0", bigRange, -1)
	if _, err := NewRAPL(WithSysfsRoot(q.root)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("no counters: %v", err)
	}
}

func TestRAPLDropsMMIODuplicates(t *testing.T) {
	p := newPowercap(t)
	p.zone("intel-rapl:0", "package-0", bigRange, 1_000_000)
	p.zone("intel-rapl-mmio:0", "package-0", bigRange, 1_000_000)
	c := &clock{t: time.Unix(1000, 0)}
	m := openRAPL(t, p, c)
	if got := m.Domains(); !slices.Equal(got, []string{"package-0"}) {
		t.Fatalf("domains %v, want package-0 once", got)
	}
	c.advance(time.Second)
	p.set("intel-rapl:0", 11_000_000)
	p.set("intel-rapl-mmio:0", 11_000_000)
	r, _ := m.Read()
	if !near(r.Joules, 10) || !strings.Contains(strings.Join(r.Notes, ";"), "intel-rapl-mmio:0 dropped") {
		t.Fatalf("reading %+v, want 10 J counted once", r)
	}
	// Where only the mmio interface exists, it is used.
	q := newPowercap(t)
	q.zone("intel-rapl-mmio:0", "package-0", bigRange, 0)
	if got := openRAPL(t, q, c).Domains(); !slices.Equal(got, []string{"package-0"}) {
		t.Fatalf("mmio only: domains %v", got)
	}
}

func TestRAPLPsysIsNeverSummedWithItsChildren(t *testing.T) {
	p := newPowercap(t)
	p.zone("intel-rapl:0", "package-0", bigRange, 0)
	p.zone("intel-rapl:0:0", "core", bigRange, 0)
	p.zone("intel-rapl:0:2", "dram", bigRange, 0)
	p.zone("intel-rapl:1", "psys", bigRange, 0)
	c := &clock{t: time.Unix(1000, 0)}
	m := openRAPL(t, p, c)
	if got := m.Domains(); !slices.Equal(got, []string{"psys"}) {
		t.Fatalf("domains %v, want psys alone", got)
	}
	c.advance(time.Second)
	p.set("intel-rapl:0", 15_000_000)
	p.set("intel-rapl:0:2", 2_000_000)
	p.set("intel-rapl:1", 25_000_000)
	r, _ := m.Read()
	if !near(r.Joules, 25) {
		t.Fatalf("psys reading %v J, want 25", r.Joules)
	}
}

func TestRAPLPermissionDenied(t *testing.T) {
	p := newPowercap(t)
	p.zone("intel-rapl:0", "package-0", bigRange, 0)
	// Tests run as root, who may read anything: simulate what every other user gets.
	denied := withReadFile(func(path string) ([]byte, error) {
		if strings.HasSuffix(path, "energy_uj") {
			return nil, &fs.PathError{Op: "open", Path: path, Err: fs.ErrPermission}
		}
		return os.ReadFile(path)
	})
	_, err := NewRAPL(WithSysfsRoot(p.root), denied)
	if !errors.Is(err, ErrNotReadable) || !strings.Contains(err.Error(), "permission denied") || !strings.Contains(err.Error(), "intel-rapl:0/energy_uj") {
		t.Fatalf("err %v, want not readable naming the file", err)
	}
	inv, err := Discover(WithSysfsRoot(p.root), WithProcRoot(fakeProc(t, 4, 0)), denied, WithoutNVML())
	if err != nil {
		t.Fatal(err)
	}
	defer inv.Close()
	if inv.RAPL.Used || !strings.Contains(inv.RAPL.Detail, "root") || inv.CPU.Name() != "estimate:cpu" {
		t.Fatalf("discovery with unreadable RAPL: %+v, CPU meter %s", inv.RAPL, inv.CPU.Name())
	}
}

func TestDiscoverUsesRAPLWhenReadable(t *testing.T) {
	p := newPowercap(t)
	p.zone("intel-rapl:0", "package-0", bigRange, 0)
	t.Setenv(EnvSysfs, p.root)
	inv, err := Discover(WithoutNVML())
	if err != nil {
		t.Fatal(err)
	}
	defer inv.Close()
	if !inv.RAPL.Used || inv.CPU.Name() != "rapl" || !strings.Contains(inv.RAPL.Detail, EnvSysfs) {
		t.Fatalf("inventory %+v", inv.RAPL)
	}
}

// selectZones on its own: a dram zone at the top level is its own domain; a top-level zone of
// another kind, a directory that is not a RAPL zone and a second zone of a domain are each left
// out with a note naming them.
func TestRAPLSelectZonesNotesWhatItLeavesOut(t *testing.T) {
	zone := func(dir, name string, index int) sysfs.RaplZone {
		return sysfs.RaplZone{Name: name, Index: index, Path: "/sys/class/powercap/" + dir, MaxMicrojoules: bigRange}
	}
	zones, notes := selectZones([]sysfs.RaplZone{
		zone("intel-rapl:0", "package", 0),
		zone("intel-rapl:1", "dram", 0),
		zone("intel-rapl:2", "gpu", 0),
		zone("dtpm", "package", 0),
		zone("intel-rapl:3", "package", 0), // the name's index repeats intel-rapl:0's
	})
	var domains []string
	for _, z := range zones {
		domains = append(domains, z.domain)
	}
	if want := []string{"dram-1", "package-0"}; !slices.Equal(domains, want) {
		t.Fatalf("domains %v, want %v", domains, want)
	}
	want := []string{
		"zone intel-rapl:2 (gpu) skipped: not a package, dram or psys zone",
		"zone dtpm skipped: not a RAPL zone",
		"zone intel-rapl:3 dropped: a second package-0 zone",
	}
	if !slices.Equal(notes, want) {
		t.Fatalf("notes\n%q\nwant\n%q", notes, want)
	}
}
