package aggregate

import (
	"github.com/wattagg/wattagg/energy"
	"github.com/wattagg/wattagg/sched"
)

// meterWindow reads the configured meters around a piece of work. A nil *meterWindow (no
// meters) measures nothing.
type meterWindow struct {
	w   *energy.Window
	err error
}

func (c *config) startMeters() *meterWindow {
	if len(c.meters) == 0 {
		return nil
	}
	w, err := energy.Start(c.meters...)
	return &meterWindow{w: w, err: err}
}

// stop returns what the meters measured; a meter that failed leaves the work intact and its
// error for the report.
func (m *meterWindow) stop() ([]energy.Measurement, error) {
	if m == nil {
		return nil, nil
	}
	if m.err != nil {
		return nil, m.err
	}
	return m.w.Stop()
}

// setEnergy fills the report's energy from measurements (with provenance), the plan's
// prediction and what the planner learned.
func (r *Report) setEnergy(ms []energy.Measurement, meterErr error, plan *sched.Plan, learned *sched.Learned) {
	if plan != nil {
		r.Plan = plan
		j, s := plan.Predicted.Joules, plan.Predicted.Seconds
		r.PredictedJoules, r.PredictedSeconds = &j, &s
		r.Learning = learned
	}
	switch {
	case meterErr != nil:
		r.JoulesReason = "energy meter failed: " + meterErr.Error()
		return
	case len(ms) == 0:
		return
	}
	r.Energy = ms
	t := energy.Total(ms)
	j := t.Joules
	r.Joules = &j
	r.JoulesReason = ""
	r.JoulesSource = string(t.Source)
	if r.Params > 0 {
		jp := j / float64(r.Params)
		r.JoulesPerParam = &jp
	}
}

// account puts the batch's placement and energy into its report.
func (b *batch) account(r *Report) {
	if p := b.placed; p != nil {
		r.setEnergy(p.energy, p.meterErr, p.plan, p.learned)
	}
}

// meter adds what a window measured to the aggregate's energy.
func (a *Aggregator) meter(w *meterWindow) {
	ms, err := w.stop()
	if err != nil && a.meterErr == nil {
		a.meterErr = err
	}
	a.energy = energy.Accumulate(a.energy, ms)
}

// account puts the energy of every Add and of this emit into the report.
func (a *Aggregator) account(r *Report, emitted []energy.Measurement, err error) {
	if err == nil {
		err = a.meterErr
	}
	var all []energy.Measurement
	all = energy.Accumulate(all, a.energy)
	all = energy.Accumulate(all, emitted)
	r.setEnergy(all, err, nil, nil)
}
