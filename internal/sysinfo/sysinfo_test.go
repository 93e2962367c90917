package sysinfo

import (
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
)

const (
	kib = 1 << 10
	mib = 1 << 20
)

// noCPUID is a cpuid that reports nothing, so that only sysfs speaks.
var noCPUID = cpuidFacts{l1d: -1, l1i: -1, l2: -1, l3: -1}

func read(tree string, facts cpuidFacts, cpus ...int) Host {
	return Read(WithSysfsRoot("testdata/"+tree), WithCPUs(cpus...), withCPUID(facts))
}

func TestReadSysfsTrees(t *testing.T) {
	for _, tc := range []struct {
		name  string
		tree  string
		cpus  []int
		want  Host
		l2    int64 // CacheSize(2)
		l3sum int64 // TotalCache(3)
	}{
		{"the 2-vCPU VM", "vm2", []int{0, 1}, Host{Cores: 2, CoresFrom: "sysfs", CachesFrom: "sysfs", Caches: []Cache{
			{1, "Data", 32 * kib, 2, 1}, {1, "Instruction", 32 * kib, 2, 1}, {2, "Unified", mib, 2, 1}, {3, "Unified", 32 * mib, 1, 2}}}, mib, 32 * mib},
		{"one CPU of the VM", "vm2", []int{1}, Host{Cores: 1, CoresFrom: "sysfs", CachesFrom: "sysfs", Caches: []Cache{
			{1, "Data", 32 * kib, 1, 1}, {1, "Instruction", 32 * kib, 1, 1}, {2, "Unified", mib, 1, 1}, {3, "Unified", 32 * mib, 1, 2}}}, mib, 32 * mib},
		{"4 cores with SMT, two L3s", "smt8", []int{0, 1, 2, 3, 4, 5, 6, 7}, Host{Cores: 4, CoresFrom: "sysfs", CachesFrom: "sysfs", Caches: []Cache{
			{1, "Data", 48 * kib, 4, 2}, {1, "Instruction", 32 * kib, 4, 2}, {2, "Unified", 2 * mib, 4, 2}, {3, "Unified", 16 * mib, 2, 4}}}, 2 * mib, 32 * mib},
		{"both threads of one core", "smt8", []int{0, 4}, Host{Cores: 1, CoresFrom: "sysfs", CachesFrom: "sysfs", Caches: []Cache{
			{1, "Data", 48 * kib, 1, 2}, {1, "Instruction", 32 * kib, 1, 2}, {2, "Unified", 2 * mib, 1, 2}, {3, "Unified", 16 * mib, 1, 4}}}, 2 * mib, 16 * mib},
		{"one thread of two cores under different L3s", "smt8", []int{0, 2}, Host{Cores: 2, CoresFrom: "sysfs", CachesFrom: "sysfs", Caches: []Cache{
			{1, "Data", 48 * kib, 2, 2}, {1, "Instruction", 32 * kib, 2, 2}, {2, "Unified", 2 * mib, 2, 2}, {3, "Unified", 16 * mib, 2, 4}}}, 2 * mib, 32 * mib},
		{"hybrid cores", "hybrid", []int{0, 1, 2, 3, 4, 5, 6, 7}, Host{Cores: 6, CoresFrom: "sysfs", CachesFrom: "sysfs", Caches: []Cache{
			{1, "Data", 32 * kib, 4, 1}, {1, "Data", 48 * kib, 2, 2}, {1, "Instruction", 32 * kib, 4, 1}, {1, "Instruction", 64 * kib, 2, 2},
			{2, "Unified", 2 * mib, 2, 2}, {2, "Unified", 4 * mib, 1, 4}, {3, "Unified", 24 * mib, 1, 8}}}, 2 * mib, 24 * mib},
		{"missing files", "missing", []int{0, 1, 2, 3}, Host{CachesFrom: "sysfs", Caches: []Cache{
			{1, "Data", 32 * kib, 3, 1}, {1, "Instruction", 32 * kib, 2, 1}, {2, "Unified", 512 * kib, 2, 1}, {3, "Unified", 8 * mib, 1, 4}},
			Notes: []string{
				"physical cores unknown: sysfs gives no readable topology/core_cpus_list or thread_siblings_list for cpus 3; cpuid reports no core count",
				"sysfs gives no cache directory for cpus 2: their caches are left out",
				"sysfs cache index1: no readable type (cpus 3): left out",
				"sysfs cache index2: no readable size (cpus 1): left out",
				`sysfs cache index3: size "0K" is not a plausible cache size (cpus 3): left out`,
			}}, 512 * kib, 8 * mib},
		{"absurd figures", "absurd", []int{0, 1}, Host{Cores: 2, CoresFrom: "sysfs", CachesFrom: "sysfs", Caches: []Cache{{1, "Data", 32 * kib, 2, 1}},
			Notes: []string{
				`sysfs cache index1: level "9" (cpus 0-1): left out`,
				`sysfs cache index2: shared_cpu_list "5" does not hold the CPU itself (cpus 1): left out`,
				`sysfs cache index2: shared_cpu_list "x-y" is not a CPU list (cpus 0): left out`,
				`sysfs cache index3: size "4294967295K" is not a plausible cache size (cpus 0-1): left out`,
			}}, 0, 0},
		{"no sysfs, no cpuid", "bare", []int{0, 1}, Host{Notes: []string{
			"physical cores unknown: sysfs gives no readable topology/core_cpus_list or thread_siblings_list for cpus 0-1; cpuid reports no core count",
			"caches unknown: sysfs has no cache information and cpuid reports none",
		}}, 0, 0},
		{"no tree at all", "absent", []int{0}, Host{Notes: []string{
			"physical cores unknown: sysfs gives no readable topology/core_cpus_list or thread_siblings_list for cpus 0; cpuid reports no core count",
			"caches unknown: sysfs has no cache information and cpuid reports none",
		}}, 0, 0},
	} {
		got := read(tc.tree, noCPUID, tc.cpus...)
		tc.want.CPUs, tc.want.CPUsFrom = tc.cpus, "option"
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s:\n got %+v\nwant %+v", tc.name, got, tc.want)
			continue
		}
		if l2, l3 := got.CacheSize(2), got.TotalCache(3); l2 != tc.l2 || l3 != tc.l3sum {
			t.Errorf("%s: CacheSize(2) %d, TotalCache(3) %d; want %d, %d", tc.name, l2, l3, tc.l2, tc.l3sum)
		}
	}
}

