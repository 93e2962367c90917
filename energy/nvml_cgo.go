//go:build linux && cgo

package energy

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stddef.h>
#include <stdlib.h>

// The NVML types and prototypes used here, declared instead of included (no NVIDIA header is
// needed to build, and none of nvml.h's deprecated declarations is compiled): return codes are
// ints, a device is an opaque pointer. The signatures are those of nvml.h; the _v2 names are
// the ones nvml.h maps the plain names to.
typedef int wn_return;
typedef void *wn_device;

typedef struct {
	wn_return (*Init)(void);
	wn_return (*Shutdown)(void);
	wn_return (*DeviceGetCount)(unsigned int *);
	wn_return (*DeviceGetHandleByIndex)(unsigned int, wn_device *);
	wn_return (*DeviceGetName)(wn_device, char *, unsigned int);
	wn_return (*DeviceGetPowerUsage)(wn_device, unsigned int *);
	const char *(*ErrorString)(wn_return);
	// Optional: drivers before Volta's lack it.
	wn_return (*DeviceGetTotalEnergyConsumption)(wn_device, unsigned long long *);
} wn_api;

static const struct {
	const char *name;
	size_t off;
	int optional;
} wn_syms[] = {
	{"nvmlInit_v2", offsetof(wn_api, Init), 0},
	{"nvmlShutdown", offsetof(wn_api, Shutdown), 0},
	{"nvmlDeviceGetCount_v2", offsetof(wn_api, DeviceGetCount), 0},
	{"nvmlDeviceGetHandleByIndex_v2", offsetof(wn_api, DeviceGetHandleByIndex), 0},
	{"nvmlDeviceGetName", offsetof(wn_api, DeviceGetName), 0},
	{"nvmlDeviceGetPowerUsage", offsetof(wn_api, DeviceGetPowerUsage), 0},
	{"nvmlErrorString", offsetof(wn_api, ErrorString), 0},
	{"nvmlDeviceGetTotalEnergyConsumption", offsetof(wn_api, DeviceGetTotalEnergyConsumption), 1},
};

// wn_open loads the library (never unloaded) and resolves its symbols. It returns NULL and
// sets *err to dlerror()'s message, or to the name of the first missing symbol with
// *missing = 1.
static wn_api *wn_open(const char *path, const char **err, int *missing) {
	void *lib = dlopen(path, RTLD_LAZY | RTLD_LOCAL);
	if (!lib) {
		*err = dlerror();
		return NULL;
	}
	wn_api *a = calloc(1, sizeof(wn_api));
	if (!a) {
		*err = "out of memory";
		dlclose(lib);
		return NULL;
	}
	for (size_t i = 0; i < sizeof(wn_syms) / sizeof(wn_syms[0]); i++) {
		void *p = dlsym(lib, wn_syms[i].name);
		if (!p && !wn_syms[i].optional) {
			*err = wn_syms[i].name;
			*missing = 1;
			free(a);
			dlclose(lib);
			return NULL;
		}
		*(void **)((char *)a + wn_syms[i].off) = p;
	}
	return a;
}

static wn_return wn_init(wn_api *a) { return a->Init(); }
static wn_return wn_shutdown(wn_api *a) { return a->Shutdown(); }
static wn_return wn_count(wn_api *a, unsigned int *n) { return a->DeviceGetCount(n); }
static wn_return wn_handle(wn_api *a, unsigned int i, wn_device *d) { return a->DeviceGetHandleByIndex(i, d); }
static wn_return wn_name(wn_api *a, wn_device d, char *buf, unsigned int n) { return a->DeviceGetName(d, buf, n); }
static wn_return wn_power(wn_api *a, wn_device d, unsigned int *mw) { return a->DeviceGetPowerUsage(d, mw); }
static int wn_has_energy(wn_api *a) { return a->DeviceGetTotalEnergyConsumption != NULL; }
static wn_return wn_energy(wn_api *a, wn_device d, unsigned long long *mj) { return a->DeviceGetTotalEnergyConsumption(d, mj); }
static const char *wn_error(wn_api *a, wn_return r) { return a->ErrorString ? a->ErrorString(r) : NULL; }
*/
import "C"

import (
	"fmt"
	"sync"
	"unsafe"

	"github.com/wattagg/wattagg/internal/sysinfo"
)

// nvmlLibrary is the name the dynamic loader finds the NVIDIA Management Library by.
const nvmlLibrary = "libnvidia-ml.so.1"

// DefaultNVML is the NVIDIA Management Library, libnvidia-ml.so.1, opened with dlopen at Init
// and called through the few functions the meters need: a machine without the driver gets
// ErrUnavailable, not a failure to start, and building needs no NVIDIA header.
func DefaultNVML() NVML { return NVMLAt(nvmlLibrary) }

// NVMLAt is DefaultNVML with the library at path (a driver installed outside the loader's
// search path, or a fake in tests).
func NVMLAt(path string) NVML { return &dlNVML{path: path} }

