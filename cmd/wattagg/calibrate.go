package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/spf13/cobra"

	"github.com/wattagg/wattagg/bench"
	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/sched"
)

func newCalibrateCmd() *cobra.Command {
	var ef energyFlags
	var quick, asJSON bool
	var workers int
	var progressMode, readDir string
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
			if workers < 1 {
				return usagef("--workers %d: want at least 1", workers)
			}
			cpu, err := device.NewCPU(device.WithWorkers(workers))
			if err != nil {
				return err
			}
			m, err := ef.openMachine(cpu)
			if err != nil {
				return err
			}
			defer m.Close()
			path, err := ef.profilePath()
			if err != nil {
				return err
			}
			bar := newStepBar(cmd.ErrOrStderr(), progressMode, "calibrating")
			opts := []sched.Option{sched.WithOtherMeters(m.Others()...), sched.WithProgress(bar.step)}
			if quick {
				opts = append(opts, sched.WithQuick())
			}
			p, err := sched.Calibrate(cmd.Context(), m.Targets(), opts...)
			bar.finish()
			if err != nil {
				return err
			}
			if readDir == "" {
				readDir = filepath.Dir(path)
			}
			if p.Read, err = calibrateRead(cmd.Context(), readDir, cpu, quick); err != nil {
				return err
			}
			if err := p.Save(path); err != nil {
				return err
			}
			if asJSON {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(p)
			}
			w := cmd.OutOrStdout()
			if !m.Energy.RAPL.Used {
				fmt.Fprintf(w, "energy: estimated, not measured (RAPL is absent: %s)\n", m.Energy.RAPL.Detail)
			}
			printProfile(w, path, p)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.BoolVar(&quick, "quick", false, "short windows and small workloads, the reference dtype only (CI-sized, about a second)")
	fl.BoolVar(&asJSON, "json", false, "print the profile as JSON")
	fl.IntVar(&workers, "workers", runtime.GOMAXPROCS(0), "goroutines of the CPU device")
	fl.StringVar(&progressMode, "progress", "auto", "progress bar on stderr: auto (when a terminal), always, never")
	fl.StringVar(&readDir, "read-dir", "", "where to write the update files whose reads are timed (default: the profile's directory; best on the disk the updates will be on)")
	ef.register(fl)
	return cmd
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
