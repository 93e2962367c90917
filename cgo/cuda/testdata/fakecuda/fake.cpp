// fake.cpp: a fake libcuda.so.1 for testing cgo/cuda on machines without a GPU, in the spirit of
// go-nvml's mock package. It implements the driver API calls that cgo/cuda resolves, with the
// real driver's contracts made strict so that bugs show up:
//
//   - cuInit first; every context-bound call fails with CUDA_ERROR_INVALID_CONTEXT on an OS
//     thread with no current context (contexts are per thread, as in the real driver);
//   - streams are asynchronous: each has a worker thread, events order them, and
//     FAKECUDA_DELAY_US delays every stream operation to expose missing synchronisation;
//   - async copies must stay inside one device allocation and one page-locked host
//     allocation (a Go heap pointer is refused), the legacy default stream is refused;
//   - device memory is poisoned with 0xA5 on allocation and surrounded by guard pages that are
//     checked on free (a kernel writing out of bounds fails the next cuMemFree); frees wait for
//     every stream, as the real ones synchronise the device;
//   - modules are PTX text: a function exists only if the image has its .entry and this file has
//     its host build; the PTX's .target must not be newer than the device;
//   - kernels run on the stream's worker thread: the real kernel sources, compiled as C++ under
//     sim.h; a block runs as fibers that switch at __syncthreads (a barrier that not every
//     thread of the block reaches is a launch failure);
//   - the kernels are compiled with -fsanitize=alignment, and this file handles the sanitizer's
//     reports: a kernel that loads or stores through a misaligned pointer (an 8-byte parameter
//     table at an address that is only 2-aligned, a float4 load from a 4-aligned address) fails
//     its launch with CUDA_ERROR_MISALIGNED_ADDRESS, sticky as on a real GPU, where x86 would
//     have done the access silently.
//
// Configuration (read by cuInit): FAKECUDA_DEVICES (1), FAKECUDA_CC (90), FAKECUDA_SMS (4),
// FAKECUDA_MEM_MIB (1024), FAKECUDA_SMEM_OPTIN (101376), FAKECUDA_DELAY_US (0), and
// FAKECUDA_LAUNCH_LOG: a file that receives the name of every kernel launched, a line each (so
// that a test of a whole program, the CLI, can tell which kernels it ran).
//
// The test that builds this file generates kernels.inc (an #include of every kernel source) and
// registry.inc (a WA_REGISTER(name) line per kernel).
#include "sim.h"

#include <setjmp.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "kernels.inc"

typedef int CUresult;
typedef unsigned long long CUdeviceptr;

enum {
	OK = 0,
	INVALID_VALUE = 1,
	OUT_OF_MEMORY = 2,
	NOT_INITIALIZED = 3,
	NO_DEVICE = 100,
	INVALID_DEVICE = 101,
	INVALID_IMAGE = 200,
	INVALID_CONTEXT = 201,
	INVALID_PTX = 218,
	INVALID_HANDLE = 400,
	NOT_FOUND = 500,
	MISALIGNED_ADDRESS = 716,
	LAUNCH_FAILED = 719,
	NOT_SUPPORTED = 801,
};

// ---- simulated threads -------------------------------------------------------------------

thread_local uint3 threadIdx, blockIdx;
thread_local dim3 blockDim, gridDim;

