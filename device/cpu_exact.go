package device

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/wattagg/wattagg/tensor"
)

// The CPU's exact sums (see exact.go): the batch path of WeightedSum for exact fields, the exact
// accumulator of incremental rounds and partial aggregates, and the range scan.

// exactBlockElems is the block of a batch exact sum: two limbs of 8 bytes per element, so half
// the f64 block keeps the same 256 KiB in L2, and each f32 input is still read in runs of 16
// pages.
func (c *CPU) exactBlockElems() int { return c.block / 2 }

// asInt64 views an f64 scratch buffer as int64 limbs (same size and alignment).
func asInt64(v []float64) []int64 {
	return unsafe.Slice((*int64)(unsafe.Pointer(unsafe.SliceData(v))), len(v))
}

// exactGroups are the input groups of an exact field: runs of one dtype, in input order, with
// the weights the kernels apply (ExactWeight: no job scale, which multiplies the sum).
func exactGroups(t int, f AccField, inputs [][]Span, weights []float64) []group {
	var gs []group
	for i, in := range inputs {
		sp := in[t]
		k := len(gs) - 1
		if k < 0 || gs[k].dtype != sp.DType {
			gs = append(gs, group{dtype: sp.DType})
			k++
		}
		gs[k].inputs = append(gs[k].inputs, i)
		gs[k].w64 = append(gs[k].w64, ExactWeight(weights[i], sp, f.Grid))
	}
	return gs
}

// sumPieceExact is sumPiece for an exact field: zero the limbs of a block, add every input's
// terms, write the sum times 2^Grid·scale. Addition is exact, so the order of the groups and of
// the calls changes no bit.
func (c *CPU) sumPieceExact(ctx context.Context, s *cpuScratch, f AccField, groups []group, inputs [][]Span, files *fileInputs, pc Piece, dst []byte, scale float64) error {
	block := c.exactBlockElems()
	limbs := asInt64(s.acc64)
	store := exactStoreKernel(c.kern, f.Out)
	sc := math.Ldexp(scale, f.Grid)
	outSize := f.Out.Size()
	for lo := pc.Lo; lo < pc.Hi; lo += block {
		hi := min(lo+block, pc.Hi)
		n := hi - lo
		h, l := limbs[:n], limbs[block:block+n]
		clear(h)
		clear(l)
		for _, g := range groups {
			xs := s.xs[:len(g.inputs)]
			k := exactAccKernel(c.kern, g.dtype)
			per := inputsPerCall(files, g.dtype.Size()*n)
			for i := 0; i < len(xs); i += per {
				e := min(i+per, len(xs))
				if err := readBlock(&s.rd, xs[i:e], g.inputs[i:e], g.dtype, inputs, files, pc.Field, lo, hi); err != nil {
					clear(s.xs)
					return err
				}
				if m := k(h, l, g.w64[i:e], xs[i:e]); m > exactGroupLimit(f, pc.Field, g, inputs, i, e) {
					if err := firstBeyond(f, g.inputs[i:e], inputs, pc.Field, lo, hi); err != nil {
						clear(s.xs)
						return err
					}
				}
			}
		}
		out := dst[(lo-pc.Lo)*outSize : (hi-pc.Lo)*outSize]
		store(out, h, l, sc)
		if err := checkOut(c.kern, f, lo, out); err != nil {
			return err
		}
	}
	clear(s.xs)
	return ctx.Err()
}

// exactGroupLimit is the magnitude limit of inputs [i, e) of group g (for i8, the strictest of
// their scales: a false alarm only costs firstBeyond's scan).
func exactGroupLimit(f AccField, t int, g group, inputs [][]Span, i, e int) uint32 {
	if g.dtype != tensor.I8 {
		return ExactLimit(g.dtype, f.Bound, 0)
	}
	m := uint32(128)
	for _, in := range g.inputs[i:e] {
		m = min(m, ExactLimit(tensor.I8, f.Bound, inputs[in][t].Scale))
	}
	return m
}

