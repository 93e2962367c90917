package main

import (
	"encoding/json"
	"fmt"
	"runtime"

	"github.com/spf13/cobra"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/sched"
)

func newCalibrateCmd() *cobra.Command {
	var ef energyFlags
	var quick, asJSON bool
	var workers int
	var progressMode string
	cmd := &cobra.Command{
		Use:   "calibrate",
		Short: "Measure each device's speed and joules per op class, for the planner",
		Long: `Calibrate runs the real kernels of every op class (today: the weighted sum of FedAvg, in
f32 and bf16) on every device under its energy meter — RAPL, NVML, or the CPU estimate where
there is no counter — after measuring each meter's idle power, and records FLOP/s, bytes/s,
J/FLOP, J/byte, the fixed cost of a call, idle watts and, for GPUs, the host-to-device link. The
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
	ef.register(fl)
	return cmd
}
