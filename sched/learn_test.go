package sched

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wattagg/wattagg/energy"
	"github.com/wattagg/wattagg/tensor"
)

// estimateCPU is a CPU profiled with the CPU estimate, whose meter advances every 10 ms (the
// development VMs have no RAPL).
func estimateCPU(latency float64) *Profile {
	o := opProf(WeightedSum, 20e9, 1e11, 3e-9, 2e-9)
	o.LatencySec = latency
	d := synthCPU(o)
	d.Meter = energy.Provenance{Source: energy.SourceEstimate, Meter: "estimate:cpu", Granularity: 0.01}
	return synthProfile(d)
}

func estimated(joules, seconds float64) energy.Measurement {
	return energy.Measurement{Joules: joules, Seconds: seconds,
		Provenance: energy.Provenance{Source: energy.SourceEstimate, Meter: "estimate:cpu", Granularity: 0.01}}
}

// savedProfile saves p to a file whose modification time is an hour ago, so that any write is
// seen, and returns the path, the bytes and the time.
func savedProfile(t *testing.T, p *Profile) (string, []byte, time.Time) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "wattagg", "profile.json")
	if err := p.Save(path); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour).Truncate(time.Second)
	if err := os.Chtimes(path, old, old); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return path, b, old
}

func checkUntouched(t *testing.T, path string, want []byte, mtime time.Time) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("the profile was rewritten:\n%s\nwant\n%s", got, want)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if !st.ModTime().Equal(mtime) {
		t.Fatalf("the profile's mtime moved from %v to %v", mtime, st.ModTime())
	}
}