// cpuid speaks only where sysfs is silent, and only when its figures fit the process's CPUs.
func TestCPUIDIsAPlausibleFallbackOnly(t *testing.T) {
	plausible := cpuidFacts{physical: 2, logical: 2, l1d: 32 * kib, l1i: 32 * kib, l2: mib, l3: 32 * mib}
	got := read("bare", plausible, 0, 1)
	want := Host{CPUs: []int{0, 1}, CPUsFrom: "option", Cores: 2, CoresFrom: "cpuid", CachesFrom: "cpuid",
		Caches: []Cache{{Level: 1, Type: "Data", Size: 32 * kib}, {Level: 1, Type: "Instruction", Size: 32 * kib}, {Level: 2, Type: "Unified", Size: mib}, {Level: 3, Type: "Unified", Size: 32 * mib}},
		Notes: []string{
			"physical cores from cpuid: sysfs gives no readable topology/core_cpus_list or thread_siblings_list for cpus 0-1",
			"caches from cpuid (sysfs has none): sizes of one core's caches, sharing unknown",
		}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("plausible cpuid:\n got %+v\nwant %+v", got, want)
	}
	// What a 2-vCPU VM's cpuid said: 254 cores, L3 undetected (-1).
	got = read("bare", cpuidFacts{physical: 254, logical: 254, l1d: 32 * kib, l1i: 32 * kib, l2: 512 * kib, l3: -1}, 0, 1)
	if got.Cores != 0 || got.TotalCache(3) != 0 || got.CacheSize(2) != 512*kib ||
		!strings.Contains(strings.Join(got.Notes, "\n"), "cpuid's 254 physical / 254 logical cores do not describe the 2 CPUs this process may run on") {
		t.Fatalf("the VM's cpuid: %+v", got)
	}
	// Implausible sizes are left out and named.
	got = read("bare", cpuidFacts{physical: 4, logical: 2, l1d: 100, l2: 64 << 30, l3: -1}, 0, 1)
	if got.Cores != 0 || len(got.Caches) != 0 || !reflect.DeepEqual(got.Notes, []string{
		"physical cores unknown: sysfs gives no readable topology/core_cpus_list or thread_siblings_list for cpus 0-1; cpuid's 4 physical / 2 logical cores are inconsistent",
		"caches unknown: sysfs has no cache information and cpuid's sizes are implausible ([L1d 100 B L2 68719476736 B])",
	}) {
		t.Fatalf("implausible cpuid: %+v", got)
	}
	// sysfs wins over cpuid.
	if got := read("vm2", cpuidFacts{physical: 254, logical: 254, l2: 512 * kib, l3: -1}, 0, 1); got.CoresFrom != "sysfs" || got.CachesFrom != "sysfs" || got.Cores != 2 {
		t.Fatalf("sysfs with a cpuid: %+v", got)
	}
}

