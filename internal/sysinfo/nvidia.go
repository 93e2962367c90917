package sysinfo

import (
	"os"
	"path/filepath"
	"runtime"
)

// NVIDIADriver reports whether an NVIDIA kernel driver can be reached from this process, and
// when not, why, without loading any library. A machine with the user-space driver installed
// but no GPU and no kernel module (a build host, a CI runner with the CUDA toolkit) would
// otherwise pay for libcuda's and NVML's initialisation, which probe PCI configuration space
// and retry for tens of milliseconds (a third of a small aggregate's CPU time here) before
// saying there is no device.
//
// The signs are the kernel module's procfs directory (the NVIDIA container runtime mounts it
// into containers too), a GPU's device node (/dev/nvidiaN; not /dev/nvidiactl, which the
// libraries create themselves when run as root) and WSL2's paravirtual GPU (/dev/dxg). Off
// Linux it answers true: the libraries decide there.
func NVIDIADriver() (bool, string) {
	if runtime.GOOS != "linux" {
		return true, ""
	}
	for _, p := range []string{"/proc/driver/nvidia", "/dev/dxg"} {
		if _, err := os.Stat(p); err == nil {
			return true, ""
		}
	}
	if m, _ := filepath.Glob("/dev/nvidia[0-9]*"); len(m) > 0 {
		return true, ""
	}
	return false, "the NVIDIA kernel driver is not loaded (no /proc/driver/nvidia, /dev/nvidia[0-9]* or /dev/dxg)"
}
