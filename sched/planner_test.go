package sched

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/energy"
	"github.com/wattagg/wattagg/tensor"
)

// Synthetic profiles: a CPU reading host memory at 20 GB/s for 60 W above a 30 W idle, and a
// GPU behind a 25 GB/s PCIe link whose copies cost 20 nJ/byte (the host's DRAM and the link),
// with HBM at 2 TB/s and 30 TFLOP/s for 300 W above a 60 W idle.

func opProf(op string, bps, fps, jpb, jpf float64) *OpProfile {
	return &OpProfile{Op: op, DType: tensor.F32, Clients: 16, BytesPerSec: bps, FLOPsPerSec: fps, JoulesPerByte: jpb, JoulesPerFLOP: jpf,
		EnergyCorrection: 1, TimeCorrection: 1}
}

func synthCPU(ops ...*OpProfile) *DeviceProfile {
	d := &DeviceProfile{Name: "cpu", Kind: "cpu", IdleWatts: 30, Meter: energy.Provenance{Source: energy.SourceRAPL}, Ops: map[string]*OpProfile{}}
	for _, o := range ops {
		d.Ops[OpKey(o.Op, o.DType)] = o
	}
	return d
}

func synthGPU(ops ...*OpProfile) *DeviceProfile {
	d := synthCPU(ops...)
	d.Name, d.Kind, d.IdleWatts = "cuda:0", "gpu", 60
	d.Link = &Link{BytesPerSec: 25e9, JoulesPerByte: 2e-8}
	return d
}

func synthProfile(devs ...*DeviceProfile) *Profile {
	return &Profile{Version: ProfileVersion, Devices: devs}
}

