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
	if err := a.checkAdd(x); err != nil {
		return err
	}
	return a.c.parallelChunks(ctx, len(a.work), func(s *cpuScratch, k int) error {
		pc := a.work[k]
		a.addPiece(s, pc, x[pc.Field], w)
		return nil
	}, 1)
}

// addPiece adds w·sp to the accumulator over piece pc (a u32 field: sp modulo 2^32, no w).
func (a *cpuAccumulator) addPiece(s *cpuScratch, pc Piece, sp Span, w float64) {
	es := sp.DType.Size()
	xs := s.xs[:1]
	defer func() { xs[0] = nil }()
	if acc := a.accU32[pc.Field]; acc != nil {
		xs[0] = sp.Data[4*pc.Lo : 4*pc.Hi]
		a.c.kern.ModSumU32(acc[pc.Lo:pc.Hi], xs)
		return
	}
	wt := w
	if sp.DType == tensor.I8 {
		wt *= float64(sp.Scale)
	}
	xs[0] = sp.Data[pc.Lo*es : pc.Hi*es]
	if acc := a.acc32[pc.Field]; acc != nil {
		s.w32[0] = float32(wt)
		acc32Kernel(a.c.kern, sp.DType)(acc[pc.Lo:pc.Hi], s.w32[:1], xs)
	} else {
		s.w64[0] = wt
		acc64Kernel(a.c.kern, sp.DType)(a.acc64[pc.Field][pc.Lo:pc.Hi], s.w64[:1], xs)
	}
}

// errBadBlock stops a checked add at a block with a NaN or Inf.
var errBadBlock = errors.New("non-finite block")

// AddChecked implements CheckingAccumulator: each block of x is checked for NaN and Inf right
// before it is added, while it is in cache, so the update is read from memory once (a scan and
// an add read it twice: 20% of a streaming FedAvg's time). A bad block stops the add; the
// error names the first non-finite element of the update, whatever block a worker met first.
func (a *cpuAccumulator) AddChecked(ctx context.Context, x []Span, w float64) error {
	if err := a.checkAdd(x); err != nil {
		return err
	}
	err := a.c.parallelChunks(ctx, len(a.work), func(s *cpuScratch, k int) error {
		pc := a.work[k]
		sp := x[pc.Field]
		es := sp.DType.Size()
		if anyNonFiniteBy(a.c.kern, sp.DType, sp.Data[pc.Lo*es:pc.Hi*es]) {
			return errBadBlock
		}
		a.addPiece(s, pc, sp, w)
		return nil
	}, 1)
	if errors.Is(err, errBadBlock) {
		if err := a.c.CheckFinite(ctx, a.fields, x); err != nil {
			return err
		}
		return fmt.Errorf("%w: a block was found non-finite and then finite: was the update modified while it was added?", ErrJob)
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
