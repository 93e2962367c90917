//go:build cgo

package cuda

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stddef.h>
#include <stdlib.h>

// The driver API types and prototypes used here, declared instead of included (no CUDA header
// is needed to build): CUresult and enums are ints, handles opaque pointers, device pointers
// 64-bit integers.
typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef void *CUcontext, *CUstream, *CUevent, *CUmodule, *CUfunction;

typedef struct {
	CUresult (*Init)(unsigned int);
	CUresult (*DriverGetVersion)(int *);
	CUresult (*DeviceGetCount)(int *);
	CUresult (*DeviceGet)(CUdevice *, int);
	CUresult (*DeviceGetAttribute)(int *, int, CUdevice);
	CUresult (*DeviceGetName)(char *, int, CUdevice);
	CUresult (*DeviceTotalMem)(size_t *, CUdevice);
	CUresult (*DeviceGetPCIBusId)(char *, int, CUdevice);
	CUresult (*PrimaryCtxSetFlags)(CUdevice, unsigned int);
	CUresult (*PrimaryCtxRetain)(CUcontext *, CUdevice);
	CUresult (*PrimaryCtxRelease)(CUdevice);
	CUresult (*CtxSetCurrent)(CUcontext);
	CUresult (*MemGetInfo)(size_t *, size_t *);
	CUresult (*MemAlloc)(CUdeviceptr *, size_t);
	CUresult (*MemFree)(CUdeviceptr);
	CUresult (*MemAllocHost)(void **, size_t);
	CUresult (*MemFreeHost)(void *);
	CUresult (*StreamCreate)(CUstream *, unsigned int);
	CUresult (*StreamDestroy)(CUstream);
	CUresult (*StreamSynchronize)(CUstream);
	CUresult (*StreamWaitEvent)(CUstream, CUevent, unsigned int);
	CUresult (*EventCreate)(CUevent *, unsigned int);
	CUresult (*EventDestroy)(CUevent);
	CUresult (*EventRecord)(CUevent, CUstream);
	CUresult (*EventSynchronize)(CUevent);
	CUresult (*MemcpyHtoDAsync)(CUdeviceptr, const void *, size_t, CUstream);
	CUresult (*MemcpyDtoHAsync)(void *, CUdeviceptr, size_t, CUstream);
	CUresult (*MemcpyDtoDAsync)(CUdeviceptr, CUdeviceptr, size_t, CUstream);
	CUresult (*MemsetD8Async)(CUdeviceptr, unsigned char, size_t, CUstream);
	CUresult (*ModuleLoadDataEx)(CUmodule *, const void *, unsigned int, int *, void **);
	CUresult (*ModuleUnload)(CUmodule);
	CUresult (*ModuleGetFunction)(CUfunction *, CUmodule, const char *);
	CUresult (*FuncSetAttribute)(CUfunction, int, int);
	CUresult (*LaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
				 CUstream, void **, void **);
	CUresult (*GetErrorName)(CUresult, const char **);
	CUresult (*GetErrorString)(CUresult, const char **);
} wa_api;

