package device

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/cpuid/v2"

	"github.com/wattagg/wattagg/internal/sysinfo"
	"github.com/wattagg/wattagg/kernels"
	"github.com/wattagg/wattagg/tensor"
)

// CPU runs jobs on the host's cores with the kernels package: chunks are spread over worker
// goroutines, and each chunk is computed in blocks small enough that the accumulator stays in
// the L1/L2 cache while every input streams over it once.
type CPU struct {
	workers int
	block   int // accumulator block, elements
	// blockSet is whether WithBlockElems chose the block: then every sum takes it as is.
	blockSet bool
	kern     *kernels.Impl // the kernel implementation every operation runs
	scratch  sync.Pool     // *cpuScratch
	inUse    atomic.Int64  // scratch taken from the pool and not given back
}

// CPUOption configures a CPU device.
type CPUOption func(*CPU) error

// WithWorkers sets how many goroutines run kernels (default GOMAXPROCS).
func WithWorkers(n int) CPUOption {
	return func(c *CPU) error {
		if n < 1 {
			return fmt.Errorf("device: %d workers: want at least 1", n)
		}
		c.workers = n
		return nil
	}
}

// DefaultBlockElems is the default accumulator block: 128 KiB of f32 or 256 KiB of f64, well
// inside the L2 cache, and long enough that each input is read in runs of 32 or more pages
// (hardware prefetchers restart at page boundaries: 2K-element blocks read at half speed).
// A weighted sum whose inputs are all narrower than 4 bytes takes blocks twice as long, so that
// its runs are as long in bytes (sumBlock).
const DefaultBlockElems = 32 << 10

// WithBlockElems sets the accumulator block in elements (default DefaultBlockElems). Each
// kernel call covers one block of every input.
func WithBlockElems(n int) CPUOption {
	return func(c *CPU) error {
		if n < 64 || n > 1<<22 || n%64 != 0 {
			return fmt.Errorf("device: block of %d elements: want a multiple of 64 in [64, 4Mi]", n)
		}
		c.block, c.blockSet = n, true
		return nil
	}
}

// WithKernels selects the kernel implementation by name (kernels.Impls lists those this CPU
// and build can run: "avx512", "avx2", "generic"); the default is kernels.Default(). Results
// are the same bits whichever runs. An unknown or unavailable name is an error wrapping
// kernels.ErrNoImpl.
func WithKernels(name string) CPUOption {
	return func(c *CPU) error {
		k, err := kernels.Lookup(name)
		if err != nil {
			return fmt.Errorf("device: %w", err)
		}
		c.kern = k
		return nil
	}
}

