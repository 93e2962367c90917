package sysinfo

import (
	"fmt"

	"github.com/klauspost/cpuid/v2"
)

// cpuidFacts is what the cpuid instruction reports: for the whole package the CPU belongs to
// (or whatever a hypervisor makes up), whatever this process may use.
type cpuidFacts struct {
	physical, logical int
	l1d, l1i, l2, l3  int // bytes; -1 or 0: unknown
}

func hostCPUID() cpuidFacts {
	c := cpuid.CPU
	return cpuidFacts{physical: c.PhysicalCores, logical: c.LogicalCores,
		l1d: c.Cache.L1D, l1i: c.Cache.L1I, l2: c.Cache.L2, l3: c.Cache.L3}
}

// cores is cpuid's physical core count when it plausibly describes the n CPUs this process
// may run on: the process may use every logical CPU cpuid counts, and they divide evenly
// into the cores.
func (f cpuidFacts) cores(n int) (int, string) {
	switch {
	case f.physical <= 0 || f.logical <= 0:
		return 0, "cpuid reports no core count"
	case f.logical != n:
		return 0, fmt.Sprintf("cpuid's %d physical / %d logical cores do not describe the %d CPUs this process may run on", f.physical, f.logical, n)
	case f.physical > f.logical || f.logical%f.physical != 0:
		return 0, fmt.Sprintf("cpuid's %d physical / %d logical cores are inconsistent", f.physical, f.logical)
	}
	return f.physical, ""
}

// caches is cpuid's caches of one core, those of plausible size; why lists the others.
func (f cpuidFacts) caches() ([]Cache, string) {
	var cs []Cache
	var bad []string
	for _, c := range []struct {
		level int
		typ   string
		size  int
	}{{1, "Data", f.l1d}, {1, "Instruction", f.l1i}, {2, "Unified", f.l2}, {3, "Unified", f.l3}} {
		cache := Cache{Level: c.level, Type: c.typ, Size: int64(c.size)}
		switch {
		case c.size >= minCacheBytes && c.size <= maxCacheBytes:
			cs = append(cs, cache)
		case c.size != 0 && c.size != -1: // 0 and -1: not reported
			bad = append(bad, fmt.Sprintf("%s %d B", cache.Name(), c.size))
		}
	}
	why := ""
	switch {
	case len(cs) == 0 && len(bad) == 0:
		why = "sysfs has no cache information and cpuid reports none"
	case len(cs) == 0:
		why = fmt.Sprintf("sysfs has no cache information and cpuid's sizes are implausible (%v)", bad)
	case len(bad) > 0:
		why = fmt.Sprintf("caches from cpuid (sysfs has none); implausible sizes left out: %v", bad)
	default:
		why = "caches from cpuid (sysfs has none): sizes of one core's caches, sharing unknown"
	}
	return cs, why
}
