package aggregate

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/energy"
	"github.com/wattagg/wattagg/internal/tensortest"
	"github.com/wattagg/wattagg/sched"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// named is a CPU device under another name: a second device for split tests.
type named struct {
	device.Device
	name  string
	calls atomic.Int64
}

func (n *named) Name() string { return n.name }
func (n *named) Info() device.Info {
	i := n.Device.Info()
	i.Name = n.name
	return i
}
func (n *named) WeightedSum(ctx context.Context, job *device.SumJob) (device.Stats, error) {
	n.calls.Add(1)
	st, err := n.Device.WeightedSum(ctx, job)
	st.Device = n.name
	return st, err
}

// wattMeter counts a constant draw: watts × wall time.
type wattMeter struct {
	watts float64
	t0    time.Time
}

func (m *wattMeter) Name() string { return "test-meter" }
func (m *wattMeter) Read() (energy.Reading, error) {
	now := time.Now()
	return energy.Reading{Joules: m.watts * now.Sub(m.t0).Seconds(), Time: now,
		Provenance: energy.Provenance{Source: energy.SourceEstimate, Meter: "test-meter", Domains: []string{"test"}, Granularity: 1e-6}}, nil
}
func (m *wattMeter) Close() error { return nil }

func bigUpdates(t *testing.T, n, elems int) []*tensor.Set {
	t.Helper()
	r := rand.New(rand.NewPCG(7, 7))
	var sets []*tensor.Set
	for k := range n {
		a, b := tensortest.New(t, "a", tensor.F32, elems), tensortest.New(t, "b", tensor.F32, 1000)
		for _, tt := range []*tensor.Tensor{a, b} {
			for j := range tt.Len() {
				tensortest.SetValue(tt, j, r.NormFloat64())
			}
		}
		s, err := tensor.NewSet(a, b)
		if err != nil {
			t.Fatal(err)
		}
		s.Source = "client-" + string(rune('a'+k))
		sets = append(sets, s)
	}
	return sets
}

// twoDeviceProfile makes "cpu" and "cpu2" equally fast and costly: a min-time plan splits.
func twoDeviceProfile() *sched.Profile {
	op := func() *sched.OpProfile {
		return &sched.OpProfile{Op: sched.WeightedSum, DType: tensor.F32, BytesPerSec: 10e9, FLOPsPerSec: 1e11,
			JoulesPerByte: 1e-9, JoulesPerFLOP: 1e-9, EnergyCorrection: 1, TimeCorrection: 1}
	}
	dev := func(name string) *sched.DeviceProfile {
		return &sched.DeviceProfile{Name: name, Kind: "cpu", IdleWatts: 5, Meter: energy.Provenance{Source: energy.SourceEstimate},
			Ops: map[string]*sched.OpProfile{sched.OpKey(sched.WeightedSum, tensor.F32): op()}}
	}
	return &sched.Profile{Version: sched.ProfileVersion, Devices: []*sched.DeviceProfile{dev("cpu"), dev("cpu2")}}
}

func setBytes(s *tensor.Set) [][]byte {
	var out [][]byte
	for _, t := range s.Tensors() {
		out = append(out, t.Bytes())
	}
	return out
}