// The exported names: versioned (_v2) where cuda.h maps the plain name to a new ABI.
static const struct {
	const char *name;
	size_t off;
} wa_syms[] = {
	{"cuInit", offsetof(wa_api, Init)},
	{"cuDriverGetVersion", offsetof(wa_api, DriverGetVersion)},
	{"cuDeviceGetCount", offsetof(wa_api, DeviceGetCount)},
	{"cuDeviceGet", offsetof(wa_api, DeviceGet)},
	{"cuDeviceGetAttribute", offsetof(wa_api, DeviceGetAttribute)},
	{"cuDeviceGetName", offsetof(wa_api, DeviceGetName)},
	{"cuDeviceTotalMem_v2", offsetof(wa_api, DeviceTotalMem)},
	{"cuDeviceGetPCIBusId", offsetof(wa_api, DeviceGetPCIBusId)},
	{"cuDevicePrimaryCtxSetFlags_v2", offsetof(wa_api, PrimaryCtxSetFlags)},
	{"cuDevicePrimaryCtxRetain", offsetof(wa_api, PrimaryCtxRetain)},
	{"cuDevicePrimaryCtxRelease_v2", offsetof(wa_api, PrimaryCtxRelease)},
	{"cuCtxSetCurrent", offsetof(wa_api, CtxSetCurrent)},
	{"cuMemGetInfo_v2", offsetof(wa_api, MemGetInfo)},
	{"cuMemAlloc_v2", offsetof(wa_api, MemAlloc)},
	{"cuMemFree_v2", offsetof(wa_api, MemFree)},
	{"cuMemAllocHost_v2", offsetof(wa_api, MemAllocHost)},
	{"cuMemFreeHost", offsetof(wa_api, MemFreeHost)},
	{"cuStreamCreate", offsetof(wa_api, StreamCreate)},
	{"cuStreamDestroy_v2", offsetof(wa_api, StreamDestroy)},
	{"cuStreamSynchronize", offsetof(wa_api, StreamSynchronize)},
	{"cuStreamWaitEvent", offsetof(wa_api, StreamWaitEvent)},
	{"cuEventCreate", offsetof(wa_api, EventCreate)},
	{"cuEventDestroy_v2", offsetof(wa_api, EventDestroy)},
	{"cuEventRecord", offsetof(wa_api, EventRecord)},
	{"cuEventSynchronize", offsetof(wa_api, EventSynchronize)},
	{"cuMemcpyHtoDAsync_v2", offsetof(wa_api, MemcpyHtoDAsync)},
	{"cuMemcpyDtoHAsync_v2", offsetof(wa_api, MemcpyDtoHAsync)},
	{"cuMemcpyDtoDAsync_v2", offsetof(wa_api, MemcpyDtoDAsync)},
	{"cuMemsetD8Async", offsetof(wa_api, MemsetD8Async)},
	{"cuModuleLoadDataEx", offsetof(wa_api, ModuleLoadDataEx)},
	{"cuModuleUnload", offsetof(wa_api, ModuleUnload)},
	{"cuModuleGetFunction", offsetof(wa_api, ModuleGetFunction)},
	{"cuFuncSetAttribute", offsetof(wa_api, FuncSetAttribute)},
	{"cuLaunchKernel", offsetof(wa_api, LaunchKernel)},
	{"cuGetErrorName", offsetof(wa_api, GetErrorName)},
	{"cuGetErrorString", offsetof(wa_api, GetErrorString)},
};

// wa_open loads the library and resolves every symbol. It returns NULL and sets *err to
// dlerror()'s message, or to the name of the first missing symbol with *missing = 1.
static wa_api *wa_open(const char *path, const char **err, int *missing) {
	void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!lib) {
		*err = dlerror();
		return NULL;
	}
	wa_api *a = calloc(1, sizeof(wa_api));
	if (!a) {
		*err = "out of memory";
		dlclose(lib);
		return NULL;
	}
	for (size_t i = 0; i < sizeof(wa_syms) / sizeof(wa_syms[0]); i++) {
		void *p = dlsym(lib, wa_syms[i].name);
		if (!p) {
			*err = wa_syms[i].name;
			*missing = 1;
			free(a);
			dlclose(lib);
			return NULL;
		}
		*(void **)((char *)a + wa_syms[i].off) = p;
	}
	return a;
}

// Every context-bound call makes its context current first, on the thread that runs it.
#define BIND(c)                                     \
	do {                                        \
		CUresult r_ = a->CtxSetCurrent(c);  \
		if (r_) return r_;                  \
	} while (0)

static CUresult wa_init(wa_api *a) { return a->Init(0); }
static CUresult wa_version(wa_api *a, int *v) { return a->DriverGetVersion(v); }
static CUresult wa_count(wa_api *a, int *n) { return a->DeviceGetCount(n); }

static CUresult wa_attr(wa_api *a, int dev, int attr, int *v) {
	CUdevice d;
	CUresult r = a->DeviceGet(&d, dev);
	return r ? r : a->DeviceGetAttribute(v, attr, d);
}

