package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/pflag"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/energy"
	"github.com/wattagg/wattagg/internal/cli"
	"github.com/wattagg/wattagg/sched"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// energyFlags are the flags of every command that meters: where the counters are, what the
// CPU estimate assumes, where the profile is kept.
type energyFlags struct {
	sysfs   string
	cpuTDP  float64
	cpuIdle float64
	profile string
}

func (e *energyFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&e.sysfs, "sysfs", "", "sysfs root holding class/powercap (default $"+energy.EnvSysfs+" or /sys)")
	fs.Float64Var(&e.cpuTDP, "cpu-tdp", 0, fmt.Sprintf("CPU full-load watts for the estimate when RAPL is absent (default $%s or %g W per logical CPU)", energy.EnvCPUTDP, energy.DefaultTDPPerCPU))
	fs.Float64Var(&e.cpuIdle, "cpu-idle", 0, fmt.Sprintf("CPU idle watts for the estimate (default $%s or %g of the TDP)", energy.EnvCPUIdle, energy.DefaultIdleFraction))
	fs.StringVar(&e.profile, "profile", "", "energy profile (default $"+sched.EnvProfile+" or wattagg/profile.json in the user cache directory)")
}

func (e *energyFlags) validate() error {
	for _, f := range []struct {
		name string
		v    float64
	}{{"--cpu-tdp", e.cpuTDP}, {"--cpu-idle", e.cpuIdle}} {
		if f.v < 0 || math.IsNaN(f.v) || math.IsInf(f.v, 0) {
			return usagef("%s %v: want a positive number of watts", f.name, f.v)
		}
	}
	if e.cpuTDP > 0 && e.cpuIdle > e.cpuTDP {
		return usagef("--cpu-idle %g W exceeds --cpu-tdp %g W", e.cpuIdle, e.cpuTDP)
	}
	return nil
}

func (e *energyFlags) options() []energy.Option {
	opts := []energy.Option{energy.WithCPUTDP(e.cpuTDP), energy.WithCPUIdle(e.cpuIdle)}
	if e.sysfs != "" {
		opts = append(opts, energy.WithSysfsRoot(e.sysfs))
	}
	return opts
}

func (e *energyFlags) profilePath() (string, error) {
	if e.profile != "" {
		return e.profile, nil
	}
	return sched.DefaultProfilePath()
}

// openMachine discovers the devices and meters, with cpu as the CPU device. more are extra
// discovery options (sched.WithoutGPUs when the CPU alone is asked for: initialising a GPU
// driver costs tens of milliseconds that a CPU-only round should not pay).
func (e *energyFlags) openMachine(cpu device.Device, more ...sched.Option) (*sched.Machine, error) {
	if err := e.validate(); err != nil {
		return nil, err
	}
	opts := append([]sched.Option{sched.WithEnergyOptions(e.options()...)}, more...)
	if cpu != nil {
		opts = append(opts, sched.WithCPU(cpu))
	}
	m, err := sched.Discover(opts...)
	if errors.Is(err, energy.ErrOption) {
		return nil, usagef("%v", err)
	}
	return m, err
}

// planFlags are the planner's flags.
type planFlags struct {
	policy   string
	deadline time.Duration
	powerCap float64
}

func (p *planFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&p.policy, "policy", "min-energy", "what the planner minimises: min-energy, min-time or min-edp (energy × delay)")
	fs.DurationVar(&p.deadline, "deadline", 0, "finish each aggregation within this time (e.g. 50ms; 0: none)")
	fs.Float64Var(&p.powerCap, "power-cap", 0, "keep the machine's predicted draw under this many watts (0: none)")
}

// options checks the flags and turns them into planner options; a bad value is a usage error.
func (p *planFlags) options() ([]sched.Option, error) {
	pol, err := sched.ParsePolicy(p.policy)
	if err != nil {
		return nil, usagef("--policy %q: want min-energy, min-time or min-edp", p.policy)
	}
	if p.deadline < 0 {
		return nil, usagef("--deadline %v: want a positive duration, or 0 for none", p.deadline)
	}
	if p.powerCap < 0 || math.IsNaN(p.powerCap) || math.IsInf(p.powerCap, 0) {
		return nil, usagef("--power-cap %v: want a positive number of watts, or 0 for none", p.powerCap)
	}
	return []sched.Option{sched.WithPolicy(pol), sched.WithDeadline(p.deadline), sched.WithPowerCap(p.powerCap)}, nil
}