// firstBeyond returns the error for the first element of [lo, hi) of field t, over the inputs
// listed (in their order), that is NaN or Inf (a *tensor.NonFiniteError) or beyond the field's
// bound (a *RangeError), or nil if there is none.
func firstBeyond(f AccField, list []int, inputs [][]Span, t, lo, hi int) error {
	for j := lo; j < hi; j++ {
		for _, i := range list {
			v := inputs[i][t].Value(j)
			switch {
			case math.IsNaN(v) || math.IsInf(v, 0):
				return &tensor.NonFiniteError{Tensor: f.Name, Index: j, Value: v}
			case !(math.Abs(v) <= f.Bound):
				return &RangeError{Tensor: f.Name, Index: j, Value: v, Bound: f.Bound}
			}
		}
	}
	return nil
}

// cpuExactAccumulator is a running exact sum in host memory: two limbs per element, held in one
// until a block needs two (cpu_exact_limbs.go), or one limb on a coarse grid (AccField.OneLimb:
// cpu_exact_one.go).
type cpuExactAccumulator struct {
	c      *CPU
	fields []AccField
	limbs  []*limbField // the two-limb sums; nil with one limb
	one    [][]int64    // the one-limb sums; nil with two limbs
	work   []Piece      // the fields cut into blocks that workers claim (each within a limb block)
}

func (c *CPU) newExactAccumulator(fields []AccField) (*cpuExactAccumulator, error) {
	oneLimb, err := oneLimbFields(fields)
	if err != nil {
		return nil, err
	}
	a := &cpuExactAccumulator{c: c, fields: fields}
	if oneLimb {
		a.one = make([][]int64, len(fields))
	} else {
		a.limbs = make([]*limbField, len(fields))
	}
	for t, f := range fields {
		if err := checkExactField(t, f, nil); err != nil {
			return nil, err
		}
		if f.Len < 0 {
			return nil, fmt.Errorf("%w: field %q: %d elements", ErrJob, f.Name, f.Len)
		}
		// From the pool, like the float accumulators (accmem.go): fresh memory would otherwise
		// take a fault per page at the first adds.
		if oneLimb {
			a.one[t] = asInt64(accF64(f.Len))
		} else {
			a.limbs[t] = newLimbField(f.Len)
		}
		for lo := 0; lo < f.Len; lo += addBlockElems {
			a.work = append(a.work, Piece{Field: t, Lo: lo, Hi: min(lo+addBlockElems, f.Len)})
		}
	}
	return a, nil
}

// Add implements Accumulator: w·x·2^-Grid, each term rounded to an integer, added exactly.
func (a *cpuExactAccumulator) Add(ctx context.Context, x []Span, w float64) error {
	if len(x) != len(a.fields) {
		return fmt.Errorf("%w: %d spans for %d fields", ErrJob, len(x), len(a.fields))
	}
	if err := checkSpans(a.fields, x); err != nil {
		return err
	}
	for t, f := range a.fields {
		if err := checkExactField(t, f, [][]Span{x}); err != nil {
			return err
		}
	}
	files := lookupFiles([][]Span{x}) // read from its file when so registered (fileread.go)
	return a.c.parallelChunks(ctx, len(a.work), func(s *cpuScratch, k int) error {
		pc := a.work[k]
		f := a.fields[pc.Field]
		sp := x[pc.Field]
		es := sp.DType.Size()
		xs := s.xs[:1]
		b, err := s.rd.bytes(0, files.of(0, pc.Field), sp, pc.Lo*es, pc.Hi*es, 0)
		if err != nil {
			return err
		}
		xs[0] = b
		s.w64[0] = ExactWeight(w, sp, f.Grid)
		var m uint32
		if a.one != nil {
			m = exactAcc1Kernel(a.c.kern, sp.DType)(a.one[pc.Field][pc.Lo:pc.Hi], s.w64[:1], xs)
		} else {
			m = a.limbs[pc.Field].add(a.c.kern, sp.DType, pc.Lo, s.w64[0], b)
		}
		xs[0] = nil
		if m > ExactLimit(sp.DType, f.Bound, sp.Scale) {
			if err := firstBeyond(f, []int{0}, [][]Span{x}, pc.Field, pc.Lo, pc.Hi); err != nil {
				return fmt.Errorf("%w (the update was added in part: the sum is no longer meaningful)", err)
			}
		}
		return nil
	}, 1)
}