static CUresult wa_name(wa_api *a, int dev, char *name, int len, size_t *mem, char *bus, int blen) {
	CUdevice d;
	CUresult r = a->DeviceGet(&d, dev);
	if (!r) r = a->DeviceGetName(name, len, d);
	if (!r) r = a->DeviceTotalMem(mem, d);
	if (!r) r = a->DeviceGetPCIBusId(bus, blen, d);
	return r;
}

// wa_retain retains the primary context with blocking synchronisation: a host thread waiting
// for the GPU sleeps instead of spinning a core (joules matter here more than the few
// microseconds of wake-up). Setting the flags fails harmlessly when another user of the
// primary context made it active first; the context is then used as it is.
static CUresult wa_retain(wa_api *a, int dev, CUcontext *c) {
	CUdevice d;
	CUresult r = a->DeviceGet(&d, dev);
	if (r) return r;
	a->PrimaryCtxSetFlags(d, 0x04); // CU_CTX_SCHED_BLOCKING_SYNC
	return a->PrimaryCtxRetain(c, d);
}

static CUresult wa_release(wa_api *a, int dev) {
	CUdevice d;
	CUresult r = a->DeviceGet(&d, dev);
	return r ? r : a->PrimaryCtxRelease(d);
}

static CUresult wa_meminfo(wa_api *a, CUcontext c, size_t *f, size_t *t) { BIND(c); return a->MemGetInfo(f, t); }
static CUresult wa_alloc(wa_api *a, CUcontext c, CUdeviceptr *p, size_t n) { BIND(c); return a->MemAlloc(p, n); }
static CUresult wa_free(wa_api *a, CUcontext c, CUdeviceptr p) { BIND(c); return a->MemFree(p); }
static CUresult wa_alloc_host(wa_api *a, CUcontext c, void **p, size_t n) { BIND(c); return a->MemAllocHost(p, n); }
static CUresult wa_free_host(wa_api *a, CUcontext c, void *p) { BIND(c); return a->MemFreeHost(p); }

// Streams do not synchronise with the legacy default stream, which wattagg never uses.
static CUresult wa_stream(wa_api *a, CUcontext c, CUstream *s) { BIND(c); return a->StreamCreate(s, 1); }
static CUresult wa_stream_destroy(wa_api *a, CUcontext c, CUstream s) { BIND(c); return a->StreamDestroy(s); }
static CUresult wa_stream_sync(wa_api *a, CUcontext c, CUstream s) { BIND(c); return a->StreamSynchronize(s); }

// Events only order work (no timing) and block the waiting thread instead of spinning.
static CUresult wa_event(wa_api *a, CUcontext c, CUevent *e) { BIND(c); return a->EventCreate(e, 0x1 | 0x2); }
static CUresult wa_event_destroy(wa_api *a, CUcontext c, CUevent e) { BIND(c); return a->EventDestroy(e); }
static CUresult wa_record(wa_api *a, CUcontext c, CUevent e, CUstream s) { BIND(c); return a->EventRecord(e, s); }
static CUresult wa_event_sync(wa_api *a, CUcontext c, CUevent e) { BIND(c); return a->EventSynchronize(e); }
static CUresult wa_wait(wa_api *a, CUcontext c, CUstream s, CUevent e) { BIND(c); return a->StreamWaitEvent(s, e, 0); }

static CUresult wa_h2d(wa_api *a, CUcontext c, CUdeviceptr d, const void *h, size_t n, CUstream s) {
	BIND(c);
	return a->MemcpyHtoDAsync(d, h, n, s);
}
static CUresult wa_d2h(wa_api *a, CUcontext c, void *h, CUdeviceptr d, size_t n, CUstream s) {
	BIND(c);
	return a->MemcpyDtoHAsync(h, d, n, s);
}
static CUresult wa_d2d(wa_api *a, CUcontext c, CUdeviceptr d, CUdeviceptr src, size_t n, CUstream s) {
	BIND(c);
	return a->MemcpyDtoDAsync(d, src, n, s);
}
static CUresult wa_memset(wa_api *a, CUcontext c, CUdeviceptr d, unsigned char v, size_t n, CUstream s) {
	BIND(c);
	return a->MemsetD8Async(d, v, n, s);
}

