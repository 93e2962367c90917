package aggregate

import (
	"fmt"
	"sync"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/energy"
	"github.com/wattagg/wattagg/sched"
	"github.com/wattagg/wattagg/tensor"
)

// Option configures how a round runs: where (devices, planner), under which meters, with which
// output dtypes and memory. Rules take their own options (robust.Option, optim.Option, ...).
// Options check their values: a bad one is an ErrOption error from the call it is given to,
// never a silent clamp.
type Option func(*config) error

type config struct {
	devs     []device.Device // the devices the round may use; devs[0] runs what is not split
	planner  *sched.Planner
	meters   []energy.Meter
	progress func(done, total int64)

	out        tensor.DType // Invalid: each tensor keeps the dtype of the first update
	acc        tensor.DType // Invalid: f32 for f32 inputs, f64 otherwise
	mixed      bool
	chunkBytes int
	metadata   map[string]string
	dst        *tensor.Set
	memBudget  int64
	alloc      tensor.Allocator

	global     *tensor.Set
	globalPath string
	spoolDir   string
	retained   bool
	expected   *Expected
	exact      *exactConfig // WithExactSum (exact.go); nil: floating-point sums
	inputsDone func()       // WithInputsDone; nil: nobody to tell
	failFast   bool         // WithFailFast
}

// DefaultMemoryBudget is the memory rules that need every update at once may fill with their
// own iterates (the geometric median's and centered clipping's model-sized vectors).
const DefaultMemoryBudget = 8 << 30

// DefaultChunkBytes is the unit of work handed to a device and of output writes: 1 MiB, so
// that a direct-I/O write is large enough for the disk (aggregating 16 clients of 25M
// parameters to a file took 89-99 ms in 1 MiB chunks against 100-107 ms in 256 KiB ones), and
// the ring of chunk buffers stays a few MiB (fresh pages cost ~0.5 ms per MiB on first touch).
const DefaultChunkBytes = 1 << 20

// hostCPU is the CPU device with every core: the default device, and the host side of
// operations a device does not implement (a GPU's chunks land in host memory).
var hostCPU = sync.OnceValues(func() (*device.CPU, error) { return device.NewCPU() })

func newConfig(opts []Option) (*config, error) {
	// Results and buffers come from the process's pool by default (tensor.PoolAllocator): a
	// result closed by its caller serves the next round instead of fresh pages.
	c := &config{chunkBytes: DefaultChunkBytes, memBudget: DefaultMemoryBudget, alloc: tensor.SharedPool}
	for _, o := range opts {
		if o == nil {
			return nil, fmt.Errorf("%w: nil option", ErrOption)
		}
		if err := o(c); err != nil {
			return nil, err
		}
	}
	if c.global != nil && c.globalPath != "" {
		return nil, fmt.Errorf("%w: both WithGlobal and WithGlobalFile", ErrOption)
	}
	if c.exact != nil && c.acc != tensor.Invalid {
		return nil, fmt.Errorf("%w: both WithAccumulator and WithExactSum: an exact sum has its own accumulator", ErrOption)
	}
	if len(c.devs) == 0 {
		cpu, err := hostCPU()
		if err != nil {
			return nil, err
		}
		c.devs = []device.Device{cpu}
	}
	return c, nil
}

// dev is the device that runs what the planner does not split: incremental sums and the
// whole-set rules.
func (c *config) dev() device.Device { return c.devs[0] }

// WithDevices runs the round on devs (default: the CPU with all cores). A batch sum splits its
// chunks over them as the planner (WithPlanner) says; everything else runs on the first. Names
// must be unique.
func WithDevices(devs ...device.Device) Option {
	return func(c *config) error {
		if len(devs) == 0 {
			return fmt.Errorf("%w: no devices", ErrOption)
		}
		seen := map[string]bool{}
		for _, d := range devs {
			if d == nil {
				return fmt.Errorf("%w: nil device", ErrOption)
			}
			if seen[d.Name()] {
				return fmt.Errorf("%w: device %q given twice", ErrOption, d.Name())
			}
			seen[d.Name()] = true
		}
		c.devs = devs
		return nil
	}
}

// WithPlanner places each round with p: it plans which device runs which chunks and predicts
// time and joules, the report carries the plan beside what was measured, and p learns from the
// difference.
func WithPlanner(p *sched.Planner) Option {
	return func(c *config) error {
		if p == nil {
			return fmt.Errorf("%w: nil planner", ErrOption)
		}
		c.planner = p
		return nil
	}
}

