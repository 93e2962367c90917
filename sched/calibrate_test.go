package sched

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/energy"
	"github.com/wattagg/wattagg/tensor"
)

// fixedMeter draws idleW plus busyW while its busy counter is positive: a meter whose truth
// the test knows.
type fixedMeter struct {
	name         string
	idleW, busyW float64
	t0           time.Time
	busyNanos    atomic.Int64 // busy time accumulated
}

func (m *fixedMeter) Name() string { return m.name }
func (m *fixedMeter) Read() (energy.Reading, error) {
	now := time.Now()
	j := m.idleW*now.Sub(m.t0).Seconds() + m.busyW*time.Duration(m.busyNanos.Load()).Seconds()
	return energy.Reading{Joules: j, Time: now, Provenance: energy.Provenance{Source: energy.SourceEstimate, Meter: m.name, Granularity: 1e-3}}, nil
}
func (m *fixedMeter) Close() error { return nil }

// meteredCPU is the real CPU device whose weighted sums the fixed meter sees as busy time.
type meteredCPU struct {
	*device.CPU
	m *fixedMeter
}

func (d meteredCPU) WeightedSum(ctx context.Context, job *device.SumJob) (device.Stats, error) {
	start := time.Now()
	st, err := d.CPU.WeightedSum(ctx, job)
	d.m.busyNanos.Add(int64(time.Since(start)))
	return st, err
}

// linkGPU is a "GPU" made of the CPU with a host link, to exercise link calibration.
type linkGPU struct {
	meteredCPU
	copies atomic.Int64
}

func (g *linkGPU) Name() string { return "cuda:0" }
func (g *linkGPU) Info() device.Info {
	i := g.CPU.Info()
	i.Name, i.Kind = "cuda:0", "gpu"
	return i
}
func (g *linkGPU) CopyToDevice(ctx context.Context, src []byte) error {
	start := time.Now()
	dst := make([]byte, len(src))
	copy(dst, src)
	g.copies.Add(1)
	g.m.busyNanos.Add(int64(time.Since(start)))
	return ctx.Err()
}

func quickOpts() []Option {
	return []Option{WithQuick(), WithWindow(30 * time.Millisecond), WithIdleWindow(10 * time.Millisecond), WithWorkloadBytes(4 << 20)}
}