// wa_module loads PTX (NUL-terminated) and keeps the JIT compiler's error log.
static CUresult wa_module(wa_api *a, CUcontext c, CUmodule *m, const char *ptx, char *log, size_t logSize) {
	BIND(c);
	int opts[2] = {5, 6}; // CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES
	void *vals[2] = {log, (void *)logSize};
	return a->ModuleLoadDataEx(m, ptx, 2, opts, vals);
}
static CUresult wa_module_unload(wa_api *a, CUcontext c, CUmodule m) { BIND(c); return a->ModuleUnload(m); }
static CUresult wa_function(wa_api *a, CUcontext c, CUfunction *f, CUmodule m, const char *name) {
	BIND(c);
	return a->ModuleGetFunction(f, m, name);
}
static CUresult wa_max_dyn_shared(wa_api *a, CUcontext c, CUfunction f, int n) {
	BIND(c);
	return a->FuncSetAttribute(f, 8, n); // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
}

// wa_launch points the kernel's parameters at the caller's 8-byte slots. The driver copies the
// values during the call, so the slots (Go memory holding no pointers) are not retained.
static CUresult wa_launch(wa_api *a, CUcontext c, CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
			  unsigned by, unsigned bz, unsigned shmem, CUstream s, unsigned long long *args, int nargs) {
	void *params[32];
	if (nargs > 32) return 1; // CUDA_ERROR_INVALID_VALUE
	for (int i = 0; i < nargs; i++) params[i] = &args[i];
	BIND(c);
	return a->LaunchKernel(f, gx, gy, gz, bx, by, bz, shmem, s, params, NULL);
}

static const char *wa_error_name(wa_api *a, CUresult r) {
	const char *s = NULL;
	return a->GetErrorName(r, &s) ? NULL : s;
}
static const char *wa_error_string(wa_api *a, CUresult r) {
	const char *s = NULL;
	return a->GetErrorString(r, &s) ? NULL : s;
}
*/
import "C"

import (
	"fmt"
	"strconv"
	"unsafe"
)

// libcuda is the driver loaded with dlopen.
type libcuda struct {
	a *C.wa_api // C memory: the resolved function pointers
}

// openDriver loads the driver library at path and initialises it (cuInit).
func openDriver(path string) (driver, error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var cerr *C.char
	var missing C.int
	a := C.wa_open(cpath, &cerr, &missing)
	if a == nil {
		if missing != 0 {
			return nil, fmt.Errorf("%s: %w: %s not found (a CUDA 11 or newer driver is needed)", path, ErrDriver, C.GoString(cerr))
		}
		return nil, fmt.Errorf("%s not found: %w (%s)", path, ErrNoDriver, C.GoString(cerr))
	}
	l := &libcuda{a: a}
	if err := l.check("cuInit", C.wa_init(a)); err != nil {
		return nil, err
	}
	return l, nil
}

// check turns a CUresult into nil or an *Error naming the call.
func (l *libcuda) check(call string, r C.CUresult) error {
	if r == 0 {
		return nil
	}
	e := &Error{Call: call, Code: int(r), Name: "CUDA_ERROR_" + strconv.Itoa(int(r))}
	if s := C.wa_error_name(l.a, r); s != nil {
		e.Name = C.GoString(s)
	}
	if s := C.wa_error_string(l.a, r); s != nil {
		e.Text = C.GoString(s)
	}
	return e
}

func (l *libcuda) version() (int, error) {
	var v C.int
	return int(v), l.check("cuDriverGetVersion", C.wa_version(l.a, &v))
}

func (l *libcuda) deviceCount() (int, error) {
	var n C.int
	return int(n), l.check("cuDeviceGetCount", C.wa_count(l.a, &n))
}

// Device attribute numbers (CUdevice_attribute).
const (
	attrSMs         = 16
	attrMemClock    = 36
	attrBusWidth    = 37
	attrL2          = 38
	attrCopyEngines = 40
	attrCCMajor     = 75
	attrCCMinor     = 76
	attrSmemOptin   = 97
)