// WithMeters reads ms around every piece of a round's work (energy.Discover finds RAPL, NVML
// or the estimate): the report's Joules is what they measured, with provenance. Without meters
// Joules is null and JoulesReason says why.
func WithMeters(ms ...energy.Meter) Option {
	return func(c *config) error {
		for _, m := range ms {
			if m == nil {
				return fmt.Errorf("%w: nil meter", ErrOption)
			}
		}
		c.meters = ms
		return nil
	}
}

// WithProgress calls fn as work completes with the input bytes done so far and in all. It may
// be called from several goroutines at once.
func WithProgress(fn func(done, total int64)) Option {
	return func(c *config) error {
		c.progress = fn
		return nil
	}
}

// WithOutDType sets the dtype of every output tensor (default: each tensor keeps the dtype it
// has in the first update). I8 output is quantised symmetrically per tensor (scale =
// max|v|/127). Rules that produce a global model write f32 and refuse any other.
func WithOutDType(dt tensor.DType) Option {
	return func(c *config) error {
		if !dt.Real() {
			return fmt.Errorf("%w: output dtype %s: want f32, f64, f16, bf16 or i8", ErrOption, dt)
		}
		c.out = dt
		return nil
	}
}

// WithAccumulator sets the accumulation dtype of sums, F32 or F64. The default is f32 for
// tensors whose inputs are all f32 (exact enough and half the cache footprint) and f64 for
// tensors with f64, f16, bf16 or i8 inputs, and for rules that subtract a global model.
func WithAccumulator(dt tensor.DType) Option {
	return func(c *config) error {
		if dt != tensor.F32 && dt != tensor.F64 {
			return fmt.Errorf("%w: accumulator dtype %s: want f32 or f64", ErrOption, dt)
		}
		c.acc = dt
		return nil
	}
}

// WithMixedDTypes accepts updates that send the same tensor in different real dtypes (most
// clients in f32, bandwidth-poor ones in bf16). By default a dtype that differs from the first
// update's is a layout mismatch.
func WithMixedDTypes(allow bool) Option {
	return func(c *config) error {
		c.mixed = allow
		return nil
	}
}

// WithChunkBytes sets the work and write unit (default DefaultChunkBytes); a multiple of 4096.
func WithChunkBytes(n int) Option {
	return func(c *config) error {
		if n < 4096 || n%4096 != 0 || n > 64<<20 {
			return fmt.Errorf("%w: chunk of %d bytes: want a multiple of 4096 up to 64 MiB", ErrOption, n)
		}
		c.chunkBytes = n
		return nil
	}
}

// WithMetadata adds string metadata to the result (written to __metadata__ of a file).
func WithMetadata(m map[string]string) Option {
	return func(c *config) error {
		c.metadata = m
		return nil
	}
}

// WithOutput makes Result write into dst instead of allocating a result: a server aggregating
// round after round then reuses the same memory (fresh pages cost far more than the
// arithmetic). dst must hold every output tensor by name with the output dtype and shape; it
// cannot take i8 output.
func WithOutput(dst *tensor.Set) Option {
	return func(c *config) error {
		if dst == nil {
			return fmt.Errorf("%w: nil output set", ErrOption)
		}
		c.dst = dst
		return nil
	}
}

// WithMemoryBudget bounds the memory a rule may fill with its own model-sized iterates
// (default DefaultMemoryBudget).
func WithMemoryBudget(bytes int64) Option {
	return func(c *config) error {
		if bytes < 1<<20 {
			return fmt.Errorf("%w: memory budget of %d bytes: want at least 1 MiB", ErrOption, bytes)
		}
		c.memBudget = bytes
		return nil
	}
}

// WithAllocator allocates the round's results, iterates and output buffers from a (default
// tensor.SharedPool, which keeps what is given back for the next round; tensor.DefaultAllocator
// leaves everything to the garbage collector). A result Set's Close gives its memory back.
func WithAllocator(a tensor.Allocator) Option {
	return func(c *config) error {
		if a == nil {
			return fmt.Errorf("%w: nil allocator", ErrOption)
		}
		c.alloc = a
		return nil
	}
}

// WithGlobal is the global model x_t the clients trained from, for the rules that move it (the
// server optimizers, the private means): they take the clients' full models and subtract it.
// It must be f32 (the server's master copy) and hold the clients' tensors. The round reads it
// and never writes it; it fixes the round's layout and the result's tensor order.
func WithGlobal(g *tensor.Set) Option {
	return func(c *config) error {
		if g == nil {
			return fmt.Errorf("%w: nil global model", ErrOption)
		}
		c.global = g
		return nil
	}
}