func TestCalibrateMeasuresTheRealKernels(t *testing.T) {
	cpu, err := device.NewCPU()
	if err != nil {
		t.Fatal(err)
	}
	m := &fixedMeter{name: "fixed", idleW: 10, busyW: 50, t0: time.Now()}
	var steps []string
	opts := append(quickOpts(), WithProgress(func(done, total int, step string) { steps = append(steps, step) }))
	p, err := Calibrate(context.Background(), []Target{{Device: meteredCPU{cpu, m}, Meter: m}}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	d := p.Device("cpu")
	o, ok := d.Op(WeightedSum, tensor.F32)
	if !ok {
		t.Fatalf("no weighted-sum profile: %+v", d)
	}
	if !(o.BytesPerSec > 1e8 && o.FLOPsPerSec > 0 && o.JoulesPerByte > 0 && o.JoulesPerFLOP > 0) {
		t.Fatalf("op profile %+v", o)
	}
	// The meter draws 50 W above idle while the kernels run: the joules per byte follow. The
	// profile's run of its workload (the fixed cost plus the bytes at the rate) spends its
	// joules above idle at that power, up to the loop's time outside the kernel. (Not the rate
	// alone: JoulesPerByte·BytesPerSec leaves the fixed cost out of the time, and the fixed cost
	// is fitted from a tiny job whose timing a loaded machine disturbs: 78 W under CI's -race.)
	bytes := weightedSumClass().Counts(Workload{Clients: o.Clients, In: o.DType, Out: o.DType}).Bytes * float64(o.Elements)
	if run := o.LatencySec + bytes/o.BytesPerSec; !(o.LatencySec >= 0 && run > 0) {
		t.Fatalf("latency %v s, run %v s", o.LatencySec, run)
	} else if got := o.JoulesPerByte * bytes / run; got < 40 || got > 50.5 {
		t.Fatalf("dynamic power over the profile's run %v W, want 50 (at most 10 W less for the loop)", got)
	}
	if d.IdleWatts < 9 || d.IdleWatts > 11 {
		t.Fatalf("idle %v W, want 10", d.IdleWatts)
	}
	if len(steps) != 2 || steps[0] != "idle power" || !strings.Contains(steps[1], "weighted-sum/f32") {
		t.Fatalf("progress %v", steps)
	}
	// A bf16 request falls back to... nothing measured of width 2: the f32 figures.
	if o2, ok := d.Op(WeightedSum, tensor.BF16); !ok || o2 != o {
		t.Fatal("no fallback to the reference dtype")
	}
	// The profile plans.
	pl, err := NewPlanner(p)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := pl.Plan(fedavg(8, 1<<20))
	if err != nil || plan.Predicted.Joules <= 0 || plan.Shares[0].Device != "cpu" {
		t.Fatalf("plan %+v, %v", plan, err)
	}
}

func TestCalibrateMeasuresTheHostLink(t *testing.T) {
	cpu := must(device.NewCPU())(t)
	m := &fixedMeter{name: "nvml:0", idleW: 40, busyW: 200, t0: time.Now()}
	g := &linkGPU{meteredCPU: meteredCPU{cpu, m}}
	p, err := Calibrate(context.Background(), []Target{{Device: g, Meter: m}}, quickOpts()...)
	if err != nil {
		t.Fatal(err)
	}
	d := p.Device("cuda:0")
	if d == nil || d.Link == nil || !(d.Link.BytesPerSec > 0 && d.Link.JoulesPerByte > 0) || g.copies.Load() < 2 {
		t.Fatalf("link %+v after %d copies", d, g.copies.Load())
	}
	if o := d.Ops[OpKey(WeightedSum, tensor.F32)]; o == nil || !o.IncludesTransfer {
		t.Fatalf("a GPU's op measured from host memory includes its transfers: %+v", o)
	}
}

func TestCalibrateHonoursCancellation(t *testing.T) {
	cpu := must(device.NewCPU())(t)
	m := &fixedMeter{name: "fixed", t0: time.Now()}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Calibrate(ctx, []Target{{Device: cpu, Meter: m}}, quickOpts()...)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v", err)
	}
	if _, err := Calibrate(context.Background(), nil); !errors.Is(err, ErrOption) {
		t.Fatalf("no targets: %v", err)
	}
	if _, err := Calibrate(context.Background(), []Target{{Device: cpu}}); !errors.Is(err, ErrOption) {
		t.Fatalf("no meter: %v", err)
	}
	if _, err := Calibrate(context.Background(), []Target{{Device: cpu, Meter: m}}, WithWindow(-1)); !errors.Is(err, ErrOption) {
		t.Fatalf("negative window: %v", err)
	}
}

