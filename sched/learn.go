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
	l := Learned{EnergyRatio: energyRatio(plan, o.Energy)}
	window := o.window()
	pl.mu.Lock()
	defer pl.mu.Unlock()
	minW, minWhy := pl.minWindow(plan, o.Energy.Provenance)
	l.WindowSeconds, l.MinWindowSeconds = window, minW
	if !(window >= minW) {
		l.Why = fmt.Sprintf("not learned: the run's window (%s) is shorter than the %s a correction needs (%s)", fmtS(window), fmtS(minW), minWhy)
		return l
	}
	ob := &observation{pl: pl, plan: plan, m: o.Energy}
	ob.learnTime(o.DeviceSeconds)
	ob.learnEnergy()
	if len(ob.done) == 0 {
		l.Why = ob.whyNothing()
		return l
	}
	pl.profile.Updated = time.Now()
	pl.changes++
	l.Applied = true
	l.Why = ob.why()
	return l
}

// energyRatio is the measured joules m over the joules plan predicted, or 0 when either is
// not positive.
func energyRatio(plan *Plan, m energy.Measurement) float64 {
	if p := plan.Predicted.Joules; p > 0 && m.Joules > 0 {
		return m.Joules / p
	}
	return 0
}

// window is how long the outcome's window lasted.
func (o Outcome) window() float64 {
	// The window is the meters' when they measured one; without it, the longest busy time.
	window := o.Energy.Seconds
	if !(window > 0) {
		window = 0
		for _, s := range o.DeviceSeconds {
			window = math.Max(window, s)
		}
	}
	return window
}

// observation is the state of one Observe, past the window's check: the plan and what the
// meters measured, and what was learned from them and what not.
type observation struct {
	pl        *Planner
	plan      *Plan
	m         energy.Measurement // what the meters measured over the window
	timed     map[string]bool    // the devices whose time correction moved
	short     []string           // the devices busy too briefly to teach time
	energyWhy string             // why the joules teach nothing; empty when they do
	done      []string           // the corrections of each share that learned
}

// learnTime moves the time correction of each device that ran a whole share for long enough
// towards its busy seconds over the predicted ones.
func (ob *observation) learnTime(busy map[string]float64) {
	pl := ob.pl
	ob.timed = map[string]bool{}
	for _, sh := range ob.plan.Shares {
		op := pl.opOf(sh)
		secs, ok := busy[sh.Device]
		if op == nil || !ok || sh.Rate < 0.999 || sh.rawBusy <= 0 {
			continue
		}
		if least := math.Max(minLearnSeconds, minLearnCalls*op.LatencySec); secs < least {
			ob.short = append(ob.short, fmt.Sprintf("%s was busy %s, less than %s", sh.Device, fmtS(secs), fmtS(least)))
			continue
		}
		t := clamp(secs/sh.rawBusy, 0.05, 20)
		op.TimeCorrection = clamp(op.TimeCorrection+pl.alpha*(t-op.TimeCorrection), 0.1, 10)
		ob.timed[sh.Device] = true
	}
}

// learnEnergy moves the energy correction of each share towards the measured dynamic joules
// over the predicted ones, weighted by the share's part of them, when the joules teach; and it
// counts the observation of each share that learned joules or time.
func (ob *observation) learnEnergy() {
	pl := ob.pl
	rawDyn, measuredDyn := ob.dynamicJoules()
	ob.energyWhy = ob.whyNoJoules(rawDyn, measuredDyn)
	for _, sh := range ob.plan.Shares {
		op := pl.opOf(sh)
		if op == nil || (ob.energyWhy != "" && !ob.timed[sh.Device]) {
			continue
		}
		if ob.energyWhy == "" {
			target := clamp(measuredDyn/rawDyn, 0.05, 20)
			w := pl.alpha * sh.rawDyn / rawDyn
			op.EnergyCorrection = clamp(op.EnergyCorrection+w*(target-op.EnergyCorrection), 0.1, 10)
		}
		op.Observations++
		ob.done = append(ob.done, fmt.Sprintf("%s %s: energy ×%.3g, time ×%.3g", sh.Device, sh.key, op.EnergyCorrection, op.TimeCorrection))
	}
}

// dynamicJoules is the joules above idle of the run: as the plan predicted them before the
// energy correction, and as measured over the profile's idle power.
func (ob *observation) dynamicJoules() (raw, measured float64) {
	plan, m := ob.plan, ob.m
	for _, sh := range plan.Shares {
		raw += sh.rawDyn
	}
	idle := plan.Predicted.IdleJoules / math.Max(plan.Predicted.Seconds, 1e-12)
	return raw, m.Joules - idle*m.Seconds
}

// whyNoJoules says why the run's joules teach nothing, or "" when they do.
func (ob *observation) whyNoJoules(rawDyn, measuredDyn float64) string {
	plan, m := ob.plan, ob.m
	switch {
	case m.Seconds <= 0 || m.Joules <= 0:
		return "no energy was measured"
	case m.Resets > 0:
		return "a meter reset during the run"
	case plan.EnergySource != "" && string(m.Source) != plan.EnergySource:
		return fmt.Sprintf("the profile was measured with %s and this run with %s: recalibrate", plan.EnergySource, m.Source)
	case measuredDyn <= 0 || rawDyn <= 0:
		return "the run spent no energy above the profile's idle power"
	}
	return ""
}

// skipped says what was not learned, and why.
func (ob *observation) skipped() []string {
	var skipped []string
	if ob.energyWhy != "" {
		skipped = append(skipped, "joules not learned: "+ob.energyWhy)
	}
	if len(ob.short) > 0 {
		skipped = append(skipped, "time not learned: "+strings.Join(ob.short, ", "))
	}
	return skipped
}

// whyNothing says why nothing was learned.
func (ob *observation) whyNothing() string {
	skipped := ob.skipped()
	if len(skipped) == 0 {
		skipped = append(skipped, "the plan's devices are no longer in the profile")
	}
	return strings.Join(skipped, "; ")
}

// why says what the corrections are now, and what was not learned.
func (ob *observation) why() string {
	why := "corrections now " + strings.Join(ob.done, "; ")
	if skipped := ob.skipped(); len(skipped) > 0 {
		why += " (" + strings.Join(skipped, "; ") + ")"
	}
	return why
}

func (pl *Planner) opOf(sh Share) *OpProfile {
	d := pl.profile.Device(sh.Device)
	if d == nil {
		return nil
	}
	return d.Ops[sh.key]
}

func clamp(v, lo, hi float64) float64 { return math.Min(hi, math.Max(lo, v)) }
