package bench

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/energy"
	"github.com/wattagg/wattagg/sched"
	"github.com/wattagg/wattagg/tensor"
)

// EnergyConfig is a comparison of placement policies on one federation.
type EnergyConfig struct {
	Clients int
	Params  int
	DType   tensor.DType
	Runs    int // rounds per policy, metered together
	Machine *sched.Machine
	Profile *sched.Profile
	// Constraints are added to the planner's policies (a deadline, a power cap).
	Constraints []sched.Option
	// Progress, if set, is told each policy as it starts: done of total, and what.
	Progress func(done, total int, what string)
}

// EnergyRow is one policy's predicted and measured cost per round.
type EnergyRow struct {
	Policy           string  `json:"policy"`
	Devices          string  `json:"devices"` // the split, "cpu 100%"
	PredictedSeconds float64 `json:"predicted_seconds"`
	PredictedJoules  float64 `json:"predicted_joules"`
	Seconds          float64 `json:"seconds"` // measured, per round
	Joules           float64 `json:"joules"`  // measured, per round
	JoulesPerParam   float64 `json:"joules_per_param"`
	Source           string  `json:"source"` // how the joules were measured
	Skipped          string  `json:"skipped,omitempty"`
	Why              string  `json:"why,omitempty"`
	Note             string  `json:"note,omitempty"`
}

// EnergyPolicies aggregates the same federation by each policy — always the CPU, always the
// first GPU, and the planner minimising energy, time and their product — and meters the
// rounds: per round, the plan's prediction beside what the meters measured. A policy whose
// device is absent is listed as skipped, saying why.
func EnergyPolicies(ctx context.Context, cfg EnergyConfig) ([]EnergyRow, error) {
	if cfg.Machine == nil || cfg.Profile == nil || cfg.Clients < 1 || cfg.Params < 1 || cfg.Runs < 1 {
		return nil, fmt.Errorf("bench: energy comparison needs a machine, a profile, clients, params and runs")
	}
	updates, err := InMemoryUpdates(cfg.Clients, cfg.Params, cfg.DType)
	if err != nil {
		return nil, err
	}
	gpu := ""
	for _, d := range cfg.Machine.Devices {
		if d.Info().Kind == "gpu" {
			gpu = d.Name()
			break
		}
	}
	type policy struct {
		name string
		opts []sched.Option
		skip string
	}
	policies := []policy{
		{name: "always-cpu", opts: []sched.Option{sched.WithOnly("cpu")}},
		{name: "always-gpu", opts: []sched.Option{sched.WithOnly(gpu)}},
		{name: "planner min-energy", opts: append([]sched.Option{sched.WithPolicy(sched.MinEnergy)}, cfg.Constraints...)},
		{name: "planner min-time", opts: append([]sched.Option{sched.WithPolicy(sched.MinTime)}, cfg.Constraints...)},
		{name: "planner min-edp", opts: append([]sched.Option{sched.WithPolicy(sched.MinEDP)}, cfg.Constraints...)},
	}
	if gpu == "" {
		why := "no GPU device here"
		if !cfg.Machine.Energy.NVML.Used {
			why += " (" + cfg.Machine.Energy.NVML.Detail + ")"
		}
		policies[1].skip = why
	}
	var out []aggregate.Option
	var rows []EnergyRow
	meters := cfg.Machine.Meters()
	for i, p := range policies {
		if cfg.Progress != nil {
			cfg.Progress(i, len(policies), p.name)
		}
		row := EnergyRow{Policy: p.name, Skipped: p.skip}
		if p.skip != "" {
			rows = append(rows, row)
			continue
		}
		pl, err := sched.NewPlanner(cfg.Profile.Clone(), append(p.opts, sched.WithoutLearning())...)
		if err != nil {
			return nil, err
		}
		if _, err := pl.Plan(sched.Request{Op: sched.WeightedSum, Workload: sched.Workload{Clients: len(updates), Elements: 1, In: tensor.F32, Out: tensor.F32},
			Chunks: []int64{1}, Devices: deviceNames(cfg.Machine.Devices)}); err != nil && p.name == "always-gpu" {
			row.Skipped = err.Error() // an uncalibrated GPU (no meter to calibrate it with): the other rows still run
			rows = append(rows, row)
			continue
		}
		opts := []aggregate.Option{aggregate.WithDevices(cfg.Machine.Devices...), aggregate.WithPlanner(pl), aggregate.WithOutDType(tensor.F32)}
		if out == nil {
			// One output, reused by every round of every policy: no fresh pages measured.
			dst, _, err := aggregate.WeightedMean(ctx, updates, nil, opts...)
			if err != nil {
				return nil, err
			}
			out = []aggregate.Option{aggregate.WithOutput(dst)}
		}
		opts = append(opts, out...)
		_, rep, err := aggregate.WeightedMean(ctx, updates, nil, opts...) // warm-up, and the plan
		if err != nil {
			return nil, err
		}
		w, err := energy.Start(meters...)
		if err != nil {
			return nil, err
		}
		start := time.Now()
		for range cfg.Runs {
			if _, _, err := aggregate.WeightedMean(ctx, updates, nil, opts...); err != nil {
				w.Stop()
				return nil, err
			}
		}
		secs := time.Since(start).Seconds()
		ms, err := w.Stop()
		if err != nil {
			return nil, err
		}
		tot := energy.Total(ms)
		var split []string
		for _, s := range rep.Plan.Shares {
			split = append(split, fmt.Sprintf("%s %.0f%%", s.Device, 100*s.Fraction))
		}
		row.Devices = strings.Join(split, " + ")
		row.PredictedSeconds, row.PredictedJoules = rep.Plan.Predicted.Seconds, rep.Plan.Predicted.Joules
		row.Seconds = secs / float64(cfg.Runs)
		row.Joules = tot.Joules / float64(cfg.Runs)
		row.JoulesPerParam = row.Joules / float64(rep.Params)
		row.Source = string(tot.Source)
		row.Why = rep.Plan.Why
		if tot.Granularity > 0 && tot.Seconds < 10*tot.Granularity {
			row.Note = fmt.Sprintf("%.3g s metered: under 10 updates of the meter, raise --runs", tot.Seconds)
		}
		rows = append(rows, row)
	}
	return rows, nil
}

func deviceNames(devs []device.Device) []string {
	names := make([]string, len(devs))
	for i, d := range devs {
		names[i] = d.Name()
	}
	return names
}

// EnergyResults turns the rows of EnergyPolicies into a report's results: energy per parameter
// per round in nJ, the plan's prediction beside what the meters measured, and the source (an
// estimate where no counter exists). Energy has no physical floor here: the prediction is the
// figure to compare with.
func EnergyResults(cfg EnergyConfig, rows []EnergyRow) []Result {
	out := make([]Result, 0, len(rows))
	for _, r := range rows {
		x := Result{Name: r.Policy, Policy: r.Policy, Device: r.Devices, Clients: cfg.Clients, Params: int64(cfg.Params),
			DType: cfg.DType.String(), Rule: "fedavg", Unit: "nJ/param", Source: r.Source, Seconds: r.Seconds,
			Note: strings.TrimSpace(strings.Join([]string{r.Note, r.Why}, " ")), Skipped: r.Skipped}
		if r.Skipped == "" {
			x.Value = r.JoulesPerParam * 1e9
			x.Predicted = r.PredictedJoules / float64(cfg.Params) * 1e9
			if r.Seconds > 0 {
				x.ParamsPerSecond = float64(cfg.Params) / r.Seconds
			}
		}
		out = append(out, x)
	}
	return out
}
