package device

import (
	"context"
	"fmt"
	"time"

	"github.com/wattagg/wattagg/tensor"
)

// cpuAccumulator is a running sum in host memory, one aligned buffer per field.
type cpuAccumulator struct {
	c      *CPU
	fields []AccField
	acc32  [][]float32 // per field, nil where the accumulator is f64
	acc64  [][]float64
	work   []Piece // the fields cut into blocks that workers claim
}

// addBlockElems is the block of a streaming Add: one input only, so the accumulator cannot stay
// in cache and blocks only need to be large enough to amortise a claim.
const addBlockElems = 64 << 10

// NewAccumulator implements Device.
func (c *CPU) NewAccumulator(fields []AccField) (Accumulator, error) {
	a := &cpuAccumulator{c: c, fields: fields, acc32: make([][]float32, len(fields)), acc64: make([][]float64, len(fields))}
	for t, f := range fields {
		if err := c.supports(t, f, nil); err != nil {
			return nil, err
		}
		switch f.Acc {
		case tensor.F32:
			a.acc32[t] = tensor.AlignedF32(f.Len)
		case tensor.F64:
			a.acc64[t] = tensor.AlignedF64(f.Len)
		}
		for lo := 0; lo < f.Len; lo += addBlockElems {
			a.work = append(a.work, Piece{Field: t, Lo: lo, Hi: min(lo+addBlockElems, f.Len)})
		}
	}
	return a, nil
}

// Add implements Accumulator.
func (a *cpuAccumulator) Add(ctx context.Context, x []Span, w float64) error {
	if err := checkSpans(a.fields, x); err != nil {
		return err
	}
	for t, f := range a.fields {
		if f.Acc == tensor.F32 && x[t].DType == tensor.F64 {
			return fmt.Errorf("%w: field %q: f64 input needs an f64 accumulator", ErrUnsupported, f.Name)
		}
	}
	return a.c.parallelChunks(ctx, len(a.work), func(s *cpuScratch, k int) error {
		pc := a.work[k]
		sp := x[pc.Field]
		es := sp.DType.Size()
		wt := w
		if sp.DType == tensor.I8 {
			wt *= float64(sp.Scale)
		}
		xs := s.xs[:1]
		xs[0] = sp.Data[pc.Lo*es : pc.Hi*es]
		if acc := a.acc32[pc.Field]; acc != nil {
			s.w32[0] = float32(wt)
			acc32Kernel(a.c.kern, sp.DType)(acc[pc.Lo:pc.Hi], s.w32[:1], xs)
		} else {
			s.w64[0] = wt
			acc64Kernel(a.c.kern, sp.DType)(a.acc64[pc.Field][pc.Lo:pc.Hi], s.w64[:1], xs)
		}
		xs[0] = nil
		return nil
	}, 1)
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
	}
}

// Close implements Accumulator.
func (a *cpuAccumulator) Close() error {
	a.acc32, a.acc64, a.work = nil, nil, nil
	return nil
}