namespace {

struct Entry;

// Sched runs the blocks of one launch on the calling OS thread. Fibers are entered once with
// setcontext and switch with _setjmp/_longjmp afterwards (no signal-mask system call per switch).
struct Jmp {
	jmp_buf b;
};
struct Sched {
	jmp_buf main;
	std::vector<ucontext_t> ctx;
	std::vector<Jmp> jb;
	std::vector<char> done, waiting, started;
	std::vector<char *> stacks;
	bool fibers = false;  // running the block as fibers
	bool barrier = false; // a barrier was reached in this launch
	int cur = 0;
	std::function<void()> body;
	std::vector<char> dyn;
	std::string error;
	CUresult code = 0;     // the launch's error: LAUNCH_FAILED unless a handler says otherwise
	bool inKernel = false; // this thread is running a kernel's blocks
};
thread_local Sched sched;
const size_t stackBytes = 256 << 10;

void setThread(int t) {
	threadIdx.x = t % blockDim.x;
	threadIdx.y = (t / blockDim.x) % blockDim.y;
	threadIdx.z = t / (blockDim.x * blockDim.y);
}

void fiberMain() {
	sched.body();
	sched.done[sched.cur] = 1;
	_longjmp(sched.main, 1); // never return: the context a return would resume is stale
}

// runBlock runs every thread of the current block: as fibers, each resumed in turn until it
// waits at the barrier or returns, or, for a kernel seen to have no barrier, one after another.
void runBlock(int n, bool useFibers) {
	if (!useFibers) {
		sched.fibers = false;
		for (int t = 0; t < n && sched.error.empty(); t++) {
			setThread(t);
			sched.body();
		}
		return;
	}
	sched.fibers = true;
	sched.ctx.resize(n);
	sched.jb.resize(n);
	sched.done.assign(n, 0);
	sched.waiting.assign(n, 0);
	sched.started.assign(n, 0);
	while ((int)sched.stacks.size() < n) sched.stacks.push_back((char *)malloc(stackBytes));
	for (int t = 0; t < n; t++) {
		getcontext(&sched.ctx[t]);
		sched.ctx[t].uc_stack.ss_sp = sched.stacks[t];
		sched.ctx[t].uc_stack.ss_size = stackBytes;
		sched.ctx[t].uc_link = nullptr;
		makecontext(&sched.ctx[t], fiberMain, 0);
	}
	for (;;) {
		int finished = 0, waiting = 0;
		for (int t = 0; t < n; t++) {
			if (sched.done[t]) continue;
			sched.cur = t;
			sched.waiting[t] = 0;
			setThread(t);
			if (!_setjmp(sched.main)) {
				if (!sched.started[t]) {
					sched.started[t] = 1;
					setcontext(&sched.ctx[t]);
				}
				_longjmp(sched.jb[t].b, 1);
			}
		}
		for (int t = 0; t < n; t++) finished += sched.done[t], waiting += sched.waiting[t];
		if (finished == n) break;
		if (finished > 0 && waiting > 0) {
			sched.error = "__syncthreads not reached by every thread of the block";
			break;
		}
	}
	sched.fibers = false;
}

} // namespace

void __syncthreads() {
	if (!sched.fibers) {
		sched.error = "__syncthreads in a block although the first block had none";
		return;
	}
	sched.barrier = true;
	sched.waiting[sched.cur] = 1;
	if (!_setjmp(sched.jb[sched.cur].b)) _longjmp(sched.main, 1);
}

void *wa_sim_dyn_shared() { return sched.dyn.data(); }

// ---- misaligned accesses -------------------------------------------------------------------

// The library is compiled with -fsanitize=alignment and linked without the sanitizer's runtime:
// these are its report functions (the ABI of GCC's and Clang's UBSan, type_mismatch_v1), hidden
// so that the calls bind to them. A GPU faults on a load or store that is not aligned to its
// size; x86 performs it. A report from a kernel fails its launch as the GPU would; one from
// this file's own code is a bug of the fake and aborts.
namespace {
struct UbsanLocation {
	const char *file;
	unsigned line, column;
};
struct UbsanType {
	unsigned short kind, info;
	char name[1];
};
struct UbsanTypeMismatch {
	UbsanLocation loc;
	const UbsanType *type;
	unsigned char logAlignment;
	unsigned char checkKind;
};

void misaligned(UbsanTypeMismatch *d, uintptr_t p) {
	char msg[512];
	const char *file = d->loc.file ? d->loc.file : "?";
	if (const char *slash = strrchr(file, '/')) file = slash + 1;
	snprintf(msg, sizeof msg, "misaligned address %#lx for %s (%u-byte aligned) at %s:%u", (unsigned long)p,
		 d->type ? d->type->name : "a value", 1u << d->logAlignment, file, d->loc.line);
	if (!sched.inKernel) {
		fprintf(stderr, "fakecuda: %s outside a kernel\n", msg);
		abort();
	}
	if (sched.error.empty()) {
		sched.error = msg;
		sched.code = MISALIGNED_ADDRESS;
	}
}
} // namespace

extern "C" __attribute__((visibility("hidden"))) void __ubsan_handle_type_mismatch_v1(UbsanTypeMismatch *d, uintptr_t p) {
	misaligned(d, p);
}
extern "C" __attribute__((visibility("hidden"))) void __ubsan_handle_type_mismatch_v1_abort(UbsanTypeMismatch *d,
											   uintptr_t p) {
	misaligned(d, p);
	abort();
}

// ---- kernel registry ---------------------------------------------------------------------