func TestSplitOverDevicesGivesTheSameBits(t *testing.T) {
	ctx := context.Background()
	updates := bigUpdates(t, 5, 300_000)
	want, _, err := WeightedMean(ctx, updates, nil, WithDevices(mustCPU(t, 2)), WithChunkBytes(4096))
	if err != nil {
		t.Fatal(err)
	}
	a, b := &named{Device: mustCPU(t, 1), name: "cpu"}, &named{Device: mustCPU(t, 1), name: "cpu2"}
	for _, policy := range []sched.Policy{sched.MinTime, sched.MinEnergy} {
		pl, err := sched.NewPlanner(twoDeviceProfile(), sched.WithPolicy(policy))
		if err != nil {
			t.Fatal(err)
		}
		meter := &wattMeter{watts: 20, t0: time.Now()}
		opts := []Option{WithDevices(a, b), WithPlanner(pl), WithMeters(meter), WithChunkBytes(4096)}
		got, rep, err := WeightedMean(ctx, updates, nil, opts...)
		if err != nil {
			t.Fatal(err)
		}
		for i, g := range setBytes(got) {
			if !bytes.Equal(g, setBytes(want)[i]) {
				t.Fatalf("%s: tensor %d differs from the single-device result", policy, i)
			}
		}
		if rep.Plan == nil || rep.PredictedJoules == nil || *rep.PredictedJoules <= 0 || rep.Joules == nil || rep.JoulesPerParam == nil {
			t.Fatalf("%s: report lacks the plan or the energy: %+v", policy, rep)
		}
		if rep.JoulesSource != "estimate" || len(rep.Energy) != 1 || rep.Energy[0].Meter != "test-meter" || rep.JoulesReason != "" {
			t.Fatalf("%s: energy %+v source %q reason %q", policy, rep.Energy, rep.JoulesSource, rep.JoulesReason)
		}
		var share float64
		for _, d := range rep.Devices {
			share += d.Share
		}
		if share < 0.999 || share > 1.001 {
			t.Fatalf("%s: device shares add up to %v", policy, share)
		}
		// Two equal devices split for time, and for energy too: both idle during the round,
		// so finishing sooner saves joules.
		if len(rep.Devices) != 2 || rep.Devices[0].Device != "cpu" || rep.Devices[1].Device != "cpu2" {
			t.Fatalf("%s on two equal devices should split: %+v (%s)", policy, rep.Devices, rep.Plan.Why)
		}
		// The file path splits the same way, through the pipelined writer.
		path := filepath.Join(t.TempDir(), "out.safetensors")
		frep, err := WeightedMeanFile(ctx, path, updates, nil, opts...)
		if err != nil {
			t.Fatal(err)
		}
		f, err := safetensors.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"a", "b"} {
			ft, _ := f.Tensor(name)
			wt, _ := want.Tensor(name)
			if !bytes.Equal(ft.Bytes(), wt.Bytes()) {
				t.Fatalf("%s: file tensor %s differs", policy, name)
			}
		}
		f.Close()
		if len(frep.Devices) != len(rep.Devices) || frep.Joules == nil {
			t.Fatalf("%s: file report %+v", policy, frep.Devices)
		}
	}
	if a.calls.Load() == 0 || b.calls.Load() == 0 {
		t.Fatalf("calls: %d and %d", a.calls.Load(), b.calls.Load())
	}
}

func TestPowerCapPacesTheDevices(t *testing.T) {
	ctx := context.Background()
	updates := bigUpdates(t, 3, 100_000)
	want, _, err := WeightedMean(ctx, updates, nil)
	if err != nil {
		t.Fatal(err)
	}
	// 10 W idle; each device would draw 10 W above it flat out: a 15 W cap paces them.
	pl, err := sched.NewPlanner(twoDeviceProfile(), sched.WithPolicy(sched.MinTime), sched.WithPowerCap(15))
	if err != nil {
		t.Fatal(err)
	}
	a, b := &named{Device: mustCPU(t, 1), name: "cpu"}, &named{Device: mustCPU(t, 1), name: "cpu2"}
	got, rep, err := WeightedMean(ctx, updates, nil, WithDevices(a, b), WithPlanner(pl), WithChunkBytes(4096))
	if err != nil {
		t.Fatal(err)
	}
	for i, g := range setBytes(got) {
		if !bytes.Equal(g, setBytes(want)[i]) {
			t.Fatalf("tensor %d differs", i)
		}
	}
	paced := false
	for _, s := range rep.Plan.Shares {
		paced = paced || s.Rate < 0.999
	}
	if !paced || rep.Plan.Predicted.PeakWatts > 15+1e-9 || !rep.Plan.Feasible {
		t.Fatalf("plan %s", rep.Plan.Why)
	}
	if a.calls.Load()+b.calls.Load() < 4 {
		t.Fatalf("paced devices run in several batches: %d calls", a.calls.Load()+b.calls.Load())
	}
	if rep.Joules != nil || !strings.Contains(rep.JoulesReason, "no energy meter") {
		t.Fatalf("without meters: joules %v, reason %q", rep.Joules, rep.JoulesReason)
	}
}

