package sched_test

import (
	"errors"
	"fmt"
	"time"

	"github.com/wattagg/wattagg/sched"
	"github.com/wattagg/wattagg/tensor"
)

// A CPU that reads host memory at 20 GB/s for 3 nJ a byte, and a GPU behind a PCIe link whose
// copies cost 20 nJ a byte: FedAvg of 16 clients stays on the CPU, unless a deadline needs the
// GPU's help.
func ExamplePlanner() {
	sum := func(bps, jpb float64) map[string]*sched.OpProfile {
		return map[string]*sched.OpProfile{sched.OpKey(sched.WeightedSum, tensor.F32): {
			Op: sched.WeightedSum, DType: tensor.F32, BytesPerSec: bps, FLOPsPerSec: 1e12, JoulesPerByte: jpb, JoulesPerFLOP: 1e-10}}
	}
	profile := &sched.Profile{Version: sched.ProfileVersion, Devices: []*sched.DeviceProfile{
		{Name: "cpu", Kind: "cpu", IdleWatts: 30, Ops: sum(20e9, 3e-9)},
		{Name: "cuda:0", Kind: "gpu", IdleWatts: 60, Ops: sum(2e12, 1e-10), Link: &sched.Link{BytesPerSec: 25e9, JoulesPerByte: 2e-8}},
	}}
	job := sched.Request{Op: sched.WeightedSum, Workload: sched.Workload{Clients: 16, Elements: 25_000_000, In: tensor.F32, Out: tensor.F32}}
	for _, opts := range [][]sched.Option{nil, {sched.WithDeadline(50 * time.Millisecond)}} {
		planner, err := sched.NewPlanner(profile, opts...)
		if err != nil {
			panic(err)
		}
		plan, err := planner.Plan(job)
		if err != nil {
			panic(err)
		}
		fmt.Println(plan.Why)
	}
	// Output:
	// min-energy: cpu alone, 12.8 J in 85 ms; vs cuda:0 alone 40.3 J in 68 ms
	// min-energy: cpu 59% + cuda:0 41%, 21.6 J in 50 ms; vs cpu alone 12.8 J in 85 ms (infeasible), cuda:0 alone 40.3 J in 68 ms (infeasible)
}

// Discover, Calibrate and NewPlanner take the same Option type; an option given to a function
// it does not apply to is refused, by name, rather than ignored.
func ExampleOption() {
	profile := &sched.Profile{Version: sched.ProfileVersion}
	_, err := sched.NewPlanner(profile, sched.WithPolicy(sched.MinTime), sched.WithQuick())
	fmt.Println(err)
	fmt.Println(errors.Is(err, sched.ErrOption))
	// Output:
	// invalid scheduler option: WithQuick is an option of Calibrate; NewPlanner does not take it
	// true
}