// checkDeviceFlag accepts "auto", "cpu" or KIND:INDEX; whether the device is present is
// checked once devices are discovered.
func checkDeviceFlag(name string) error {
	if name == "auto" || name == "cpu" {
		return nil
	}
	kind, idx, ok := strings.Cut(name, ":")
	if !ok || kind == "" || idx == "" || strings.Trim(idx, "0123456789") != "" {
		return usagef("unknown device %q: want auto, cpu or KIND:INDEX such as cuda:0 (see wattagg devices)", name)
	}
	return nil
}

// whyMissing says why a KIND:INDEX device is absent when its backend knows ("no cuda device:
// cuInit: CUDA_ERROR_NO_DEVICE; "), or nothing.
func whyMissing(name string) string {
	kind, _, _ := strings.Cut(name, ":")
	for _, f := range device.Discover() {
		switch {
		case f.Kind != kind:
		case f.Reason != "":
			return f.Reason + "; "
		default:
			return fmt.Sprintf("%d %s device(s) here; ", len(f.Devices), kind)
		}
	}
	return "no " + kind + " backend in this build; "
}

// energyRun is the machine, meters, profile and planner of one command.
type energyRun struct {
	profile     *sched.Profile // when the run plans
	machine     *sched.Machine
	planner     *sched.Planner
	profilePath string
	profileNote string // how the profile was obtained
}

func (r *energyRun) close() {
	if r != nil && r.machine != nil {
		r.machine.Close()
	}
}

// openEnergyRun discovers the machine and, when plan is set, loads the profile (calibrating
// quickly what is missing) and builds the planner: everything `aggregate` needs to place work
// and meter it.
func openEnergyRun(ctx context.Context, stderr io.Writer, ef energyFlags, cpu device.Device, deviceFlag string, planOpts []sched.Option, plan bool, progressMode string) (*energyRun, error) {
	var more []sched.Option
	if deviceFlag == "cpu" {
		more = append(more, sched.WithoutGPUs())
	}
	m, err := ef.openMachine(cpu, more...)
	if err != nil {
		return nil, err
	}
	r := &energyRun{machine: m}
	if deviceFlag != "auto" {
		if _, ok := m.Device(deviceFlag); !ok {
			r.close()
			return nil, usagef("unknown device %q: %savailable devices: %s (see wattagg devices)", deviceFlag, whyMissing(deviceFlag), strings.Join(m.Names(), ", "))
		}
		planOpts = append(planOpts, sched.WithOnly(deviceFlag))
	}
	if !plan {
		return r, nil
	}
	if r.profilePath, err = ef.profilePath(); err != nil {
		r.close()
		return nil, err
	}
	prof, note, err := ensureProfile(ctx, stderr, r.profilePath, m, progressMode)
	if err != nil {
		r.close()
		return nil, err
	}
	r.profileNote, r.profile = note, prof
	if deviceFlag != "auto" {
		if d := prof.Device(deviceFlag); d == nil {
			// A device named on the command line that could not be calibrated (a GPU without
			// an energy meter): run the round on it without a plan rather than refuse it.
			r.profileNote += "; " + deviceFlag + " is not calibrated: the round runs on it unplanned"
			return r, nil
		} else if _, ok := d.Op(sched.WeightedSum, tensor.F32); !ok {
			r.profileNote += "; " + deviceFlag + " is not calibrated: the round runs on it unplanned"
			return r, nil
		}
	}
	if r.planner, err = sched.NewPlanner(prof, planOpts...); err != nil {
		r.close()
		return nil, usagef("%v", err)
	}
	return r, nil
}

