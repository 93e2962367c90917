package cuda

import "unsafe"

// Handles of driver objects. They point to memory the driver owns, never to Go memory.
type (
	cuContext  unsafe.Pointer
	cuStream   unsafe.Pointer
	cuEvent    unsafe.Pointer
	cuModule   unsafe.Pointer
	cuFunction unsafe.Pointer
)

// driver is the part of the CUDA driver API this package uses, loaded at run time (the cgo
// build) or absent (the !cgo build, whose openDriver always fails).
//
// Contexts are per OS thread in the CUDA driver, while a goroutine may move between threads
// from one cgo call to the next. Every method that takes a context therefore makes it current
// (cuCtxSetCurrent, a thread-local store in the driver) and performs the call in the same C
// function, on the same thread, so no call can run without its context whatever goroutine makes
// it, and no goroutine is locked to a thread. The alternative, funnelling every call through
// one goroutine under runtime.LockOSThread, costs two goroutine hand-offs per call and
// serialises the host-side staging copies behind the driver calls.
type driver interface {
	version() (int, error)
	deviceCount() (int, error)
	attrs(dev int) (devAttrs, error)
	retain(dev int) (cuContext, error) // the primary context, with blocking synchronisation
	release(dev int) error

	memInfo(c cuContext) (free, total int64, err error)
	alloc(c cuContext, n int64) (uint64, error)
	free(c cuContext, p uint64) error
	allocHost(c cuContext, n int64) (unsafe.Pointer, error) // page-locked
	freeHost(c cuContext, p unsafe.Pointer) error

	newStream(c cuContext) (cuStream, error)
	destroyStream(c cuContext, s cuStream) error
	syncStream(c cuContext, s cuStream) error
	newEvent(c cuContext) (cuEvent, error)
	destroyEvent(c cuContext, e cuEvent) error
	record(c cuContext, e cuEvent, s cuStream) error
	syncEvent(c cuContext, e cuEvent) error
	wait(c cuContext, s cuStream, e cuEvent) error // s waits for e

	h2d(c cuContext, dst uint64, src unsafe.Pointer, n int64, s cuStream) error
	d2h(c cuContext, dst unsafe.Pointer, src uint64, n int64, s cuStream) error
	d2d(c cuContext, dst, src uint64, n int64, s cuStream) error
	memset(c cuContext, dst uint64, v byte, n int64, s cuStream) error

	loadModule(c cuContext, ptx []byte) (cuModule, error)
	unloadModule(c cuContext, m cuModule) error
	function(c cuContext, m cuModule, name string) (cuFunction, error)
	setMaxDynamicShared(c cuContext, f cuFunction, bytes int) error
	// launch runs f with one 8-byte slot per kernel parameter (a value of 4 bytes or less sits
	// in the low bytes: the driver reads each parameter's own size from its slot).
	launch(c cuContext, f cuFunction, grid, block [3]uint32, shmem int, s cuStream, args []uint64) error
}

// devAttrs describes one GPU.
type devAttrs struct {
	name         string
	totalMem     int64
	major, minor int // compute capability
	sms          int
	smemOptin    int // most shared memory a block may ask for, in bytes
	copyEngines  int
	l2           int
	memClockKHz  int
	busWidth     int // bits
	pciBusID     string
}

// memBandwidth is the theoretical DRAM bandwidth in bytes/s (double data rate).
func (a devAttrs) memBandwidth() float64 {
	return 2 * float64(a.memClockKHz) * 1e3 * float64(a.busWidth) / 8
}