// NewCPU returns the CPU device.
func NewCPU(opts ...CPUOption) (*CPU, error) {
	c := &CPU{workers: runtime.GOMAXPROCS(0), block: DefaultBlockElems, kern: kernels.Default()}
	for _, o := range opts {
		if err := o(c); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Name is "cpu".
func (c *CPU) Name() string { return "cpu" }

// Close does nothing: the CPU device holds only pooled scratch memory.
func (c *CPU) Close() error { return nil }

// Workers is the number of goroutines the device runs (Info says it too, but describes the host
// first: 0.8 ms of sysfs reads the first time).
func (c *CPU) Workers() int { return c.workers }

// Info describes the processor and the kernels in use. The CPUs, cores and caches are those
// the OS gives this process (internal/sysinfo: its affinity mask, and sysfs for what serves
// those CPUs), not cpuid's view of the whole package, which under a hypervisor can be
// anything; Threads is the CPUs it may run on, Cores their physical cores, CacheL2 the
// smallest L2 serving one of them and CacheL3 all the L3 serving them. What is unknown is 0
// (left out of reports), and a note says why.
func (c *CPU) Info() Info {
	host := sysinfo.Read()
	info := Info{
		Name:    "cpu",
		Kind:    "cpu",
		Model:   cpuid.CPU.BrandName,
		Cores:   host.Cores,
		Threads: len(host.CPUs),
		Workers: c.workers,
		Kernels: c.kern.Name(),
		CacheL2: int(host.CacheSize(2)),
		CacheL3: int(host.TotalCache(3)),
	}
	if info.Kernels != "generic" {
		info.Features = c.kern.Features()
		info.Notes = append(info.Notes, "kernels: "+c.kern.Description())
	} else {
		info.Notes = append(info.Notes, "pure-Go kernels: "+genericReason())
	}
	info.Notes = append(info.Notes, host.Notes...)
	return info
}

func genericReason() string {
	if len(kernels.Impls()) > 1 {
		return "selected by WATTAGG_KERNELS or WithKernels"
	}
	if !cpuid.CPU.Supports(cpuid.AVX2, cpuid.FMA3, cpuid.F16C) {
		return "this CPU lacks AVX2, FMA or F16C"
	}
	return "built without assembly (purego or noasm tag, or not amd64)"
}

// cpuScratch is one worker's reusable memory: an accumulator block in each width, the input
// slices of a block and their weights.
type cpuScratch struct {
	acc32 []float32
	acc64 []float64
	xs    [][]byte
	w32   []float32
	w64   []float64

	rd blockReader // read buffers for inputs copied from their files (fileread.go)
}

// ScratchInUse is the number of pooled scratch buffers the device's jobs hold: 0 whenever no
// job runs (tests check that no job leaks one).
func (c *CPU) ScratchInUse() int64 { return c.inUse.Load() }

func (c *CPU) putScratch(s *cpuScratch) {
	s.rd.release()
	c.inUse.Add(-1)
	c.scratch.Put(s)
}

func (c *CPU) getScratch(inputs int) *cpuScratch {
	c.inUse.Add(1)
	s, _ := c.scratch.Get().(*cpuScratch)
	if s == nil {
		s = &cpuScratch{
			acc32: tensor.AlignedF32(c.block),
			acc64: tensor.AlignedF64(c.block),
		}
	}
	if cap(s.xs) < inputs {
		s.xs = make([][]byte, inputs)
		s.w32 = make([]float32, inputs)
		s.w64 = make([]float64, inputs)
	}
	return s
}

// group is a run of consecutive inputs of one field that share a dtype, with their effective
// weights (job weight · scale · I8 dequantisation scale). A field whose inputs share a dtype has
// one group; mixed dtypes make one per run. Inputs are thus always applied in their order, so a
// batch gives the bits of the same updates added one at a time.
type group struct {
	dtype  tensor.DType
	inputs []int
	w32    []float32
	w64    []float64
}

func groupInputs(t int, acc tensor.DType, inputs [][]Span, weights []float64, scale float64) []group {
	var gs []group
	for i, in := range inputs {
		sp := in[t]
		k := len(gs) - 1
		if k < 0 || gs[k].dtype != sp.DType {
			gs = append(gs, group{dtype: sp.DType})
			k++
		}
		w := weights[i] * scale
		if sp.DType == tensor.I8 {
			w *= float64(sp.Scale)
		}
		g := &gs[k]
		g.inputs = append(g.inputs, i)
		if acc == tensor.F32 {
			g.w32 = append(g.w32, float32(w))
		} else {
			g.w64 = append(g.w64, w)
		}
	}
	return gs
}

// WeightedSum implements Device.
func (c *CPU) WeightedSum(ctx context.Context, job *SumJob) (Stats, error) {
	if err := job.Validate(); err != nil {
		return Stats{}, err
	}
	for t, f := range job.Fields {
		if err := c.supports(t, f, job.Inputs); err != nil {
			return Stats{}, err
		}
	}
	start := time.Now()
	groups := make([][]group, len(job.Fields))
	for t, f := range job.Fields {
		if f.Acc == tensor.I64 { // exact sums: the scale multiplies the sum (cpu_exact.go)
			groups[t] = exactGroups(t, f, job.Inputs, job.Weights)
			continue
		}
		groups[t] = groupInputs(t, f.Acc, job.Inputs, job.Weights, job.Scale)
	}
	inBytesPerElem := inputBytesPerElem(len(job.Fields), job.Inputs)

	// Inputs whose files are to be copied from rather than mapped (fileread.go).
	files := lookupFiles(job.Inputs)

	parts := cutParts(job.Chunks, inBytesPerElem, sumPartAlign)
	var stats chunkStats
	err := c.runParts(ctx, job.Chunks, parts, job.Output, job.Progress, len(job.Inputs), &stats, func(s *cpuScratch, _ int, pt chunkPart, ch Chunk, dests [][]byte) (elems, read int64, err error) {
		for _, pp := range pt.pieces {
			pc := ch.Pieces[pp.p]
			f := job.Fields[pc.Field]
			os := f.Out.Size()
			sub := Piece{Field: pc.Field, Lo: pp.lo, Hi: pp.hi, Off: pc.Off + (pp.lo-pc.Lo)*os}
			dst := dests[pp.p][(pp.lo-pc.Lo)*os : (pp.hi-pc.Lo)*os]
			if f.Acc == tensor.I64 {
				err = c.sumPieceExact(ctx, s, f, groups[pc.Field], job.Inputs, files, sub, dst, job.Scale)
			} else {
				err = c.sumPiece(ctx, s, f, groups[pc.Field], job.Inputs, files, sub, dst)
			}
			if err != nil {
				return 0, 0, err
			}
			elems += int64(pp.hi - pp.lo)
			read += int64(pp.hi-pp.lo) * inBytesPerElem[pc.Field]
		}
		return elems, read, nil
	})
	return stats.total(c.Name(), start), err
}

// sumPartAlign is the elements a weighted sum's chunk parts are cut at multiples of: a sum's
// element adds its inputs in the same order however its chunk is cut, so the cut changes no
// bit, only which worker computes the element.
const sumPartAlign = 4096

// chunkStats totals what the goroutines of a parallel job did, chunk by chunk.
type chunkStats struct {
	mu sync.Mutex
	s  Stats
}

// addPart adds a part of a chunk of written bytes: the chunk is counted by its last part.
func (c *chunkStats) addPart(elems, read int64, written int, last bool) {
	if last {
		c.add(elems, read, written)
		return
	}
	c.mu.Lock()
	c.s.Elements += elems
	c.s.BytesRead += read
	c.mu.Unlock()
}

func (c *chunkStats) add(elems, read int64, written int) {
	c.mu.Lock()
	c.s.Chunks++
	c.s.Elements += elems
	c.s.BytesRead += read
	c.s.BytesWritten += int64(written)
	c.mu.Unlock()
}

func (c *chunkStats) total(device string, start time.Time) Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.s
	s.Device = device
	s.Seconds = time.Since(start).Seconds()
	return s
}

func (c *CPU) supports(t int, f AccField, inputs [][]Span) error {
	if f.Acc == tensor.I64 {
		return checkExactField(t, f, inputs)
	}
	if f.Acc != tensor.F32 && f.Acc != tensor.F64 {
		return fmt.Errorf("%w: field %q: accumulator dtype %s (want f32 or f64)", ErrUnsupported, f.Name, f.Acc)
	}
	switch f.Out {
	case tensor.F32, tensor.F16, tensor.BF16:
	case tensor.F64:
		if f.Acc != tensor.F64 {
			return fmt.Errorf("%w: field %q: f64 output needs an f64 accumulator", ErrUnsupported, f.Name)
		}
	default:
		return fmt.Errorf("%w: field %q: output dtype %s", ErrUnsupported, f.Name, f.Out)
	}
	if f.Acc == tensor.F32 {
		for i, in := range inputs {
			if in[t].DType == tensor.F64 {
				return fmt.Errorf("%w: field %q: input %d is f64 and needs an f64 accumulator", ErrUnsupported, f.Name, i)
			}
		}
	}
	return nil
}

// parallelChunks runs fn over chunk indices 0..n-1 on the device's workers, in order of
// claim, stopping everyone at the first error or cancellation.
func (c *CPU) parallelChunks(ctx context.Context, n int, fn func(s *cpuScratch, ci int) error, inputs int) error {
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	var failed atomic.Bool
	fail := func(err error) {
		once.Do(func() { firstErr = err })
		failed.Store(true)
	}
	var wg sync.WaitGroup
	for range min(c.workers, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := c.getScratch(inputs)
			defer c.putScratch(s)
			for !failed.Load() {
				ci := int(next.Add(1) - 1)
				if ci >= n {
					return
				}
				if err := ctx.Err(); err != nil {
					fail(err)
					return
				}
				if err := Guard(func() error { return fn(s, ci) }); err != nil {
					fail(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	return firstErr
}

// maxInputsPerCall bounds the inputs one kernel call applies to a block, and so the time the
// goroutine spends in assembly, where the runtime cannot preempt it: 64 inputs of a 32Ki block
// of f32 are 8 MiB of reads, well under a millisecond. Inputs are applied in order either way,
// so splitting changes no bit of the result.
const maxInputsPerCall = 64

// sumBlock is the block of a weighted sum over groups: the device's, or where it is the default
// and every input is narrower than 4 bytes, twice that, so that each input is still read in
// runs of 128 KiB. Measured on the 2-core Zen 4 VM (wattagg bench mean, 32 × 4M bf16 into f64
// beside f32 into f32, interleaved runs): bf16 / f32 params/s 1.65-1.82 with 32Ki-element
// blocks, 1.82-1.94 with 64Ki; 128Ki gave 1.91-1.94 but an f64 block of 1 MiB, all of a Zen 4
// core's L2.
func (c *CPU) sumBlock(groups []group) int {
	if c.blockSet {
		return c.block
	}
	for _, g := range groups {
		if g.dtype.Size() >= 4 {
			return c.block
		}
	}
	return 2 * c.block
}

// sumPiece computes one piece block by block: zero the accumulator block, apply every input
// group, check the sum is finite, convert it into dst. Inputs read from their files (files)
// are read a few at a time into the worker's buffers, each kernel call applying what was just
// read while it is in L2; inputs are applied in order either way, so the bits do not change.
func (c *CPU) sumPiece(ctx context.Context, s *cpuScratch, f AccField, groups []group, inputs [][]Span, files *fileInputs, pc Piece, dst []byte) error {
	block := c.sumBlock(groups)
	outSize := f.Out.Size()
	for lo := pc.Lo; lo < pc.Hi; lo += block {
		hi := min(lo+block, pc.Hi)
		n := hi - lo
		out := dst[(lo-pc.Lo)*outSize : (hi-pc.Lo)*outSize]
		if f.Acc == tensor.F32 {
			if len(s.acc32) < n {
				s.acc32 = tensor.AlignedF32(block)
			}
			acc := s.acc32[:n]
			clear(acc)
			for _, g := range groups {
				xs := s.xs[:len(g.inputs)]
				k := acc32Kernel(c.kern, g.dtype)
				per := inputsPerCall(files, g.dtype.Size()*n)
				for i := 0; i < len(xs); i += per {
					e := min(i+per, len(xs))
					if err := readBlock(&s.rd, xs[i:e], g.inputs[i:e], g.dtype, inputs, files, pc.Field, lo, hi); err != nil {
						return err
					}
					k(acc, g.w32[i:e], xs[i:e])
				}
			}
			store32Kernel(c.kern, f.Out)(out, acc, 1)
		} else {
			if len(s.acc64) < n {
				s.acc64 = tensor.AlignedF64(block)
			}
			acc := s.acc64[:n]
			clear(acc)
			for _, g := range groups {
				xs := s.xs[:len(g.inputs)]
				k := acc64Kernel(c.kern, g.dtype)
				per := inputsPerCall(files, g.dtype.Size()*n)
				for i := 0; i < len(xs); i += per {
					e := min(i+per, len(xs))
					if err := readBlock(&s.rd, xs[i:e], g.inputs[i:e], g.dtype, inputs, files, pc.Field, lo, hi); err != nil {
						return err
					}
					k(acc, g.w64[i:e], xs[i:e])
				}
			}
			store64Kernel(c.kern, f.Out)(out, acc, 1)
		}
		if err := checkOut(c.kern, f, lo, out); err != nil {
			return err
		}
	}
	clear(s.xs) // do not keep inputs (mapped files) reachable from the pool
	return ctx.Err()
}

// inputsPerCall is how many inputs one kernel call applies: maxInputsPerCall of inputs read in
// place; readGroup's few when some are read from their files into L2-sized buffers.
func inputsPerCall(files *fileInputs, blockBytes int) int {
	if files == nil {
		return maxInputsPerCall
	}
	return min(maxInputsPerCall, readGroup(blockBytes))
}

// readBlock sets xs[k] to elements [lo, hi) of input ins[k]'s field: a view of its span, or a
// copy read from its file into slot k of rd.
func readBlock(rd *blockReader, xs [][]byte, ins []int, dt tensor.DType, inputs [][]Span, files *fileInputs, field, lo, hi int) error {
	es := dt.Size()
	for k, i := range ins {
		b, err := rd.bytes(k, files.of(i, field), inputs[i][field], lo*es, hi*es, 0)
		if err != nil {
			return err
		}
		xs[k] = b
	}
	return nil
}

// checkOut reports the first non-finite value of a converted block. Checking the output is
// enough: a NaN or Inf in the accumulator converts to a NaN or Inf, and the output can also
// overflow on its own (a finite f32 sum beyond the f16 range).
func checkOut(k *kernels.Impl, f AccField, lo int, out []byte) error {
	if !anyNonFiniteBy(k, f.Out, out) {
		return nil
	}
	i := tensor.FirstNonFinite(f.Out, out)
	t, _ := tensor.FromBytes(f.Name, f.Out, []int{len(out) / f.Out.Size()}, out)
	return &tensor.NonFiniteError{Tensor: f.Name, Index: lo + i, Value: t.Value(i)}
}

// anyNonFiniteBy scans with k's kernels.
func anyNonFiniteBy(k *kernels.Impl, dt tensor.DType, b []byte) bool {
	switch dt {
	case tensor.F32:
		return k.AnyNonFiniteF32(b)
	case tensor.F64:
		return k.AnyNonFiniteF64(b)
	case tensor.F16:
		return k.AnyNonFiniteF16(b)
	case tensor.BF16:
		return k.AnyNonFiniteBF16(b)
	}
	return false
}

func acc32Kernel(k *kernels.Impl, dt tensor.DType) func(acc, w []float32, x [][]byte) {
	switch dt {
	case tensor.F32:
		return k.AccF32FromF32
	case tensor.BF16:
		return k.AccF32FromBF16
	case tensor.F16:
		return k.AccF32FromF16
	case tensor.I8:
		return k.AccF32FromI8
	}
	return nil
}

func acc64Kernel(k *kernels.Impl, dt tensor.DType) func(acc, w []float64, x [][]byte) {
	switch dt {
	case tensor.F32:
		return k.AccF64FromF32
	case tensor.BF16:
		return k.AccF64FromBF16
	case tensor.F16:
		return k.AccF64FromF16
	case tensor.I8:
		return k.AccF64FromI8
	case tensor.F64:
		return k.AccF64FromF64
	}
	return nil
}

func store32Kernel(k *kernels.Impl, dt tensor.DType) func(dst []byte, src []float32, s float32) {
	switch dt {
	case tensor.F32:
		return k.StoreF32FromF32
	case tensor.BF16:
		return k.StoreBF16FromF32
	case tensor.F16:
		return k.StoreF16FromF32
	}
	return nil
}

func store64Kernel(k *kernels.Impl, dt tensor.DType) func(dst []byte, src []float64, s float64) {
	switch dt {
	case tensor.F64:
		return k.StoreF64FromF64
	case tensor.F32:
		return k.StoreF32FromF64
	case tensor.BF16:
		return k.StoreBF16FromF64
	case tensor.F16:
		return k.StoreF16FromF64
	}
	return nil
}
