package device

import (
	"context"
	"encoding/binary"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wattagg/wattagg/kernels"
	"github.com/wattagg/wattagg/tensor"
)

// Block sizes of the CPU's reductions. They fix the order in which partial sums are added, so
// they are part of the results' bits: do not change them without re-pinning the rules' outputs.
const (
	// normBlockBytes is the unit of a norm: large enough to amortise a claim, small enough to
	// keep every worker busy on a handful of updates.
	normBlockBytes = 1 << 20
	// deltaBlockElems is the unit of a distance to a reference: the difference of a block with
	// the reference (128 KiB of f32) stays in L2 while its sum of squares is taken.
	deltaBlockElems = 32 << 10
)

// blockWorker is what parallelBlocks gives each worker: a scratch block of deltaBlockElems f32
// (made at first use) and read buffers for inputs read from their files (fileread.go).
type blockWorker struct {
	scratch []float32
	rd      blockReader
}

// f32 returns the worker's scratch block.
func (w *blockWorker) f32() []float32 {
	if w.scratch == nil {
		w.scratch = make([]float32, deltaBlockElems)
	}
	return w.scratch
}

// span returns elements [lo, hi) of input i's field t (sp): a view of the span, or a copy
// read from its file into the worker's buffer (one slot: the bytes are used before the next
// call).
func (w *blockWorker) span(files *fileInputs, i, t int, sp Span, lo, hi int) ([]byte, error) {
	es := sp.DType.Size()
	return w.rd.bytes(0, files.of(i, t), sp, lo*es, hi*es, 0)
}

// parallelBlocks runs fn(k, w) for k in [0, n) on the device's workers, in order of claim,
// until ctx is cancelled, a worker faults or fn returns an error.
func (c *CPU) parallelBlocks(ctx context.Context, n int, fn func(k int, w *blockWorker) error) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	var fault atomic.Pointer[error]
	for range min(c.workers, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var w blockWorker
			err := Guard(func() error {
				for ctx.Err() == nil && fault.Load() == nil {
					k := int(next.Add(1) - 1)
					if k >= n {
						return nil
					}
					if err := fn(k, &w); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				fault.CompareAndSwap(nil, &err)
			}
		}()
	}
	wg.Wait()
	if e := fault.Load(); e != nil {
		return *e
	}
	return ctx.Err()
}

// CheckFinite implements Reducer: blocks of every field are scanned on the device's workers,
// and the lowest bad block is searched for its first NaN or Inf.
func (c *CPU) CheckFinite(ctx context.Context, fields []AccField, x []Span) error {
	if err := checkSpans(fields, x); err != nil {
		return err
	}
	type block struct{ t, lo, hi int }
	var blocks []block
	for t, f := range fields {
		for lo := 0; lo < f.Len; lo += scanBlockElems {
			blocks = append(blocks, block{t, lo, min(lo+scanBlockElems, f.Len)})
		}
	}
	files := lookupFiles([][]Span{x})
	var first atomic.Int64 // lowest bad block index + 1; 0 for none
	err := c.parallelBlocks(ctx, len(blocks), func(k int, w *blockWorker) error {
		if f := first.Load(); f != 0 && int(f-1) < k {
			return nil // a lower block is already bad
		}
		b := blocks[k]
		sp := x[b.t]
		data, err := w.span(files, 0, b.t, sp, b.lo, b.hi)
		if err != nil {
			return err
		}
		if !anyNonFiniteBy(c.kern, sp.DType, data) {
			return nil
		}
		lowerFirst(&first, k)
		return nil
	})
	if err != nil {
		return err
	}
	f := first.Load()
	if f == 0 {
		return nil
	}
	b := blocks[f-1]
	sp := x[b.t]
	es := sp.DType.Size()
	i := b.lo + tensor.FirstNonFinite(sp.DType, sp.Data[b.lo*es:b.hi*es])
	return &tensor.NonFiniteError{Tensor: fields[b.t].Name, Index: i, Value: sp.Value(i)}
}

// lowerFirst lowers first (the lowest bad block index + 1, 0 for none) to k + 1 unless a
// lower block is already there.
func lowerFirst(first *atomic.Int64, k int) {
	for {
		f := first.Load()
		if f != 0 && int(f-1) <= k || first.CompareAndSwap(f, int64(k+1)) {
			return
		}
	}
}