func TestProfileRoundTripAndVersion(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "profile.json")
	p := fedavgProfile()
	p.Read = &ReadProfile{LargeFolios: "map", MapSec: 0.035, CopySec: 0.046, Files: 8, Bytes: 128 << 20}
	if err := p.Save(path); err != nil {
		t.Fatal(err)
	}
	q, err := LoadProfile(path)
	if err != nil {
		t.Fatal(err)
	}
	if q.Device("cuda:0").Link.JoulesPerByte != 2e-8 || q.Device("cpu").Ops[OpKey(WeightedSum, tensor.F32)].BytesPerSec != 20e9 {
		t.Fatalf("round trip lost data: %+v", q.Devices)
	}
	if q.Read == nil || *q.Read != *p.Read {
		t.Fatalf("round trip of the read: %+v", q.Read)
	}
	os.WriteFile(path, []byte(`{"version": 1, "devices": [], "read": {"large_folios": "direct", "map_s": 1, "copy_s": 1}}`), 0o644)
	if _, err := LoadProfile(path); !errors.Is(err, ErrProfile) || !strings.Contains(err.Error(), `read: large_folios "direct"`) {
		t.Fatalf("bad read: %v", err)
	}
	if _, err := LoadProfile(filepath.Join(dir, "none.json")); !errors.Is(err, ErrNoProfile) {
		t.Fatalf("missing: %v", err)
	}
	os.WriteFile(path, []byte(`{"version": 99, "devices": []}`), 0o644)
	if _, err := LoadProfile(path); !errors.Is(err, ErrProfile) || !strings.Contains(err.Error(), "version 99") {
		t.Fatalf("version: %v", err)
	}
	os.WriteFile(path, []byte(`{"version": 1, "devices": [{"name": "cpu", "ops": {"x": {"bytes_per_s": -1}}}]}`), 0o644)
	if _, err := LoadProfile(path); !errors.Is(err, ErrProfile) {
		t.Fatalf("negative rate: %v", err)
	}
	t.Setenv(EnvProfile, "/somewhere/p.json")
	if got, _ := DefaultProfilePath(); got != "/somewhere/p.json" {
		t.Fatalf("DefaultProfilePath %q", got)
	}
	// Merge adds what a later calibration measured.
	a := synthProfile(synthCPU(opProf(WeightedSum, 1e9, 1e9, 1e-9, 1e-9)))
	a.Merge(synthProfile(synthGPU(opProf(WeightedSum, 2e9, 2e9, 1e-9, 1e-9))))
	if len(a.Devices) != 2 {
		t.Fatalf("merged %d devices", len(a.Devices))
	}
	// A later calibration's read replaces the earlier; one that did not measure reads keeps it.
	b := synthProfile(synthCPU(opProf(WeightedSum, 1e9, 1e9, 1e-9, 1e-9)))
	b.Read = &ReadProfile{LargeFolios: "copy", MapSec: 2, CopySec: 1}
	a.Merge(b)
	a.Merge(synthProfile(synthCPU(opProf(WeightedSum, 1e9, 1e9, 1e-9, 1e-9))))
	if a.Read == nil || a.Read.LargeFolios != "copy" {
		t.Fatalf("merged read: %+v", a.Read)
	}
}

func TestRegistry(t *testing.T) {
	r := NewRegistry()
	good := weightedSumClass()
	if err := r.Register(good); err != nil {
		t.Fatal(err)
	}
	if err := r.Register(good); !errors.Is(err, ErrOpClass) {
		t.Fatalf("duplicate: %v", err)
	}
	bad := good
	bad.Name, bad.Prepare = "x", nil
	if err := r.Register(bad); !errors.Is(err, ErrOpClass) {
		t.Fatalf("no Prepare: %v", err)
	}
	if _, err := r.Lookup("median"); !errors.Is(err, ErrUnknownOp) {
		t.Fatalf("lookup: %v", err)
	}
	if names := Default.Names(); len(names) == 0 || names[0] != WeightedSum {
		t.Fatalf("default registry %v", names)
	}
}

func TestDiscoverPairsDevicesAndMeters(t *testing.T) {
	proc := t.TempDir()
	os.WriteFile(filepath.Join(proc, "stat"), []byte("cpu  1 0 1 100 0 0 0 0 0 0\ncpu0 1 0 1 100 0 0 0 0 0 0\n"), 0o644)
	m, err := Discover(WithEnergyOptions(energy.WithSysfsRoot(t.TempDir()), energy.WithProcRoot(proc), energy.WithoutNVML()))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if got := m.Names(); len(got) < 1 || got[0] != "cpu" {
		t.Fatalf("devices %v", got)
	}
	ts := m.Targets()
	if len(ts) != 1 || ts[0].Meter.Name() != "estimate:cpu" || m.Energy.RAPL.Used {
		t.Fatalf("targets %+v", ts)
	}
	if _, err := Discover(WithCPU(nil)); !errors.Is(err, ErrOption) {
		t.Fatalf("nil CPU: %v", err)
	}
}
