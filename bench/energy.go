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
	policies := energyPolicies(cfg)
	r := &energyRun{ctx: ctx, cfg: cfg, updates: updates, meters: cfg.Machine.Meters()}
	var rows []EnergyRow
	for i, p := range policies {
		if cfg.Progress != nil {
			cfg.Progress(i, len(policies), p.name)
		}
		row, err := r.measure(p)
		if err != nil {
			return nil, err
		}
		rows = append(rows, row)
	}
	return rows, nil
}

// energyPolicy is one policy EnergyPolicies compares: the planner's options, or why it is
// skipped.
type energyPolicy struct {
	name string
	opts []sched.Option
	skip string
}

// energyPolicies lists the policies compared on cfg's machine: always-gpu is skipped where the
// machine has no GPU.
func energyPolicies(cfg EnergyConfig) []energyPolicy {
	gpu := firstGPU(cfg.Machine.Devices)
	policies := []energyPolicy{
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
	return policies
}

// firstGPU is the name of the first GPU of devs, or "" where there is none.
func firstGPU(devs []device.Device) string {
	for _, d := range devs {
		if d.Info().Kind == "gpu" {
			return d.Name()
		}
	}
	return ""
}

// energyRun is the state EnergyPolicies' policies share: the updates, the meters, and the one
// output every round writes.
type energyRun struct {
	ctx     context.Context
	cfg     EnergyConfig
	updates []*tensor.Set
	meters  []energy.Meter
	out     []aggregate.Option
}

// metered is what the meters measured over a policy's rounds, and the wall time they took.
type metered struct {
	seconds float64
	total   energy.Measurement
}

// measure runs policy p's rounds and returns its row: skipped where p is, or where the GPU
// cannot be planned for.
func (r *energyRun) measure(p energyPolicy) (EnergyRow, error) {
	row := EnergyRow{Policy: p.name, Skipped: p.skip}
	if p.skip != "" {
		return row, nil
	}
	pl, err := sched.NewPlanner(r.cfg.Profile.Clone(), append(p.opts, sched.WithoutLearning())...)
	if err != nil {
		return EnergyRow{}, err
	}
	if err := r.tryPlan(pl); err != nil && p.name == "always-gpu" {
		row.Skipped = err.Error() // an uncalibrated GPU (no meter to calibrate it with): the other rows still run
		return row, nil
	}
	opts, err := r.roundOptions(pl)
	if err != nil {
		return EnergyRow{}, err
	}
	_, rep, err := aggregate.WeightedMean(r.ctx, r.updates, nil, opts...) // warm-up, and the plan
	if err != nil {
		return EnergyRow{}, err
	}
	m, err := r.meterRounds(opts)
	if err != nil {
		return EnergyRow{}, err
	}
	r.fillRow(&row, rep, m)
	return row, nil
}

// tryPlan plans a round of the updates with pl, saying whether it can.
func (r *energyRun) tryPlan(pl *sched.Planner) error {
	_, err := pl.Plan(sched.Request{Op: sched.WeightedSum, Workload: sched.Workload{Clients: len(r.updates), Elements: 1, In: tensor.F32, Out: tensor.F32},
		Chunks: []int64{1}, Devices: deviceNames(r.cfg.Machine.Devices)})
	return err
}

// roundOptions is how every round of the policy planned by pl aggregates, into the shared
// output, made by a first round if none is yet.
func (r *energyRun) roundOptions(pl *sched.Planner) ([]aggregate.Option, error) {
	opts := []aggregate.Option{aggregate.WithDevices(r.cfg.Machine.Devices...), aggregate.WithPlanner(pl), aggregate.WithOutDType(tensor.F32)}
	if r.out == nil {
		// One output, reused by every round of every policy: no fresh pages measured.
		dst, _, err := aggregate.WeightedMean(r.ctx, r.updates, nil, opts...)
		if err != nil {
			return nil, err
		}
		r.out = []aggregate.Option{aggregate.WithOutput(dst)}
	}
	return append(opts, r.out...), nil
}

// meterRounds runs cfg.Runs rounds with opts under the meters.
func (r *energyRun) meterRounds(opts []aggregate.Option) (metered, error) {
	w, err := energy.Start(r.meters...)
	if err != nil {
		return metered{}, err
	}
	start := time.Now()
	for range r.cfg.Runs {
		if _, _, err := aggregate.WeightedMean(r.ctx, r.updates, nil, opts...); err != nil {
			w.Stop()
			return metered{}, err
		}
	}
	secs := time.Since(start).Seconds()
	ms, err := w.Stop()
	if err != nil {
		return metered{}, err
	}
	return metered{seconds: secs, total: energy.Total(ms)}, nil
}

// fillRow sets in row the plan of rep, its devices' split and prediction, beside what m
// measured, per round.
func (r *energyRun) fillRow(row *EnergyRow, rep *aggregate.Report, m metered) {
	row.Devices = planSplit(rep.Plan.Shares)
	row.PredictedSeconds, row.PredictedJoules = rep.Plan.Predicted.Seconds, rep.Plan.Predicted.Joules
	row.Seconds = m.seconds / float64(r.cfg.Runs)
	row.Joules = m.total.Joules / float64(r.cfg.Runs)
	row.JoulesPerParam = row.Joules / float64(rep.Params)
	row.Source = string(m.total.Source)
	row.Why = rep.Plan.Why
	if m.total.Granularity > 0 && m.total.Seconds < 10*m.total.Granularity {
		row.Note = fmt.Sprintf("%.3g s metered: under 10 updates of the meter, raise --runs", m.total.Seconds)
	}
}

// planSplit says how shares split a round between devices: "cpu 100%", "cpu 30% + cuda:0 70%".
func planSplit(shares []sched.Share) string {
	var split []string
	for _, s := range shares {
		split = append(split, fmt.Sprintf("%s %.0f%%", s.Device, 100*s.Fraction))
	}
	return strings.Join(split, " + ")
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
