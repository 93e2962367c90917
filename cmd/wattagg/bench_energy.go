package main

import (
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/wattagg/wattagg/bench"
	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
)

func newBenchEnergyCmd() *cobra.Command {
	var ef energyFlags
	var pf planFlags
	var cfg bench.EnergyConfig
	var dtype, progressMode string
	var workers int
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "energy",
		Short: "Joules per round by policy: always-CPU, always-GPU and the planner, predicted and measured",
		Long: `Energy aggregates one in-memory federation by each placement policy — always the CPU,
always the first GPU, and the planner minimising energy, time and energy × delay (with
--deadline and --power-cap if given) — on the devices present, meters the rounds, and prints
per round the plan, its predicted seconds and joules, and the measured ones with their source.
Where RAPL and NVML are absent the joules are the CPU estimate's, and the table says so.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			constraints, err := pf.options()
			if err != nil {
				return err
			}
			if cfg.DType, err = tensor.ParseDType(dtype); err != nil {
				return usagef("--dtype: %v", err)
			}
			if workers < 1 || cfg.Clients < 1 || cfg.Params < 1 || cfg.Runs < 1 {
				return usagef("--workers, --clients, --params and --runs must be at least 1")
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
			prof, note, err := ensureProfile(cmd.Context(), cmd.ErrOrStderr(), path, m, progressMode)
			if err != nil {
				return err
			}
			cfg.Machine, cfg.Profile, cfg.Constraints = m, prof, constraints
			rows, err := bench.EnergyPolicies(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			if asJSON {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(rows)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "fedavg of %d x %s %s params, %d rounds per policy; profile %s\n", cfg.Clients, human(float64(cfg.Params), ""), cfg.DType, cfg.Runs, note)
			if !m.Energy.RAPL.Used {
				fmt.Fprintf(w, "joules are ESTIMATED (RAPL absent: %s)\n", m.Energy.RAPL.Detail)
			}
			printEnergyRows(w, rows)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&cfg.Clients, "clients", 16, "updates")
	fl.IntVar(&cfg.Params, "params", 4<<20, "parameters per update")
	fl.IntVar(&cfg.Runs, "runs", 10, "rounds per policy (metered together)")
	fl.StringVar(&dtype, "dtype", "f32", "input dtype: f32, bf16 or f16")
	fl.IntVar(&workers, "workers", runtime.GOMAXPROCS(0), "goroutines of the CPU device")
	fl.BoolVar(&asJSON, "json", false, "print rows as JSON")
	fl.StringVar(&progressMode, "progress", "auto", "progress bar of a needed calibration: auto, always, never")
	ef.register(fl)
	pf.register(fl)
	fl.Lookup("policy").Hidden = true // every policy is measured
	return cmd
}

func printEnergyRows(w io.Writer, rows []bench.EnergyRow) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "policy\tdevices\tpredicted s\tmeasured s\tpredicted J\tmeasured J\tnJ/param\tsource\t")
	for _, r := range rows {
		if r.Skipped != "" {
			fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\t-\t-\t  skipped: %s\n", r.Policy, r.Skipped)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%.4f\t%.4f\t%.3f\t%.3f\t%.2f\t%s\t", r.Policy, r.Devices, r.PredictedSeconds, r.Seconds,
			r.PredictedJoules, r.Joules, r.JoulesPerParam*1e9, r.Source)
		if r.Note != "" {
			fmt.Fprintf(tw, "  %s", r.Note)
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
}
