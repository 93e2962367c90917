package cuda

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/internal/sysinfo"
	kcuda "github.com/wattagg/wattagg/kernels/cuda"
)

// GPU is one NVIDIA GPU as a device.Device with the capabilities device.Robust,
// device.Optimizer and device.ModSummer. Its methods are safe for concurrent use; jobs run one
// at a time (they share the pipeline's streams and buffers) and every method returns when the
// GPU is done with the caller's memory.
//
// A job's Output (and Progress) callbacks may themselves call methods that run no callbacks of
// their own (Optimize, Gram, SqDistances) on the same GPU, as a server optimizer may step each
// finished chunk of its weighted sum: such calls run on a second set of streams and buffers
// while the first is held by the job that called out. Methods with callbacks (WeightedSum,
// Select, ModSum, Accumulator.Emit, ...) and Close must not be called from a callback of the
// same GPU: they wait for the job that is calling it.
type GPU struct {
	drv     driver
	index   int
	attrs   devAttrs
	version int
	arch    int
	opts    options
	ctx     cuContext
	mods    []cuModule
	fns     map[string]cuFunction

	main, side lane
	// calling counts the main lane's jobs that are in a callback (Output, Progress): while one is,
	// callback-free work that finds the main lane busy runs on the side lane (lock).
	calling atomic.Int32
	closed  atomic.Bool // set by Close under both lanes' locks
	// launches counts the launches of every kernel (tests check which kernels a rule ran).
	launches map[string]*atomic.Int64
	// selectShared is the most bytes of values an order statistic keeps in shared memory per
	// block of wa_select_net; beyond, its columns go to global scratch (tests lower it).
	selectShared int

	memMu  sync.Mutex // guards pinned and live
	pinned []hostRange
	live   map[*resident]struct{}
	bufs   ledger // every buffer held, for the accounting (buffers.go)
}

// lane is a set of pipeline stages with its scratch buffers, and the lock that a job holds on
// it. The GPU has two: main for every job, and side for callback-free work started while a job
// of the main lane is calling out (see GPU).
type lane struct {
	mu      sync.Mutex // held by the lane's job: guards slots and scratch
	slots   []*slot
	scratch scratch
}

// scratch is device and page-locked memory for small per-call results (scratchBuffers).
type scratch struct {
	dev     uint64
	devCap  int64
	host    unsafe.Pointer
	hostCap int64
}

// hostRange is page-locked host memory from allocPinned.
type hostRange struct {
	p unsafe.Pointer
	n int
}

// kernels maps every kernel this package launches to its module (kernels/cuda/<module>.cu).
var kernelModules = map[string]string{
	"wa_acc_f32_f32": "acc", "wa_acc_f32_bf16": "acc", "wa_acc_f32_f16": "acc", "wa_acc_f32_i8": "acc",
	"wa_acc_f64_f32": "acc", "wa_acc_f64_bf16": "acc", "wa_acc_f64_f16": "acc", "wa_acc_f64_i8": "acc",
	"wa_acc_f64_f64": "acc", "wa_store_f32": "acc", "wa_store_f64": "acc", "wa_scale": "acc", "wa_modsum_u32": "acc",
	"wa_sumsq": "reduce", "wa_sqdist": "reduce", "wa_gram_centre": "reduce", "wa_gram": "reduce", "wa_gram_pairs": "reduce", "wa_gram_sum": "reduce", "wa_first_nonfinite": "reduce",
	"wa_select_r2": "order", "wa_select_r4": "order", "wa_select_r8": "order", "wa_select_r16": "order",
	"wa_select_r32": "order", "wa_select_r64": "order", "wa_select_r128": "order", "wa_select_net": "order",
	"wa_optim": "optim", "wa_noise": "noise",
	"wa_exact_acc_f32": "exact", "wa_exact_acc_bf16": "exact", "wa_exact_acc_f16": "exact", "wa_exact_acc_i8": "exact",
	"wa_exact_store": "exact",
}

var (
	driversMu sync.Mutex
	drivers   = map[string]*loadedDriver{}
)

type loadedDriver struct {
	drv driver
	err error
}

