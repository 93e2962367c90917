//go:build linux

package energy_test

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/wattagg/wattagg/energy"
)

// A two-socket machine's powercap tree (here a fake one): the packages and their dram zones
// are summed, the cores inside the packages are not.
func ExampleNewRAPL() {
	root, _ := os.MkdirTemp("", "sysfs")
	defer os.RemoveAll(root)
	zone := func(dir, name string, uj int) {
		d := filepath.Join(root, "class", "powercap", dir)
		os.MkdirAll(d, 0o755)
		os.WriteFile(filepath.Join(d, "name"), []byte(name+"\n"), 0o644)
		os.WriteFile(filepath.Join(d, "max_energy_range_uj"), []byte("262143328850\n"), 0o644)
		os.WriteFile(filepath.Join(d, "energy_uj"), []byte(fmt.Sprintln(uj)), 0o644)
	}
	zone("intel-rapl:0", "package-0", 1_000_000)
	zone("intel-rapl:0:0", "core", 1_000_000)
	zone("intel-rapl:0:1", "dram", 1_000_000)
	zone("intel-rapl:1", "package-1", 1_000_000)

	m, err := energy.NewRAPL(energy.WithSysfsRoot(root))
	if err != nil {
		panic(err)
	}
	defer m.Close()
	w, _ := energy.Start(m)
	zone("intel-rapl:0", "package-0", 1_600_000) // +0.6 J
	zone("intel-rapl:0:1", "dram", 1_100_000)    // +0.1 J
	zone("intel-rapl:1", "package-1", 1_300_000) // +0.3 J
	ms, _ := w.Stop()
	fmt.Printf("%.1f J from %s over %v\n", ms[0].Joules, ms[0].Source, ms[0].Domains)
	// Output: 1.0 J from rapl over [dram-0 package-0 package-1]
}