// SqNorms implements Reducer. Without a reference each field of each input is cut into blocks
// of 1 MiB of its dtype, whose sums of squares (kernels.SumSquares*, 16 f64 lanes) are added in
// block order. With a reference each block of 32Ki elements is first differenced with it in an
// f32 scratch block (the input widened exactly, then minus the reference, rounded once: the
// accumulation kernels) and its sum of squares taken in f64; f64 inputs are differenced in f64.
func (c *CPU) SqNorms(ctx context.Context, fields []AccField, inputs [][]Span, ref []Span) ([]float64, Stats, error) {
	if err := checkNormJob(fields, inputs, ref); err != nil {
		return nil, Stats{}, err
	}
	start := time.Now()
	type block struct{ k, t, lo, hi int }
	var blocks []block
	var read int64
	for k, in := range inputs {
		for t, f := range fields {
			step := deltaBlockElems
			if ref == nil {
				step = normBlockBytes / in[t].DType.Size()
			}
			for lo := 0; lo < f.Len; lo += step {
				blocks = append(blocks, block{k, t, lo, min(lo+step, f.Len)})
			}
			read += int64(len(in[t].Data))
			if ref != nil {
				read += int64(len(ref[t].Data))
			}
		}
	}
	files := lookupFiles(inputs)
	sums := make([]float64, len(blocks))
	err := c.parallelBlocks(ctx, len(blocks), func(i int, w *blockWorker) error {
		b := blocks[i]
		sp := inputs[b.k][b.t]
		data, err := w.span(files, b.k, b.t, sp, b.lo, b.hi)
		if err != nil {
			return err
		}
		if ref == nil {
			sums[i] = sumSquares(c.kern, sp.DType, data, float64(sp.Scale))
			return nil
		}
		g := ref[b.t].Data[4*b.lo : 4*b.hi]
		sums[i] = sqDiff(c.kern, sp, data, g, w.f32()[:b.hi-b.lo])
		return nil
	})
	if err != nil {
		return nil, Stats{}, err
	}
	out := make([]float64, len(inputs))
	for i, b := range blocks {
		out[b.k] += sums[i]
	}
	var elems int64
	for _, f := range fields {
		elems += int64(f.Len) * int64(len(inputs))
	}
	return out, Stats{Device: c.Name(), Chunks: len(blocks), Elements: elems, BytesRead: read, Seconds: time.Since(start).Seconds()}, nil
}

// sumSquares is the sum of squares of one block of dt, in f64 (I8 values times scale).
func sumSquares(k *kernels.Impl, dt tensor.DType, b []byte, scale float64) float64 {
	switch dt {
	case tensor.F32:
		return k.SumSquaresF32(b)
	case tensor.BF16:
		return k.SumSquaresBF16(b)
	case tensor.F16:
		return k.SumSquaresF16(b)
	case tensor.F64:
		var s float64
		for i := 0; i+8 <= len(b); i += 8 {
			v := math.Float64frombits(binary.LittleEndian.Uint64(b[i:]))
			s += v * v
		}
		return s
	case tensor.I8:
		var s float64
		for _, q := range b {
			v := float64(int8(q))
			s += v * v
		}
		return s * scale * scale
	}
	return 0
}

// sqDiff is Σ (x − g)² over one block: x (data, of sp's dtype) minus the f32 reference g.
func sqDiff(k *kernels.Impl, sp Span, data, g []byte, acc []float32) float64 {
	if sp.DType == tensor.F64 {
		var s float64
		for j := 0; 8*j < len(data); j++ {
			d := math.Float64frombits(binary.LittleEndian.Uint64(data[8*j:])) -
				float64(math.Float32frombits(binary.LittleEndian.Uint32(g[4*j:])))
			s += d * d
		}
		return s
	}
	clear(acc)
	w := []float32{1}
	x := [][]byte{data}
	switch sp.DType {
	case tensor.F32:
		k.AccF32FromF32(acc, w, x)
	case tensor.BF16:
		k.AccF32FromBF16(acc, w, x)
	case tensor.F16:
		k.AccF32FromF16(acc, w, x)
	case tensor.I8:
		w[0] = sp.Scale
		k.AccF32FromI8(acc, w, x)
	}
	w[0], x[0] = -1, g
	k.AccF32FromF32(acc, w, x)
	return k.SumSquaresF32(f32Bytes(acc))
}