// ensureProfile loads the profile, or calibrates quickly (the weighted sum, on the devices
// that lack it) and saves the result, so that the first aggregation can already be planned
// and predicted.
func ensureProfile(ctx context.Context, stderr io.Writer, path string, m *sched.Machine, progressMode string) (*sched.Profile, string, error) {
	prof, err := sched.LoadProfile(path)
	note := "loaded from " + path
	if err != nil && !errors.Is(err, sched.ErrNoProfile) && !errors.Is(err, sched.ErrProfile) {
		return nil, "", err
	}
	var missing []sched.Target
	for _, t := range m.Targets() {
		if d := prof.Device(t.Device.Name()); d == nil {
			missing = append(missing, t)
		} else if _, ok := d.Op(sched.WeightedSum, tensor.F32); !ok {
			missing = append(missing, t)
		}
	}
	if len(missing) == 0 {
		return prof, note, nil
	}
	if err != nil {
		note = fmt.Sprintf("%v; ", err)
	} else {
		note = ""
	}
	bar := newStepBar(stderr, progressMode, "quick calibration")
	q, cerr := sched.Calibrate(ctx, missing, sched.WithQuick(), sched.WithOps(sched.WeightedSum), sched.WithDTypes(tensor.F32),
		sched.WithOtherMeters(m.Others()...), sched.WithProgress(bar.step))
	bar.finish()
	if cerr != nil {
		return nil, "", cerr
	}
	if prof == nil {
		prof = q
	} else {
		prof.Merge(q)
	}
	note += "quick calibration of weighted-sum/f32 run now (wattagg calibrate measures more)"
	if serr := prof.Save(path); serr != nil {
		note += fmt.Sprintf("; not saved: %v", serr)
	} else {
		note += ", saved to " + path
	}
	return prof, note, nil
}

// options are the round options of the run: the devices (the one --device names first: it runs
// what the planner does not split), the planner, the meters. The engine meters every rule.
func (r *energyRun) options(deviceFlag string) []aggregate.Option {
	opts := []aggregate.Option{aggregate.WithMeters(r.machine.Meters()...)}
	devs := r.machine.Devices
	if dev, ok := r.machine.Device(deviceFlag); ok {
		devs = append([]device.Device{dev}, slices.DeleteFunc(slices.Clone(devs), func(d device.Device) bool { return d.Name() == dev.Name() })...)
	}
	opts = append(opts, aggregate.WithDevices(devs...))
	if r.planner != nil {
		opts = append(opts, aggregate.WithPlanner(r.planner))
	}
	return opts
}

// learn saves the profile when the round corrected it (the planner learns only from windows
// long enough for its meters, and writes only what changed).
func (r *energyRun) learn(stderr io.Writer, rep *aggregate.Report) {
	if r.planner == nil || rep == nil || rep.Learning == nil || !rep.Learning.Applied {
		return
	}
	if _, err := r.planner.SaveProfile(r.profilePath); err != nil {
		fmt.Fprintf(stderr, "wattagg: warning: the corrected profile was not saved: %v\n", err)
	}
}

// printEnergy prints the energy lines of a report: measured joules with their source, the
// plan and its prediction.
func printEnergy(w io.Writer, r *aggregate.Report) {
	if r.Joules != nil {
		how := "measured by " + r.JoulesSource
		if strings.Contains(r.JoulesSource, string(energy.SourceEstimate)) {
			how = "estimated" // no counter covered (all of) it: never call that measured
		}
		line := fmt.Sprintf("  energy: %.4g J %s", *r.Joules, how)
		if r.JoulesPerParam != nil {
			line += fmt.Sprintf(", %.3g nJ/param", *r.JoulesPerParam*1e9)
		}
		if r.PredictedJoules != nil {
			line += fmt.Sprintf("; predicted %.4g J in %.4g s", *r.PredictedJoules, *r.PredictedSeconds)
		}
		fmt.Fprintln(w, line)
		for _, m := range r.Energy {
			if m.Source == energy.SourceEstimate {
				fmt.Fprintf(w, "  estimate, not a counter: %s\n", m.Model)
			}
		}
	} else {
		fmt.Fprintf(w, "  energy: not measured (%s)\n", r.JoulesReason)
	}
	if p := r.Plan; p != nil {
		fmt.Fprintf(w, "  plan: %s\n", p.Why)
		for _, n := range p.Notes {
			fmt.Fprintf(w, "  plan note: %s\n", n)
		}
	}
	if l := r.Learning; l != nil && l.Applied {
		fmt.Fprintf(w, "  profile: %s\n", l.Why)
	} else if l != nil && l.Why != "" {
		fmt.Fprintf(w, "  profile: not corrected: %s\n", l.Why)
	}
}