// loadDriver opens the driver library at path once per process: a library that is missing now
// stays missing, and cuInit needs to run only once.
func loadDriver(path string) (driver, error) {
	driversMu.Lock()
	defer driversMu.Unlock()
	l, ok := drivers[path]
	if !ok {
		var d driver
		var err error
		if ok, why := sysinfo.NVIDIADriver(); path == DefaultLibrary && !ok {
			err = fmt.Errorf("%w: %s", ErrNoDriver, why)
		} else {
			d, err = openDriver(path)
		}
		l = &loadedDriver{drv: d, err: err}
		drivers[path] = l
	}
	return l.drv, l.err
}

// Discover lists the GPUs the driver sees. With no driver, no GPU or no cgo it returns an error
// saying why (wrapping ErrNoDriver, ErrNoDevice or ErrNoCgo), never exits or panics. GPUs too
// old for wattagg's kernels are listed with a note; Open refuses them.
func Discover(opts ...Option) ([]device.Info, error) {
	o, err := newOptions(opts)
	if err != nil {
		return nil, err
	}
	drv, err := loadDriver(o.libPath)
	if err != nil {
		return nil, err
	}
	n, err := drv.deviceCount()
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, fmt.Errorf("%w: the driver reports none", ErrNoDevice)
	}
	v, err := drv.version()
	if err != nil {
		return nil, err
	}
	var infos []device.Info
	for i := range n {
		a, err := drv.attrs(i)
		if err != nil {
			return infos, fmt.Errorf("cuda:%d: %w", i, err)
		}
		infos = append(infos, describe(i, a, v))
	}
	return infos, nil
}

func describe(i int, a devAttrs, version int) device.Info {
	info := device.Info{
		Name:     fmt.Sprintf("cuda:%d", i),
		Kind:     "gpu",
		Model:    a.name,
		Workers:  1, // one goroutine hands finished chunks to an Output
		Features: []string{fmt.Sprintf("sm_%d%d", a.major, a.minor), fmt.Sprintf("%d SMs", a.sms), fmt.Sprintf("%d copy engines", a.copyEngines)},
		CacheL2:  a.l2,
		MemBytes: a.totalMem,
		Notes: []string{
			fmt.Sprintf("CUDA driver %d.%d, PCI %s", version/1000, version%1000/10, a.pciBusID),
			fmt.Sprintf("peak memory bandwidth %.0f GB/s (from clocks)", a.memBandwidth()/1e9),
		},
	}
	if arch := kcuda.Arch(a.major, a.minor); arch > 0 {
		info.Kernels = fmt.Sprintf("ptx compute_%d", arch)
	} else {
		info.Kernels = "none"
		info.Notes = append(info.Notes, fmt.Sprintf("compute capability %d.%d: wattagg's kernels need %d.%d or newer",
			a.major, a.minor, kcuda.Arches[0]/10, kcuda.Arches[0]%10))
	}
	return info
}

// Open opens GPU index: it retains the device's primary context (shared with any other CUDA user
// in the process) and loads the kernels, JIT-compiling the embedded PTX for the GPU.
func Open(index int, opts ...Option) (*GPU, error) {
	o, err := newOptions(opts)
	if err != nil {
		return nil, err
	}
	drv, err := loadDriver(o.libPath)
	if err != nil {
		return nil, err
	}
	n, err := drv.deviceCount()
	if err != nil {
		return nil, err
	}
	if index < 0 || index >= n {
		return nil, fmt.Errorf("cuda:%d: %w: the driver sees %d", index, ErrNoDevice, n)
	}
	a, err := drv.attrs(index)
	if err != nil {
		return nil, fmt.Errorf("cuda:%d: %w", index, err)
	}
	arch := kcuda.Arch(a.major, a.minor)
	if arch == 0 {
		return nil, fmt.Errorf("cuda:%d (%s): %w: compute capability %d.%d; wattagg's kernels need %d.%d or newer",
			index, a.name, device.ErrUnsupported, a.major, a.minor, kcuda.Arches[0]/10, kcuda.Arches[0]%10)
	}
	v, err := drv.version()
	if err != nil {
		return nil, err
	}
	c, err := drv.retain(index)
	if err != nil {
		return nil, fmt.Errorf("cuda:%d: %w", index, err)
	}
	g := &GPU{drv: drv, index: index, attrs: a, version: v, arch: arch, opts: o, ctx: c,
		fns: map[string]cuFunction{}, live: map[*resident]struct{}{}, launches: map[string]*atomic.Int64{},
		selectShared: max(a.smemOptin, 48<<10)}
	if err := g.loadKernels(); err != nil {
		return nil, errors.Join(fmt.Errorf("%s: %w", g.Name(), err), g.unload())
	}
	return g, nil
}

