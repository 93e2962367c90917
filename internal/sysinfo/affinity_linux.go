//go:build linux

package sysinfo

import (
	"errors"
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// allowedCPUs is the CPUs this thread may run on (threads inherit the process's set), read
// with sched_getaffinity; the set grows until the kernel's mask fits (EINVAL: too small).
func allowedCPUs() ([]int, string, []string) {
	for n := 1024; n <= 1<<20; n *= 4 {
		set := unix.NewCPUSet(n)
		err := unix.SchedGetaffinityDynamic(0, set)
		if errors.Is(err, unix.EINVAL) {
			continue
		}
		if err != nil {
			return countCPUs(), "runtime.NumCPU", []string{fmt.Sprintf("sched_getaffinity: %v: the CPUs are only counted", err)}
		}
		var cpus []int
		for c := range n {
			if set.IsSet(c) {
				cpus = append(cpus, c)
			}
		}
		return cpus, "sched_getaffinity", nil
	}
	return countCPUs(), "runtime.NumCPU", []string{"sched_getaffinity: the CPU mask is larger than 1Mi CPUs: the CPUs are only counted"}
}

func countCPUs() []int {
	cpus := make([]int, runtime.NumCPU())
	for i := range cpus {
		cpus[i] = i
	}
	return cpus
}