// WithGlobalFile is WithGlobal with the model mapped from a .safetensors file when the round
// opens (and unmapped when it closes).
func WithGlobalFile(path string) Option {
	return func(c *config) error {
		if path == "" {
			return fmt.Errorf("%w: empty global model path", ErrOption)
		}
		c.globalPath = path
		return nil
	}
}

// WithSpoolDir is where an incremental round of a rule that needs every update at once
// (median, Krum, ...) keeps the updates as they arrive (default: a directory the round creates
// under os.TempDir and removes on Close).
func WithSpoolDir(dir string) Option {
	return func(c *config) error {
		if dir == "" {
			return fmt.Errorf("%w: empty spool directory", ErrOption)
		}
		c.spoolDir = dir
		return nil
	}
}

// WithRetainedUpdates promises that every update added stays valid (mapped, unmodified) until
// the round is closed: rules that need every update at once then keep references instead of
// spooling copies. Aggregate and AggregateFile run with it.
func WithRetainedUpdates() Option {
	return func(c *config) error {
		c.retained = true
		return nil
	}
}

// WithFailFast gives up the round at the first update refused for its values, in exchange for
// reading each update once: a sum that adds on arrival checks an update for NaN and Inf while it
// adds it (device.GroupAccumulator) instead of scanning it first, so an update found
// non-finite midway has been partly added, and every later call on the round fails with
// ErrClosed naming it. Updates refused for anything else (layout, weight, a duplicate) are
// refused before their values are read and leave the round as it was. For callers that give up
// on a bad update anyway: `wattagg aggregate --stream`, where it took a fifth of the time. A
// server that goes on without the update must not use it. Rounds it does not apply to (batch
// sums, exact sums, whole-set rules) ignore it.
func WithFailFast() Option {
	return func(c *config) error {
		c.failFast = true
		return nil
	}
}

// WithInputsDone calls fn once, when the round closing into a result has read its updates for
// the last time: before the result is made durable, so that a caller can release the updates
// (unmap its files) while the last chunks are written and synced. fn runs on the goroutine
// that closes the round and must not block; it is not called when the computation fails.
// AggregateFile's caller that mapped 32 files of 16 MiB spent 4-6 ms unmapping them after the
// call returned; released here, the unmapping overlaps the output's final write, fsync and
// rename.
func WithInputsDone(fn func()) Option {
	return func(c *config) error {
		if fn == nil {
			return fmt.Errorf("%w: nil WithInputsDone function", ErrOption)
		}
		c.inputsDone = fn
		return nil
	}
}

// inputsRead tells WithInputsDone's function, once, that the round no longer reads its updates.
func (c *config) inputsRead() {
	if fn := c.inputsDone; fn != nil {
		c.inputsDone = nil
		fn()
	}
}

// Expected describes the updates a round will receive, when they are known before they arrive
// (the CLI reads every file's header first; a server may know its clients' weights).
type Expected struct {
	// Layouts, one per update in arrival order, let the round choose the accumulator dtypes a
	// batch run over the same updates would (f64 for a tensor any client sends in bf16).
	Layouts []tensor.Layout
	// Weights, one per update in arrival order, let sums add each update already divided by
	// the total weight, so that an incremental round gives the same bits as a batch run over the
	// same updates in the same order. A round whose updates turn out otherwise is still
	// correct, within rounding.
	Weights []float64
}

// WithExpected tells the round what will arrive (see Expected).
func WithExpected(e Expected) Option {
	return func(c *config) error {
		if e.Layouts != nil && e.Weights != nil && len(e.Layouts) != len(e.Weights) {
			return fmt.Errorf("%w: expected %d layouts and %d weights", ErrOption, len(e.Layouts), len(e.Weights))
		}
		for k, w := range e.Weights {
			if err := checkWeight(w, fmt.Sprintf("expected weight %d", k+1)); err != nil {
				return err
			}
		}
		c.expected = &e
		return nil
	}
}

// CheckOptions reports the first option that is invalid on its own (an output dtype that is
// not real, a chunk size that is not a multiple of 4096, ...) as an ErrOption error, without
// starting a round: a CLI checks its flags before any work.
func CheckOptions(opts ...Option) error {
	_, err := newConfig(opts)
	return err
}
