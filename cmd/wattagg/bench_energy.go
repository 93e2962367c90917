package main

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/wattagg/wattagg/bench"
	"github.com/wattagg/wattagg/sched"
	"github.com/wattagg/wattagg/tensor"
)

// energySuite compares placement policies by predicted and measured joules per round.
type energySuite struct {
	cfg          bench.EnergyConfig // Clients, Params, DType, Runs, Constraints
	machine      *sched.Machine
	profilePath  string
	progressMode string // of a calibration the profile needs first
}

func (energySuite) name() string { return "energy" }
func (energySuite) title() string {
	return "joules per round by placement policy and device (always-CPU, always-GPU, the planner), predicted and measured"
}

func (s energySuite) run(env *benchEnv) (*bench.Report, error) {
	prof, note, err := ensureProfile(env.ctx, env.stderr, s.profilePath, s.machine, s.progressMode)
	if err != nil {
		return nil, err
	}
	cfg := s.cfg
	cfg.Machine, cfg.Profile, cfg.Progress = s.machine, prof, env.progress
	rows, err := bench.EnergyPolicies(env.ctx, cfg)
	if err != nil {
		return nil, err
	}
	m := s.machine
	if env.json {
		if err := json.NewEncoder(env.stdout).Encode(rows); err != nil {
			return nil, err
		}
	} else {
		w := env.stdout
		fmt.Fprintf(w, "fedavg of %d x %s %s params, %d rounds per policy; profile %s\n", cfg.Clients, human(float64(cfg.Params), ""), cfg.DType, cfg.Runs, note)
		if !m.Energy.RAPL.Used {
			fmt.Fprintf(w, "joules are ESTIMATED (RAPL absent: %s)\n", m.Energy.RAPL.Detail)
		}
		printEnergyRows(w, rows)
	}
	describeMeters(&env.machine, m)
	rep := env.newReport(s)
	rep.Config["clients"], rep.Config["params"], rep.Config["runs"] = fmt.Sprint(cfg.Clients), fmt.Sprint(cfg.Params), fmt.Sprint(cfg.Runs)
	rep.Config["dtype"], rep.Config["profile"] = cfg.DType.String(), s.profilePath
	rep.Add(bench.EnergyResults(cfg, rows)...)
	rep.Notes = append(rep.Notes, "profile "+note)
	if !m.Energy.RAPL.Used {
		est := "joules are ESTIMATED, not measured: RAPL is absent (" + m.Energy.RAPL.Detail + ")"
		if m.Energy.CPUEstimate != "" {
			est += "; the estimate is " + m.Energy.CPUEstimate
		}
		rep.Notes = append(rep.Notes, est)
	}
	rep.Notes = append(rep.Notes, "energy has no physical floor here: the planner's prediction stands beside each measurement")
	return rep, nil
}

// describeMeters adds the GPUs and the energy meters of m to a report's machine.
func describeMeters(bm *bench.Machine, m *sched.Machine) {
	bm.GPUs = nil
	for _, d := range m.Devices {
		if info := d.Info(); info.Kind == "gpu" {
			bm.GPUs = append(bm.GPUs, fmt.Sprintf("%s (%s)", info.Name, info.Model))
		}
	}
	if m.Energy.RAPL.Used {
		bm.Meter = "RAPL: " + m.Energy.RAPL.Detail
	} else {
		bm.Meter = "estimate (RAPL absent: " + m.Energy.RAPL.Detail + ")"
	}
	if m.Energy.NVML.Used {
		bm.Meter += "; NVML: " + m.Energy.NVML.Detail
	}
}

func newBenchEnergyCmd() *cobra.Command {
	var c benchCommon
	var ef energyFlags
	var pf planFlags
	var s energySuite
	var dtype string
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
			if s.cfg.DType, err = tensor.ParseDType(dtype); err != nil {
				return usagef("--dtype: %v", err)
			}
			if c.workers < 1 || s.cfg.Clients < 1 || s.cfg.Params < 1 || s.cfg.Runs < 1 {
				return usagef("--workers, --clients, --params and --runs must be at least 1")
			}
			env, err := c.env(cmd)
			if err != nil {
				return err
			}
			m, err := ef.openMachine(env.cpu)
			if err != nil {
				return err
			}
			defer m.Close()
			if s.profilePath, err = ef.profilePath(); err != nil {
				return err
			}
			s.machine, s.progressMode, s.cfg.Constraints = m, c.progress, constraints
			return c.runSuite(cmd, env, s)
		},
	}
	c.flags(cmd)
	fl := cmd.Flags()
	fl.Lookup("progress").Usage = "progress bars on stderr (the policies; a needed calibration): auto, always, never"
	fl.IntVar(&s.cfg.Clients, "clients", fullPreset.energyClients, "updates")
	fl.IntVar(&s.cfg.Params, "params", fullPreset.energyParams, "parameters per update")
	fl.IntVar(&s.cfg.Runs, "runs", fullPreset.energyRuns, "rounds per policy (metered together)")
	fl.StringVar(&dtype, "dtype", "f32", "input dtype: f32, bf16 or f16")
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