// krum is a test op class: pairwise squared distances between clients, 3 FLOPs per pair per
// element, every input read once.
func testRegistry(t *testing.T) *Registry {
	t.Helper()
	r := NewRegistry()
	if err := r.Register(weightedSumClass()); err != nil {
		t.Fatal(err)
	}
	err := r.Register(OpClass{
		Name: "krum",
		Counts: func(w Workload) Counts {
			n := float64(w.Clients)
			io := n*float64(w.In.Size()) + float64(w.Out.Size())
			return Counts{FLOPs: 3 * n * (n - 1) / 2, Bytes: io, Transfer: io}
		},
		Prepare: func(device.Device, Workload) (Runner, error) { return nil, errors.New("synthetic") },
		DTypes:  []tensor.DType{tensor.F32},
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func fedavgProfile() *Profile {
	return synthProfile(
		synthCPU(opProf(WeightedSum, 20e9, 1e11, 3e-9, 2e-9), opProf("krum", 20e9, 1e11, 3e-9, 6e-10)),
		synthGPU(opProf(WeightedSum, 2e12, 3e13, 1e-10, 1e-11), opProf("krum", 2e12, 3e13, 1e-10, 1e-11)),
	)
}

func plan(t *testing.T, p *Profile, req Request, opts ...Option) *Plan {
	t.Helper()
	pl, err := NewPlanner(p, append([]Option{WithRegistry(testRegistry(t))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pl.Plan(req)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func fedavg(clients int, elements int64) Request {
	return Request{Op: WeightedSum, Workload: Workload{Clients: clients, Elements: elements, In: tensor.F32, Out: tensor.F32}}
}

func shareOf(p *Plan, dev string) float64 {
	for _, s := range p.Shares {
		if s.Device == dev {
			return s.Fraction
		}
	}
	return 0
}

func TestFedAvgFromHostMemoryGoesToTheCPU(t *testing.T) {
	// The GPU is faster (25 GB/s of PCIe against 20 GB/s of DRAM) but its copies cost more
	// joules than the CPU spends on the whole sum.
	p := plan(t, fedavgProfile(), fedavg(16, 25_000_000))
	if len(p.Shares) != 1 || p.Shares[0].Device != "cpu" || !p.Feasible {
		t.Fatalf("plan %+v: want the CPU alone", p.Shares)
	}
	var gpu Alternative
	for _, a := range p.Alternatives {
		if a.Device == "cuda:0" {
			gpu = a
		}
	}
	if !(gpu.Joules > p.Predicted.Joules && gpu.Seconds < p.Predicted.Seconds) {
		t.Fatalf("GPU alone %+v should be faster but cost more than %+v", gpu, p.Predicted)
	}
	if !strings.Contains(p.Why, "min-energy: cpu alone") || !strings.Contains(p.Why, "cuda:0 alone") {
		t.Fatalf("why %q", p.Why)
	}
	// Predicted joules: idle of both devices over the round plus the CPU's bytes.
	bytes := 25e6 * (16*4 + 4)
	secs := bytes / 20e9
	if want := 90*secs + bytes*3e-9; math.Abs(p.Predicted.Joules-want) > 1e-9*want {
		t.Fatalf("predicted %v J, want %v", p.Predicted.Joules, want)
	}
	// Minimising time instead uses both, finishing together.
	fast := plan(t, fedavgProfile(), fedavg(16, 25_000_000), WithPolicy(MinTime))
	if len(fast.Shares) != 2 || fast.Predicted.Seconds >= p.Predicted.Seconds {
		t.Fatalf("min-time plan %+v", fast.Shares)
	}
}

// A GPU calibrated from host memory (IncludesTransfer) reads its share through staging that the
// host's cores copy: the share's bytes pass the host's memory three times (read, written to
// page-locked staging, read again by the copy engine). The profile is `wattagg calibrate --quick`
// on an H200 machine (16 Xeon cores, 2026-12-04); there the planner used to give the GPU 12% of a
// FedAvg of 16 × 4.19M f32 and predict 2.4 ms, and the split ran in 2.9–3.0 ms against 2.1 ms for
// the CPU alone (`wattagg bench energy`, three runs of 100 rounds).
func TestStagedGPUShareChargesTheHost(t *testing.T) {
	cpu := synthCPU(&OpProfile{Op: WeightedSum, DType: tensor.F32, Clients: 8, BytesPerSec: 112.469e9, FLOPsPerSec: 49.986e9,
		JoulesPerByte: 1.3589e-11, JoulesPerFLOP: 3.0575e-11, LatencySec: 9.8e-6, EnergyCorrection: 1, TimeCorrection: 1})
	cpu.IdleWatts = 19.2
	gpu := synthGPU(&OpProfile{Op: WeightedSum, DType: tensor.F32, Clients: 8, BytesPerSec: 21.303e9, FLOPsPerSec: 9.468e9,
		JoulesPerByte: 7.522e-11, JoulesPerFLOP: 1.6925e-10, LatencySec: 110.2e-6, IncludesTransfer: true,
		EnergyCorrection: 1, TimeCorrection: 1})
	gpu.IdleWatts, gpu.Link = 159.8, nil
	prof := synthProfile(cpu, gpu)
	req := fedavg(16, 4_194_304)
	for _, pol := range []Policy{MinEnergy, MinTime, MinEDP} {
		p := plan(t, prof, req, WithPolicy(pol))
		if len(p.Shares) != 1 || p.Shares[0].Device != "cpu" {
			t.Fatalf("%s: %s", pol, p.Why)
		}
	}
	// A split's time counts the staging on the host: the CPU's share at its rate (the slower of
	// its bytes and its 2 FLOPs per client) plus three passes over the GPU's bytes at the host's
	// bytes per second.
	cnt := weightedSumClass().Counts(req.Workload)
	ds := []devModel{newDevModel(cpu, cpu.Ops[OpKey(WeightedSum, tensor.F32)], cnt), newDevModel(gpu, gpu.Ops[OpKey(WeightedSum, tensor.F32)], cnt)}
	s := &solver{ds: ds, W: float64(req.Elements), host: hostModel(ds, prof, tensor.F32, cnt)}
	x := []float64{0.85 * s.W, 0.15 * s.W}
	c := s.eval(x)
	bytesPer := float64(16*4 + 4)
	host := 9.8e-6 + x[0]*max(bytesPer/112.469e9, 32/49.986e9) + 3*x[1]*bytesPer/112.469e9
	if s.host != 0 || math.Abs(c.T-host) > 1e-9*host {
		t.Fatalf("split %v predicted %v s, want the host's %v s", x, c.T, host)
	}
	// The GPU alone with the CPU present: the host copies the whole job, drawing its full
	// dynamic power while it does (the peak), and its joules count.
	h, g := ds[0], ds[1]
	alone := s.eval([]float64{0, s.W})
	stage := 3 * s.W * bytesPer / 112.469e9
	if want := h.e*h.R + g.e*g.R; math.Abs(alone.peak-want) > 1e-9*want {
		t.Fatalf("GPU alone: peak %v W, want %v (host copying and GPU)", alone.peak, want)
	}
	if want := g.e*s.W + stage*h.e*h.R; math.Abs(alone.dyn-want) > 1e-9*want {
		t.Fatalf("GPU alone: dynamic %v J, want %v", alone.dyn, want)
	}
	// Under a cap below that peak, the pacing counts the host's copying power too.
	s.capW = 0.5 * alone.peak
	if paced := s.eval([]float64{0, s.W}); paced.peak > s.capW*(1+1e-9) || paced.T <= alone.T {
		t.Fatalf("GPU alone under a %v W cap: peak %v W in %v s (unpaced %v s)", s.capW, paced.peak, paced.T, alone.T)
	}
	s.capW = 0
	// Without the CPU in the plan nothing is charged: the GPU alone takes its own time.
	gs := &solver{ds: ds[1:], W: s.W, host: hostModel(ds[1:], prof, tensor.F32, cnt)}
	if g := gs.eval([]float64{s.W}); gs.host != -1 || math.Abs(g.T-(110.2e-6+s.W*max(bytesPer/21.303e9, 32/9.468e9))) > 1e-9 {
		t.Fatalf("GPU alone: host %d, %v s", gs.host, g.T)
	}
}

func TestKrumWithManyClientsGoesToTheGPU(t *testing.T) {
	krum := func(clients int) Request {
		r := fedavg(clients, 1_000_000)
		r.Op = "krum"
		return r
	}
	if p := plan(t, fedavgProfile(), krum(128)); len(p.Shares) != 1 || p.Shares[0].Device != "cuda:0" {
		t.Fatalf("krum of 128 clients: %s", p.Why)
	}
	// With a handful of clients Krum is memory-bound like FedAvg, and stays on the CPU.
	if p := plan(t, fedavgProfile(), krum(4)); len(p.Shares) != 1 || p.Shares[0].Device != "cpu" {
		t.Fatalf("krum of 4 clients: %s", p.Why)
	}
}

func TestPowerCapForcesASplitOrASlowerDevice(t *testing.T) {
	req := fedavg(16, 25_000_000)
	free := plan(t, fedavgProfile(), req, WithPolicy(MinTime))
	if free.Predicted.PeakWatts <= 200 {
		t.Fatalf("uncapped plan draws only %v W", free.Predicted.PeakWatts)
	}
	// 200 W: the CPU runs flat out (its bytes are the cheapest) and the GPU is paced into the
	// watts left.
	capped := plan(t, fedavgProfile(), req, WithPolicy(MinTime), WithPowerCap(200))
	if !capped.Feasible || capped.Predicted.PeakWatts > 200+1e-6 || len(capped.Shares) != 2 {
		t.Fatalf("200 W: %s (%+v)", capped.Why, capped.Shares)
	}
	if capped.Predicted.Seconds <= free.Predicted.Seconds || shareOf(capped, "cuda:0") >= shareOf(free, "cuda:0") {
		t.Fatalf("200 W plan %s is not slower than %s", capped.Why, free.Why)
	}
	gpuRate := capped.Shares[1].Rate
	if capped.Shares[1].Device != "cuda:0" || !(gpuRate < 1) {
		t.Fatalf("the GPU should be paced: %+v", capped.Shares)
	}
	// 120 W: only the CPU, slowed to half its rate.
	slow := plan(t, fedavgProfile(), req, WithPolicy(MinTime), WithPowerCap(120))
	if !slow.Feasible || len(slow.Shares) != 1 || slow.Shares[0].Device != "cpu" || math.Abs(slow.Shares[0].Rate-0.5) > 0.01 {
		t.Fatalf("120 W: %s (%+v)", slow.Why, slow.Shares)
	}
	if !strings.Contains(slow.Why, "paced to 50%") {
		t.Fatalf("why %q", slow.Why)
	}
	// Below the idle power nothing fits: the closest plan, said to be infeasible.
	none := plan(t, fedavgProfile(), req, WithPowerCap(80))
	if none.Feasible || !strings.Contains(none.Why, "power cap of 80 W cannot be met") {
		t.Fatalf("80 W: %s", none.Why)
	}
}

func TestDeadlineTheCPUCannotMeetMovesWorkToTheGPU(t *testing.T) {
	req := fedavg(16, 25_000_000) // 1.7 GB: 85 ms on the CPU
	p := plan(t, fedavgProfile(), req, WithDeadline(50*time.Millisecond))
	if !p.Feasible || p.Predicted.Seconds > 0.050+1e-9 {
		t.Fatalf("deadline plan %s", p.Why)
	}
	// The cheapest way to make it: the CPU works until the deadline, the GPU takes the rest.
	if g := shareOf(p, "cuda:0"); g < 0.35 || g > 0.5 {
		t.Fatalf("GPU share %.2f, want about 41%%: %s", g, p.Why)
	}
	// Impossible: said so, and the fastest plan is returned.
	late := plan(t, fedavgProfile(), req, WithDeadline(time.Millisecond))
	if late.Feasible || !strings.Contains(late.Why, "deadline of 1 ms cannot be met") || len(late.Shares) != 2 {
		t.Fatalf("impossible deadline: %s", late.Why)
	}
}

// Over random machines the plan never costs more than 5% above the best single device, by
// the plan's own predictions, for every policy's own measure.
func TestPlanNeverWorseThanTheBestSingleDevice(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	logU := func(lo, hi float64) float64 { return lo * math.Pow(hi/lo, rng.Float64()) }
	reg := testRegistry(t)
	for iter := range 400 {
		var devs []*DeviceProfile
		for k := range 1 + rng.IntN(4) {
			d := &DeviceProfile{Name: fmt.Sprintf("dev%d", k), Kind: "cpu", IdleWatts: logU(1, 100), Ops: map[string]*OpProfile{}}
			o := opProf(WeightedSum, logU(1e9, 1e12), logU(1e10, 1e14), logU(1e-11, 1e-8), logU(1e-12, 1e-9))
			o.LatencySec = logU(1e-6, 1e-2)
			d.Ops[OpKey(WeightedSum, tensor.F32)] = o
			if rng.IntN(2) == 0 {
				d.Kind = "gpu"
				d.Link = &Link{BytesPerSec: logU(5e9, 6e10), JoulesPerByte: logU(1e-10, 3e-8)}
			}
			devs = append(devs, d)
		}
		elems := int64(logU(1e4, 1e8))
		chunks := make([]int64, 500)
		for i := range chunks {
			chunks[i] = elems / 500
		}
		chunks[len(chunks)-1] += elems % 500
		req := fedavg(1+rng.IntN(64), elems)
		req.Chunks = chunks
		for _, pol := range []Policy{MinEnergy, MinTime, MinEDP} {
			pl, err := NewPlanner(synthProfile(devs...), WithRegistry(reg), WithPolicy(pol))
			if err != nil {
				t.Fatal(err)
			}
			p, err := pl.Plan(req)
			if err != nil {
				t.Fatal(err)
			}
			measure := func(s, j float64) float64 {
				switch pol {
				case MinTime:
					return s
				case MinEDP:
					return s * j
				}
				return j
			}
			best := math.Inf(1)
			for _, a := range p.Alternatives {
				best = math.Min(best, measure(a.Seconds, a.Joules))
			}
			if got := measure(p.Predicted.Seconds, p.Predicted.Joules); got > 1.05*best || !p.Feasible {
				t.Fatalf("iteration %d, %s: plan %v vs best single device %v\n%s", iter, pol, got, best, p.Why)
			}
			var n int
			for _, s := range p.Shares {
				n += s.NumChunks
			}
			if n != len(chunks) {
				t.Fatalf("iteration %d: %d of %d chunks assigned", iter, n, len(chunks))
			}
		}
	}
}

func TestPlanAssignsWholeContiguousChunks(t *testing.T) {
	req := fedavg(16, 25_000_000)
	for i := range 100 {
		req.Chunks = append(req.Chunks, 250_000)
		_ = i
	}
	p := plan(t, fedavgProfile(), req, WithDeadline(50*time.Millisecond))
	seen := make([]bool, 100)
	for _, s := range p.Shares {
		for k, c := range s.Chunks {
			if k > 0 && c != s.Chunks[k-1]+1 {
				t.Fatalf("%s's chunks are not contiguous: %v", s.Device, s.Chunks)
			}
			seen[c] = true
		}
		if s.Elements != int64(len(s.Chunks))*250_000 {
			t.Fatalf("%s: %d elements in %d chunks", s.Device, s.Elements, len(s.Chunks))
		}
	}
	for c, ok := range seen {
		if !ok {
			t.Fatalf("chunk %d unassigned", c)
		}
	}
}

func TestPlannerRejectsBadOptionsAndRequests(t *testing.T) {
	prof := fedavgProfile()
	for name, o := range map[string]Option{
		"negative deadline": WithDeadline(-time.Second),
		"negative cap":      WithPowerCap(-1),
		"NaN cap":           WithPowerCap(math.NaN()),
		"policy":            WithPolicy(Policy(7)),
		"rate":              WithLearningRate(0),
		"registry":          WithRegistry(nil),
		"device":            WithOnly(""),
	} {
		if _, err := NewPlanner(prof, o); !errors.Is(err, ErrOption) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := NewPlanner(nil); !errors.Is(err, ErrNoProfile) {
		t.Errorf("nil profile: %v", err)
	}
	if _, err := ParsePolicy("fastest"); !errors.Is(err, ErrOption) || !strings.Contains(err.Error(), "min-energy, min-time, min-edp") {
		t.Errorf("ParsePolicy: %v", err)
	}
	pl := must(NewPlanner(prof, WithOnly("cuda:1")))(t)
	if _, err := pl.Plan(fedavg(4, 100)); !errors.Is(err, ErrOption) || !strings.Contains(err.Error(), `"cuda:1" is not present`) {
		t.Errorf("forcing an absent device: %v", err)
	}
	pl = must(NewPlanner(prof))(t)
	if _, err := pl.Plan(Request{Op: "median", Workload: Workload{Clients: 4, Elements: 10, In: tensor.F32, Out: tensor.F32}}); !errors.Is(err, ErrUnknownOp) {
		t.Errorf("unknown op: %v", err)
	}
	if _, err := pl.Plan(fedavg(0, 10)); !errors.Is(err, ErrOption) {
		t.Errorf("no clients: %v", err)
	}
	if _, err := pl.Plan(Request{Op: WeightedSum, Workload: fedavg(4, 10).Workload, Chunks: []int64{3}}); !errors.Is(err, ErrOption) {
		t.Errorf("chunks that do not add up: %v", err)
	}
	empty := synthProfile(&DeviceProfile{Name: "cpu", Ops: map[string]*OpProfile{}})
	pl = must(NewPlanner(empty))(t)
	if _, err := pl.Plan(fedavg(4, 10)); !errors.Is(err, ErrUncalibrated) {
		t.Errorf("uncalibrated: %v", err)
	}
}

func TestWithOnlyForcesADevice(t *testing.T) {
	p := plan(t, fedavgProfile(), fedavg(16, 1_000_000), WithOnly("cuda:0"))
	if len(p.Shares) != 1 || p.Shares[0].Device != "cuda:0" || len(p.Alternatives) != 1 {
		t.Fatalf("forced plan %+v", p.Shares)
	}
	// The CPU still idles while the GPU works.
	if p.Predicted.IdleJoules < 89.99*p.Predicted.Seconds {
		t.Fatalf("idle %v J over %v s: the CPU's idle power is missing", p.Predicted.IdleJoules, p.Predicted.Seconds)
	}
}

func TestObserveCorrectsTheProfile(t *testing.T) {
	prof := synthProfile(synthCPU(opProf(WeightedSum, 20e9, 1e11, 3e-9, 2e-9)))
	pl := must(NewPlanner(prof, WithLearningRate(0.5)))(t)
	p, err := pl.Plan(fedavg(16, 25_000_000))
	if err != nil {
		t.Fatal(err)
	}
	// The run spent twice the predicted dynamic joules and took twice as long.
	secs := 2 * p.Predicted.Seconds
	measured := energy.Measurement{Joules: 30*secs + 2*p.Predicted.DynamicJoules, Seconds: secs,
		Provenance: energy.Provenance{Source: energy.SourceRAPL, Granularity: 1e-3}}
	l := pl.Observe(p, Outcome{Energy: measured, DeviceSeconds: map[string]float64{"cpu": secs}})
	if !l.Applied {
		t.Fatalf("not learned: %s", l.Why)
	}
	o := pl.Profile().Device("cpu").Ops[OpKey(WeightedSum, tensor.F32)]
	if math.Abs(o.EnergyCorrection-1.5) > 1e-9 || math.Abs(o.TimeCorrection-1.5) > 1e-9 || o.Observations != 1 {
		t.Fatalf("corrections %v %v after one observation", o.EnergyCorrection, o.TimeCorrection)
	}
	again, _ := pl.Plan(fedavg(16, 25_000_000))
	if r := again.Predicted.DynamicJoules / p.Predicted.DynamicJoules; math.Abs(r-1.5) > 1e-9 {
		t.Fatalf("the next prediction moved by %v, want 1.5", r)
	}
	// Windows the meter cannot resolve, resets and other sources are not learned from.
	for name, m := range map[string]energy.Measurement{
		"short":  {Joules: 1, Seconds: 0.002, Provenance: energy.Provenance{Source: energy.SourceRAPL, Granularity: 1e-3}},
		"reset":  {Joules: 100, Seconds: 1, Provenance: energy.Provenance{Source: energy.SourceRAPL, Resets: 1}},
		"source": {Joules: 100, Seconds: 1, Provenance: energy.Provenance{Source: energy.SourceEstimate}},
		"none":   {},
	} {
		if l := pl.Observe(p, Outcome{Energy: m}); l.Applied || l.Why == "" {
			t.Errorf("%s: %+v", name, l)
		}
	}
}
