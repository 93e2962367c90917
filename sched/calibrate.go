package sched

import (
	"context"
	"fmt"
	"math"
	"os"
	"runtime"
	"slices"
	"time"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/energy"
	"github.com/wattagg/wattagg/tensor"
)

// Target is a device to calibrate and the meter that covers it (RAPL or the estimate for the
// CPU, NVML for a GPU).
type Target struct {
	Device device.Device
	Meter  energy.Meter
}

// HostLink is implemented by devices with their own memory (GPUs): CopyToDevice copies src
// into device memory and returns when it is there. Calibration uses it to measure the
// host-to-device link.
type HostLink interface {
	CopyToDevice(ctx context.Context, src []byte) error
}

// calibration is what Calibrate's options set, and the state of a run.
type calibration struct {
	quick    bool
	window   time.Duration
	idle     time.Duration
	inBytes  int64 // input bytes of the large workload
	ops      []string
	dtypes   []tensor.DType
	progress func(done, total int, step string)
	others   []energy.Meter
}

// Calibration defaults: a full run measures each op and dtype for FullWindow after an idle
// window of FullIdle, on 256 MiB of inputs; a quick one for QuickWindow on 64 MiB. Both are at
// least four times the last-level cache, so that the inputs come from DRAM as a real round's
// do.
const (
	FullWindow  = 2 * time.Second
	FullIdle    = 1 * time.Second
	QuickWindow = 250 * time.Millisecond
	QuickIdle   = 150 * time.Millisecond
)

// WithQuick makes a CI-sized calibration: short windows, small workloads, the reference dtype
// of each op only. It applies to Calibrate.
func WithQuick() Option {
	return option("WithQuick", forCalibrate, func(o *options) error { o.cal.quick = true; return nil })
}

// WithWindow sets how long each op is measured (longer windows average out the meter's
// granularity). It applies to Calibrate.
func WithWindow(d time.Duration) Option {
	return option("WithWindow", forCalibrate, func(o *options) error {
		if d <= 0 {
			return fmt.Errorf("%w: calibration window %v: want a positive duration", ErrOption, d)
		}
		o.cal.window = d
		return nil
	})
}

// WithIdleWindow sets how long idle power is measured. It applies to Calibrate.
func WithIdleWindow(d time.Duration) Option {
	return option("WithIdleWindow", forCalibrate, func(o *options) error {
		if d <= 0 {
			return fmt.Errorf("%w: idle window %v: want a positive duration", ErrOption, d)
		}
		o.cal.idle = d
		return nil
	})
}

// WithWorkloadBytes sets the input bytes of the calibration workload (at least 64 KiB). It
// applies to Calibrate.
func WithWorkloadBytes(n int64) Option {
	return option("WithWorkloadBytes", forCalibrate, func(o *options) error {
		if n < 64<<10 {
			return fmt.Errorf("%w: calibration workload of %d bytes: want at least 64 KiB", ErrOption, n)
		}
		o.cal.inBytes = n
		return nil
	})
}

// WithOps calibrates only the named op classes. It applies to Calibrate.
func WithOps(names ...string) Option {
	return option("WithOps", forCalibrate, func(o *options) error { o.cal.ops = names; return nil })
}

// WithDTypes calibrates these input dtypes instead of each op's own list. It applies to
// Calibrate.
func WithDTypes(dts ...tensor.DType) Option {
	return option("WithDTypes", forCalibrate, func(o *options) error {
		for _, dt := range dts {
			if !dt.Real() {
				return fmt.Errorf("%w: calibration dtype %s", ErrOption, dt)
			}
		}
		o.cal.dtypes = dts
		return nil
	})
}

// WithProgress calls fn after each calibration step with the steps done and in all. It
// applies to Calibrate.
func WithProgress(fn func(done, total int, step string)) Option {
	return option("WithProgress", forCalibrate, func(o *options) error { o.cal.progress = fn; return nil })
}

// WithOtherMeters adds meters that cover no target (a GPU no device backend drives): their
// idle power is recorded, and their energy counts in every measurement. It applies to
// Calibrate.
func WithOtherMeters(ms ...energy.Meter) Option {
	return option("WithOtherMeters", forCalibrate, func(o *options) error {
		for _, m := range ms {
			if m == nil {
				return fmt.Errorf("%w: nil meter", ErrOption)
			}
		}
		o.cal.others = ms
		return nil
	})
}