namespace {

typedef void (*anyfn)();

struct Entry {
	const char *name;
	std::vector<size_t> sizes;
	anyfn fn;
	void (*call)(anyfn, void **);
	int maxDynShared;
};

template <typename... A, size_t... I> void callWith(anyfn f, void **args, std::index_sequence<I...>) {
	((void (*)(A...))f)(*(A *)args[I]...);
}
template <typename... A> void callArgs(anyfn f, void **args) { callWith<A...>(f, args, std::index_sequence_for<A...>{}); }
template <typename... A> Entry makeEntry(const char *name, void (*f)(A...)) {
	return Entry{name, {sizeof(A)...}, (anyfn)f, &callArgs<A...>, 48 << 10};
}

#define WA_REGISTER(k) makeEntry(#k, &k),
Entry registry[] = {
#include "registry.inc"
};
#undef WA_REGISTER

Entry *lookup(const std::string &name) {
	for (auto &e : registry)
		if (name == e.name) return &e;
	return nullptr;
}

// ---- driver state ------------------------------------------------------------------------

int envInt(const char *k, int def) {
	const char *v = getenv(k);
	return v && *v ? atoi(v) : def;
}

struct Config {
	int devices, cc, sms, smemOptin, delayUs;
	long long memBytes;
	FILE *launchLog;
} cfg;
bool initialised;

struct Ctx {
	int dev;
	int refs;
	CUresult sticky; // a launch failed (its error): every later call fails with it
};
std::mutex mu; // guards everything below
std::map<int, Ctx *> primary;
thread_local Ctx *current;

const size_t guard = 4096;
struct Alloc {
	char *base;
	size_t size;
	Ctx *ctx;
};
std::map<CUdeviceptr, Alloc> dmem; // by device address
std::map<char *, size_t> hmem;       // page-locked host memory
long long used;

struct Module {
	std::set<std::string> entries;
};
std::set<Module *> modules;

struct Stream;
std::set<Stream *> streams;
struct Event;
std::set<Event *> events;

void fail(const char *call, const std::string &msg) { fprintf(stderr, "fakecuda: %s: %s\n", call, msg.c_str()); }

// Stream runs its operations in order on its own thread.
struct Stream {
	std::mutex m;
	std::condition_variable cv;
	std::deque<std::function<void()>> q;
	bool busy = false, stop = false;
	Ctx *ctx;
	std::thread worker;

	explicit Stream(Ctx *c) : ctx(c), worker([this] { run(); }) {}
	void run() {
		std::unique_lock<std::mutex> l(m);
		for (;;) {
			cv.wait(l, [this] { return stop || !q.empty(); });
			if (q.empty()) return;
			auto op = std::move(q.front());
			q.pop_front();
			busy = true;
			l.unlock();
			if (cfg.delayUs > 0) std::this_thread::sleep_for(std::chrono::microseconds(cfg.delayUs));
			op();
			l.lock();
			busy = false;
			cv.notify_all();
		}
	}
	void push(std::function<void()> op) {
		std::lock_guard<std::mutex> l(m);
		q.push_back(std::move(op));
		cv.notify_all();
	}
	void drain() {
		std::unique_lock<std::mutex> l(m);
		cv.wait(l, [this] { return q.empty() && !busy; });
	}
	~Stream() {
		{
			std::lock_guard<std::mutex> l(m);
			stop = true;
			cv.notify_all();
		}
		worker.join();
	}
};

struct Event {
	std::mutex m;
	std::condition_variable cv;
	unsigned long long recorded = 0, completed = 0;
};

// drainAll waits for every stream, as the real cuMemFree and cuMemFreeHost synchronise the
// device before freeing. Called without mu held: workers take it to report failures.
void drainAll() {
	std::vector<Stream *> all;
	{
		std::lock_guard<std::mutex> l(mu);
		all.assign(streams.begin(), streams.end());
	}
	for (Stream *st : all) st->drain();
}

bool guardsIntact(const Alloc &a) {
	for (size_t i = 0; i < guard; i++)
		if ((unsigned char)a.base[i] != 0xA5 || (unsigned char)a.base[guard + a.size + i] != 0xA5) return false;
	return true;
}

// inDevice reports whether [p, p+n) lies inside one device allocation.
bool inDevice(CUdeviceptr p, size_t n) {
	auto it = dmem.upper_bound(p);
	if (it == dmem.begin()) return false;
	--it;
	return p >= it->first && p + n <= it->first + it->second.size;
}

bool inPinned(const void *p, size_t n) {
	char *c = (char *)p;
	auto it = hmem.upper_bound(c);
	if (it == hmem.begin()) return false;
	--it;
	return c >= it->first && c + n <= it->first + it->second;
}

// Bound checks the calling thread's context: cuInit done, a current context, no sticky error.
CUresult bound(const char *call) {
	if (!initialised) return NOT_INITIALIZED;
	if (!current) {
		fail(call, "no current context on this thread");
		return INVALID_CONTEXT;
	}
	return current->sticky;
}

Stream *stream(void *s, const char *call) {
	if (!s) {
		fail(call, "legacy default stream");
		return nullptr;
	}
	if (!streams.count((Stream *)s)) {
		fail(call, "unknown stream");
		return nullptr;
	}
	return (Stream *)s;
}

} // namespace

