package cuda

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error of this package wraps one of them or one of package device's
// (device.ErrJob, device.ErrUnsupported), so callers branch with errors.Is.
var (
	// ErrNoDriver: libcuda.so.1 (the NVIDIA driver's user-space library) cannot be loaded.
	ErrNoDriver = errors.New("no NVIDIA driver")
	// ErrNoDevice: the driver is loaded but sees no GPU (or not the one asked for).
	ErrNoDevice = errors.New("no CUDA device")
	// ErrNoCgo: this binary was built with CGO_ENABLED=0, so it cannot call the driver.
	ErrNoCgo = errors.New("built without cgo")
	// ErrOutOfMemory: a job or buffer does not fit in the GPU's free memory.
	ErrOutOfMemory = errors.New("out of GPU memory")
	// ErrDriver: any other failure reported by the driver (see *Error for the call and code).
	ErrDriver = errors.New("CUDA driver error")
	// ErrClosed: the GPU device, or the buffer, was closed.
	ErrClosed = errors.New("closed")
)

// Error is a failed CUDA driver API call.
type Error struct {
	Call string // the driver function: "cuMemAlloc"
	Code int    // the CUresult
	Name string // "CUDA_ERROR_OUT_OF_MEMORY"
	Text string // the driver's description: "out of memory"
	Log  string // what the PTX JIT compiler said, for module loads
}

func (e *Error) Error() string {
	s := fmt.Sprintf("%s: %s", e.Call, e.Name)
	if e.Text != "" {
		s += " (" + e.Text + ")"
	}
	if e.Log != "" {
		s += ": " + e.Log
	}
	return s
}

// CUresult values this package tells apart.
const (
	resultOutOfMemory = 2
	resultNoDevice    = 100
)

// Unwrap maps the CUresult to a sentinel: ErrOutOfMemory, ErrNoDevice or ErrDriver.
func (e *Error) Unwrap() error {
	switch e.Code {
	case resultOutOfMemory:
		return ErrOutOfMemory
	case resultNoDevice:
		return ErrNoDevice
	}
	return ErrDriver
}