// Calibrate measures every target for every op class (and dtype) with the real kernels: idle
// power of each meter first, then for each op a timed tiny workload (the fixed cost of a call)
// and a metered large one from DRAM (the rates and the joules). The energy of a run is what all meters
// count (the host drives a GPU too), minus their idle power over the window.
func Calibrate(ctx context.Context, targets []Target, opts ...Option) (*Profile, error) {
	cfg, err := applyOptions(forCalibrate, opts)
	if err != nil {
		return nil, err
	}
	c := &cfg.cal
	c.fillDefaults(targets)
	r, err := c.newRun(cfg.reg, targets)
	if err != nil {
		return nil, err
	}
	if err := r.calibrateIdle(ctx); err != nil {
		return nil, err
	}
	if err := r.calibrateOps(ctx); err != nil {
		return nil, err
	}
	if err := r.calibrateLinks(ctx); err != nil {
		return nil, err
	}
	return r.p, nil
}

// fillDefaults sets what the options left unset: the windows and the workload size of a full
// or a quick run, the workload at least four times the last-level cache of every target.
func (c *calibration) fillDefaults(targets []Target) {
	if c.window == 0 {
		c.window = map[bool]time.Duration{false: FullWindow, true: QuickWindow}[c.quick]
	}
	if c.idle == 0 {
		c.idle = map[bool]time.Duration{false: FullIdle, true: QuickIdle}[c.quick]
	}
	if c.inBytes == 0 {
		c.inBytes = map[bool]int64{false: 256 << 20, true: 64 << 20}[c.quick]
		for _, t := range targets {
			if t.Device != nil {
				c.inBytes = max(c.inBytes, 4*int64(t.Device.Info().CacheL3))
			}
		}
	}
}

// calibrationRun is the state of one Calibrate: the targets, the meters read and their idle
// power, the steps to measure, the profile being filled in, and the progress made.
type calibrationRun struct {
	cal     *calibration
	targets []Target
	meters  []energy.Meter
	idle    map[string]float64
	steps   []calibrationStep
	p       *Profile
	done    int
	total   int // the steps reported in all: idle power, each op step and each host link
}

// calibrationStep is one op class and dtype to measure on a target.
type calibrationStep struct {
	t  Target
	op OpClass
	dt tensor.DType
}

// newRun plans a calibration of targets: the meters to read, the steps to measure (and so the
// total the progress reports), and the profile to fill in.
func (c *calibration) newRun(reg *Registry, targets []Target) (*calibrationRun, error) {
	meters, err := c.targetMeters(targets)
	if err != nil {
		return nil, err
	}
	ops, err := c.opClasses(reg)
	if err != nil {
		return nil, err
	}
	steps := c.steps(targets, ops)
	return &calibrationRun{
		cal: c, targets: targets, meters: meters, steps: steps,
		total: 1 + len(steps) + hostLinks(targets),
		p:     newCalibratedProfile(c.quick),
	}, nil
}

// targetMeters checks that there are targets, each with a device and a meter, and lists the
// meters to read: each target's once, then the others.
func (c *calibration) targetMeters(targets []Target) ([]energy.Meter, error) {
	if len(targets) == 0 {
		return nil, fmt.Errorf("%w: no device to calibrate", ErrOption)
	}
	var meters []energy.Meter
	for _, t := range targets {
		if t.Device == nil || t.Meter == nil {
			return nil, fmt.Errorf("%w: a calibration target needs a device and a meter", ErrOption)
		}
		if !slices.Contains(meters, t.Meter) {
			meters = append(meters, t.Meter)
		}
	}
	return append(meters, c.others...), nil
}

// opClasses looks up in reg the op classes to calibrate: those the options name, else all.
func (c *calibration) opClasses(reg *Registry) ([]OpClass, error) {
	names := c.ops
	if names == nil {
		names = reg.Names()
	}
	var ops []OpClass
	for _, n := range names {
		op, err := reg.Lookup(n)
		if err != nil {
			return nil, err
		}
		ops = append(ops, op)
	}
	return ops, nil
}

