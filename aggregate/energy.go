package aggregate

import (
	"time"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/energy"
	"github.com/wattagg/wattagg/sched"
)

// accounting is what a round did and spent: device passes, bytes, busy time and the meters'
// measurements around every piece of work (each Add, the close).
type accounting struct {
	bytesIn  int64
	added    int64 // bytes added so far (progress of an incremental round)
	busy     time.Duration
	stats    []device.Stats
	energy   []energy.Measurement
	meterErr error
	placed   *placement // the planner's plan of the batch job and what it learned
}

// record adds one device pass.
func (a *accounting) record(st device.Stats) {
	if st.Device != "" || st.Elements > 0 {
		a.stats = append(a.stats, st)
	}
}

// addElements records an incremental Add: elems elements and bytes read on dev.
func (a *accounting) addElements(dev string, elems, bytes int64) {
	a.stats = append(a.stats, device.Stats{Device: dev, Elements: elems, BytesRead: bytes})
}

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

// meter adds what a window measured to the round's energy.
func (a *accounting) meter(w *meterWindow) {
	ms, err := w.stop()
	if err != nil && a.meterErr == nil {
		a.meterErr = err
	}
	a.energy = energy.Accumulate(a.energy, ms)
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
