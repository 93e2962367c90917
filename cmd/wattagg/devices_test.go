package main

import (
	"bytes"
	"encoding/json"
	"runtime"
	"strings"
	"testing"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/internal/sysinfo"
)

func TestPrintDevicesShowsWhatTheOSGivesThisProcess(t *testing.T) {
	cpu := device.Info{Name: "cpu", Kind: "cpu", Model: "AMD EPYC", Workers: 2, Kernels: "avx2", Cores: 2, Threads: 2}
	for _, tc := range []struct {
		name string
		host sysinfo.Host
		want []string
	}{
		{"the 2-vCPU VM", sysinfo.Host{CPUs: []int{0, 1}, CPUsFrom: "sched_getaffinity", Cores: 2, CoresFrom: "sysfs", CachesFrom: "sysfs",
			Caches: []sysinfo.Cache{{Level: 1, Type: "Data", Size: 32 << 10, Instances: 2, SharedBy: 1}, {Level: 2, Type: "Unified", Size: 5 << 18, Instances: 2, SharedBy: 1},
				{Level: 3, Type: "Unified", Size: 32 << 20, Instances: 1, SharedBy: 2}}},
			[]string{"cpu: AMD EPYC\n",
				"  cpus: 2 this process may run on (0-1), 2 physical cores; 2 workers\n",
				"  caches (sysfs): L1d 32 KiB ×2, L2 1.25 MiB ×2, L3 32 MiB (shared by 2 CPUs)\n"}},
		{"a taskset of two L3s", sysinfo.Host{CPUs: []int{0, 2, 3}, CPUsFrom: "sched_getaffinity", Cores: 3, CoresFrom: "sysfs", CachesFrom: "sysfs",
			Caches: []sysinfo.Cache{{Level: 3, Type: "Unified", Size: 16 << 20, Instances: 2, SharedBy: 8}}},
			[]string{"  cpus: 3 this process may run on (0,2-3), 3 physical cores; 2 workers\n", "  caches (sysfs): L3 16 MiB ×2 (each shared by 8 CPUs)\n"}},
		{"cpuid's word only", sysinfo.Host{CPUs: []int{0, 1}, CPUsFrom: "runtime.NumCPU", Cores: 2, CoresFrom: "cpuid", CachesFrom: "cpuid",
			Caches: []sysinfo.Cache{{Level: 2, Type: "Unified", Size: 512 << 10}}},
			[]string{"  cpus: 2 (counted; the OS gives no list), 2 physical cores (cpuid); 2 workers\n", "  caches (cpuid, one core's): L2 512 KiB\n"}},
		{"one CPU", sysinfo.Host{CPUs: []int{1}, CPUsFrom: "sched_getaffinity", Cores: 1, CoresFrom: "sysfs"},
			[]string{"  cpus: 1 this process may run on (1), 1 physical core; 2 workers\n"}},
		{"nothing known", sysinfo.Host{CPUs: []int{0, 1}, CPUsFrom: "sched_getaffinity"},
			[]string{"  cpus: 2 this process may run on (0-1), physical cores unknown; 2 workers\n", "  caches: unknown\n"}},
	} {
		var b bytes.Buffer
		printDevices(&b, devicesReport{Devices: []device.Info{cpu}, Host: tc.host})
		out := b.String()
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("%s: output lacks %q:\n%s", tc.name, w, out)
			}
		}
		if strings.Contains(out, " -") || strings.Contains(out, "254") {
			t.Errorf("%s: a made-up figure:\n%s", tc.name, out)
		}
	}
	// A GPU prints only the sizes it knows.
	var b bytes.Buffer
	printDevices(&b, devicesReport{Devices: []device.Info{{Name: "cuda:0", Kind: "gpu", Model: "NVIDIA H100", CacheL2: 50 << 20, Kernels: "ptx"}}})
	if out := b.String(); !strings.Contains(out, "cuda:0: NVIDIA H100\n  cache: L2 50 MiB\n") || strings.Contains(out, "L3") || strings.Contains(out, "cores") {
		t.Errorf("gpu:\n%s", out)
	}
}

func TestSizeIEC(t *testing.T) {
	for in, want := range map[int64]string{0: "0 B", 512: "512 B", 32 << 10: "32 KiB", 5 << 18: "1.25 MiB", 32 << 20: "32 MiB", 1152 << 20: "1.125 GiB", 3 << 30: "3 GiB"} {
		if got := sizeIEC(in); got != want {
			t.Errorf("sizeIEC(%d) = %q, want %q", in, got, want)
		}
	}
}

// The real command reports this process's CPUs, as the Go runtime counts them.
func TestDevicesJSONHasThisProcessCPUs(t *testing.T) {
	stdout, stderr, code := wattagg(t, "devices", "--json")
	var r devicesReport
	if code != 0 || json.Unmarshal([]byte(stdout), &r) != nil {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if len(r.Host.CPUs) != runtime.NumCPU() || len(r.Devices) == 0 || r.Devices[0].Threads != runtime.NumCPU() || r.Devices[0].CacheL3 < 0 || r.Devices[0].CacheL2 < 0 {
		t.Fatalf("host %+v, cpu %+v", r.Host, r.Devices[0])
	}
}