// steps lists each op class on each target in the dtypes to measure: the options' dtypes, else
// the op's own (its reference dtype only in a quick run).
func (c *calibration) steps(targets []Target, ops []OpClass) []calibrationStep {
	var steps []calibrationStep
	for _, t := range targets {
		for _, op := range ops {
			dts := op.DTypes
			if c.dtypes != nil {
				dts = c.dtypes
			} else if c.quick {
				dts = dts[:1]
			}
			for _, dt := range dts {
				steps = append(steps, calibrationStep{t, op, dt})
			}
		}
	}
	return steps
}

// hostLinks counts the targets whose device has a host-to-device link to measure.
func hostLinks(targets []Target) int {
	links := 0
	for _, t := range targets {
		if _, ok := t.Device.(HostLink); ok {
			links++
		}
	}
	return links
}

// newCalibratedProfile starts the profile of a calibration of this host made now.
func newCalibratedProfile(quick bool) *Profile {
	now := time.Now()
	p := &Profile{Version: ProfileVersion, Created: now, Updated: now, Quick: quick}
	p.Host.Hostname, _ = os.Hostname()
	p.Host.CPUs = runtime.NumCPU()
	return p
}

// report counts a step done and tells the progress function, if there is one.
func (r *calibrationRun) report(what string) {
	r.done++
	if r.cal.progress != nil {
		r.cal.progress(r.done, r.total, what)
	}
}

// calibrateIdle measures the idle power of the meters and adds to the profile each target's
// device and each other meter with it.
func (r *calibrationRun) calibrateIdle(ctx context.Context) error {
	// Idle power, all meters at once, nothing running.
	idle, err := measureIdle(ctx, r.meters, r.cal.idle)
	if err != nil {
		return err
	}
	r.idle = idle
	r.report("idle power")
	for _, t := range r.targets {
		if err := r.addDevice(t); err != nil {
			return err
		}
	}
	for _, m := range r.cal.others {
		r.p.Others = append(r.p.Others, MeterIdle{Meter: m.Name(), IdleWatts: r.idle[m.Name()]})
	}
	return nil
}

// addDevice adds t's device to the profile with its meter's provenance and idle power; the
// first CPU names the host's CPU and kernels.
func (r *calibrationRun) addDevice(t Target) error {
	info := t.Device.Info()
	if info.Kind == "cpu" && r.p.Host.CPU == "" {
		r.p.Host.CPU, r.p.Host.Kernels = info.Model, info.Kernels
	}
	m, err := t.Meter.Read()
	if err != nil {
		return fmt.Errorf("calibrate %s: %s: %w", t.Device.Name(), t.Meter.Name(), err)
	}
	prov := m.Provenance
	prov.Wraps, prov.Resets, prov.Notes = 0, 0, nil
	r.p.Devices = append(r.p.Devices, &DeviceProfile{
		Name: t.Device.Name(), Kind: info.Kind, Model: info.Model, Workers: info.Workers,
		Meter: prov, IdleWatts: r.idle[t.Meter.Name()], Ops: map[string]*OpProfile{},
	})
	return nil
}

// calibrateOps measures each step into the op profiles of its target's device.
func (r *calibrationRun) calibrateOps(ctx context.Context) error {
	for _, s := range r.steps {
		key := OpKey(s.op.Name, s.dt)
		o, err := r.cal.measureOp(ctx, s.t.Device, s.op, s.dt, r.meters, r.idle)
		if err != nil {
			return fmt.Errorf("calibrate %s on %s: %w", key, s.t.Device.Name(), err)
		}
		r.p.Device(s.t.Device.Name()).Ops[key] = o
		r.report(fmt.Sprintf("%s %s", s.t.Device.Name(), key))
	}
	return nil
}

// calibrateLinks measures the host-to-device link of each target that has one.
func (r *calibrationRun) calibrateLinks(ctx context.Context) error {
	for _, t := range r.targets {
		if hl, ok := t.Device.(HostLink); ok {
			l, err := r.cal.measureLink(ctx, hl, r.meters, r.idle)
			if err != nil {
				return fmt.Errorf("calibrate the host link of %s: %w", t.Device.Name(), err)
			}
			r.p.Device(t.Device.Name()).Link = l
			r.report(t.Device.Name() + " host-to-device")
		}
	}
	return nil
}