// Emit implements Accumulator: the sums times 2^Grid·scale, in each field's output dtype.
func (a *cpuExactAccumulator) Emit(ctx context.Context, scale float64, chunks []Chunk, out Output) (Stats, error) {
	if err := checkChunks(a.fields, chunks); err != nil {
		return Stats{}, err
	}
	start := time.Now()
	var stats chunkStats
	err := a.c.parallelChunks(ctx, len(chunks), func(_ *cpuScratch, ci int) error {
		ch := chunks[ci]
		var elems, read int64
		for p, pc := range ch.Pieces {
			dst, err := out.Dest(ci, p)
			if err != nil {
				return err
			}
			f := a.fields[pc.Field]
			store := exactStoreKernel(a.c.kern, f.Out)
			sc := math.Ldexp(scale, f.Grid)
			os := f.Out.Size()
			for lo := pc.Lo; lo < pc.Hi; lo += a.c.block {
				hi := min(lo+a.c.block, pc.Hi)
				o := dst[(lo-pc.Lo)*os : (hi-pc.Lo)*os]
				if a.one != nil {
					storeOne(store, o, a.one[pc.Field][lo:hi], sc, os)
					read += 8 * int64(hi-lo)
				} else {
					read += a.limbs[pc.Field].store(store, o, lo, hi, sc, os)
				}
				if err := checkOut(a.c.kern, f, lo, o); err != nil {
					return err
				}
			}
			elems += int64(pc.Hi - pc.Lo)
		}
		if err := out.Done(ci); err != nil {
			return err
		}
		stats.add(elems, read, ch.Len)
		return nil
	}, 0)
	return stats.total(a.c.Name(), start), err
}

// ReadSums implements ExactAccumulator.
func (a *cpuExactAccumulator) ReadSums(_ context.Context, t int, dst []int64) error {
	if t < 0 || t >= len(a.fields) || len(dst) != 2*a.fields[t].Len {
		return fmt.Errorf("%w: sums of field %d into %d words", ErrJob, t, len(dst))
	}
	if a.one != nil {
		oneToInt128(a.one[t], dst)
		return nil
	}
	a.limbs[t].readSums(dst)
	return nil
}

// AddSums implements ExactAccumulator.
func (a *cpuExactAccumulator) AddSums(_ context.Context, t int, src []int64) error {
	if t < 0 || t >= len(a.fields) {
		return fmt.Errorf("%w: field %d of %d", ErrJob, t, len(a.fields))
	}
	if a.one != nil {
		return addInt128One(a.one[t], src, a.fields[t].Name)
	}
	return a.limbs[t].addSums(src, a.fields[t].Name)
}

// SumBytes implements SumHolder: 8 bytes per element, and 8 more for each element of a block
// that has its high limb.
func (a *cpuExactAccumulator) SumBytes() int64 {
	var n int64
	for _, one := range a.one {
		n += 8 * int64(len(one))
	}
	for _, lf := range a.limbs { // both nil after Close
		e, _ := lf.promoted()
		n += 8 * int64(len(lf.one)+e)
	}
	return n
}

// Reset implements Accumulator.
func (a *cpuExactAccumulator) Reset() {
	for t := range a.fields {
		if a.one != nil {
			clear(a.one[t])
		} else {
			a.limbs[t].reset()
		}
	}
}

// Close implements Accumulator.
func (a *cpuExactAccumulator) Close() error {
	for t := range a.fields {
		if a.one != nil {
			freeAcc(a.one[t])
		} else if a.limbs != nil {
			a.limbs[t].free()
		}
	}
	a.limbs, a.one, a.work = nil, nil, nil
	return nil
}