func (g *GPU) loadKernels() error {
	byModule := map[string]cuModule{}
	for _, m := range kcuda.Modules {
		ptx, err := kcuda.PTX(m, g.arch)
		if err != nil {
			return err
		}
		mod, err := g.drv.loadModule(g.ctx, ptx)
		if err != nil {
			return fmt.Errorf("module %s (compute_%d): %w", m, g.arch, err)
		}
		g.mods = append(g.mods, mod)
		byModule[m] = mod
	}
	for name, m := range kernelModules {
		f, err := g.drv.function(g.ctx, byModule[m], name)
		if err != nil {
			return err
		}
		g.fns[name] = f
		g.launches[name] = new(atomic.Int64)
	}
	// wa_select_net keeps a block's values in shared memory: let it use all a block may have.
	if g.attrs.smemOptin > 48<<10 {
		return g.drv.setMaxDynamicShared(g.ctx, g.fns["wa_select_net"], g.attrs.smemOptin)
	}
	return nil
}

// unload releases the modules and the context (Open's failure path and Close's end).
func (g *GPU) unload() error {
	var errs []error
	for _, m := range g.mods {
		errs = append(errs, g.drv.unloadModule(g.ctx, m))
	}
	g.mods = nil
	errs = append(errs, g.drv.release(g.index))
	return errors.Join(errs...)
}

// Name is "cuda:N".
func (g *GPU) Name() string { return fmt.Sprintf("cuda:%d", g.index) }

// Info describes the GPU.
func (g *GPU) Info() device.Info { return describe(g.index, g.attrs, g.version) }

// memInfo returns the free and total device memory in bytes.
func (g *GPU) memInfo() (free, total int64, err error) { return g.drv.memInfo(g.ctx) }

// Close waits for the GPU, frees every buffer this device allocated (accumulators, residents and
// page-locked memory still open included: their memory must not be used afterwards) and
// releases the context.
func (g *GPU) Close() error {
	g.main.mu.Lock()
	defer g.main.mu.Unlock()
	if g.closed.Load() {
		return nil
	}
	// The side lane's jobs never wait for the main lane, so taking both cannot deadlock; once
	// closed is set, no job starts on either.
	g.side.mu.Lock()
	defer g.side.mu.Unlock()
	g.closed.Store(true)
	errs := []error{g.freeLane(&g.main), g.freeLane(&g.side)}
	g.memMu.Lock()
	for r := range g.live {
		errs = append(errs, g.devFree(r.base))
		r.closed = true
	}
	g.live = nil
	for _, h := range g.pinned {
		errs = append(errs, g.hostFree(h.p))
	}
	g.pinned = nil
	g.memMu.Unlock()
	errs = append(errs, g.unload())
	return errors.Join(errs...)
}

// lock takes a lane of an open device for a job and makes sure its streams exist: the main
// lane, or the side lane for callback-free work (free) that finds the main lane held by a job
// that is calling out. That caller may be the job's own callback: waiting for the main lane
// would then deadlock, and the side lane's holder never waits for anything but the GPU. (Other
// goroutines' callback-free work may take the side lane at such a moment too; it is as good.)
// The caller unlocks ln.mu.
func (g *GPU) lock(free bool) (*lane, error) {
	ln := &g.main
	if !ln.mu.TryLock() {
		if free && g.calling.Load() > 0 {
			ln = &g.side
		}
		ln.mu.Lock()
	}
	if g.closed.Load() {
		ln.mu.Unlock()
		return nil, fmt.Errorf("%s: %w", g.Name(), ErrClosed)
	}
	if err := g.ensureStreams(ln); err != nil {
		ln.mu.Unlock()
		return nil, err
	}
	return ln, nil
}