// The CPUs come from sched_getaffinity, which is also what runtime.NumCPU counts.
func TestReadsThisProcessCPUs(t *testing.T) {
	h := Read()
	if len(h.CPUs) != runtime.NumCPU() {
		t.Fatalf("%d CPUs (%s), runtime.NumCPU %d", len(h.CPUs), h.CPUsFrom, runtime.NumCPU())
	}
	if runtime.GOOS == "linux" && h.CPUsFrom != "sched_getaffinity" {
		t.Fatalf("CPUs from %s: %v", h.CPUsFrom, h.Notes)
	}
	for _, c := range h.Caches {
		if c.Size < minCacheBytes || c.Size > maxCacheBytes || c.Instances < 0 {
			t.Fatalf("cache %+v", c)
		}
	}
	// A second Read gives the same, and what a caller does to the first does not leak into it.
	if len(h.CPUs) > 0 {
		h.CPUs[0] = -1
	}
	if again := Read(); !reflect.DeepEqual(again, Read()) || (len(again.CPUs) > 0 && again.CPUs[0] == -1) {
		t.Fatalf("second Read %+v", again)
	}
}

func TestParseCPUList(t *testing.T) {
	for in, want := range map[string][]int{"": nil, "0": {0}, "0-3": {0, 1, 2, 3}, "0-1,4-5": {0, 1, 4, 5}, "3,1": {3, 1}, " 7\n": {7}} {
		got, err := ParseCPUList(in)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("ParseCPUList(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for in, msg := range map[string]string{
		"x":          `CPU list "x": bad CPU "x"`,
		"3-1":        `CPU list "3-1": bad range "3-1"`,
		"0-":         `CPU list "0-": bad range "0-"`,
		"-1":         `CPU list "-1": bad CPU ""`,
		"0,,1":       `CPU list "0,,1": bad CPU ""`,
		"0-99999999": `CPU list "0-99999999": range "0-99999999" is too long`,
	} {
		if _, err := ParseCPUList(in); err == nil || err.Error() != msg {
			t.Errorf("ParseCPUList(%q): %v, want %s", in, err, msg)
		}
	}
	for _, s := range []string{"0", "0-3", "0-1,4-5", "1,3,5-7,9"} {
		cpus, err := ParseCPUList(s)
		if err != nil {
			t.Fatal(err)
		}
		if got := FormatCPUList(cpus); got != s {
			t.Errorf("FormatCPUList(%v) = %q, want %q", cpus, got, s)
		}
	}
}

func TestParseCacheSize(t *testing.T) {
	for in, want := range map[string]int64{"32K": 32 * kib, "1024K": mib, "8M": 8 * mib, "1G": 1 << 30, "65536": 64 * kib, "0K": 0} {
		if got, err := ParseCacheSize(in); err != nil || got != want {
			t.Errorf("ParseCacheSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "K", "-1K", "32KB", "1KK", "1.5M", "99999999999999999999K", "9223372036854775807K"} {
		if _, err := ParseCacheSize(in); err == nil || err.Error() != `cache size "`+in+`": want bytes, or a number with K, M or G` {
			t.Errorf("ParseCacheSize(%q): %v", in, err)
		}
	}
}

func TestNVIDIADriver(t *testing.T) {
	ok, why := NVIDIADriver()
	if ok != (why == "") {
		t.Fatalf("NVIDIADriver() = %v, %q: a reason exactly when there is no driver", ok, why)
	}
	if runtime.GOOS != "linux" {
		return
	}
	_, errProc := os.Stat("/proc/driver/nvidia")
	_, errDxg := os.Stat("/dev/dxg")
	nodes, _ := filepath.Glob("/dev/nvidia[0-9]*")
	if want := errProc == nil || errDxg == nil || len(nodes) > 0; ok != want {
		t.Fatalf("NVIDIADriver() = %v, the files say %v", ok, want)
	}
}
