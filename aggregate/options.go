package aggregate

import (
	"fmt"
	"sync"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/energy"
	"github.com/wattagg/wattagg/sched"
	"github.com/wattagg/wattagg/tensor"
)

// Option configures an aggregation. Options check their values: a bad one is an error from
// the call it is given to, never a silent clamp.
type Option func(*config) error

type config struct {
	dev        device.Device
	out        tensor.DType // Invalid: each tensor keeps the dtype of the first update
	acc        tensor.DType // Invalid: f32 for f32 inputs, f64 for f64, f16, bf16 and i8 inputs
	mixed      bool
	progress   func(done, total int64)
	chunkBytes int
	metadata   map[string]string
	dst        *tensor.Set
	memBudget  int64 // bytes of updates a rule that needs all of them may hold in memory

	// Placement and energy (placement.go, energy.go).
	devs    []device.Device // the devices a batch may be split over (WithDevices)
	planner *sched.Planner
	meters  []energy.Meter
}

// DefaultMemoryBudget is the memory rules that need every update at once (median, Krum, ...)
// may fill with updates before they work from memory-mapped files block by block instead.
const DefaultMemoryBudget = 8 << 30

// DefaultChunkBytes is the unit of work handed to a device and of output writes: 1 MiB, so
// that a direct-I/O write is large enough for the disk (aggregating 16 clients of 25M
// parameters to a file took 89-99 ms in 1 MiB chunks against 100-107 ms in 256 KiB ones), and
// the ring of chunk buffers stays a few MiB (fresh pages cost ~0.5 ms per MiB on first touch).
const DefaultChunkBytes = 1 << 20

var defaultCPU = sync.OnceValues(func() (device.Device, error) { return device.NewCPU() })

func newConfig(opts []Option) (config, error) {
	c := config{chunkBytes: DefaultChunkBytes, memBudget: DefaultMemoryBudget}
	for _, o := range opts {
		if err := o(&c); err != nil {
			return c, err
		}
	}
	if c.dev == nil && len(c.devs) > 0 {
		c.dev = c.devs[0] // the streaming Aggregator runs on one device: the first
	}
	if c.dev == nil {
		d, err := defaultCPU()
		if err != nil {
			return c, err
		}
		c.dev = d
	}
	return c, nil
}

// WithDevice runs the aggregation on d (default: the CPU with all cores).
func WithDevice(d device.Device) Option {
	return func(c *config) error {
		if d == nil {
			return fmt.Errorf("%w: nil device", ErrOption)
		}
		c.dev = d
		return nil
	}
}

// WithOutDType sets the dtype of every output tensor (default: each tensor keeps the dtype it
// has in the first update). I8 output is quantised symmetrically per tensor (scale =
// max|v|/127).
func WithOutDType(dt tensor.DType) Option {
	return func(c *config) error {
		if !dt.Real() {
			return fmt.Errorf("%w: output dtype %s: want f32, f64, f16, bf16 or i8", ErrOption, dt)
		}
		c.out = dt
		return nil
	}
}

// WithAccumulator sets the accumulation dtype, F32 or F64. The default is f32 for tensors whose
// inputs are all f32 (exact enough and half the cache footprint) and f64 for tensors with f64,
// f16, bf16 or i8 inputs.
func WithAccumulator(dt tensor.DType) Option {
	return func(c *config) error {
		if dt != tensor.F32 && dt != tensor.F64 {
			return fmt.Errorf("%w: accumulator dtype %s: want f32 or f64", ErrOption, dt)
		}
		c.acc = dt
		return nil
	}
}

// WithMixedDTypes accepts updates that send the same tensor in different real dtypes (say most
// clients in f32 and bandwidth-poor ones in bf16). By default a dtype that differs from the
// first update's is a layout mismatch.
func WithMixedDTypes(allow bool) Option {
	return func(c *config) error {
		c.mixed = allow
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

// WithMetadata adds string metadata to the output (written to __metadata__ of a file).
func WithMetadata(m map[string]string) Option {
	return func(c *config) error {
		c.metadata = m
		return nil
	}
}

// WithOutput makes WeightedMean write into dst instead of allocating a result: a server
// aggregating round after round then reuses the same memory (fresh pages cost far more than
// the arithmetic). dst must hold every output tensor by name with the output dtype and shape;
// it cannot take i8 output.
func WithOutput(dst *tensor.Set) Option {
	return func(c *config) error {
		if dst == nil {
			return fmt.Errorf("%w: nil output set", ErrOption)
		}
		c.dst = dst
		return nil
	}
}

// WithMemoryBudget bounds the bytes of updates that rules needing all updates at once may hold
// in memory (default DefaultMemoryBudget); beyond it they work from memory-mapped files,
// coordinate block by coordinate block.
func WithMemoryBudget(bytes int64) Option {
	return func(c *config) error {
		if bytes < 1<<20 {
			return fmt.Errorf("%w: memory budget of %d bytes: want at least 1 MiB", ErrOption, bytes)
		}
		c.memBudget = bytes
		return nil
	}
}

// WithDevices lets a batch aggregation (WeightedMean, WeightedMeanFile) split its chunks over
// several devices, as the planner (WithPlanner) says; without a planner everything runs on the
// first. Names must be unique. The streaming Aggregator uses the first device.
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

// WithPlanner places each batch aggregation with p: it plans which device runs which chunks
// and predicts time and joules, the report carries the plan beside what was measured, and p
// learns from the difference.
func WithPlanner(p *sched.Planner) Option {
	return func(c *config) error {
		if p == nil {
			return fmt.Errorf("%w: nil planner", ErrOption)
		}
		c.planner = p
		return nil
	}
}

// WithMeters reads ms around the work (energy.Discover finds RAPL, NVML or the estimate): the
// report's Joules is what they measured, with provenance. Without meters Joules is null.
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
