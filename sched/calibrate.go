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
	meters = append(meters, c.others...)
	names := c.ops
	if names == nil {
		names = cfg.reg.Names()
	}
	var ops []OpClass
	for _, n := range names {
		op, err := cfg.reg.Lookup(n)
		if err != nil {
			return nil, err
		}
		ops = append(ops, op)
	}

	type step struct {
		t  Target
		op OpClass
		dt tensor.DType
	}
	var steps []step
	for _, t := range targets {
		for _, op := range ops {
			dts := op.DTypes
			if c.dtypes != nil {
				dts = c.dtypes
			} else if c.quick {
				dts = dts[:1]
			}
			for _, dt := range dts {
				steps = append(steps, step{t, op, dt})
			}
		}
	}
	links := 0
	for _, t := range targets {
		if _, ok := t.Device.(HostLink); ok {
			links++
		}
	}
	total := 1 + len(steps) + links
	done := 0
	report := func(what string) {
		done++
		if c.progress != nil {
			c.progress(done, total, what)
		}
	}

	now := time.Now()
	p := &Profile{Version: ProfileVersion, Created: now, Updated: now, Quick: c.quick}
	p.Host.Hostname, _ = os.Hostname()
	p.Host.CPUs = runtime.NumCPU()

	// Idle power, all meters at once, nothing running.
	idle, err := measureIdle(ctx, meters, c.idle)
	if err != nil {
		return nil, err
	}
	report("idle power")
	for _, t := range targets {
		info := t.Device.Info()
		if info.Kind == "cpu" && p.Host.CPU == "" {
			p.Host.CPU, p.Host.Kernels = info.Model, info.Kernels
		}
		r, err := t.Meter.Read()
		if err != nil {
			return nil, fmt.Errorf("calibrate %s: %s: %w", t.Device.Name(), t.Meter.Name(), err)
		}
		prov := r.Provenance
		prov.Wraps, prov.Resets, prov.Notes = 0, 0, nil
		p.Devices = append(p.Devices, &DeviceProfile{
			Name: t.Device.Name(), Kind: info.Kind, Model: info.Model, Workers: info.Workers,
			Meter: prov, IdleWatts: idle[t.Meter.Name()], Ops: map[string]*OpProfile{},
		})
	}
	for _, m := range c.others {
		p.Others = append(p.Others, MeterIdle{Meter: m.Name(), IdleWatts: idle[m.Name()]})
	}

	for _, s := range steps {
		o, err := c.measureOp(ctx, s.t.Device, s.op, s.dt, meters, idle)
		if err != nil {
			return nil, fmt.Errorf("calibrate %s on %s: %w", OpKey(s.op.Name, s.dt), s.t.Device.Name(), err)
		}
		p.Device(s.t.Device.Name()).Ops[OpKey(s.op.Name, s.dt)] = o
		report(fmt.Sprintf("%s %s", s.t.Device.Name(), OpKey(s.op.Name, s.dt)))
	}
	for _, t := range targets {
		if hl, ok := t.Device.(HostLink); ok {
			l, err := c.measureLink(ctx, hl, meters, idle)
			if err != nil {
				return nil, fmt.Errorf("calibrate the host link of %s: %w", t.Device.Name(), err)
			}
			p.Device(t.Device.Name()).Link = l
			report(t.Device.Name() + " host-to-device")
		}
	}
	return p, nil
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

func (c *calibration) measureOp(ctx context.Context, dev device.Device, op OpClass, dt tensor.DType, meters []energy.Meter, idle map[string]float64) (*OpProfile, error) {
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
	large := max(int64(float64(c.inBytes)/inPerElem), 1<<16)
	// The fixed cost of a call is what a tiny job (cache-resident, one chunk) takes beyond its
	// elements.
	small := int64(4096)
	wl := Workload{Clients: clients, Elements: large, In: dt, Out: out}
	ws := wl
	ws.Elements = small
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
	for _, r := range []Runner{rl, rs} { // warm-up: caches, pools, page tables, JIT
		if _, err := r.Run(ctx); err != nil {
			return nil, err
		}
	}
	tS, _, err := repeat(ctx, rs, c.window/4)
	if err != nil {
		return nil, err
	}
	w, err := energy.Start(meters...)
	if err != nil {
		return nil, err
	}
	tL, n, err := repeat(ctx, rl, c.window)
	ms, serr := w.Stop()
	if err != nil {
		return nil, err
	}
	if serr != nil {
		return nil, serr
	}
	dyn, total := dynamic(ms, meters, idle)
	seconds := energy.Total(ms).Seconds

	o := &OpProfile{Op: op.Name, DType: dt, Clients: clients, Elements: large, EnergyCorrection: 1, TimeCorrection: 1}
	cnt := op.Counts(wl)
	// time(E) = latency + E·perElem: the large workload gives the rate, the tiny one the
	// fixed cost.
	perElem := tL / float64(large)
	o.LatencySec = math.Max(0, tS-perElem*float64(small))
	perElem = (tL - o.LatencySec) / float64(large)
	o.FLOPsPerSec = cnt.FLOPs / perElem
	o.BytesPerSec = cnt.Bytes / perElem
	dynRun := dyn / float64(n)
	if dynRun <= 0 {
		dynRun = 0.01 * total / float64(n)
		o.Notes = append(o.Notes, "the meters saw no energy above idle: 1% of the total is assumed (the meter is too coarse for this window)")
	}
	if cnt.FLOPs > 0 {
		o.JoulesPerFLOP = dynRun / (cnt.FLOPs * float64(large))
	}
	o.JoulesPerByte = dynRun / (cnt.Bytes * float64(large))
	if seconds > 0 {
		o.Watts = total / seconds
	}
	o.IncludesTransfer = dev.Info().Kind == "gpu"
	return o, nil
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
