package sched

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/energy"
	"github.com/wattagg/wattagg/tensor"
)

// optionCases is every option of the package, with valid values, and the functions that take
// it, written out here rather than read from the code under test.
func optionCases(t *testing.T) []struct {
	name  string
	opt   Option
	takes []string
} {
	cpu := must(device.NewCPU())(t)
	t.Cleanup(func() { cpu.Close() })
	m := &fixedMeter{name: "other", t0: time.Now()}
	return []struct {
		name  string
		opt   Option
		takes []string
	}{
		{"WithCPU", WithCPU(cpu), []string{"Discover"}},
		{"WithEnergyOptions", WithEnergyOptions(energy.WithoutNVML()), []string{"Discover"}},
		{"WithoutGPUs", WithoutGPUs(), []string{"Discover"}},
		{"WithQuick", WithQuick(), []string{"Calibrate"}},
		{"WithWindow", WithWindow(time.Second), []string{"Calibrate"}},
		{"WithIdleWindow", WithIdleWindow(time.Second), []string{"Calibrate"}},
		{"WithWorkloadBytes", WithWorkloadBytes(1 << 20), []string{"Calibrate"}},
		{"WithOps", WithOps(WeightedSum), []string{"Calibrate"}},
		{"WithDTypes", WithDTypes(tensor.F32), []string{"Calibrate"}},
		{"WithProgress", WithProgress(func(int, int, string) {}), []string{"Calibrate"}},
		{"WithOtherMeters", WithOtherMeters(m), []string{"Calibrate"}},
		{"WithRegistry", WithRegistry(testRegistry(t)), []string{"Calibrate", "NewPlanner"}},
		{"WithPolicy", WithPolicy(MinTime), []string{"NewPlanner"}},
		{"WithDeadline", WithDeadline(time.Second), []string{"NewPlanner"}},
		{"WithPowerCap", WithPowerCap(100), []string{"NewPlanner"}},
		{"WithOnly", WithOnly("cpu"), []string{"NewPlanner"}},
		{"WithLearningRate", WithLearningRate(0.5), []string{"NewPlanner"}},
		{"WithoutLearning", WithoutLearning(), []string{"NewPlanner"}},
	}
}

// TestOptionGivenWhereItDoesNotApply gives every option to each of Discover, Calibrate and
// NewPlanner that does not take it: each refuses it with ErrOption, naming the option and
// the functions it belongs to, before doing any work.
func TestOptionGivenWhereItDoesNotApply(t *testing.T) {
	call := map[string]func(Option) error{
		"Discover": func(o Option) error {
			m, err := Discover(o)
			if err == nil {
				m.Close()
			}
			return err
		},
		"Calibrate": func(o Option) error {
			_, err := Calibrate(context.Background(), nil, o)
			return err
		},
		"NewPlanner": func(o Option) error {
			_, err := NewPlanner(fedavgProfile(), o)
			return err
		},
	}
	refused := 0
	for _, c := range optionCases(t) {
		for _, fn := range []string{"Discover", "Calibrate", "NewPlanner"} {
			if slices.Contains(c.takes, fn) {
				continue
			}
			err := call[fn](c.opt)
			want := "invalid scheduler option: " + c.name + " is an option of " + strings.Join(c.takes, " and ") + "; " + fn + " does not take it"
			if !errors.Is(err, ErrOption) || err.Error() != want {
				t.Errorf("%s(%s): %v, want %q", fn, c.name, err, want)
			}
			refused++
		}
	}
	if refused != 2*17+1 {
		t.Errorf("%d refusals checked, want 35", refused)
	}
}

// TestOptionAppliesWhereDocumented applies every option, with a valid value, for each function
// that takes it: none is refused there.
func TestOptionAppliesWhereDocumented(t *testing.T) {
	fns := map[string]consumer{"Discover": forDiscover, "Calibrate": forCalibrate, "NewPlanner": forNewPlanner}
	for _, c := range optionCases(t) {
		for _, fn := range c.takes {
			if _, err := applyOptions(fns[fn], []Option{c.opt}); err != nil {
				t.Errorf("%s for %s: %v", c.name, fn, err)
			}
		}
	}
	for name, fn := range fns {
		if _, err := applyOptions(fn, []Option{nil}); !errors.Is(err, ErrOption) || err.Error() != "invalid scheduler option: nil option given to "+name {
			t.Errorf("nil option for %s: %v", name, err)
		}
	}
}

// TestRegistryReachesCalibrateAndPlanner checks that the one WithRegistry serves both: a
// registry without WeightedSum makes Calibrate's lookup and the planner's fail.
func TestRegistryReachesCalibrateAndPlanner(t *testing.T) {
	empty := NewRegistry()
	cpu := must(device.NewCPU())(t)
	defer cpu.Close()
	m := &fixedMeter{name: "fixed", t0: time.Now()}
	_, err := Calibrate(context.Background(), []Target{{Device: cpu, Meter: m}}, WithRegistry(empty), WithOps(WeightedSum))
	if !errors.Is(err, ErrUnknownOp) {
		t.Errorf("Calibrate with an empty registry: %v, want ErrUnknownOp", err)
	}
	pl := must(NewPlanner(fedavgProfile(), WithRegistry(empty)))(t)
	if _, err := pl.Plan(fedavg(4, 100)); !errors.Is(err, ErrUnknownOp) {
		t.Errorf("Plan with an empty registry: %v, want ErrUnknownOp", err)
	}
}
