package device

import (
	"context"
	"errors"
	"fmt"
	"time"
	"unsafe"

	"github.com/wattagg/wattagg/tensor"
)

// cpuAccumulator is a running sum in host memory, one aligned buffer per field: f32 or f64
// weighted sums, or u32 sums modulo 2^32 (fields whose Acc and Out are U32: the secure sum).
type cpuAccumulator struct {
	c      *CPU
	fields []AccField
	acc32  [][]float32 // per field, nil where the accumulator is not f32
	acc64  [][]float64
	accU32 [][]uint32
	work   []Piece // the fields cut into blocks that workers claim
}

// addBlockElems is the block of a streaming Add: one input only, so the accumulator cannot stay
// in cache and blocks only need to be large enough to amortise a claim.
const addBlockElems = 64 << 10

// NewAccumulator implements Device. Exact fields (Acc I64) make an ExactAccumulator
// (cpu_exact.go).
func (c *CPU) NewAccumulator(fields []AccField) (Accumulator, error) {
	if exact, err := exactFields(fields); err != nil || exact {
		if err != nil {
			return nil, err
		}
		return c.newExactAccumulator(fields)
	}
	for t, f := range fields { // checked before any (pooled) buffer is taken
		switch {
		case f.Acc == tensor.U32 && f.Out == tensor.U32:
		case f.Acc == tensor.U32:
			return nil, fmt.Errorf("%w: field %q: a u32 sum is output as u32, not %s", ErrUnsupported, f.Name, f.Out)
		default:
			if err := c.supports(t, f, nil); err != nil {
				return nil, err
			}
		}
	}
	a := &cpuAccumulator{c: c, fields: fields, acc32: make([][]float32, len(fields)), acc64: make([][]float64, len(fields)),
		accU32: make([][]uint32, len(fields))}
	for t, f := range fields {
		// The buffers come from tensor.SharedPool (accmem.go); Close gives them back.
		switch f.Acc {
		case tensor.U32:
			a.accU32[t] = unsafe.Slice((*uint32)(unsafe.Pointer(unsafe.SliceData(accF32(f.Len)))), f.Len)
		case tensor.F32:
			a.acc32[t] = accF32(f.Len)
		case tensor.F64:
			a.acc64[t] = accF64(f.Len)
		}
		for lo := 0; lo < f.Len; lo += addBlockElems {
			a.work = append(a.work, Piece{Field: t, Lo: lo, Hi: min(lo+addBlockElems, f.Len)})
		}
	}
	return a, nil
}

// Add implements Accumulator.
//
// A u32 field adds its u32 input modulo 2^32 and ignores w.
func (a *cpuAccumulator) Add(ctx context.Context, x []Span, w float64) error {
	return a.AddGroup(ctx, [][]Span{x}, []float64{w}, false)
}

// addBlock adds ws[i]·xs[i] to the accumulator over elements [lo, hi) of field, data[i] holding
// input i's bytes of them, input after input (runs of inputs of one dtype in one kernel call:
// the bits of one call per input). A u32 field adds its inputs modulo 2^32 and ignores the
// weights.
func (a *cpuAccumulator) addBlock(s *cpuScratch, field, lo, hi int, xs [][]Span, data [][]byte, ws []float64) {
	for i := 0; i < len(xs); {
		dt := xs[i][field].DType
		j := i + 1
		for j < len(xs) && j-i < maxInputsPerCall && xs[j][field].DType == dt {
			j++
		}
		for k := i; k < j; k++ {
			wt := ws[k]
			if dt == tensor.I8 {
				wt *= float64(xs[k][field].Scale)
			}
			s.w32[k-i], s.w64[k-i] = float32(wt), wt
		}
		in := data[i:j]
		switch {
		case a.accU32[field] != nil:
			a.c.kern.ModSumU32(a.accU32[field][lo:hi], in)
		case a.acc32[field] != nil:
			acc32Kernel(a.c.kern, dt)(a.acc32[field][lo:hi], s.w32[:j-i], in)
		default:
			acc64Kernel(a.c.kern, dt)(a.acc64[field][lo:hi], s.w64[:j-i], in)
		}
		i = j
	}
}

// addPiece adds the group's piece pc: each input's bytes viewed in place, or, for inputs read
// from their files (files), read into the worker's buffers in sub-blocks whose bytes of every
// input fit in half the L2 cache (a mapping registered to be copied is never walked). With
// check, a block of an input holding a NaN or Inf stops it (errBadBlock) before that block is
// added.
func (a *cpuAccumulator) addPiece(s *cpuScratch, pc Piece, xs [][]Span, ws []float64, files *fileInputs, check bool) error {
	data := s.xs[:len(xs)]
	defer clear(data) // do not keep inputs (mapped files) reachable from the pool
	step := pc.Hi - pc.Lo
	if files != nil {
		width := 0
		for _, x := range xs {
			width += x[pc.Field].DType.Size()
		}
		step = max(1024, readL2()/2/max(1, width)&^63)
	}
	for lo := pc.Lo; lo < pc.Hi; lo += step {
		hi := min(lo+step, pc.Hi)
		for i, x := range xs {
			sp := x[pc.Field]
			es := sp.DType.Size()
			b, err := s.rd.bytes(i, files.of(i, pc.Field), sp, lo*es, hi*es, 0)
			if err != nil {
				return err
			}
			if check && anyNonFiniteBy(a.c.kern, sp.DType, b) {
				return errBadBlock
			}
			data[i] = b
		}
		a.addBlock(s, pc.Field, lo, hi, xs, data, ws)
	}
	return nil
}

