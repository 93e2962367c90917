// Package sysinfo reports the processor as the operating system gives it to this process: the
// logical CPUs it may run on (sched_getaffinity), the physical cores they belong to and the
// caches that serve them (sysfs /sys/devices/system/cpu). cpuid is a fallback only, taken where
// sysfs says nothing and only when its figures are plausible for the CPUs this process has:
// under a hypervisor cpuid describes whatever the host passes through (a 2-vCPU VM has reported
// 254 cores and an L3 of -1 bytes), not the process's share of the machine.
//
// What cannot be known is left out and said so in Host.Notes, never guessed.
package sysinfo

import (
	"fmt"
	"slices"
	"sync"
)

// Host is the processor as this process gets it.
type Host struct {
	// CPUs are the logical CPUs this process may run on, ascending.
	CPUs []int `json:"cpus"`
	// CPUsFrom says where CPUs come from: "sched_getaffinity", or "runtime.NumCPU" where the
	// set cannot be read (the numbers 0..n-1 then only count the CPUs).
	CPUsFrom string `json:"cpus_from"`
	// Cores is the physical cores that CPUs belong to (two hyperthreads of a core count once);
	// 0 when unknown.
	Cores     int    `json:"cores,omitempty"`
	CoresFrom string `json:"cores_from,omitempty"` // "sysfs" or "cpuid"
	// Caches are the caches serving CPUs, by level and type.
	Caches     []Cache `json:"caches,omitempty"`
	CachesFrom string  `json:"caches_from,omitempty"` // "sysfs" or "cpuid"
	// Notes say what is unknown and why.
	Notes []string `json:"notes,omitempty"`
}

// Cache is one kind of cache: the instances of one level, type and size that serve the
// process's CPUs.
type Cache struct {
	Level int    `json:"level"`
	Type  string `json:"type"`       // "Data", "Instruction" or "Unified"
	Size  int64  `json:"size_bytes"` // of one instance
	// Instances is how many serve the process's CPUs (0: unknown, from cpuid).
	Instances int `json:"instances,omitempty"`
	// SharedBy is how many of the machine's CPUs each instance serves, the process's or not
	// (0: unknown).
	SharedBy int `json:"shared_by,omitempty"`
}

// Name is "L1d", "L1i", "L2" or "L3" (a unified cache has no suffix).
func (c Cache) Name() string {
	switch c.Type {
	case "Data":
		return fmt.Sprintf("L%dd", c.Level)
	case "Instruction":
		return fmt.Sprintf("L%di", c.Level)
	}
	return fmt.Sprintf("L%d", c.Level)
}

// holdsData is whether the cache holds data (not instructions only).
func (c Cache) holdsData() bool { return c.Type != "Instruction" }

// CacheSize is the size of the smallest data or unified cache instance of level serving the
// process's CPUs (0: unknown): what one core can count on.
func (h Host) CacheSize(level int) int64 {
	var s int64
	for _, c := range h.Caches {
		if c.Level == level && c.holdsData() && (s == 0 || c.Size < s) {
			s = c.Size
		}
	}
	return s
}

// TotalCache is the data or unified cache of level serving the process's CPUs, all instances
// together (0: unknown); where the number of instances is unknown, one is counted.
func (h Host) TotalCache(level int) int64 {
	var s int64
	for _, c := range h.Caches {
		if c.Level == level && c.holdsData() {
			s += c.Size * int64(max(c.Instances, 1))
		}
	}
	return s
}

// Option configures Read.
type Option func(*config)

type config struct {
	sysfs string
	cpus  []int
	cpuid *cpuidFacts
}

// WithSysfsRoot reads dir/devices/system/cpu instead of /sys/devices/system/cpu.
func WithSysfsRoot(dir string) Option { return func(c *config) { c.sysfs = dir } }

// WithCPUs describes the CPUs given instead of those this process may run on.
func WithCPUs(cpus ...int) Option { return func(c *config) { c.cpus = slices.Clone(cpus) } }

// withCPUID replaces what cpuid reports (tests).
func withCPUID(f cpuidFacts) Option { return func(c *config) { c.cpuid = &f } }

// Read describes the processor as this process gets it. It does not fail: what it cannot read
// is left out and noted. Without options the sysfs figures are read once per set of CPUs the
// process may run on (a machine of 256 CPUs has some 5000 cache files), so Read is cheap to
// call again.
func Read(opts ...Option) Host {
	c := &config{sysfs: "/sys"}
	for _, o := range opts {
		o(c)
	}
	var h Host
	if c.cpus != nil {
		h.CPUs, h.CPUsFrom = slices.Clone(c.cpus), "option"
	} else {
		h.CPUs, h.CPUsFrom, h.Notes = allowedCPUs()
	}
	slices.Sort(h.CPUs)
	h.CPUs = slices.Compact(h.CPUs)
	if len(opts) > 0 {
		return describe(c, h)
	}
	key := h.CPUsFrom + " " + FormatCPUList(h.CPUs)
	memo.Lock()
	defer memo.Unlock()
	if memo.key != key {
		memo.key, memo.host = key, describe(c, h)
	}
	return memo.host.clone()
}

// memo is the last Read without options.
var memo struct {
	sync.Mutex
	key  string
	host Host
}

func (h Host) clone() Host {
	h.CPUs, h.Caches, h.Notes = slices.Clone(h.CPUs), slices.Clone(h.Caches), slices.Clone(h.Notes)
	return h
}

// describe fills in the cores and caches of h.CPUs.
func describe(c *config, h Host) Host {
	facts := hostCPUID()
	if c.cpuid != nil {
		facts = *c.cpuid
	}
	cpuDir := c.sysfs + "/devices/system/cpu"
	n, sysWhy := sysfsCores(cpuDir, h.CPUs)
	if n > 0 {
		h.Cores, h.CoresFrom = n, "sysfs"
	} else if n, why := facts.cores(len(h.CPUs)); n > 0 {
		h.Cores, h.CoresFrom = n, "cpuid"
		h.Notes = append(h.Notes, "physical cores from cpuid: "+sysWhy)
	} else {
		h.Notes = append(h.Notes, "physical cores unknown: "+sysWhy+"; "+why)
	}
	var notes []string
	h.Caches, notes = sysfsCaches(cpuDir, h.CPUs)
	h.Notes = append(h.Notes, notes...)
	if len(h.Caches) > 0 {
		h.CachesFrom = "sysfs"
	} else if cs, why := facts.caches(); len(cs) > 0 {
		h.Caches, h.CachesFrom = cs, "cpuid"
		if why != "" {
			h.Notes = append(h.Notes, why)
		}
	} else {
		h.Notes = append(h.Notes, "caches unknown: "+why)
	}
	return h
}