// allocPinned returns n bytes of page-locked host memory. The GPU copies page-locked inputs
// straight to device memory, without staging them, so updates that are received or read into
// such buffers stream at the full speed of the host link. The memory is not Go memory: release it
// with freePinned (or Close), and do not use it afterwards.
func (g *GPU) allocPinned(n int) ([]byte, error) {
	if n <= 0 {
		return nil, fmt.Errorf("%s: %w: page-locked buffer of %d bytes", g.Name(), device.ErrJob, n)
	}
	p, err := g.hostAlloc(int64(n), usePinned)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", g.Name(), err)
	}
	g.memMu.Lock()
	defer g.memMu.Unlock()
	i, _ := slices.BinarySearchFunc(g.pinned, uintptr(p), func(h hostRange, a uintptr) int { return cmpAddr(uintptr(h.p), a) })
	g.pinned = slices.Insert(g.pinned, i, hostRange{p, n})
	return unsafe.Slice((*byte)(p), n), nil
}

// freePinned releases memory from allocPinned (b must be the whole slice it returned).
func (g *GPU) freePinned(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	p := unsafe.Pointer(unsafe.SliceData(b))
	g.memMu.Lock()
	i := slices.IndexFunc(g.pinned, func(h hostRange) bool { return h.p == p })
	if i < 0 {
		g.memMu.Unlock()
		return fmt.Errorf("%s: %w: freePinned of memory allocPinned did not return", g.Name(), device.ErrJob)
	}
	g.pinned = slices.Delete(g.pinned, i, i+1)
	g.memMu.Unlock()
	return g.hostFree(p)
}

// isPinned reports whether b lies in page-locked memory from allocPinned.
func (g *GPU) isPinned(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	a := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	g.memMu.Lock()
	defer g.memMu.Unlock()
	i, found := slices.BinarySearchFunc(g.pinned, a, func(h hostRange, a uintptr) int { return cmpAddr(uintptr(h.p), a) })
	if !found {
		i-- // the range starting before a, if any
	}
	if i < 0 {
		return false
	}
	h := g.pinned[i]
	return a >= uintptr(h.p) && a+uintptr(len(b)) <= uintptr(h.p)+uintptr(h.n)
}

func cmpAddr(a, b uintptr) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// launch runs a kernel on stream s with one 8-byte slot per argument (see args below).
func (g *GPU) launch(s cuStream, name string, grid, block uint32, shmem int, args ...uint64) error {
	return g.launch2(s, name, [3]uint32{grid, 1, 1}, block, shmem, args...)
}

func (g *GPU) launch2(s cuStream, name string, grid [3]uint32, block uint32, shmem int, args ...uint64) error {
	f, ok := g.fns[name]
	if !ok {
		return fmt.Errorf("%s: %w: no kernel %s", g.Name(), ErrDriver, name)
	}
	if err := g.drv.launch(g.ctx, f, grid, [3]uint32{block, 1, 1}, shmem, s, args); err != nil {
		return fmt.Errorf("%s: %s: %w", g.Name(), name, err)
	}
	g.launches[name].Add(1)
	return nil
}

// Kernel argument slots.
func argF32(v float32) uint64 { return uint64(math.Float32bits(v)) }
func argF64(v float64) uint64 { return math.Float64bits(v) }
func argInt(v int) uint64     { return uint64(uint32(int32(v))) }
func argBool(v bool) uint64 {
	if v {
		return 1
	}
	return 0
}

// blocks is the grid size that covers n items with per items per block.
func blocks(n int64, per int64) (uint32, error) {
	b := (n + per - 1) / per
	if b > math.MaxInt32 {
		return 0, fmt.Errorf("%w: %d elements need more than 2^31 blocks", device.ErrUnsupported, n)
	}
	return uint32(max(b, 1)), nil
}