// errBadBlock stops a checked add at a block with a NaN or Inf.
var errBadBlock = errors.New("non-finite block")

// AddGroup implements GroupAccumulator. With check, a bad block stops the add, and the error
// names the first update (in group order) with a non-finite value and its first one, whatever
// block a worker met first.
func (a *cpuAccumulator) AddGroup(ctx context.Context, xs [][]Span, ws []float64, check bool) error {
	if len(xs) != len(ws) {
		return fmt.Errorf("%w: %d updates, %d weights", ErrJob, len(xs), len(ws))
	}
	for _, x := range xs {
		if err := a.checkAdd(x); err != nil {
			return err
		}
	}
	files := lookupFiles(xs) // inputs read from their files (fileread.go)
	err := a.c.parallelChunks(ctx, len(a.work), func(s *cpuScratch, k int) error {
		return a.addPiece(s, a.work[k], xs, ws, files, check)
	}, len(xs))
	if errors.Is(err, errBadBlock) {
		for i, x := range xs {
			if err := a.c.CheckFinite(ctx, a.fields, x); err != nil {
				return &InputError{Input: i, Err: err}
			}
		}
		return fmt.Errorf("%w: a block was found non-finite and then finite: was an update modified while it was added?", ErrJob)
	}
	return err
}

// checkAdd checks an update's spans against the accumulator's fields.
func (a *cpuAccumulator) checkAdd(x []Span) error {
	if len(x) != len(a.fields) {
		return fmt.Errorf("%w: %d spans for %d fields", ErrJob, len(x), len(a.fields))
	}
	for t, f := range a.fields {
		sp := x[t]
		switch {
		case f.Acc == tensor.U32:
			if sp.DType != tensor.U32 || len(sp.Data) != 4*f.Len {
				return fmt.Errorf("%w: field %q: a u32 sum takes %d u32 elements, have %d bytes of %s", ErrJob, f.Name, f.Len, len(sp.Data), sp.DType)
			}
		case f.Acc == tensor.F32 && sp.DType == tensor.F64:
			return fmt.Errorf("%w: field %q: f64 input needs an f64 accumulator", ErrUnsupported, f.Name)
		}
	}
	for t, f := range a.fields {
		if f.Acc != tensor.U32 {
			if err := checkSpans(a.fields[t:t+1], x[t:t+1]); err != nil {
				return err
			}
		}
	}
	return nil
}

// Emit implements Accumulator.
func (a *cpuAccumulator) Emit(ctx context.Context, scale float64, chunks []Chunk, out Output) (Stats, error) {
	if err := checkChunks(a.fields, chunks); err != nil {
		return Stats{}, err
	}
	start := time.Now()
	var stats chunkStats
	err := a.c.parallelChunks(ctx, len(chunks), func(s *cpuScratch, ci int) error {
		ch := chunks[ci]
		var elems, read int64
		for p, pc := range ch.Pieces {
			dst, err := out.Dest(ci, p)
			if err != nil {
				return err
			}
			f := a.fields[pc.Field]
			if err := a.emitPiece(f, pc, scale, dst); err != nil {
				return err
			}
			elems += int64(pc.Hi - pc.Lo)
			read += int64(pc.Hi-pc.Lo) * int64(f.Acc.Size())
		}
		if err := out.Done(ci); err != nil {
			return err
		}
		stats.add(elems, read, ch.Len)
		return nil
	}, 0)
	return stats.total(a.c.Name(), start), err
}

// emitPiece converts block by block so that each converted block is still in cache when it
// is checked for values the output dtype cannot hold (scale > 1 or a narrower dtype can
// overflow).
func (a *cpuAccumulator) emitPiece(f AccField, pc Piece, scale float64, dst []byte) error {
	if v := a.accU32[pc.Field]; v != nil {
		copy(dst, unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(v[pc.Lo:pc.Hi]))), 4*(pc.Hi-pc.Lo)))
		return nil
	}
	block := a.c.block
	os := f.Out.Size()
	for lo := pc.Lo; lo < pc.Hi; lo += block {
		hi := min(lo+block, pc.Hi)
		out := dst[(lo-pc.Lo)*os : (hi-pc.Lo)*os]
		if v := a.acc32[pc.Field]; v != nil {
			store32Kernel(a.c.kern, f.Out)(out, v[lo:hi], float32(scale))
		} else {
			store64Kernel(a.c.kern, f.Out)(out, a.acc64[pc.Field][lo:hi], scale)
		}
		if err := checkOut(a.c.kern, f, lo, out); err != nil {
			return err
		}
	}
	return nil
}

// SumBytes implements SumHolder.
func (a *cpuAccumulator) SumBytes() int64 {
	var n int64
	for t := range a.acc32 { // nil after Close
		n += 4*int64(len(a.acc32[t])+len(a.accU32[t])) + 8*int64(len(a.acc64[t]))
	}
	return n
}

// Reset implements Accumulator.
func (a *cpuAccumulator) Reset() {
	for t := range a.fields {
		clear(a.acc32[t])
		clear(a.acc64[t])
		clear(a.accU32[t])
	}
}

// Close implements Accumulator: the buffers go back to the pool.
func (a *cpuAccumulator) Close() error {
	for t := range a.acc32 {
		freeAcc(a.acc32[t])
		freeAcc(a.acc64[t])
		freeAcc(a.accU32[t])
	}
	a.acc32, a.acc64, a.accU32, a.work = nil, nil, nil, nil
	return nil
}
