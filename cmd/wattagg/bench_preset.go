package main

import (
	"os"

	"github.com/wattagg/wattagg/bench"
)

// envBenchTiny, set to 1, shrinks every size of `bench all` and of the sweeps to a few
// thousand parameters. It exists for tests, which must finish in seconds and time nothing;
// the reports it makes say so, since their figures measure nothing of interest.
const envBenchTiny = "WATTAGG_BENCH_TINY"

// benchPreset is the sizes of every suite in one run of `bench all`.
type benchPreset struct {
	name                                    string
	floorMiB, writeMiB                      int
	meanClients, meanParams, meanRuns       int
	sweep                                   bench.SweepSizes
	meanSweepRuns, robustSweepRuns          int
	e2eClients, e2eParams, e2eRuns          int
	streamClients, streamParams             int
	robustClients, robustParams, robustRuns int
	energyClients, energyParams, energyRuns int
}

// The full run took 4-6 minutes on 2 busy cores, the quick one 75-100 s (40 s of CPU). The main rows
// keep the README's configurations (32 × 4M f32); the sweeps are what the plots need: 8..128
// clients, and 1M..64M parameters at 8 clients (2 GiB of f32 at the largest point of each).
var (
	fullPreset = benchPreset{
		name:     "full",
		floorMiB: 512, writeMiB: 256,
		meanClients: 32, meanParams: 4 << 20, meanRuns: 7,
		sweep: bench.SweepSizes{Clients: []int{8, 16, 32, 64, 128}, ClientParams: 4 << 20,
			Params: []int{1 << 20, 2 << 20, 4 << 20, 8 << 20, 16 << 20, 32 << 20, 64 << 20}, ParamClients: 8},
		meanSweepRuns: 5, robustSweepRuns: 3,
		e2eClients: 32, e2eParams: 4 << 20, e2eRuns: 7,
		streamClients: 16, streamParams: 25_000_000,
		robustClients: 32, robustParams: 4 << 20, robustRuns: 5,
		energyClients: 16, energyParams: 4 << 20, energyRuns: 10,
	}
	quickPreset = benchPreset{
		name:     "quick",
		floorMiB: 256, writeMiB: 64,
		meanClients: 32, meanParams: 4 << 20, meanRuns: 5,
		sweep: bench.SweepSizes{Clients: []int{8, 16, 32, 64, 128}, ClientParams: 1 << 20,
			Params: []int{1 << 20, 4 << 20, 16 << 20}, ParamClients: 8},
		meanSweepRuns: 3, robustSweepRuns: 1,
		e2eClients: 16, e2eParams: 4 << 20, e2eRuns: 3,
		streamClients: 8, streamParams: 8_000_000,
		robustClients: 32, robustParams: 4 << 20, robustRuns: 3,
		energyClients: 16, energyParams: 4 << 20, energyRuns: 5,
	}
	tinyPreset = benchPreset{
		name:     "tiny (" + envBenchTiny + "=1: test sizes, the figures mean nothing)",
		floorMiB: 4, writeMiB: 1,
		meanClients: 3, meanParams: 4096, meanRuns: 1,
		sweep:         bench.SweepSizes{Clients: []int{3, 4, 6}, ClientParams: 4096, Params: []int{1024, 4096}, ParamClients: 3},
		meanSweepRuns: 1, robustSweepRuns: 1,
		e2eClients: 3, e2eParams: 4096, e2eRuns: 1,
		streamClients: 3, streamParams: 100_000,
		robustClients: 4, robustParams: 4096, robustRuns: 1,
		energyClients: 2, energyParams: 65536, energyRuns: 2,
	}
)

// benchTiny reports whether the tests asked for tiny sizes.
func benchTiny() bool { return os.Getenv(envBenchTiny) == "1" }

// presetFor returns the sizes of a quick or full run, or the tiny ones under test.
func presetFor(quick bool) benchPreset {
	switch {
	case benchTiny():
		return tinyPreset
	case quick:
		return quickPreset
	}
	return fullPreset
}