// ---- the driver API ------------------------------------------------------------------------

#define API extern "C" __attribute__((visibility("default")))
#define CHECK(call)                                                                                                    \
	do {                                                                                                           \
		CUresult r_ = bound(call);                                                                             \
		if (r_) return r_;                                                                                     \
	} while (0)

API CUresult cuInit(unsigned flags) {
	if (flags) return INVALID_VALUE;
	std::lock_guard<std::mutex> l(mu);
	cfg.devices = envInt("FAKECUDA_DEVICES", 1);
	cfg.cc = envInt("FAKECUDA_CC", 90);
	cfg.sms = envInt("FAKECUDA_SMS", 4);
	cfg.smemOptin = envInt("FAKECUDA_SMEM_OPTIN", 101376);
	cfg.delayUs = envInt("FAKECUDA_DELAY_US", 0);
	cfg.memBytes = (long long)envInt("FAKECUDA_MEM_MIB", 1024) << 20;
	const char *log = getenv("FAKECUDA_LAUNCH_LOG");
	if (log && *log && !cfg.launchLog) cfg.launchLog = fopen(log, "a");
	if (cfg.devices <= 0) return NO_DEVICE;
	initialised = true;
	return OK;
}

API CUresult cuDriverGetVersion(int *v) {
	*v = 12040;
	return OK;
}

API CUresult cuDeviceGetCount(int *n) {
	if (!initialised) return NOT_INITIALIZED;
	*n = cfg.devices;
	return OK;
}

API CUresult cuDeviceGet(int *d, int ordinal) {
	if (!initialised) return NOT_INITIALIZED;
	if (ordinal < 0 || ordinal >= cfg.devices) return INVALID_DEVICE;
	*d = ordinal;
	return OK;
}

API CUresult cuDeviceGetAttribute(int *v, int attr, int dev) {
	if (!initialised) return NOT_INITIALIZED;
	if (dev < 0 || dev >= cfg.devices) return INVALID_DEVICE;
	switch (attr) {
	case 16: *v = cfg.sms; break;                  // MULTIPROCESSOR_COUNT
	case 38: *v = 4 << 20; break;                  // L2_CACHE_SIZE
	case 40: *v = 2; break;                        // ASYNC_ENGINE_COUNT
	case 75: *v = cfg.cc / 10; break;              // COMPUTE_CAPABILITY_MAJOR
	case 76: *v = cfg.cc % 10; break;              // COMPUTE_CAPABILITY_MINOR
	case 97: *v = cfg.smemOptin; break;            // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
	case 36: *v = 1593000; break;                  // MEMORY_CLOCK_RATE (kHz)
	case 37: *v = 5120; break;                     // GLOBAL_MEMORY_BUS_WIDTH
	default: return INVALID_VALUE;
	}
	return OK;
}

API CUresult cuDeviceGetName(char *name, int len, int dev) {
	if (!initialised) return NOT_INITIALIZED;
	if (dev < 0 || dev >= cfg.devices) return INVALID_DEVICE;
	snprintf(name, len, "wattagg fake GPU (CPU simulation)");
	return OK;
}

API CUresult cuDeviceTotalMem_v2(size_t *b, int dev) {
	if (!initialised) return NOT_INITIALIZED;
	if (dev < 0 || dev >= cfg.devices) return INVALID_DEVICE;
	*b = cfg.memBytes;
	return OK;
}

API CUresult cuDeviceGetPCIBusId(char *id, int len, int dev) {
	if (!initialised) return NOT_INITIALIZED;
	if (dev < 0 || dev >= cfg.devices) return INVALID_DEVICE;
	snprintf(id, len, "0000:%02x:00.0", dev + 1);
	return OK;
}

API CUresult cuDevicePrimaryCtxSetFlags_v2(int dev, unsigned flags) {
	if (!initialised) return NOT_INITIALIZED;
	if (dev < 0 || dev >= cfg.devices || flags > 0x1f) return INVALID_VALUE;
	return OK;
}