func (l *libcuda) attrs(dev int) (devAttrs, error) {
	var a devAttrs
	var name [256]C.char
	var bus [32]C.char
	var mem C.size_t
	if err := l.check("cuDeviceGetName", C.wa_name(l.a, C.int(dev), &name[0], C.int(len(name)), &mem, &bus[0], C.int(len(bus)))); err != nil {
		return a, err
	}
	a.name, a.totalMem, a.pciBusID = C.GoString(&name[0]), int64(mem), C.GoString(&bus[0])
	for _, f := range []struct {
		attr int
		dst  *int
	}{
		{attrSMs, &a.sms}, {attrMemClock, &a.memClockKHz}, {attrBusWidth, &a.busWidth}, {attrL2, &a.l2},
		{attrCopyEngines, &a.copyEngines}, {attrCCMajor, &a.major}, {attrCCMinor, &a.minor}, {attrSmemOptin, &a.smemOptin},
	} {
		var v C.int
		if err := l.check("cuDeviceGetAttribute", C.wa_attr(l.a, C.int(dev), C.int(f.attr), &v)); err != nil {
			return a, fmt.Errorf("attribute %d: %w", f.attr, err)
		}
		*f.dst = int(v)
	}
	return a, nil
}

func (l *libcuda) retain(dev int) (cuContext, error) {
	var c C.CUcontext
	err := l.check("cuDevicePrimaryCtxRetain", C.wa_retain(l.a, C.int(dev), &c))
	return cuContext(c), err
}

func (l *libcuda) release(dev int) error {
	return l.check("cuDevicePrimaryCtxRelease", C.wa_release(l.a, C.int(dev)))
}

func (l *libcuda) memInfo(c cuContext) (int64, int64, error) {
	var f, t C.size_t
	err := l.check("cuMemGetInfo", C.wa_meminfo(l.a, C.CUcontext(c), &f, &t))
	return int64(f), int64(t), err
}

func (l *libcuda) alloc(c cuContext, n int64) (uint64, error) {
	var p C.CUdeviceptr
	err := l.check("cuMemAlloc", C.wa_alloc(l.a, C.CUcontext(c), &p, C.size_t(n)))
	return uint64(p), err
}

func (l *libcuda) free(c cuContext, p uint64) error {
	return l.check("cuMemFree", C.wa_free(l.a, C.CUcontext(c), C.CUdeviceptr(p)))
}

func (l *libcuda) allocHost(c cuContext, n int64) (unsafe.Pointer, error) {
	var p unsafe.Pointer
	err := l.check("cuMemAllocHost", C.wa_alloc_host(l.a, C.CUcontext(c), &p, C.size_t(n)))
	return p, err
}

func (l *libcuda) freeHost(c cuContext, p unsafe.Pointer) error {
	return l.check("cuMemFreeHost", C.wa_free_host(l.a, C.CUcontext(c), p))
}

func (l *libcuda) newStream(c cuContext) (cuStream, error) {
	var s C.CUstream
	err := l.check("cuStreamCreate", C.wa_stream(l.a, C.CUcontext(c), &s))
	return cuStream(s), err
}

func (l *libcuda) destroyStream(c cuContext, s cuStream) error {
	return l.check("cuStreamDestroy", C.wa_stream_destroy(l.a, C.CUcontext(c), C.CUstream(s)))
}

func (l *libcuda) syncStream(c cuContext, s cuStream) error {
	return l.check("cuStreamSynchronize", C.wa_stream_sync(l.a, C.CUcontext(c), C.CUstream(s)))
}

func (l *libcuda) newEvent(c cuContext) (cuEvent, error) {
	var e C.CUevent
	err := l.check("cuEventCreate", C.wa_event(l.a, C.CUcontext(c), &e))
	return cuEvent(e), err
}

func (l *libcuda) destroyEvent(c cuContext, e cuEvent) error {
	return l.check("cuEventDestroy", C.wa_event_destroy(l.a, C.CUcontext(c), C.CUevent(e)))
}