// libraries are the NVML libraries opened so far, by path: each is opened once per process
// and never closed (NVML itself counts Init and Shutdown).
var libraries = struct {
	sync.Mutex
	api map[string]*C.wn_api
}{api: map[string]*C.wn_api{}}

func openNVML(path string) (*C.wn_api, error) {
	libraries.Lock()
	defer libraries.Unlock()
	if a, ok := libraries.api[path]; ok {
		return a, nil
	}
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var cerr *C.char
	var missing C.int
	a := C.wn_open(cpath, &cerr, &missing)
	if a == nil {
		if missing != 0 {
			return nil, fmt.Errorf("%w: nvmlInit: %s lacks %s: the NVIDIA driver is too old", ErrUnavailable, path, C.GoString(cerr))
		}
		return nil, fmt.Errorf("%w: nvmlInit: %s not found (no NVIDIA driver installed): %s", ErrUnavailable, path, C.GoString(cerr))
	}
	libraries.api[path] = a
	return a, nil
}

// dlNVML implements NVML over the library's C functions. No call reaches the library after a
// failed Init or after Shutdown.
type dlNVML struct {
	path string

	mu    sync.Mutex
	api   *C.wn_api
	ready bool
}

func (g *dlNVML) Init() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.api == nil {
		if ok, why := sysinfo.NVIDIADriver(); g.path == nvmlLibrary && !ok {
			return fmt.Errorf("%w: nvmlInit: %s", ErrUnavailable, why)
		}
		a, err := openNVML(g.path)
		if err != nil {
			return err
		}
		g.api = a
	}
	if r := C.wn_init(g.api); r != 0 {
		return g.error("nvmlInit", r)
	}
	g.ready = true
	return nil
}

func (g *dlNVML) Shutdown() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.ready {
		return nil
	}
	g.ready = false
	if r := C.wn_shutdown(g.api); r != 0 {
		return g.error("nvmlShutdown", r)
	}
	return nil
}

// call runs fn with the library while it is initialised.
func (g *dlNVML) call(fn func(a *C.wn_api) error) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.ready {
		return fmt.Errorf("%w: NVML is not initialised", ErrUnavailable)
	}
	return fn(g.api)
}

func (g *dlNVML) DeviceCount() (int, error) {
	var n C.uint
	err := g.call(func(a *C.wn_api) error {
		if r := C.wn_count(a, &n); r != 0 {
			return g.error("nvmlDeviceGetCount", r)
		}
		return nil
	})
	return int(n), err
}

func (g *dlNVML) Device(i int) (NVMLDevice, error) {
	if i < 0 {
		return nil, fmt.Errorf("%w: GPU index %d", ErrOption, i)
	}
	var d C.wn_device
	err := g.call(func(a *C.wn_api) error {
		if r := C.wn_handle(a, C.uint(i), &d); r != 0 {
			return g.error("nvmlDeviceGetHandleByIndex", r)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &dlNVMLDevice{g: g, d: d}, nil
}

// dlNVMLDevice is one GPU's handle, valid while the library is initialised.
type dlNVMLDevice struct {
	g *dlNVML
	d C.wn_device
}

// nvmlNameBytes is NVML_DEVICE_NAME_V2_BUFFER_SIZE.
const nvmlNameBytes = 96

func (d *dlNVMLDevice) Name() (string, error) {
	var buf [nvmlNameBytes]C.char
	err := d.g.call(func(a *C.wn_api) error {
		if r := C.wn_name(a, d.d, &buf[0], nvmlNameBytes); r != 0 {
			return d.g.error("nvmlDeviceGetName", r)
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	buf[nvmlNameBytes-1] = 0
	return C.GoString(&buf[0]), nil
}

func (d *dlNVMLDevice) TotalEnergy() (uint64, error) {
	var mj C.ulonglong
	err := d.g.call(func(a *C.wn_api) error {
		if C.wn_has_energy(a) == 0 {
			return fmt.Errorf("%w: this driver has no nvmlDeviceGetTotalEnergyConsumption", ErrNotSupported)
		}
		if r := C.wn_energy(a, d.d, &mj); r != 0 {
			return d.g.error("nvmlDeviceGetTotalEnergyConsumption", r)
		}
		return nil
	})
	return uint64(mj), err
}

func (d *dlNVMLDevice) Power() (uint32, error) {
	var mw C.uint
	err := d.g.call(func(a *C.wn_api) error {
		if r := C.wn_power(a, d.d, &mw); r != 0 {
			return d.g.error("nvmlDeviceGetPowerUsage", r)
		}
		return nil
	})
	return uint32(mw), err
}

// error maps an NVML return code to the package's sentinels, with NVML's own words.
func (g *dlNVML) error(call string, r C.wn_return) error {
	words := fmt.Sprintf("NVML error %d", int(r))
	if s := C.wn_error(g.api, r); s != nil {
		words = C.GoString(s)
	}
	return nvmlError(call, int(r), words)
}
