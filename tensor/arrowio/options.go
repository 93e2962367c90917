package arrowio

import (
	"fmt"

	"github.com/apache/arrow-go/v18/arrow/memory"
)

// Default limits of the readers. They bound what a hostile peer can make a reader allocate
// and parse; a server sets them from the round it runs (WithMaxTotalBytes near the model's
// size, for example).
const (
	// DefaultMaxMetadataBytes bounds the flatbuffer metadata of one IPC message (the schema
	// message carries the layout JSON and the Set's metadata) and the dictionaries of a stream
	// together.
	DefaultMaxMetadataBytes = 16 << 20
	// DefaultMaxTensors bounds the tensors of a layout.
	DefaultMaxTensors = 1 << 18
	// DefaultMaxBatchBytes bounds the body of one IPC message: a stream reader holds one body
	// at a time, so this is its memory.
	DefaultMaxBatchBytes = 64 << 20
	// DefaultMaxTotalBytes bounds the bytes read from a stream, framing included, and the
	// tensor data its layout may declare. ReadFile's default is the file's size instead.
	DefaultMaxTotalBytes = 16 << 30
	// DefaultBatchBytes is the tensor data a writer puts in one record batch: a few MiB, so a
	// receiver's memory stays small and a batch crosses a network in milliseconds.
	DefaultBatchBytes = 4 << 20
)

// Option configures readers and writers. Options a function does not use are ignored: the
// limits concern readers, WithBatchBytes writers, WithAllocator and WithSource both.
type Option func(*options) error

type options struct {
	mem        memory.Allocator
	source     string
	maxMeta    int64
	maxTensors int
	maxBatch   int64
	maxTotal   int64 // 0: the default of the reader (stream or file)
	batchBytes int
	bodies     memory.Allocator // nil: bodies from mem, one kept for the next message
}

func newOptions(source string, opts []Option) (*options, error) {
	o := &options{
		mem:        memory.DefaultAllocator,
		source:     source,
		maxMeta:    DefaultMaxMetadataBytes,
		maxTensors: DefaultMaxTensors,
		maxBatch:   DefaultMaxBatchBytes,
		batchBytes: DefaultBatchBytes,
	}
	for _, opt := range opts {
		if err := opt(o); err != nil {
			return nil, err
		}
	}
	return o, nil
}

// WithAllocator sets the allocator of every Arrow buffer a reader or writer makes (message
// bodies, builders, staging). Tests pass a memory.CheckedAllocator to prove that nothing leaks.
func WithAllocator(mem memory.Allocator) Option {
	return func(o *options) error {
		if mem == nil {
			return fmt.Errorf("arrowio: %w: nil allocator", ErrOption)
		}
		o.mem = mem
		return nil
	}
}

// WithBodyAllocator makes a stream reader take message bodies from mem and give each back as
// soon as Arrow releases it, instead of keeping one (from WithAllocator's allocator) for the
// next message: the reader then holds no body while it waits for the next message, so that a
// server whose readers mostly wait on the network can lend one pool of bodies to all of them.
// mem's buffers must be 64-byte aligned, as Arrow's allocators make them, but need not be
// zeroed: a body is read over completely. Bodies still lent when the reader closes are freed
// then, as every allocation of a reader is. ReadFile does not use it: its bodies are the
// mapping.
func WithBodyAllocator(mem memory.Allocator) Option {
	return func(o *options) error {
		if mem == nil {
			return fmt.Errorf("arrowio: %w: nil body allocator", ErrOption)
		}
		o.bodies = mem
		return nil
	}
}

// WithSource names the input in errors (a client id, an address); files use their path.
func WithSource(name string) Option {
	return func(o *options) error { o.source = name; return nil }
}

// WithMaxMetadataBytes bounds the metadata of one message and the dictionaries of a stream
// (default DefaultMaxMetadataBytes).
func WithMaxMetadataBytes(n int64) Option {
	return func(o *options) error {
		if n < 64 || n > 1<<31-1 {
			return fmt.Errorf("arrowio: %w: metadata limit %d outside [64, 2^31)", ErrOption, n)
		}
		o.maxMeta = n
		return nil
	}
}

// WithMaxTensors bounds the tensors of a layout (default DefaultMaxTensors).
func WithMaxTensors(n int) Option {
	return func(o *options) error {
		if n < 1 {
			return fmt.Errorf("arrowio: %w: tensor limit %d is not positive", ErrOption, n)
		}
		o.maxTensors = n
		return nil
	}
}

// WithMaxBatchBytes bounds the body of one message of a stream (default DefaultMaxBatchBytes).
// ReadFile does not apply it: a mapped file's bodies cost no memory.
func WithMaxBatchBytes(n int64) Option {
	return func(o *options) error {
		if n < 8 {
			return fmt.Errorf("arrowio: %w: batch limit %d is less than 8", ErrOption, n)
		}
		o.maxBatch = n
		return nil
	}
}

// WithMaxTotalBytes bounds the bytes read from a stream, framing included, and the tensor
// data a layout may declare (default DefaultMaxTotalBytes for streams, the file's size for
// ReadFile). A layout declaring more is rejected as soon as the schema arrives.
func WithMaxTotalBytes(n int64) Option {
	return func(o *options) error {
		if n < 1 {
			return fmt.Errorf("arrowio: %w: total limit %d is not positive", ErrOption, n)
		}
		o.maxTotal = n
		return nil
	}
}

// WithBatchBytes sets the tensor data per record batch a writer aims at (default
// DefaultBatchBytes; at least 64 bytes, rounded down to a multiple of 8 so that a cut never
// splits an element). In a stream, tensors larger than a batch are cut into chunks of this
// size; in a file (WriteFile) tensors stay whole, so that ReadFile can view them in place.
func WithBatchBytes(n int) Option {
	return func(o *options) error {
		if n < 64 || n > 1<<31-8 {
			return fmt.Errorf("arrowio: %w: batch size %d outside [64, 2^31-8]", ErrOption, n)
		}
		o.batchBytes = n &^ 7
		return nil
	}
}