API CUresult cuDevicePrimaryCtxRetain(void **ctx, int dev) {
	if (!initialised) return NOT_INITIALIZED;
	if (dev < 0 || dev >= cfg.devices) return INVALID_DEVICE;
	std::lock_guard<std::mutex> l(mu);
	Ctx *&c = primary[dev];
	if (!c) c = new Ctx{dev, 0, OK};
	c->refs++;
	*ctx = c;
	return OK;
}

API CUresult cuDevicePrimaryCtxRelease_v2(int dev) {
	if (!initialised) return NOT_INITIALIZED;
	std::lock_guard<std::mutex> l(mu);
	auto it = primary.find(dev);
	if (it == primary.end() || it->second->refs == 0) return INVALID_CONTEXT;
	if (--it->second->refs == 0) {
		// As the real driver does, destroying the context frees what it holds; report leaks.
		int leaked = 0;
		for (auto a = dmem.begin(); a != dmem.end();) {
			if (a->second.ctx == it->second) {
				leaked++;
				free(a->second.base);
				used -= a->second.size;
				a = dmem.erase(a);
			} else {
				++a;
			}
		}
		if (leaked) fail("cuDevicePrimaryCtxRelease", std::to_string(leaked) + " device allocations leaked");
		it->second->sticky = OK;
	}
	return OK;
}

API CUresult cuCtxSetCurrent(void *ctx) {
	if (!initialised) return NOT_INITIALIZED;
	std::lock_guard<std::mutex> l(mu);
	Ctx *c = (Ctx *)ctx;
	if (c && (primary.count(c->dev) == 0 || primary[c->dev] != c || c->refs == 0)) return INVALID_CONTEXT;
	current = c;
	return OK;
}

API CUresult cuMemGetInfo_v2(size_t *freeBytes, size_t *total) {
	std::lock_guard<std::mutex> l(mu);
	CHECK("cuMemGetInfo");
	*freeBytes = cfg.memBytes - used;
	*total = cfg.memBytes;
	return OK;
}

API CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t n) {
	std::lock_guard<std::mutex> l(mu);
	CHECK("cuMemAlloc");
	if (n == 0) return INVALID_VALUE;
	size_t size = (n + 255) & ~(size_t)255;
	if (used + (long long)size > cfg.memBytes) return OUT_OF_MEMORY;
	char *base = (char *)aligned_alloc(4096, guard + size + guard);
	if (!base) return OUT_OF_MEMORY;
	memset(base, 0xA5, guard + size + guard);
	*p = (CUdeviceptr)(base + guard);
	dmem[*p] = Alloc{base, size, current};
	used += size;
	return OK;
}

API CUresult cuMemFree_v2(CUdeviceptr p) {
	drainAll();
	std::lock_guard<std::mutex> l(mu);
	CHECK("cuMemFree");
	auto it = dmem.find(p);
	if (it == dmem.end()) {
		fail("cuMemFree", "not an allocation");
		return INVALID_VALUE;
	}
	bool ok = guardsIntact(it->second);
	free(it->second.base);
	used -= it->second.size;
	dmem.erase(it);
	if (!ok) {
		fail("cuMemFree", "a kernel wrote outside this allocation");
		current->sticky = LAUNCH_FAILED;
		return LAUNCH_FAILED;
	}
	return OK;
}

API CUresult cuMemAllocHost_v2(void **p, size_t n) {
	std::lock_guard<std::mutex> l(mu);
	CHECK("cuMemAllocHost");
	if (n == 0) return INVALID_VALUE;
	char *b = (char *)aligned_alloc(4096, (n + 4095) & ~(size_t)4095);
	if (!b) return OUT_OF_MEMORY;
	memset(b, 0x5A, n);
	hmem[b] = n;
	*p = b;
	return OK;
}

API CUresult cuMemFreeHost(void *p) {
	drainAll();
	std::lock_guard<std::mutex> l(mu);
	CHECK("cuMemFreeHost");
	auto it = hmem.find((char *)p);
	if (it == hmem.end()) {
		fail("cuMemFreeHost", "not page-locked memory from cuMemAllocHost");
		return INVALID_VALUE;
	}
	free(it->first);
	hmem.erase(it);
	return OK;
}

API CUresult cuStreamCreate(void **s, unsigned flags) {
	std::lock_guard<std::mutex> l(mu);
	CHECK("cuStreamCreate");
	if (flags > 1) return INVALID_VALUE;
	Stream *st = new Stream(current);
	streams.insert(st);
	*s = st;
	return OK;
}

