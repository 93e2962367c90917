package energy

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeProc writes a /proc/stat with cpus logical CPUs whose summed busy time is busyTicks
// (USER_HZ ticks, split over user, system and irq) and returns the procfs root.
func fakeProc(t *testing.T, cpus int, busyTicks int) string {
	t.Helper()
	dir := t.TempDir()
	writeStat(t, dir, cpus, busyTicks)
	return dir
}

func writeStat(t *testing.T, dir string, cpus, busyTicks int) {
	t.Helper()
	u, s, irq := busyTicks/2, busyTicks/4, busyTicks-busyTicks/2-busyTicks/4
	var b strings.Builder
	// user nice system idle iowait irq softirq steal guest guest_nice; steal must not count.
	fmt.Fprintf(&b, "cpu  %d 0 %d 100000 50 %d 0 777 0 0\n", u, s, irq)
	for i := range cpus {
		fmt.Fprintf(&b, "cpu%d 0 0 0 %d 0 0 0 0 0 0\n", i, 100000/cpus)
	}
	b.WriteString("intr 0\nctxt 0\nbtime 1700000000\nprocesses 1\nprocs_running 1\nprocs_blocked 0\n")
	if err := os.WriteFile(filepath.Join(dir, "stat"), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestEstimateFollowsUtilisation(t *testing.T) {
	proc := fakeProc(t, 4, 1000)
	c := &clock{t: time.Unix(1000, 0)}
	m, err := NewCPUEstimate(WithProcRoot(proc), withClock(c), WithCPUTDP(40), WithCPUIdle(10))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	w, err := Start(m)
	if err != nil {
		t.Fatal(err)
	}
	// 2 s of wall time in which the 4 CPUs were busy for 4 CPU-seconds (400 ticks): u = 0.5,
	// so W = 10 + 30·0.5 = 25 and J = 50.
	c.advance(2 * time.Second)
	writeStat(t, proc, 4, 1400)
	ms, err := w.Stop()
	if err != nil {
		t.Fatal(err)
	}
	got := ms[0]
	if !near(got.Joules, 50) || !near(got.Watts, 25) || got.Source != SourceEstimate {
		t.Fatalf("measurement %+v, want 50 J at 25 W from the estimate", got)
	}
	for _, want := range []string{"W = 10 + (40 − 10)·u", "4 logical CPUs", "TDP 40 W (option)"} {
		if !strings.Contains(got.Model, want) {
			t.Fatalf("model %q lacks %q", got.Model, want)
		}
	}
	if _, err := m.Read(); err != nil {
		t.Fatal(err)
	}
	m.Close()
	if _, err := m.Read(); err != ErrClosed {
		t.Fatalf("read after close: %v", err)
	}
}

func TestEstimateDefaultsAndEnvironment(t *testing.T) {
	proc := fakeProc(t, 2, 0)
	m, err := NewCPUEstimate(WithProcRoot(proc))
	if err != nil {
		t.Fatal(err)
	}
	if idle, tdp := m.Watts(); !near(tdp, 2*DefaultTDPPerCPU) || !near(idle, DefaultIdleFraction*tdp) {
		t.Fatalf("defaults idle %v tdp %v", idle, tdp)
	}
	t.Setenv(EnvCPUTDP, "65")
	t.Setenv(EnvCPUIdle, "12.5")
	m, err = NewCPUEstimate(WithProcRoot(proc))
	if err != nil {
		t.Fatal(err)
	}
	if idle, tdp := m.Watts(); tdp != 65 || idle != 12.5 || !strings.Contains(m.Model(), EnvCPUTDP) {
		t.Fatalf("from the environment: idle %v tdp %v, model %q", idle, tdp, m.Model())
	}
	t.Setenv(EnvCPUTDP, "lots")
	if _, err := NewCPUEstimate(WithProcRoot(proc)); err == nil || !strings.Contains(err.Error(), EnvCPUTDP) {
		t.Fatalf("bad %s: %v", EnvCPUTDP, err)
	}
}

func TestOptionsRejectBadValues(t *testing.T) {
	proc := fakeProc(t, 2, 0)
	for name, opt := range map[string]Option{
		"negative tdp":  WithCPUTDP(-1),
		"negative idle": WithCPUIdle(-5),
		"empty sysfs":   WithSysfsRoot(""),
		"empty proc":    WithProcRoot(""),
		"nil nvml":      WithNVML(nil),
	} {
		if _, err := NewCPUEstimate(WithProcRoot(proc), opt); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := NewCPUEstimate(WithProcRoot(proc), WithCPUTDP(10), WithCPUIdle(20)); err == nil {
		t.Error("idle above TDP accepted")
	}
	if _, err := NewCPUEstimate(WithProcRoot(t.TempDir())); err == nil {
		t.Error("a procfs without stat accepted")
	}
}