func measureIdle(ctx context.Context, meters []energy.Meter, d time.Duration) (map[string]float64, error) {
	w, err := energy.Start(meters...)
	if err != nil {
		return nil, err
	}
	t := time.NewTimer(d)
	select {
	case <-ctx.Done():
		t.Stop()
		_, _ = w.Stop()
		return nil, ctx.Err()
	case <-t.C:
	}
	ms, err := w.Stop()
	if err != nil {
		return nil, err
	}
	idle := map[string]float64{}
	for i, m := range ms {
		idle[meters[i].Name()] = math.Max(0, m.Watts)
	}
	return idle, nil
}

// dynamic is the joules of a window above the meters' idle power.
func dynamic(ms []energy.Measurement, meters []energy.Meter, idle map[string]float64) (dyn, total float64) {
	for i, m := range ms {
		total += m.Joules
		dyn += m.Joules - idle[meters[i].Name()]*m.Seconds
	}
	return dyn, total
}

// measureOp times a tiny and a large workload of op in dt on dev, the large one metered, and
// fits the op's profile to them.
func (c *calibration) measureOp(ctx context.Context, dev device.Device, op OpClass, dt tensor.DType, meters []energy.Meter, idle map[string]float64) (*OpProfile, error) {
	wl, ws := c.opWorkloads(op, dt)
	rl, err := op.Prepare(dev, wl)
	if err != nil {
		return nil, err
	}
	defer rl.Close()
	rs, err := op.Prepare(dev, ws)
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	if err := warmUp(ctx, rl, rs); err != nil {
		return nil, err
	}
	tS, _, err := repeat(ctx, rs, c.window/4)
	if err != nil {
		return nil, err
	}
	tL, n, ms, err := meteredRepeat(ctx, rl, c.window, meters)
	if err != nil {
		return nil, err
	}
	dyn, total := dynamic(ms, meters, idle)
	runs := opRuns{tS: tS, tL: tL, n: n, dyn: dyn, total: total, seconds: energy.Total(ms).Seconds}
	o := runs.profile(op, wl, ws)
	o.IncludesTransfer = dev.Info().Kind == "gpu"
	return o, nil
}

// opWorkloads sizes the two workloads op is calibrated with in dt: a large one of about
// inBytes of inputs, from DRAM, and a tiny one.
func (c *calibration) opWorkloads(op OpClass, dt tensor.DType) (large, small Workload) {
	clients := op.Clients
	if c.quick {
		clients = min(clients, 8)
	}
	out := dt
	if dt == tensor.I8 {
		out = tensor.F32 // i8 results are quantised after the sum, from f32
	}
	probe := op.Counts(Workload{Clients: clients, Elements: 1, In: dt, Out: out})
	inPerElem := probe.Bytes
	large = Workload{Clients: clients, Elements: max(int64(float64(c.inBytes)/inPerElem), 1<<16), In: dt, Out: out}
	// The fixed cost of a call is what a tiny job (cache-resident, one chunk) takes beyond its
	// elements.
	small = large
	small.Elements = 4096
	return large, small
}

// warmUp runs each runner once.
func warmUp(ctx context.Context, runners ...Runner) error {
	for _, r := range runners { // warm-up: caches, pools, page tables, JIT
		if _, err := r.Run(ctx); err != nil {
			return err
		}
	}
	return nil
}

// meteredRepeat is repeat with the meters measuring the window: it returns the mean seconds
// per run, the runs and the meters' measurements.
func meteredRepeat(ctx context.Context, r Runner, d time.Duration, meters []energy.Meter) (float64, int, []energy.Measurement, error) {
	w, err := energy.Start(meters...)
	if err != nil {
		return 0, 0, nil, err
	}
	secs, n, err := repeat(ctx, r, d)
	ms, serr := w.Stop()
	if err != nil {
		return 0, 0, nil, err
	}
	if serr != nil {
		return 0, 0, nil, serr
	}
	return secs, n, ms, nil
}