API CUresult cuStreamDestroy_v2(void *s) {
	Stream *st;
	{
		std::lock_guard<std::mutex> l(mu);
		CHECK("cuStreamDestroy");
		if (!(st = stream(s, "cuStreamDestroy"))) return INVALID_HANDLE;
		streams.erase(st);
	}
	st->drain();
	delete st;
	return OK;
}

API CUresult cuStreamSynchronize(void *s) {
	Stream *st;
	{
		std::lock_guard<std::mutex> l(mu);
		CHECK("cuStreamSynchronize");
		if (!(st = stream(s, "cuStreamSynchronize"))) return INVALID_HANDLE;
	}
	st->drain();
	std::lock_guard<std::mutex> l(mu);
	return st->ctx->sticky;
}

API CUresult cuEventCreate(void **e, unsigned flags) {
	std::lock_guard<std::mutex> l(mu);
	CHECK("cuEventCreate");
	if (flags > 0xf) return INVALID_VALUE;
	Event *ev = new Event;
	events.insert(ev);
	*e = ev;
	return OK;
}

API CUresult cuEventDestroy_v2(void *e) {
	std::lock_guard<std::mutex> l(mu);
	CHECK("cuEventDestroy");
	if (!events.erase((Event *)e)) return INVALID_HANDLE;
	// The real driver defers the destruction until the event completes; so do we, by leaking it.
	return OK;
}

API CUresult cuEventRecord(void *e, void *s) {
	std::lock_guard<std::mutex> l(mu);
	CHECK("cuEventRecord");
	Stream *st = stream(s, "cuEventRecord");
	Event *ev = (Event *)e;
	if (!st || !events.count(ev)) return INVALID_HANDLE;
	unsigned long long gen;
	{
		std::lock_guard<std::mutex> el(ev->m);
		gen = ++ev->recorded;
	}
	st->push([ev, gen] {
		std::lock_guard<std::mutex> el(ev->m);
		ev->completed = std::max(ev->completed, gen);
		ev->cv.notify_all();
	});
	return OK;
}

API CUresult cuEventSynchronize(void *e) {
	Event *ev = (Event *)e;
	Ctx *c;
	{
		std::lock_guard<std::mutex> l(mu);
		CHECK("cuEventSynchronize");
		if (!events.count(ev)) return INVALID_HANDLE;
		c = current;
	}
	{
		std::unique_lock<std::mutex> el(ev->m);
		unsigned long long want = ev->recorded;
		ev->cv.wait(el, [&] { return ev->completed >= want; });
	}
	std::lock_guard<std::mutex> l(mu);
	return c->sticky;
}

API CUresult cuStreamWaitEvent(void *s, void *e, unsigned flags) {
	std::lock_guard<std::mutex> l(mu);
	CHECK("cuStreamWaitEvent");
	Stream *st = stream(s, "cuStreamWaitEvent");
	Event *ev = (Event *)e;
	if (!st || !events.count(ev) || flags) return INVALID_HANDLE;
	unsigned long long want;
	{
		std::lock_guard<std::mutex> el(ev->m);
		want = ev->recorded;
	}
	st->push([ev, want] {
		std::unique_lock<std::mutex> el(ev->m);
		ev->cv.wait(el, [&] { return ev->completed >= want; });
	});
	return OK;
}

API CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void *src, size_t n, void *s) {
	std::lock_guard<std::mutex> l(mu);
	CHECK("cuMemcpyHtoDAsync");
	Stream *st = stream(s, "cuMemcpyHtoDAsync");
	if (!st) return INVALID_HANDLE;
	if (!inDevice(dst, n) || !inPinned(src, n)) {
		fail("cuMemcpyHtoDAsync", !inDevice(dst, n) ? "destination outside a device allocation"
							  : "source not in page-locked memory from cuMemAllocHost");
		return INVALID_VALUE;
	}
	st->push([=] { memcpy((void *)dst, src, n); });
	return OK;
}

API CUresult cuMemcpyDtoHAsync_v2(void *dst, CUdeviceptr src, size_t n, void *s) {
	std::lock_guard<std::mutex> l(mu);
	CHECK("cuMemcpyDtoHAsync");
	Stream *st = stream(s, "cuMemcpyDtoHAsync");
	if (!st) return INVALID_HANDLE;
	if (!inDevice(src, n) || !inPinned(dst, n)) {
		fail("cuMemcpyDtoHAsync", !inDevice(src, n) ? "source outside a device allocation"
							  : "destination not in page-locked memory from cuMemAllocHost");
		return INVALID_VALUE;
	}
	st->push([=] { memcpy(dst, (const void *)src, n); });
	return OK;
}

API CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, void *s) {
	std::lock_guard<std::mutex> l(mu);
	CHECK("cuMemcpyDtoDAsync");
	Stream *st = stream(s, "cuMemcpyDtoDAsync");
	if (!st) return INVALID_HANDLE;
	if (!inDevice(dst, n) || !inDevice(src, n)) {
		fail("cuMemcpyDtoDAsync", "range outside a device allocation");
		return INVALID_VALUE;
	}
	st->push([=] { memmove((void *)dst, (const void *)src, n); });
	return OK;
}

API CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, void *s) {
	std::lock_guard<std::mutex> l(mu);
	CHECK("cuMemsetD8Async");
	Stream *st = stream(s, "cuMemsetD8Async");
	if (!st) return INVALID_HANDLE;
	if (!inDevice(dst, n)) {
		fail("cuMemsetD8Async", "range outside a device allocation");
		return INVALID_VALUE;
	}
	st->push([=] { memset((void *)dst, v, n); });
	return OK;
}

API CUresult cuModuleLoadDataEx(void **mod, const void *image, unsigned nopt, int *opts, void **vals) {
	std::lock_guard<std::mutex> l(mu);
	CHECK("cuModuleLoadDataEx");
	char *log = nullptr;
	size_t logSize = 0;
	for (unsigned i = 0; i < nopt; i++) {
		if (opts[i] == 5) log = (char *)vals[i];
		if (opts[i] == 6) logSize = (size_t)vals[i];
	}
	std::string ptx((const char *)image);
	size_t t = ptx.find(".target sm_");
	if (ptx.find(".version ") == std::string::npos || t == std::string::npos) return INVALID_IMAGE;
	if (atoi(ptx.c_str() + t + 11) > cfg.cc) {
		if (log && logSize) snprintf(log, logSize, "ptxas fatal: PTX targets a newer architecture than sm_%d", cfg.cc);
		return INVALID_PTX;
	}
	Module *m = new Module;
	for (size_t p = ptx.find(".entry "); p != std::string::npos; p = ptx.find(".entry ", p + 1)) {
		size_t e = ptx.find('(', p);
		m->entries.insert(ptx.substr(p + 7, e - p - 7));
	}
	modules.insert(m);
	*mod = m;
	return OK;
}

API CUresult cuModuleUnload(void *mod) {
	std::lock_guard<std::mutex> l(mu);
	CHECK("cuModuleUnload");
	if (!modules.erase((Module *)mod)) return INVALID_HANDLE;
	delete (Module *)mod;
	return OK;
}

API CUresult cuModuleGetFunction(void **f, void *mod, const char *name) {
	std::lock_guard<std::mutex> l(mu);
	CHECK("cuModuleGetFunction");
	Module *m = (Module *)mod;
	if (!modules.count(m)) return INVALID_HANDLE;
	Entry *e = lookup(name);
	if (!m->entries.count(name) || !e) return NOT_FOUND;
	*f = e;
	return OK;
}

API CUresult cuFuncSetAttribute(void *f, int attr, int v) {
	std::lock_guard<std::mutex> l(mu);
	CHECK("cuFuncSetAttribute");
	if (attr != 8 || v < 0 || v > cfg.smemOptin) return INVALID_VALUE; // MAX_DYNAMIC_SHARED_SIZE_BYTES
	((Entry *)f)->maxDynShared = v;
	return OK;
}

