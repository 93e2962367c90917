//go:build !linux

package sysinfo

import "runtime"

// allowedCPUs counts the CPUs (runtime.NumCPU): only Linux gives their numbers here.
func allowedCPUs() ([]int, string, []string) {
	cpus := make([]int, runtime.NumCPU())
	for i := range cpus {
		cpus[i] = i
	}
	return cpus, "runtime.NumCPU", nil
}