func TestRoundMetersEveryAdd(t *testing.T) {
	ctx := context.Background()
	meter := &wattMeter{watts: 50, t0: time.Now()}
	round := newFedAvgRound(t, WithMeters(meter))
	const idle = 40 * time.Millisecond
	for _, u := range bigUpdates(t, 3, 50_000) {
		if err := round.Add(ctx, u, 1); err != nil {
			t.Fatal(err)
		}
		time.Sleep(idle) // a server waits for its clients: that time is not the round's
	}
	_, rep, err := round.Result(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Joules == nil || *rep.Joules <= 0 || rep.Energy[0].Seconds <= 0 || rep.Plan != nil {
		t.Fatalf("streaming report energy %+v", rep.Energy)
	}
	// The joules are the meter's over the Adds and the emit only: 50 W × their time, give or
	// take the moments around each window (a preemption on a busy machine), never the 120 ms
	// spent waiting between them (6 J).
	if *rep.Joules > 50*(rep.Seconds+idle.Seconds()/4) {
		t.Fatalf("%v J in %v s at 50 W", *rep.Joules, rep.Seconds)
	}
}

func TestPlacementOptionsRejectBadValues(t *testing.T) {
	cpu := mustCPU(t, 1)
	for name, o := range map[string]Option{
		"no devices":  WithDevices(),
		"nil device":  WithDevices(cpu, nil),
		"twice":       WithDevices(cpu, cpu),
		"nil planner": WithPlanner(nil),
		"nil meter":   WithMeters(nil),
	} {
		if _, err := NewRound(context.Background(), NewFedAvg(), o); !errors.Is(err, ErrOption) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// A planner that cannot place the job (the device is not calibrated) is an error.
	empty := &sched.Profile{Version: sched.ProfileVersion, Devices: []*sched.DeviceProfile{{Name: "cpu", Ops: map[string]*sched.OpProfile{}}}}
	pl, err := sched.NewPlanner(empty)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = WeightedMean(context.Background(), bigUpdates(t, 2, 10), nil, WithPlanner(pl))
	if !errors.Is(err, sched.ErrUncalibrated) {
		t.Fatalf("uncalibrated planner: %v", err)
	}
}

// TestArrivalsAreMetered: a round whose updates arrive in pieces reports the meters' energy from
// the first arrival to the close.
func TestArrivalsAreMetered(t *testing.T) {
	ctx := context.Background()
	meter := &wattMeter{watts: 50, t0: time.Now()}
	round, err := NewRound(ctx, NewFedAvg(), WithMeters(meter), WithExactSum(ExactSum{}))
	if err != nil {
		t.Fatal(err)
	}
	defer round.Close()
	u := bigUpdates(t, 1, 50_000)[0]
	a, err := round.BeginArrival(ctx, "c1", u.Layout(), nil, nil, 1, WeightsGiven)
	if err != nil {
		t.Fatal(err)
	}
	for j := range u.Len() {
		time.Sleep(20 * time.Millisecond) // the bytes take their time to arrive
		if err := a.Add(ctx, j, 0, u.At(j).Bytes()); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Commit(); err != nil {
		t.Fatal(err)
	}
	_, rep, err := round.Result(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Joules == nil || *rep.Joules < 50*0.02*float64(u.Len()) {
		t.Fatalf("joules %v, want at least 50 W over the %d × 20 ms of arrival", rep.Joules, u.Len())
	}
}