// CheckRange implements RangeChecker: blocks of the update are scanned on the device's workers
// (kernels.Beyond*, which also catch NaN and Inf), and only a bad block is examined element by
// element to name the first culprit.
func (c *CPU) CheckRange(ctx context.Context, fields []AccField, x []Span) error {
	if err := checkSpans(fields, x); err != nil {
		return err
	}
	for t, f := range fields {
		if !exactInput(x[t].DType) {
			return fmt.Errorf("%w: field %q: %s: exact sums take f32, bf16, f16 and i8", ErrUnsupported, f.Name, x[t].DType)
		}
		if !(f.Bound > 0) || math.IsInf(f.Bound, 0) {
			return fmt.Errorf("%w: field %q: bound %v", ErrJob, f.Name, f.Bound)
		}
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
			return nil
		}
		b := blocks[k]
		sp := x[b.t]
		data, err := w.span(files, 0, b.t, sp, b.lo, b.hi)
		if err != nil {
			return err
		}
		if c.beyond(sp, data, fields[b.t].Bound) {
			lowerFirst(&first, k)
		}
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
	return firstBeyond(fields[b.t], []int{0}, [][]Span{x}, b.t, b.lo, b.hi)
}

// beyond reports whether some element of the block b of span sp is NaN or beyond ±bound.
func (c *CPU) beyond(sp Span, b []byte, bound float64) bool {
	if sp.DType == tensor.I8 {
		// |Scale·q| ≤ bound for every q with |q| ≤ m.
		m := math.Floor(bound / math.Abs(float64(sp.Scale)))
		for _, q := range b {
			if v := math.Abs(float64(int8(q))); v > m && v*math.Abs(float64(sp.Scale)) > bound {
				return true
			}
		}
		return false
	}
	b32 := float32(bound)
	if float64(b32) > bound {
		b32 = math.Nextafter32(b32, 0) // the largest f32 within the bound
	}
	switch sp.DType {
	case tensor.F32:
		return c.kern.BeyondF32(b, b32)
	case tensor.BF16:
		return c.kern.BeyondBF16(b, b32)
	default:
		return c.kern.BeyondF16(b, b32)
	}
}

// AddPiece implements PieceAccumulator on the calling goroutine: a piece is one update's
// few MiB, and the pieces of concurrent uploads keep the cores busy.
func (a *cpuExactAccumulator) AddPiece(ctx context.Context, t, lo int, x Span, w float64) error {
	if t < 0 || t >= len(a.fields) {
		return fmt.Errorf("%w: field %d of %d", ErrJob, t, len(a.fields))
	}
	f := a.fields[t]
	es := x.DType.Size()
	if !exactInput(x.DType) || es == 0 || len(x.Data)%es != 0 {
		return fmt.Errorf("%w: field %q: a piece of %d bytes of %s: exact sums take f32, bf16, f16 and i8", ErrUnsupported, f.Name, len(x.Data), x.DType)
	}
	n := len(x.Data) / es
	if lo < 0 || lo+n > f.Len {
		return fmt.Errorf("%w: field %q: elements [%d, %d) of %d", ErrJob, f.Name, lo, lo+n, f.Len)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if a.c.beyond(x, x.Data, f.Bound) {
		if err := firstBeyond(AccField{Name: f.Name, Len: n, Bound: f.Bound}, []int{0}, [][]Span{{x}}, 0, 0, n); err != nil {
			return shiftIndex(err, lo)
		}
	}
	w64 := []float64{ExactWeight(w, x, f.Grid)}
	xs := [][]byte{x.Data}
	if a.one != nil { // one pass over the limb, no normalisation
		exactAcc1Kernel(a.c.kern, x.DType)(a.one[t][lo:lo+n], w64, xs)
		return nil
	}
	a.limbs[t].add(a.c.kern, x.DType, lo, w64[0], x.Data)
	return nil
}

// shiftIndex moves the element index of a range or non-finite error found in a piece to the
// field's count.
func shiftIndex(err error, lo int) error {
	var re *RangeError
	var ne *tensor.NonFiniteError
	switch {
	case errors.As(err, &re):
		re.Index += lo
	case errors.As(err, &ne):
		ne.Index += lo
	}
	return err
}