API CUresult cuLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
			    unsigned shmem, void *s, void **params, void **extra) {
	std::lock_guard<std::mutex> l(mu);
	CHECK("cuLaunchKernel");
	Stream *st = stream(s, "cuLaunchKernel");
	if (!st) return INVALID_HANDLE;
	Entry *e = (Entry *)f;
	if (extra || !params || gx == 0 || gy == 0 || gz == 0 || gx > 0x7fffffffu || gy > 65535 || gz > 65535 ||
	    bx == 0 || by == 0 || bz == 0 || bx * by * bz > 1024 || (int)shmem > e->maxDynShared) {
		fail("cuLaunchKernel", std::string(e->name) + ": invalid launch configuration");
		return INVALID_VALUE;
	}
	if (cfg.launchLog) {
		fprintf(cfg.launchLog, "%s\n", e->name);
		fflush(cfg.launchLog);
	}
	// Parameters are copied when the launch is enqueued, as the real driver does.
	std::vector<size_t> offs;
	size_t total = 0;
	for (size_t sz : e->sizes) {
		total = (total + 7) & ~(size_t)7;
		offs.push_back(total);
		total += sz;
	}
	std::vector<char> blob(total + 8);
	for (size_t i = 0; i < e->sizes.size(); i++) memcpy(blob.data() + offs[i], params[i], e->sizes[i]);
	Ctx *ctx = current;
	st->push([=]() mutable {
		std::vector<void *> args;
		for (size_t o : offs) args.push_back(blob.data() + o);
		gridDim = dim3{gx, gy, gz};
		blockDim = dim3{bx, by, bz};
		int n = bx * by * bz;
		sched.body = [&] { e->call(e->fn, args.data()); };
		sched.error.clear();
		sched.code = LAUNCH_FAILED;
		sched.inKernel = true;
		sched.barrier = false;
		sched.dyn.assign(shmem, (char)0xA5);
		// The first block runs as fibers; later ones too if it reached a barrier, else
		// thread after thread (much faster).
		bool first = true;
		for (unsigned z = 0; z < gz && sched.error.empty(); z++)
			for (unsigned y = 0; y < gy && sched.error.empty(); y++)
				for (unsigned x = 0; x < gx && sched.error.empty(); x++) {
					blockIdx = uint3{x, y, z};
					runBlock(n, first || sched.barrier);
					first = false;
				}
		sched.inKernel = false;
		if (!sched.error.empty()) {
			fail("kernel", std::string(e->name) + ": " + sched.error);
			std::lock_guard<std::mutex> l2(mu);
			if (!ctx->sticky) ctx->sticky = sched.code;
		}
	});
	return OK;
}

API CUresult cuGetErrorName(CUresult r, const char **s) {
	switch (r) {
	case OK: *s = "CUDA_SUCCESS"; break;
	case INVALID_VALUE: *s = "CUDA_ERROR_INVALID_VALUE"; break;
	case OUT_OF_MEMORY: *s = "CUDA_ERROR_OUT_OF_MEMORY"; break;
	case NOT_INITIALIZED: *s = "CUDA_ERROR_NOT_INITIALIZED"; break;
	case NO_DEVICE: *s = "CUDA_ERROR_NO_DEVICE"; break;
	case INVALID_DEVICE: *s = "CUDA_ERROR_INVALID_DEVICE"; break;
	case INVALID_IMAGE: *s = "CUDA_ERROR_INVALID_IMAGE"; break;
	case INVALID_CONTEXT: *s = "CUDA_ERROR_INVALID_CONTEXT"; break;
	case INVALID_PTX: *s = "CUDA_ERROR_INVALID_PTX"; break;
	case INVALID_HANDLE: *s = "CUDA_ERROR_INVALID_HANDLE"; break;
	case NOT_FOUND: *s = "CUDA_ERROR_NOT_FOUND"; break;
	case MISALIGNED_ADDRESS: *s = "CUDA_ERROR_MISALIGNED_ADDRESS"; break;
	case LAUNCH_FAILED: *s = "CUDA_ERROR_LAUNCH_FAILED"; break;
	case NOT_SUPPORTED: *s = "CUDA_ERROR_NOT_SUPPORTED"; break;
	default: *s = nullptr; return INVALID_VALUE;
	}
	return OK;
}

API CUresult cuGetErrorString(CUresult r, const char **s) {
	switch (r) {
	case OK: *s = "no error"; break;
	case INVALID_VALUE: *s = "invalid argument"; break;
	case OUT_OF_MEMORY: *s = "out of memory"; break;
	case NOT_INITIALIZED: *s = "initialization error"; break;
	case NO_DEVICE: *s = "no CUDA-capable device is detected"; break;
	case INVALID_DEVICE: *s = "invalid device ordinal"; break;
	case INVALID_IMAGE: *s = "device kernel image is invalid"; break;
	case INVALID_CONTEXT: *s = "invalid device context"; break;
	case INVALID_PTX: *s = "a PTX JIT compilation failed"; break;
	case INVALID_HANDLE: *s = "invalid resource handle"; break;
	case NOT_FOUND: *s = "named symbol not found"; break;
	case MISALIGNED_ADDRESS: *s = "misaligned address"; break;
	case LAUNCH_FAILED: *s = "unspecified launch failure"; break;
	case NOT_SUPPORTED: *s = "operation not supported"; break;
	default: *s = nullptr; return INVALID_VALUE;
	}
	return OK;
}
