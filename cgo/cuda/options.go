package cuda

import (
	"fmt"
	"os"
	"runtime"
)

// Option configures Discover and Open. Options check their values: a bad one is an error, never
// a silent clamp.
type Option func(*options) error

type options struct {
	libPath   string
	streams   int
	slabBytes int64
	stagers   int
}

// DefaultLibrary is the driver library Discover and Open load unless WithLibraryPath or
// EnvLibrary says otherwise: the soname the NVIDIA driver installs. It is loaded only when an
// NVIDIA kernel driver is there (sysinfo.NVIDIADriver); a library named by path always is.
const DefaultLibrary = "libcuda.so.1"

// EnvLibrary names an environment variable holding the path of the driver library to load
// instead of DefaultLibrary, for programs that cannot pass WithLibraryPath (the CLI run against
// a driver outside the loader's search path, or a simulated one in tests).
const EnvLibrary = "WATTAGG_LIBCUDA"

func newOptions(opts []Option) (options, error) {
	lib := DefaultLibrary
	if p := os.Getenv(EnvLibrary); p != "" {
		lib = p
	}
	o := options{libPath: lib, streams: 3, slabBytes: 64 << 20, stagers: min(runtime.GOMAXPROCS(0), 8)}
	for _, f := range opts {
		if err := f(&o); err != nil {
			return o, err
		}
	}
	return o, nil
}

// WithLibraryPath loads the driver from path instead of DefaultLibrary (a driver outside the
// loader's search path, or a fake one in tests).
func WithLibraryPath(path string) Option {
	return func(o *options) error {
		if path == "" {
			return fmt.Errorf("cuda: empty library path")
		}
		o.libPath = path
		return nil
	}
}

// WithStreams sets the depth of the transfer pipeline: the number of slabs in flight, each on
// its own stream with its own buffers (default 3). Two are enough for the copy of one slab to
// overlap the kernels of the previous one; a third keeps the copy engine busy while the host
// stages the next.
func WithStreams(n int) Option {
	return func(o *options) error {
		if n < 2 || n > 16 {
			return fmt.Errorf("cuda: %d streams: want 2 to 16", n)
		}
		o.streams = n
		return nil
	}
}

// WithSlabBytes sets the device memory of one pipeline stage (default 64 MiB): a slab is the
// part of a job that is copied and computed at once. Larger slabs amortise launches and copy
// set-up; the pipeline holds WithStreams of them. A job whose smallest unit (one output chunk of
// every input) needs more gets more, as long as the GPU has it free.
func WithSlabBytes(n int64) Option {
	return func(o *options) error {
		if n < 1<<20 || n > 16<<30 {
			return fmt.Errorf("cuda: slab of %d bytes: want 1 MiB to 16 GiB", n)
		}
		o.slabBytes = n
		return nil
	}
}

// WithStagingWorkers sets how many goroutines copy pageable host inputs into page-locked
// staging buffers (default GOMAXPROCS, at most 8): one core's memcpy cannot feed a PCIe 5 link.
func WithStagingWorkers(n int) Option {
	return func(o *options) error {
		if n < 1 {
			return fmt.Errorf("cuda: %d staging workers: want at least 1", n)
		}
		o.stagers = n
		return nil
	}
}
