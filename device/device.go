// Package device defines the block-level operations aggregation rules need (the Device
// interface) and implements them on the CPU with the kernels package. Other devices (a CUDA
// GPU in cgo/cuda) implement the same interface, so a rule runs unchanged wherever the planner
// places its blocks.
//
// Work is described in the flat coordinate space of a model: the concatenation of its tensors.
// A job's output is cut into Chunks (contiguous byte ranges of the output data section, made of
// Pieces: element ranges of one tensor each). Chunks are independent; a device may run them in
// any order and in parallel, and it hands each finished chunk to the job's Output, which is
// what lets a file writer overlap the disk with the arithmetic.
package device

import (
	"context"
	"errors"
	"fmt"

	"github.com/wattagg/wattagg/tensor"
)

// Errors wrapped by the devices.
var (
	// ErrJob reports a malformed job (lengths that do not agree): a bug in the caller.
	ErrJob = errors.New("invalid device job")
	// ErrUnsupported reports a dtype combination the device cannot run.
	ErrUnsupported = errors.New("unsupported by device")
)

// Device runs the block-level operations of the aggregation rules.
type Device interface {
	// Name identifies the device: "cpu", "cuda:0".
	Name() string
	// Info describes the device for `wattagg devices` and reports.
	Info() Info
	// WeightedSum computes, for every chunk of the job, the weighted sum of the inputs
	// accumulated in each tensor's accumulator dtype and converted to its output dtype, and
	// writes it to the job's Output. A NaN or Inf in a sum stops the job with a
	// *tensor.NonFiniteError naming the tensor and element (Source empty: the caller knows
	// which inputs to blame).
	WeightedSum(ctx context.Context, job *SumJob) (Stats, error)
	// NewAccumulator allocates the running sum of a streaming aggregation.
	NewAccumulator(fields []AccField) (Accumulator, error)
	// Close releases what the device holds.
	Close() error
}

// GroupAccumulator is an Accumulator that adds several updates in one pass over the sum: k
// updates read and write it once instead of k times, with the bits of Add called for each in
// order. With check, each block of each update is checked for NaN and Inf right before it is
// added, while it is in cache, so an update is read once rather than scanned and then added: a
// non-finite value stops the add with an *InputError naming the update and its first
// non-finite element (a *tensor.NonFiniteError), and the sum is then partly added — for a
// caller that discards it.
type GroupAccumulator interface {
	Accumulator
	AddGroup(ctx context.Context, xs [][]Span, ws []float64, check bool) error
}

// InputError is an error in input Input of a job or group.
type InputError struct {
	Input int
	Err   error
}

func (e *InputError) Error() string { return fmt.Sprintf("input %d: %v", e.Input, e.Err) }
func (e *InputError) Unwrap() error { return e.Err }

// WorkersOf is the number of goroutines d runs: from its Workers method where it has one (the
// CPU's, which does not describe the host as Info does), else from Info.
func WorkersOf(d Device) int {
	if w, ok := d.(interface{ Workers() int }); ok {
		return w.Workers()
	}
	return d.Info().Workers
}

// Accumulator is a running weighted sum held by a device (host memory for the CPU, device
// memory for a GPU).
type Accumulator interface {
	// Add adds w·x tensor by tensor; x has one Span per field, in field order. It checks
	// nothing: the caller validates x first, so that a rejected update never reaches it.
	Add(ctx context.Context, x []Span, w float64) error
	// Emit writes scale·sum, converted to each field's output dtype, chunk by chunk to out.
	// A non-finite result is a *tensor.NonFiniteError.
	Emit(ctx context.Context, scale float64, chunks []Chunk, out Output) (Stats, error)
	// Reset zeroes the sum, keeping its memory (the CPU's exact sums give back the high limbs
	// their blocks took: cpu_exact_limbs.go).
	Reset()
	// Close releases the memory.
	Close() error
}

// SumHolder is an Accumulator that tells how much memory its running sums hold: a constant for
// most, what the sums have needed so far for the CPU's exact ones (8 bytes per element in one
// limb, 16 in two).
type SumHolder interface {
	// SumBytes is the bytes the running sums hold now, in the memory of the device that adds.
	SumBytes() int64
}

// SumBytes is a's SumHolder figure, or -1 when a does not tell.
func SumBytes(a Accumulator) int64 {
	if h, ok := a.(SumHolder); ok {
		return h.SumBytes()
	}
	return -1
}

// AccField describes one tensor of an accumulator.
type AccField struct {
	Name string
	Len  int
	Acc  tensor.DType // F32 or F64; U32 for modular sums; I64 for exact sums (exact.go)
	Out  tensor.DType // dtype Emit converts to
	// Grid is the unit of an exact sum (Acc I64), 2^Grid: each term w·x is rounded to a
	// multiple of it. Bound is the magnitude no input element of an exact sum may exceed:
	// what keeps every term within the limbs (exact.go). Other sums ignore both.
	Grid  int
	Bound float64
	// OneLimb keeps a running exact sum (an Accumulator) in one int64 per element however
	// large its sums (the CPU holds two-limb sums in one only while they stay within 2^62
	// grid units: cpu_exact_limbs.go), for grids coarse enough that every sum fits in 63 bits
	// (the caller chooses the grid so). The terms and the sums' bits are the two limbs'
	// (exact.go); only the CPU's accumulator has it.
	OneLimb bool
}