func (l *libcuda) record(c cuContext, e cuEvent, s cuStream) error {
	return l.check("cuEventRecord", C.wa_record(l.a, C.CUcontext(c), C.CUevent(e), C.CUstream(s)))
}

func (l *libcuda) syncEvent(c cuContext, e cuEvent) error {
	return l.check("cuEventSynchronize", C.wa_event_sync(l.a, C.CUcontext(c), C.CUevent(e)))
}

func (l *libcuda) wait(c cuContext, s cuStream, e cuEvent) error {
	return l.check("cuStreamWaitEvent", C.wa_wait(l.a, C.CUcontext(c), C.CUstream(s), C.CUevent(e)))
}

func (l *libcuda) h2d(c cuContext, dst uint64, src unsafe.Pointer, n int64, s cuStream) error {
	return l.check("cuMemcpyHtoDAsync", C.wa_h2d(l.a, C.CUcontext(c), C.CUdeviceptr(dst), src, C.size_t(n), C.CUstream(s)))
}

func (l *libcuda) d2h(c cuContext, dst unsafe.Pointer, src uint64, n int64, s cuStream) error {
	return l.check("cuMemcpyDtoHAsync", C.wa_d2h(l.a, C.CUcontext(c), dst, C.CUdeviceptr(src), C.size_t(n), C.CUstream(s)))
}

func (l *libcuda) d2d(c cuContext, dst, src uint64, n int64, s cuStream) error {
	return l.check("cuMemcpyDtoDAsync", C.wa_d2d(l.a, C.CUcontext(c), C.CUdeviceptr(dst), C.CUdeviceptr(src), C.size_t(n), C.CUstream(s)))
}

func (l *libcuda) memset(c cuContext, dst uint64, v byte, n int64, s cuStream) error {
	return l.check("cuMemsetD8Async", C.wa_memset(l.a, C.CUcontext(c), C.CUdeviceptr(dst), C.uchar(v), C.size_t(n), C.CUstream(s)))
}

func (l *libcuda) loadModule(c cuContext, ptx []byte) (cuModule, error) {
	img := C.CBytes(append(ptx[:len(ptx):len(ptx)], 0)) // the driver wants a NUL-terminated string
	defer C.free(img)
	const logSize = 4096
	log := (*C.char)(C.calloc(logSize, 1))
	defer C.free(unsafe.Pointer(log))
	var m C.CUmodule
	err := l.check("cuModuleLoadDataEx", C.wa_module(l.a, C.CUcontext(c), &m, (*C.char)(img), log, logSize))
	if e, ok := err.(*Error); ok {
		e.Log = C.GoString(log)
	}
	return cuModule(m), err
}

func (l *libcuda) unloadModule(c cuContext, m cuModule) error {
	return l.check("cuModuleUnload", C.wa_module_unload(l.a, C.CUcontext(c), C.CUmodule(m)))
}

func (l *libcuda) function(c cuContext, m cuModule, name string) (cuFunction, error) {
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	var f C.CUfunction
	err := l.check("cuModuleGetFunction", C.wa_function(l.a, C.CUcontext(c), &f, C.CUmodule(m), cname))
	if err != nil {
		err = fmt.Errorf("%s: %w", name, err)
	}
	return cuFunction(f), err
}

func (l *libcuda) setMaxDynamicShared(c cuContext, f cuFunction, bytes int) error {
	return l.check("cuFuncSetAttribute", C.wa_max_dyn_shared(l.a, C.CUcontext(c), C.CUfunction(f), C.int(bytes)))
}

func (l *libcuda) launch(c cuContext, f cuFunction, grid, block [3]uint32, shmem int, s cuStream, args []uint64) error {
	var p *C.ulonglong
	if len(args) > 0 {
		p = (*C.ulonglong)(unsafe.Pointer(&args[0]))
	}
	return l.check("cuLaunchKernel", C.wa_launch(l.a, C.CUcontext(c), C.CUfunction(f),
		C.uint(grid[0]), C.uint(grid[1]), C.uint(grid[2]), C.uint(block[0]), C.uint(block[1]), C.uint(block[2]),
		C.uint(shmem), C.CUstream(s), p, C.int(len(args))))
}