// printProfile prints a profile's figures per device and op.
func printProfile(w io.Writer, path string, p *sched.Profile) {
	kind := "full"
	if p.Quick {
		kind = "quick"
	}
	fmt.Fprintf(w, "profile: %s (version %d, %s calibration of %s, updated %s)\n", path, p.Version, kind,
		p.Created.Local().Format("2006-01-02 15:04"), p.Updated.Local().Format("2006-01-02 15:04"))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "  device\top\tGB/s\tGFLOP/s\tnJ/byte\tpJ/FLOP\tlatency µs\tW running\tidle W\tcorr J×\tcorr t×\tmeter\t")
	for _, d := range p.Devices {
		keys := make([]string, 0, len(d.Ops))
		for k := range d.Ops {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			o := d.Ops[k]
			fmt.Fprintf(tw, "  %s\t%s\t%.1f\t%.1f\t%.3f\t%.1f\t%.0f\t%.1f\t%.1f\t%.2f\t%.2f\t%s\t\n", d.Name, k, o.BytesPerSec/1e9, o.FLOPsPerSec/1e9,
				o.JoulesPerByte*1e9, o.JoulesPerFLOP*1e12, o.LatencySec*1e6, o.Watts, d.IdleWatts, o.EnergyCorrection, o.TimeCorrection, d.Meter.Source)
		}
		if d.Link != nil {
			fmt.Fprintf(tw, "  %s\thost-to-device\t%.1f\t-\t%.3f\t-\t-\t-\t-\t-\t-\t%s\t\n", d.Name, d.Link.BytesPerSec/1e9, d.Link.JoulesPerByte*1e9, d.Meter.Source)
		}
	}
	tw.Flush()
	if r := p.Read; r != nil {
		fmt.Fprintf(w, "  reads: files cached in large folios are %s (%d files of %.0f MiB: mapped %.1f ms, copied %.1f ms)\n",
			r.Chosen(), r.Files, float64(r.Bytes)/float64(r.Files)/(1<<20), r.MapSec*1e3, r.CopySec*1e3)
	}
	for _, o := range p.Others {
		fmt.Fprintf(w, "  %s: idle %.1f W (no device drives it)\n", o.Meter, o.IdleWatts)
	}
}

// stepBar is a progress bar of calibration steps on stderr (when a terminal, or always). A nil
// *stepBar does nothing.
type stepBar struct {
	w    io.Writer
	desc string
	bar  *progressbar.ProgressBar
}

func newStepBar(w io.Writer, mode, desc string) *stepBar {
	if cli.NewProgress(w, mode, desc) == nil { // not a terminal, or --progress never
		return nil
	}
	return &stepBar{w: w, desc: desc}
}

func (b *stepBar) step(done, total int, what string) {
	if b == nil {
		return
	}
	if b.bar == nil {
		b.bar = progressbar.NewOptions(total,
			progressbar.OptionSetWriter(b.w),
			progressbar.OptionSetWidth(30),
			progressbar.OptionShowCount(),
			progressbar.OptionClearOnFinish(),
		)
	}
	b.bar.Describe(b.desc + ": " + what)
	_ = b.bar.Set(done)
}

func (b *stepBar) finish() {
	if b != nil && b.bar != nil {
		_ = b.bar.Finish()
	}
}