// Info describes a device.
type Info struct {
	Name     string   `json:"name"`
	Kind     string   `json:"kind"`  // "cpu" or "gpu"
	Model    string   `json:"model"` // CPU brand string or GPU name
	Cores    int      `json:"cores,omitempty"`
	Threads  int      `json:"threads,omitempty"`
	Workers  int      `json:"workers,omitempty"` // goroutines the device uses
	Features []string `json:"features,omitempty"`
	Kernels  string   `json:"kernels"` // the kernel variant in use
	CacheL2  int      `json:"cache_l2_bytes,omitempty"`
	CacheL3  int      `json:"cache_l3_bytes,omitempty"`
	MemBytes int64    `json:"memory_bytes,omitempty"`
	Notes    []string `json:"notes,omitempty"`
}

// Span is a run of elements of one dtype in host memory.
type Span struct {
	DType tensor.DType
	Data  []byte
	Scale float32 // I8 dequantisation scale (value = Scale·q); ignored for other dtypes
}

// Value decodes element i (I8 scaled) for messages; it is 0 out of range.
func (s Span) Value(i int) float64 {
	n := 0
	if sz := s.DType.Size(); sz > 0 {
		n = len(s.Data) / sz
	}
	t, err := tensor.FromBytes("", s.DType, []int{n}, s.Data)
	if err != nil || i < 0 || i >= n {
		return 0
	}
	t.Scale = s.Scale
	return t.Value(i)
}

// SpanOf views a whole tensor.
func SpanOf(t *tensor.Tensor) Span { return Span{DType: t.DType, Data: t.Bytes(), Scale: t.Scale} }

// Stats is what a device did for one call.
type Stats struct {
	Device       string  `json:"device"`
	Chunks       int     `json:"chunks"`
	Elements     int64   `json:"elements"`
	BytesRead    int64   `json:"bytes_read"`
	BytesWritten int64   `json:"bytes_written"`
	Seconds      float64 `json:"seconds"`
}

// Add accumulates o into s.
func (s *Stats) Add(o Stats) {
	s.Chunks += o.Chunks
	s.Elements += o.Elements
	s.BytesRead += o.BytesRead
	s.BytesWritten += o.BytesWritten
	s.Seconds += o.Seconds
}

// SumJob is one weighted sum over many inputs: out = Σ_i Weights[i]·Scale·x_i, tensor by
// tensor, in the flat coordinate space of Fields.
type SumJob struct {
	Fields  []AccField // the tensors: length, accumulator and output dtype
	Inputs  [][]Span   // Inputs[i][t]: input i's data for field t (any real dtype, Len elements)
	Weights []float64  // one per input, finite: zero and negative are allowed (an optimizer subtracts the global model)
	Scale   float64    // multiplies every weight (1/Σw for a mean)
	Chunks  []Chunk    // the output, cut into independent chunks
	Output  Output
	// Progress, if set, is called after each chunk with the input bytes it consumed. It may be
	// called from several goroutines at once.
	Progress func(bytes int64)
}

// Chunk is a contiguous byte range of the output data section.
type Chunk struct {
	Off    int64 // byte offset in the output data section
	Len    int   // bytes
	Pieces []Piece
}

// Piece is the element range [Lo, Hi) of field Field, at byte Off within its chunk.
type Piece struct {
	Field  int
	Lo, Hi int
	Off    int
}

// Output receives a job's results.
type Output interface {
	// Dest returns the bytes that receive piece p of chunk c: (Hi-Lo) elements of the field's
	// output dtype. All pieces of a chunk are requested by one goroutine.
	Dest(c, p int) ([]byte, error)
	// Done is called once per chunk when all its pieces are written.
	Done(c int) error
}

// Validate checks that the job's lengths agree, so that kernels (which trust their arguments)
// are safe to call. Devices call it first.
func (j *SumJob) Validate() error {
	if len(j.Inputs) != len(j.Weights) {
		return fmt.Errorf("%w: %d inputs, %d weights", ErrJob, len(j.Inputs), len(j.Weights))
	}
	for i, in := range j.Inputs {
		if err := checkSpans(j.Fields, in); err != nil {
			return fmt.Errorf("input %d: %w", i, err)
		}
	}
	return checkChunks(j.Fields, j.Chunks)
}

func checkSpans(fields []AccField, x []Span) error {
	if len(x) != len(fields) {
		return fmt.Errorf("%w: %d spans for %d fields", ErrJob, len(x), len(fields))
	}
	for t, f := range fields {
		if !x[t].DType.Real() {
			return fmt.Errorf("%w: field %q: input dtype %s cannot be summed", ErrUnsupported, f.Name, x[t].DType)
		}
		if len(x[t].Data) != f.Len*x[t].DType.Size() {
			return fmt.Errorf("%w: field %q: %d bytes of %s for %d elements", ErrJob, f.Name, len(x[t].Data), x[t].DType, f.Len)
		}
	}
	return nil
}

func checkChunks(fields []AccField, chunks []Chunk) error {
	for c, ch := range chunks {
		for _, p := range ch.Pieces {
			if p.Field < 0 || p.Field >= len(fields) {
				return fmt.Errorf("%w: chunk %d: field %d out of range", ErrJob, c, p.Field)
			}
			f := fields[p.Field]
			if p.Lo < 0 || p.Hi > f.Len || p.Lo > p.Hi {
				return fmt.Errorf("%w: chunk %d: range [%d,%d) of field %q with %d elements", ErrJob, c, p.Lo, p.Hi, f.Name, f.Len)
			}
			if end := p.Off + (p.Hi-p.Lo)*f.Out.Size(); p.Off < 0 || end > ch.Len {
				return fmt.Errorf("%w: chunk %d: piece ends at byte %d of %d", ErrJob, c, end, ch.Len)
			}
		}
	}
	return nil
}
