package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/wattagg/wattagg/bench"
	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/sched"
)

// calibrateFlags are the flags of calibrate.
type calibrateFlags struct {
	ef                    energyFlags
	quick, asJSON         bool
	workers               int
	progressMode, readDir string
}

func newCalibrateCmd() *cobra.Command {
	var f calibrateFlags
	cmd := &cobra.Command{
		Use:   "calibrate",
		Short: "Measure each device's speed and joules per op class, for the planner",
		Long: `Calibrate runs the real kernels of every op class (today: the weighted sum of FedAvg, in
f32 and bf16) on every device under its energy meter — RAPL, NVML, or the CPU estimate where
there is no counter — after measuring each meter's idle power, and records FLOP/s, bytes/s,
J/FLOP, J/byte, the fixed cost of a call, idle watts and, for GPUs, the host-to-device link; and
how this machine reads cached update files fastest (mapped or copied with pread: it writes a few
updates under --read-dir, times FedAvg over them read both ways, and removes them), which
` + "`wattagg aggregate --read auto`" + ` then uses for files cached in large folios. The
profile is saved as versioned JSON (--profile, $` + sched.EnvProfile + `, or wattagg/profile.json in the user cache
directory) and replaces the previous one; ` + "`wattagg devices`" + ` shows it, and ` + "`wattagg aggregate`" + `
plans with it and corrects it as rounds are measured.

A full calibration takes about ` + fmt.Sprintf("%.0f", (sched.FullIdle+2*sched.FullWindow).Seconds()*1.5) + ` s per device; --quick takes about a second.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return f.run(cmd)
		},
	}
	f.register(cmd.Flags())
	return cmd
}

// register adds the flags of calibrate to fl.
func (f *calibrateFlags) register(fl *pflag.FlagSet) {
	fl.BoolVar(&f.quick, "quick", false, "short windows and small workloads, the reference dtype only (CI-sized, about a second)")
	fl.BoolVar(&f.asJSON, "json", false, "print the profile as JSON")
	fl.IntVar(&f.workers, "workers", runtime.GOMAXPROCS(0), "goroutines of the CPU device")
	fl.StringVar(&f.progressMode, "progress", "auto", "progress bar on stderr: auto (when a terminal), always, never")
	fl.StringVar(&f.readDir, "read-dir", "", "where to write the update files whose reads are timed (default: the profile's directory; best on the disk the updates will be on)")
	f.ef.register(fl)
}

// run calibrates the devices and the reads of update files, saves the profile and prints it.
func (f *calibrateFlags) run(cmd *cobra.Command) error {
	c, err := f.open(cmd)
	if err != nil {
		return err
	}
	defer c.close()
	p, err := c.measureDevices()
	if err != nil {
		return err
	}
	if p.Read, err = c.measureReads(); err != nil {
		return err
	}
	if err := p.Save(c.path); err != nil {
		return err
	}
	return c.print(p)
}

// calibration is one run of calibrate: the CPU device, the machine with its meters, and where
// the profile is saved.
type calibration struct {
	f       *calibrateFlags
	cmd     *cobra.Command
	cpu     *device.CPU
	machine *sched.Machine
	path    string // of the profile
}

// open refuses a bad --workers, makes the CPU device, discovers the machine's devices and
// meters and finds the profile's path; the caller closes the calibration.
func (f *calibrateFlags) open(cmd *cobra.Command) (*calibration, error) {
	if f.workers < 1 {
		return nil, usagef("--workers %d: want at least 1", f.workers)
	}
	cpu, err := device.NewCPU(device.WithWorkers(f.workers))
	if err != nil {
		return nil, err
	}
	m, err := f.ef.openMachine(cpu)
	if err != nil {
		return nil, err
	}
	path, err := f.ef.profilePath()
	if err != nil {
		m.Close()
		return nil, err
	}
	return &calibration{f: f, cmd: cmd, cpu: cpu, machine: m, path: path}, nil
}

// close closes the machine's devices and meters.
func (c *calibration) close() {
	c.machine.Close()
}

// measureDevices runs the kernels of every op class on every device under its meter, with a
// progress bar on stderr.
func (c *calibration) measureDevices() (*sched.Profile, error) {
	bar := newStepBar(c.cmd.ErrOrStderr(), c.f.progressMode, "calibrating")
	opts := []sched.Option{sched.WithOtherMeters(c.machine.Others()...), sched.WithProgress(bar.step)}
	if c.f.quick {
		opts = append(opts, sched.WithQuick())
	}
	p, err := sched.Calibrate(c.cmd.Context(), c.machine.Targets(), opts...)
	bar.finish()
	return p, err
}

// measureReads times the two ways of reading cached update files under --read-dir (default:
// the profile's directory).
func (c *calibration) measureReads() (*sched.ReadProfile, error) {
	if c.f.readDir == "" {
		c.f.readDir = filepath.Dir(c.path)
	}
	return calibrateRead(c.cmd.Context(), c.f.readDir, c.cpu, c.f.quick)
}

// print prints the profile on stdout: as JSON with --json, else as text, after a note when the
// energy is estimated for want of RAPL.
func (c *calibration) print(p *sched.Profile) error {
	if c.f.asJSON {
		return json.NewEncoder(c.cmd.OutOrStdout()).Encode(p)
	}
	w := c.cmd.OutOrStdout()
	if !c.machine.Energy.RAPL.Used {
		fmt.Fprintf(w, "energy: estimated, not measured (RAPL is absent: %s)\n", c.machine.Energy.RAPL.Detail)
	}
	printProfile(w, c.path, p)
	return nil
}

// calibrateRead measures the two ways of reading cached update files (bench.MeasureReadModes):
// 8 updates of 4Mi f32 parameters (4 with --quick), each way 3 times (2), alternating.
func calibrateRead(ctx context.Context, dir string, cpu device.Device, quick bool) (*sched.ReadProfile, error) {
	files, runs := 8, 3
	if quick {
		files, runs = 4, 2
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("--read-dir: %w", err)
	}
	m, err := bench.MeasureReadModes(ctx, dir, cpu, files, 4<<20, runs)
	if err != nil {
		return nil, fmt.Errorf("timing reads under %s: %w", dir, err)
	}
	return &sched.ReadProfile{LargeFolios: m.Choice.String(), MapSec: m.MapS, CopySec: m.CopyS, Files: m.Files, Bytes: m.Bytes}, nil
}
