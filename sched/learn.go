package sched

import (
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/wattagg/wattagg/energy"
)

// Outcome is what an execution of a plan measured.
type Outcome struct {
	// Energy is the total of the machine's meters over the execution (energy.Total).
	Energy energy.Measurement
	// DeviceSeconds is each device's busy time (device.Stats.Seconds).
	DeviceSeconds map[string]float64
}

// Learned says whether an outcome corrected the profile, and why not when it did not.
type Learned struct {
	Applied bool   `json:"applied"`
	Why     string `json:"why"`
	// EnergyRatio is the measured joules over the predicted joules.
	EnergyRatio float64 `json:"energy_ratio,omitempty"`
}

// minLearnGranules is how many meter updates a window must span for its joules to be
// learned from (with the 10 ms ticks of the estimate: 50 ms, ±20%; the exponential weighting
// averages the rest).
const minLearnGranules = 5

// Observe compares what an execution of plan measured with what the plan predicted and moves
// the profile's correction factors of the devices that ran it towards the measured ratios
// (exponentially weighted, by the learning rate): time from each device's busy seconds, joules
// from the meters. Joules are not learned from windows too short for the meter, windows with
// counter resets, or measurements from another source than the profile's.
func (pl *Planner) Observe(plan *Plan, o Outcome) Learned {
	if plan == nil || len(plan.Shares) == 0 || plan.Elements == 0 {
		return Learned{Why: "nothing ran"}
	}
	if pl.frozen {
		return Learned{Why: "learning is off (WithoutLearning)"}
	}
	m := o.Energy
	l := Learned{}
	if p := plan.Predicted.Joules; p > 0 && m.Joules > 0 {
		l.EnergyRatio = m.Joules / p
	}
	pl.mu.Lock()
	defer pl.mu.Unlock()
	var done []string
	timed := map[string]bool{}
	for _, sh := range plan.Shares {
		op := pl.opOf(sh)
		secs, ok := o.DeviceSeconds[sh.Device]
		if op == nil || !ok || sh.Rate < 0.999 || secs < 1e-3 || sh.rawBusy <= 0 {
			continue
		}
		t := clamp(secs/sh.rawBusy, 0.05, 20)
		op.TimeCorrection = clamp(op.TimeCorrection+pl.alpha*(t-op.TimeCorrection), 0.1, 10)
		timed[sh.Device] = true
	}
	energyWhy := ""
	switch {
	case m.Seconds <= 0 || m.Joules <= 0:
		energyWhy = "no energy was measured"
	case m.Resets > 0:
		energyWhy = "a meter reset during the run"
	case m.Granularity > 0 && m.Seconds < minLearnGranules*m.Granularity:
		energyWhy = fmt.Sprintf("the run (%s) is shorter than %d updates of the meter (%s each)", fmtS(m.Seconds), minLearnGranules, fmtS(m.Granularity))
	case plan.EnergySource != "" && string(m.Source) != plan.EnergySource:
		energyWhy = fmt.Sprintf("the profile was measured with %s and this run with %s: recalibrate", plan.EnergySource, m.Source)
	}
	var rawDyn float64
	for _, sh := range plan.Shares {
		rawDyn += sh.rawDyn
	}
	idle := plan.Predicted.IdleJoules / math.Max(plan.Predicted.Seconds, 1e-12)
	measuredDyn := m.Joules - idle*m.Seconds
	if energyWhy == "" && (measuredDyn <= 0 || rawDyn <= 0) {
		energyWhy = "the run spent no energy above the profile's idle power"
	}
	for _, sh := range plan.Shares {
		op := pl.opOf(sh)
		if op == nil || (energyWhy != "" && !timed[sh.Device]) {
			continue
		}
		if energyWhy == "" {
			target := clamp(measuredDyn/rawDyn, 0.05, 20)
			w := pl.alpha * sh.rawDyn / rawDyn
			op.EnergyCorrection = clamp(op.EnergyCorrection+w*(target-op.EnergyCorrection), 0.1, 10)
		}
		op.Observations++
		done = append(done, fmt.Sprintf("%s %s: energy ×%.3g, time ×%.3g", sh.Device, sh.key, op.EnergyCorrection, op.TimeCorrection))
	}
	if len(done) == 0 {
		l.Why = energyWhy
		if l.Why == "" {
			l.Why = "the plan's devices are no longer in the profile"
		}
		return l
	}
	pl.profile.Updated = time.Now()
	l.Applied = true
	l.Why = "corrections now " + strings.Join(done, "; ")
	if energyWhy != "" {
		l.Why += " (joules not learned: " + energyWhy + ")"
	}
	return l
}

func (pl *Planner) opOf(sh Share) *OpProfile {
	d := pl.profile.Device(sh.Device)
	if d == nil {
		return nil
	}
	return d.Ops[sh.key]
}

func clamp(v, lo, hi float64) float64 { return math.Min(hi, math.Max(lo, v)) }