// describeMachine fills the devices report: devices, GPUs, meters, RAPL and NVML status and
// the profile.
func describeMachine(m *sched.Machine, ef energyFlags) (devicesReport, error) {
	r := devicesReport{RAPL: m.Energy.RAPL, NVML: m.Energy.NVML, Backends: m.Backends, Notes: m.Notes}
	for _, d := range m.Devices {
		r.Devices = append(r.Devices, d.Info())
	}
	var gpus []string
	for _, d := range m.Devices[1:] {
		gpus = append(gpus, d.Name()+" "+d.Info().Model)
	}
	for _, f := range m.Backends {
		if f.Reason != "" {
			gpus = append(gpus, fmt.Sprintf("no %s device: %s", f.Kind, f.Reason))
		}
	}
	if len(m.Backends) == 0 {
		gpus = append(gpus, "none: no GPU device backend in this build")
	}
	r.GPUs = strings.Join(gpus, "; ")
	if !m.Energy.NVML.Used {
		r.GPUs += "; NVML: " + m.Energy.NVML.Detail
	}
	for _, d := range m.Devices {
		mt, ok := m.Meter(d.Name())
		if !ok {
			continue
		}
		rd, err := mt.Read()
		if err != nil {
			return r, err
		}
		r.Meters = append(r.Meters, meterInfo{Device: d.Name(), Provenance: rd.Provenance})
	}
	for _, o := range m.Others() {
		rd, err := o.Read()
		if err != nil {
			return r, err
		}
		r.Meters = append(r.Meters, meterInfo{Provenance: rd.Provenance})
	}
	cpu := r.Meters[0]
	switch {
	case m.Energy.RAPL.Used:
		r.Energy = fmt.Sprintf("cpu measured by RAPL counters: %s", m.Energy.RAPL.Detail)
	default:
		r.Energy = fmt.Sprintf("cpu ESTIMATED, not measured, because RAPL is absent (see rapl below); the estimate used: %s", cpu.Model)
	}
	path, err := ef.profilePath()
	if err != nil {
		return r, err
	}
	r.ProfilePath = path
	p, err := sched.LoadProfile(path)
	switch {
	case err == nil:
		r.Profile = p
	case errors.Is(err, sched.ErrNoProfile), errors.Is(err, sched.ErrProfile):
		r.ProfileNote = err.Error()
	default:
		return r, err
	}
	return r, nil
}

// printMeters prints the meter and profile part of `wattagg devices`.
func printMeters(w io.Writer, r devicesReport) {
	if r.RAPL.Used {
		fmt.Fprintf(w, "  rapl: %s\n", r.RAPL.Detail)
	} else {
		fmt.Fprintf(w, "  rapl: absent: %s\n", r.RAPL.Detail)
	}
	fmt.Fprintf(w, "  nvml: %s\n", r.NVML.Detail)
	for _, m := range r.Meters {
		dev := m.Device
		if dev == "" {
			dev = "no device"
		}
		fmt.Fprintf(w, "  meter %s (%s): source=%s, domains %s, granularity %gs\n", m.Meter, dev, m.Source, strings.Join(m.Domains, " + "), m.Granularity)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "  note: %s\n", n)
	}
	if r.Profile == nil {
		fmt.Fprintf(w, "profile: none (%s)\n", r.ProfileNote)
		return
	}
	printProfile(w, r.ProfilePath, r.Profile)
}

// largeFolioRead is how `--read auto` reads files cached in large folios: as calibration
// measured on this machine (the profile's read), else by the probe's race (ReadAuto). A run
// that does not plan (--stream) reads the profile for it alone.
func (r *energyRun) largeFolioRead(ef energyFlags) safetensors.ReadMode {
	prof := r.profile
	if prof == nil {
		path, err := ef.profilePath()
		if err != nil {
			return safetensors.ReadAuto
		}
		if prof, err = sched.LoadProfile(path); err != nil {
			return safetensors.ReadAuto
		}
	}
	if prof.Read == nil {
		return safetensors.ReadAuto
	}
	m, err := safetensors.ParseReadMode(prof.Read.LargeFolios)
	if err != nil || (m != safetensors.ReadMap && m != safetensors.ReadCopy) {
		return safetensors.ReadAuto
	}
	return m
}
