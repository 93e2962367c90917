package energy

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeNVML is a machine with GPUs: each with an energy counter (mJ) or without one.
type fakeNVML struct {
	mu       sync.Mutex
	initErr  error
	gpus     []*fakeGPU
	inited   bool
	calls    int // calls other than Init
	shutdown int
}

type fakeGPU struct {
	lib      *fakeNVML
	name     string
	noEnergy bool
	mj       uint64
	mw       uint32
}

func (f *fakeNVML) Init() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.initErr != nil {
		return f.initErr
	}
	f.inited = true
	return nil
}

func (f *fakeNVML) use() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if !f.inited {
		return fmt.Errorf("%w: called before a successful Init", ErrUnavailable)
	}
	return nil
}

func (f *fakeNVML) Shutdown() error {
	if err := f.use(); err != nil {
		return err
	}
	f.mu.Lock()
	f.shutdown++
	f.inited = false
	f.mu.Unlock()
	return nil
}

func (f *fakeNVML) DeviceCount() (int, error) {
	if err := f.use(); err != nil {
		return 0, err
	}
	return len(f.gpus), nil
}

func (f *fakeNVML) Device(i int) (NVMLDevice, error) {
	if err := f.use(); err != nil {
		return nil, err
	}
	return f.gpus[i], nil
}

func (g *fakeGPU) Name() (string, error) { return g.name, g.lib.use() }
func (g *fakeGPU) TotalEnergy() (uint64, error) {
	if err := g.lib.use(); err != nil {
		return 0, err
	}
	if g.noEnergy {
		return 0, fmt.Errorf("%w: pre-Volta", ErrNotSupported)
	}
	return g.mj, nil
}
func (g *fakeGPU) Power() (uint32, error) { return g.mw, g.lib.use() }

func newFakeNVML(gpus ...*fakeGPU) *fakeNVML {
	f := &fakeNVML{gpus: gpus}
	for _, g := range gpus {
		g.lib = f
	}
	return f
}

func TestNVMLEnergyCounterAndPowerIntegral(t *testing.T) {
	h100 := &fakeGPU{name: "NVIDIA H100", mj: 5_000_000}
	p100 := &fakeGPU{name: "Tesla P100", noEnergy: true, mw: 100_000}
	lib := newFakeNVML(h100, p100)
	c := &clock{t: time.Unix(1000, 0)}
	ms, err := NewNVMLMeters(WithNVML(lib), withClock(c))
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 2 || ms[0].Source() != SourceNVMLEnergy || ms[1].Source() != SourceNVMLPower {
		t.Fatalf("meters %v", ms)
	}
	if ms[0].PollEvery() != 0 || ms[1].PollEvery() <= 0 {
		t.Fatal("only the power integral needs background reads")
	}
	// 1 s: the H100 counts 300 J; the P100 draws 100 W then 200 W: the trapezoid gives 150 J.
	c.advance(time.Second)
	h100.mj += 300_000
	p100.mw = 200_000
	r0, err := ms[0].Read()
	if err != nil {
		t.Fatal(err)
	}
	r1, err := ms[1].Read()
	if err != nil {
		t.Fatal(err)
	}
	if !near(r0.Joules, 300) || !near(r1.Joules, 150) || r1.Model == "" || !strings.Contains(r0.Domains[0], "H100") {
		t.Fatalf("readings %+v %+v", r0, r1)
	}
	// A driver reload resets the counter: the reset is seen, not a negative energy.
	c.advance(time.Second)
	h100.mj = 1000
	if r0, err = ms[0].Read(); err != nil {
		t.Fatal(err)
	}
	if r0.Resets != 1 || !near(r0.Joules, 301) {
		t.Fatalf("after a reset: %+v", r0)
	}
	// NVML is shut down once, when the last meter closes.
	ms[0].Close()
	if lib.shutdown != 0 {
		t.Fatal("shut down while a meter is open")
	}
	ms[1].Close()
	ms[1].Close()
	if lib.shutdown != 1 {
		t.Fatalf("%d shutdowns, want 1", lib.shutdown)
	}
}

func TestNVMLNoCallAfterFailedInit(t *testing.T) {
	lib := newFakeNVML(&fakeGPU{name: "x"})
	lib.initErr = fmt.Errorf("%w: libnvidia-ml.so.1 not found", ErrUnavailable)
	_, err := NewNVMLMeters(WithNVML(lib))
	if !errors.Is(err, ErrUnavailable) || lib.calls != 0 {
		t.Fatalf("err %v after %d calls", err, lib.calls)
	}
	inv, err := Discover(WithNVML(lib), WithSysfsRoot(t.TempDir()), WithProcRoot(fakeProc(t, 2, 0)))
	if err != nil {
		t.Fatal(err)
	}
	defer inv.Close()
	if inv.NVML.Used || !strings.Contains(inv.NVML.Detail, "libnvidia-ml.so.1 not found") || len(inv.GPUs) != 0 || lib.calls != 0 {
		t.Fatalf("NVML status %+v, %d calls", inv.NVML, lib.calls)
	}
	// No GPU: unavailable, and the library is shut down again.
	none := newFakeNVML()
	if _, err := NewNVMLMeters(WithNVML(none)); !errors.Is(err, ErrUnavailable) || none.shutdown != 1 {
		t.Fatalf("no GPU: %v, %d shutdowns", err, none.shutdown)
	}
}

func TestDiscoverListsGPUs(t *testing.T) {
	lib := newFakeNVML(&fakeGPU{name: "NVIDIA H100", mj: 1}, &fakeGPU{name: "NVIDIA H100", mj: 1})
	inv, err := Discover(WithNVML(lib), WithSysfsRoot(t.TempDir()), WithProcRoot(fakeProc(t, 2, 0)))
	if err != nil {
		t.Fatal(err)
	}
	if !inv.NVML.Used || len(inv.GPUs) != 2 || len(inv.Meters()) != 3 || !strings.Contains(inv.NVML.Detail, "gpu 1 NVIDIA H100 (nvml-energy)") {
		t.Fatalf("inventory %+v", inv.NVML)
	}
	if err := inv.Close(); err != nil || lib.shutdown != 1 {
		t.Fatalf("close: %v, %d shutdowns", err, lib.shutdown)
	}
}

func TestDefaultNVMLHereIsUnavailableNotFatal(t *testing.T) {
	// This machine has no GPU: whatever the build (cgo or not), discovery must say so and go on.
	_, err := NewNVMLMeters()
	if err == nil {
		t.Skip("a GPU is present")
	}
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("err %v, want ErrUnavailable", err)
	}
}