// opRuns is what the runs of an op's workloads measured: the mean seconds per run of the tiny
// and of the large workload, and over the metered window of the large one its runs, their
// joules above idle and in all, and the window's seconds.
type opRuns struct {
	tS, tL              float64
	n                   int
	dyn, total, seconds float64
}

// profile fits op's model to the runs of its large and small workloads: the fixed cost and
// the rates of a call, and the joules of its FLOPs and bytes.
func (r opRuns) profile(op OpClass, large, small Workload) *OpProfile {
	o := &OpProfile{Op: op.Name, DType: large.In, Clients: large.Clients, Elements: large.Elements, EnergyCorrection: 1, TimeCorrection: 1}
	cnt := op.Counts(large)
	// time(E) = latency + E·perElem: the large workload gives the rate, the tiny one the
	// fixed cost.
	perElem := r.tL / float64(large.Elements)
	o.LatencySec = math.Max(0, r.tS-perElem*float64(small.Elements))
	perElem = (r.tL - o.LatencySec) / float64(large.Elements)
	o.FLOPsPerSec = cnt.FLOPs / perElem
	o.BytesPerSec = cnt.Bytes / perElem
	dynRun := r.dyn / float64(r.n)
	if dynRun <= 0 {
		dynRun = 0.01 * r.total / float64(r.n)
		o.Notes = append(o.Notes, "the meters saw no energy above idle: 1% of the total is assumed (the meter is too coarse for this window)")
	}
	if cnt.FLOPs > 0 {
		o.JoulesPerFLOP = dynRun / (cnt.FLOPs * float64(large.Elements))
	}
	o.JoulesPerByte = dynRun / (cnt.Bytes * float64(large.Elements))
	if r.seconds > 0 {
		o.Watts = r.total / r.seconds
	}
	return o
}

// repeat runs r until d has passed (at least twice) and returns the mean seconds per run.
func repeat(ctx context.Context, r Runner, d time.Duration) (float64, int, error) {
	start := time.Now()
	n := 0
	for n < 2 || time.Since(start) < d {
		if _, err := r.Run(ctx); err != nil {
			return 0, n, err
		}
		n++
	}
	return time.Since(start).Seconds() / float64(n), n, nil
}

func (c *calibration) measureLink(ctx context.Context, hl HostLink, meters []energy.Meter, idle map[string]float64) (*Link, error) {
	buf := tensor.AlignedBytes(int(min(c.inBytes, 256<<20)))
	for i := range buf {
		buf[i] = byte(i)
	}
	if err := hl.CopyToDevice(ctx, buf); err != nil {
		return nil, err
	}
	w, err := energy.Start(meters...)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	n := 0
	for n < 2 || time.Since(start) < c.window {
		if err := hl.CopyToDevice(ctx, buf); err != nil {
			_, _ = w.Stop()
			return nil, err
		}
		n++
	}
	secs := time.Since(start).Seconds()
	ms, err := w.Stop()
	if err != nil {
		return nil, err
	}
	dyn, total := dynamic(ms, meters, idle)
	bytes := float64(len(buf)) * float64(n)
	if dyn <= 0 {
		dyn = 0.01 * total
	}
	return &Link{BytesPerSec: bytes / secs, JoulesPerByte: dyn / bytes}, nil
}

// Merge copies into p every device and op profile of q (measured later), keeping p's others.
func (p *Profile) Merge(q *Profile) {
	for _, qd := range q.Devices {
		pd := p.Device(qd.Name)
		if pd == nil {
			p.Devices = append(p.Devices, qd)
			continue
		}
		pd.IdleWatts, pd.Meter, pd.Workers = qd.IdleWatts, qd.Meter, qd.Workers
		if qd.Link != nil {
			pd.Link = qd.Link
		}
		if pd.Ops == nil {
			pd.Ops = map[string]*OpProfile{}
		}
		for k, o := range qd.Ops {
			pd.Ops[k] = o
		}
	}
	if q.Read != nil {
		p.Read = q.Read
	}
	p.Quick = p.Quick || q.Quick
	p.Updated = q.Updated
}