func profileJSON(t *testing.T, p *Profile) string {
	t.Helper()
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A round of a few milliseconds, measured by a meter that advances every 10 ms, teaches
// nothing: the profile stays as loaded and its file is neither rewritten nor touched, even
// though the round took five times its prediction.
func TestObserveRefusesAMillisecondRunAndWritesNothing(t *testing.T) {
	path, before, mtime := savedProfile(t, estimateCPU(0))
	prof, err := LoadProfile(path)
	if err != nil {
		t.Fatal(err)
	}
	loaded := profileJSON(t, prof)
	pl, err := NewPlanner(prof)
	if err != nil {
		t.Fatal(err)
	}
	p, err := pl.Plan(fedavg(16, 300_000)) // 1 ms predicted
	if err != nil {
		t.Fatal(err)
	}
	secs := 5 * p.Predicted.Seconds
	l := pl.Observe(p, Outcome{Energy: estimated(30*secs+5*p.Predicted.DynamicJoules, secs), DeviceSeconds: map[string]float64{"cpu": secs}})
	if l.Applied {
		t.Fatalf("a %v s run was learned from: %s", secs, l.Why)
	}
	if l.MinWindowSeconds != 0.1 || l.WindowSeconds != secs ||
		!strings.Contains(l.Why, "shorter than the 100 ms a correction needs (10 updates of the estimate:cpu meter, which advances every 10 ms)") {
		t.Fatalf("refusal %+v", l)
	}
	if got := profileJSON(t, pl.Profile()); got != loaded {
		t.Fatalf("a refused outcome changed the profile:\n%s\nwas\n%s", got, loaded)
	}
	// What the CLI does after a round, and what the engine may do.
	if l.Applied {
		if err := pl.Profile().Save(path); err != nil {
			t.Fatal(err)
		}
	}
	if wrote, err := pl.SaveProfile(path); err != nil || wrote {
		t.Fatalf("SaveProfile after a refused outcome: wrote %v, %v", wrote, err)
	}
	checkUntouched(t, path, before, mtime)
}

// A round long enough for the meter moves the corrections, and the profile is saved once.
func TestObserveLearnsFromALongEnoughRunAndSavesIt(t *testing.T) {
	path, before, _ := savedProfile(t, estimateCPU(0))
	prof, err := LoadProfile(path)
	if err != nil {
		t.Fatal(err)
	}
	pl, err := NewPlanner(prof)
	if err != nil {
		t.Fatal(err)
	}
	p, err := pl.Plan(fedavg(16, 25_000_000)) // 85 ms predicted
	if err != nil {
		t.Fatal(err)
	}
	secs := 2 * p.Predicted.Seconds
	l := pl.Observe(p, Outcome{Energy: estimated(30*secs+2*p.Predicted.DynamicJoules, secs), DeviceSeconds: map[string]float64{"cpu": secs}})
	if !l.Applied || l.WindowSeconds != secs || l.MinWindowSeconds != 0.1 {
		t.Fatalf("a %v s run was not learned from: %+v", secs, l)
	}
	wrote, err := pl.SaveProfile(path)
	if err != nil || !wrote {
		t.Fatalf("SaveProfile: wrote %v, %v", wrote, err)
	}
	if b, _ := os.ReadFile(path); bytes.Equal(b, before) {
		t.Fatal("the corrected profile was not written")
	}
	saved, err := LoadProfile(path)
	if err != nil {
		t.Fatal(err)
	}
	o := saved.Device("cpu").Ops[OpKey(WeightedSum, tensor.F32)]
	// Default learning rate 0.25: 1 + 0.25·(2 − 1).
	if math.Abs(o.TimeCorrection-1.25) > 1e-9 || math.Abs(o.EnergyCorrection-1.25) > 1e-9 || o.Observations != 1 {
		t.Fatalf("saved corrections: time %v, energy %v, %d observations", o.TimeCorrection, o.EnergyCorrection, o.Observations)
	}
	// Nothing new: no second write.
	st, _ := os.Stat(path)
	if wrote, err := pl.SaveProfile(path); err != nil || wrote {
		t.Fatalf("second SaveProfile: wrote %v, %v", wrote, err)
	}
	checkUntouched(t, path, mustRead(t, path), st.ModTime())
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestMinWindowFollowsTheMeterAndTheFixedCost(t *testing.T) {
	for _, tc := range []struct {
		name    string
		latency float64
		meter   energy.Provenance
		want    time.Duration
		why     string
	}{
		{"rapl", 0, energy.Provenance{Source: energy.SourceRAPL, Meter: "rapl", Granularity: 1e-3}, 10 * time.Millisecond, "the floor of 10 ms"},
		{"estimate", 0, energy.Provenance{Source: energy.SourceEstimate, Meter: "estimate:cpu", Granularity: 0.01}, 100 * time.Millisecond, "10 updates of the estimate:cpu meter"},
		{"nvml", 0, energy.Provenance{Source: "rapl+nvml-energy", Meter: "rapl+nvml:0", Granularity: 0.1}, time.Second, "10 updates of the coarsest of the meters rapl+nvml:0, which advances every 100 ms"},
		{"no meter", 0, energy.Provenance{}, 10 * time.Millisecond, "the floor of 10 ms"},
		{"slow calls", 5e-3, energy.Provenance{Source: energy.SourceRAPL, Meter: "rapl", Granularity: 1e-3}, 500 * time.Millisecond, "100 times the 5 ms fixed cost of a weighted-sum/f32 call on cpu"},
	} {
		pl, err := NewPlanner(estimateCPU(tc.latency))
		if err != nil {
			t.Fatal(err)
		}
		p, err := pl.Plan(fedavg(16, 25_000_000))
		if err != nil {
			t.Fatal(err)
		}
		got, why := pl.MinWindow(p, tc.meter)
		if d := got - tc.want; d < -time.Microsecond || d > time.Microsecond || !strings.Contains(why, tc.why) {
			t.Errorf("%s: %v (%s), want %v (%s)", tc.name, got, why, tc.want, tc.why)
		}
	}
	// A window long enough for RAPL but not for calls with a 5 ms fixed cost is refused.
	prof := estimateCPU(5e-3)
	prof.Devices[0].Meter.Source = energy.SourceRAPL
	pl, err := NewPlanner(prof)
	if err != nil {
		t.Fatal(err)
	}
	p, err := pl.Plan(fedavg(16, 25_000_000))
	if err != nil {
		t.Fatal(err)
	}
	m := energy.Measurement{Joules: 100, Seconds: 0.2, Provenance: energy.Provenance{Source: energy.SourceRAPL, Meter: "rapl", Granularity: 1e-3}}
	before := profileJSON(t, pl.Profile())
	if l := pl.Observe(p, Outcome{Energy: m, DeviceSeconds: map[string]float64{"cpu": 0.2}}); l.Applied || !strings.Contains(l.Why, "fixed cost") {
		t.Fatalf("%+v", l)
	}
	if profileJSON(t, pl.Profile()) != before {
		t.Fatal("a refused outcome changed the profile")
	}
}

// In a split, a device that was busy too briefly teaches no time, while the round's joules and
// the other device's time are learned.
func TestObserveSkipsTheTimeOfADeviceBusyBriefly(t *testing.T) {
	pl, err := NewPlanner(fedavgProfile(), WithRegistry(testRegistry(t)), WithDeadline(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	p, err := pl.Plan(fedavg(16, 25_000_000))
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Shares) != 2 {
		t.Fatalf("want a split: %s", p.Why)
	}
	secs := p.Predicted.Seconds
	m := energy.Measurement{Joules: 90*secs + p.Predicted.DynamicJoules, Seconds: secs,
		Provenance: energy.Provenance{Source: energy.SourceRAPL, Meter: "rapl", Granularity: 1e-3}}
	l := pl.Observe(p, Outcome{Energy: m, DeviceSeconds: map[string]float64{"cpu": 2 * secs, "cuda:0": 0.001}})
	if !l.Applied || !strings.Contains(l.Why, "time not learned: cuda:0 was busy 1 ms, less than 10 ms") {
		t.Fatalf("%+v", l)
	}
	got := pl.Profile()
	cpu := got.Device("cpu").Ops[OpKey(WeightedSum, tensor.F32)]
	gpu := got.Device("cuda:0").Ops[OpKey(WeightedSum, tensor.F32)]
	if cpu.TimeCorrection <= 1 || gpu.TimeCorrection != 1 || gpu.Observations != 1 {
		t.Fatalf("time corrections: cpu %v, cuda:0 %v (%d observations)", cpu.TimeCorrection, gpu.TimeCorrection, gpu.Observations)
	}
}
