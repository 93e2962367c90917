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
	// WindowSeconds is how long the outcome's window lasted, and MinWindowSeconds the shortest
	// window this plan's corrections are learned from (see Planner.MinWindow).
	WindowSeconds    float64 `json:"window_s,omitempty"`
	MinWindowSeconds float64 `json:"min_window_s,omitempty"`
}

// Thresholds of learning. A shorter window measures the meter's steps, the OS scheduler and the
// fixed cost of calls rather than a device's rates, and corrections learned from such windows
// run to their caps: the CPU's time correction reached ×10 from rounds of a few milliseconds.
const (
	// minLearnUpdates is how many updates of its coarsest meter a window must span: the joules
	// are then within ±10% (energy.Between notes shorter windows).
	minLearnUpdates = 10
	// minLearnCalls is how many times a device's fixed call cost a window, and the device's
	// busy time, must last: the fixed cost, the least certain term of the model, is then at
	// most 1% of what is learned.
	minLearnCalls = 100
	// minLearnSeconds is the floor whatever the meter and the device: below a few OS time
	// slices a busy time measures the scheduler of a shared machine.
	minLearnSeconds = 0.010
)

// MinWindow is the shortest window an outcome of plan, measured by meters of provenance m, is
// learned from, and what sets it: minLearnUpdates updates of the coarsest meter,
// minLearnCalls times the fixed call cost of the slowest-to-start device of the plan, or the
// floor of minLearnSeconds.
func (pl *Planner) MinWindow(plan *Plan, m energy.Provenance) (time.Duration, string) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	s, why := pl.minWindow(plan, m)
	return time.Duration(s * float64(time.Second)), why
}

func (pl *Planner) minWindow(plan *Plan, m energy.Provenance) (float64, string) {
	best, why := minLearnSeconds, fmt.Sprintf("the floor of %s (OS time slices)", fmtS(minLearnSeconds))
	if g := m.Granularity; minLearnUpdates*g > best {
		best = minLearnUpdates * g
		meter := "the " + m.Meter + " meter"
		switch {
		case m.Meter == "":
			meter = "the " + string(m.Source) + " meter"
		case strings.Contains(m.Meter, "+"):
			meter = "the coarsest of the meters " + m.Meter
		}
		why = fmt.Sprintf("%d updates of %s, which advances every %s", minLearnUpdates, meter, fmtS(g))
	}
	if plan != nil {
		for _, sh := range plan.Shares {
			op := pl.opOf(sh)
			if op == nil {
				continue
			}
			if l := minLearnCalls * op.LatencySec; l > best {
				best = l
				why = fmt.Sprintf("%d times the %s fixed cost of a %s call on %s", minLearnCalls, fmtS(op.LatencySec), sh.key, sh.Device)
			}
		}
	}
	return best, why
}

// Observe compares what an execution of plan measured with what the plan predicted and moves
// the profile's correction factors of the devices that ran it towards the measured ratios
// (exponentially weighted, by the learning rate): time from each device's busy seconds, joules
// from the meters.
//
// An outcome whose window is shorter than MinWindow is refused whole: the profile is left
// exactly as it was and Learned says why, so a caller that saves only what was Applied writes
// nothing. A device busy for less than its own minimum (a small share of a split) teaches no
// time; windows with counter resets, or measured with another source than the profile's,
// teach no joules.
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
	// The window is the meters' when they measured one; without it, the longest busy time.
	window := m.Seconds
	if !(window > 0) {
		window = 0
		for _, s := range o.DeviceSeconds {
			window = math.Max(window, s)
		}
	}
	pl.mu.Lock()
	defer pl.mu.Unlock()
	minW, minWhy := pl.minWindow(plan, m.Provenance)
	l.WindowSeconds, l.MinWindowSeconds = window, minW
	if !(window >= minW) {
		l.Why = fmt.Sprintf("not learned: the run's window (%s) is shorter than the %s a correction needs (%s)", fmtS(window), fmtS(minW), minWhy)
		return l
	}
	timed := map[string]bool{}
	var short []string
	for _, sh := range plan.Shares {
		op := pl.opOf(sh)
		secs, ok := o.DeviceSeconds[sh.Device]
		if op == nil || !ok || sh.Rate < 0.999 || sh.rawBusy <= 0 {
			continue
		}
		if least := math.Max(minLearnSeconds, minLearnCalls*op.LatencySec); secs < least {
			short = append(short, fmt.Sprintf("%s was busy %s, less than %s", sh.Device, fmtS(secs), fmtS(least)))
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
	var done []string
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
	var skipped []string
	if energyWhy != "" {
		skipped = append(skipped, "joules not learned: "+energyWhy)
	}
	if len(short) > 0 {
		skipped = append(skipped, "time not learned: "+strings.Join(short, ", "))
	}
	if len(done) == 0 {
		if len(skipped) == 0 {
			skipped = append(skipped, "the plan's devices are no longer in the profile")
		}
		l.Why = strings.Join(skipped, "; ")
		return l
	}
	pl.profile.Updated = time.Now()
	pl.changes++
	l.Applied = true
	l.Why = "corrections now " + strings.Join(done, "; ")
	if len(skipped) > 0 {
		l.Why += " (" + strings.Join(skipped, "; ") + ")"
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
