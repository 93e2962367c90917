package device

import (
	"runtime"
	"testing"

	"github.com/wattagg/wattagg/internal/sysinfo"
)

// The CPU reports the CPUs, cores and caches the OS gives this process, never a negative size.
func TestCPUInfoIsWhatTheOSGives(t *testing.T) {
	c, err := NewCPU(WithWorkers(3))
	if err != nil {
		t.Fatal(err)
	}
	info := c.Info()
	host := sysinfo.Read()
	if info.Threads != runtime.NumCPU() || info.Threads != len(host.CPUs) || info.Cores != host.Cores || info.Cores > info.Threads || info.Workers != 3 {
		t.Fatalf("info %+v, host %+v, runtime.NumCPU %d", info, host, runtime.NumCPU())
	}
	if info.CacheL2 < 0 || info.CacheL3 < 0 || int64(info.CacheL2) != host.CacheSize(2) || int64(info.CacheL3) != host.TotalCache(3) {
		t.Fatalf("caches: L2 %d, L3 %d; host %+v", info.CacheL2, info.CacheL3, host.Caches)
	}
}
