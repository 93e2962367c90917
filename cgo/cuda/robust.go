package cuda

import (
	"context"
	"fmt"
	"unsafe"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
)

// The robust-rule operations. Each takes N inputs over the same fields, either host spans
// (streamed through the pipeline like WeightedSum) or Residents, and treats a model as the flat
// concatenation of its fields. Values are decoded exactly to f64 (I8 as scale·q, with each span's
// own scale). Results are deterministic; the reductions (Gram, SumSquares) add partial sums in an
// order of their own, so they match a CPU implementation to rounding, not bit for bit.

// Gram returns the N×N matrix G[a][b] = Σ_j x_a[j]·x_b[j] over every field (f64 products and
// sums: the products of f32, f16, bf16 or i8 values are exact). Krum's squared distances are
// G[a][a] + G[b][b] - 2·G[a][b]. The matrix is computed in 64×64 tiles through shared memory,
// each coordinate block's partial sums added in a fixed order; G is symmetric bit for bit.
func (g *GPU) Gram(ctx context.Context, fields []device.AccField, inputs [][]device.Span) ([][]float64, error) {
	if err := checkInputs(fields, inputs, tensor.DType.Real, "multiplied"); err != nil {
		return nil, err
	}
	src := g.hostSource(inputs)
	return g.gram(ctx, fields, src)
}

// GramResident is Gram over device-resident inputs.
func (g *GPU) GramResident(ctx context.Context, inputs []*Resident) ([][]float64, error) {
	fields, err := residentFields(g, inputs, nil)
	if err != nil {
		return nil, err
	}
	if err := checkResidentDTypes(inputs, tensor.DType.Real, "multiplied"); err != nil {
		return nil, err
	}
	return g.gram(ctx, fields, source{res: inputs})
}

// Gram kernel geometry (reduce.cu).
const gramTile = 64

func (g *GPU) gram(ctx context.Context, fields []device.AccField, src source) ([][]float64, error) {
	n := src.count()
	if n == 0 {
		return [][]float64{}, nil
	}
	tiles := (n + gramTile - 1) / gramTile
	pairs := tiles * (tiles + 1) / 2
	if pairs > 65535 {
		return nil, fmt.Errorf("%s: %w: Gram matrix of %d inputs (at most %d)", g.Name(), device.ErrUnsupported, n, 361*gramTile)
	}
	// Enough blocks to fill the GPU four times over, each covering a share of the coordinates.
	slices := max(1, min(1024, 4*g.attrs.sms/pairs))
	m := int64(pairs * gramTile * gramTile)
	partial := int64(slices) * m * 8
	v := make([]float64, m)
	op := &gramOp{slices: slices, pairs: pairs}
	j := &job{g: g, fields: fields, src: src, op: op, ordered: true,
		begin: func(s cuStream) error {
			dev, _, err := g.scratchBuffers(partial+m*8, m*8)
			if err != nil {
				return err
			}
			op.partial = dev
			return g.memsetErr(dev, partial, s)
		},
		end: func(s cuStream) error {
			dev, _, err := g.scratchBuffers(partial+m*8, m*8)
			if err != nil {
				return err
			}
			grid, err := blocks(m, 256)
			if err != nil {
				return err
			}
			out := dev + uint64(partial)
			if err := g.launch(s, "wa_gram_sum", grid, 256, 0, dev, argInt(slices), uint64(m), out); err != nil {
				return err
			}
			return g.fetch(s, v, out)
		}}
	if _, err := j.run(ctx); err != nil {
		return nil, err
	}
	gm := make([][]float64, n)
	for a := range gm {
		gm[a] = make([]float64, n)
	}
	p := 0
	for ta := range tiles {
		for tb := ta; tb < tiles; tb++ {
			for a := range gramTile {
				for b := range gramTile {
					ra, rb := ta*gramTile+a, tb*gramTile+b
					if ra < n && rb < n {
						x := v[p*gramTile*gramTile+a*gramTile+b]
						gm[ra][rb], gm[rb][ra] = x, x
					}
				}
			}
			p++
		}
	}
	return gm, nil
}

type gramOp struct {
	slices, pairs int
	partial       uint64
}

func (*gramOp) scratch(int) int { return 0 }

func (o *gramOp) segment(b *batch, k int) error {
	g := b.j.g
	sg := b.sl.segs[k]
	rows, dts, scales := describeInputs(b, k)
	args := []uint64{param(b, rows), param(b, dts), param(b, scales), argInt(len(rows)), uint64(sg.hi - sg.lo), o.partial}
	grid := [3]uint32{uint32(o.slices), uint32(o.pairs), 1}
	b.enqueue(func(s cuStream) error { return g.launch2(s, "wa_gram", grid, 256, 0, args...) })
	return nil
}

// fetch copies len(dst) f64 from device address src to dst through the scratch buffer, and waits.
// The caller holds g.mu.
func (g *GPU) fetch(s cuStream, dst []float64, src uint64) error {
	n := int64(8 * len(dst))
	_, host, err := g.scratchBuffers(0, n)
	if err != nil {
		return err
	}
	if err := g.drv.d2h(g.ctx, unsafe.Pointer(unsafe.SliceData(host)), src, n, s); err != nil {
		return fmt.Errorf("%s: %w", g.Name(), err)
	}
	if err := g.drv.syncStream(g.ctx, s); err != nil {
		return fmt.Errorf("%s: %w", g.Name(), err)
	}
	copy(unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(dst))), n), host)
	return nil
}

// describeInputs returns, for segment k, each input's device address, dtype code and I8 scale
// (1 for the float dtypes).
func describeInputs(b *batch, k int) ([]uint64, []int32, []float32) {
	n := b.j.src.count()
	t := b.sl.segs[k].field
	rows, dts, scales := make([]uint64, n), make([]int32, n), make([]float32, n)
	for i := range n {
		rows[i] = b.input(k, i)
		dts[i] = int32(b.j.src.dtype(i, t))
		scales[i] = 1
		if b.j.src.dtype(i, t) == tensor.I8 {
			scales[i] = b.j.src.scale(i, t)
		}
	}
	return rows, dts, scales
}

// SumSquares returns Σ_j x_i[j]² over every field for each input (squared L2 norms, for clipping
// and Krum), accumulated in f64 with a fixed reduction tree.
func (g *GPU) SumSquares(ctx context.Context, fields []device.AccField, inputs [][]device.Span) ([]float64, error) {
	if err := checkInputs(fields, inputs, tensor.DType.Real, "squared"); err != nil {
		return nil, err
	}
	return g.sumSquares(ctx, fields, g.hostSource(inputs))
}

// SumSquaresResident is SumSquares over device-resident inputs.
func (g *GPU) SumSquaresResident(ctx context.Context, inputs []*Resident) ([]float64, error) {
	fields, err := residentFields(g, inputs, nil)
	if err != nil {
		return nil, err
	}
	if err := checkResidentDTypes(inputs, tensor.DType.Real, "squared"); err != nil {
		return nil, err
	}
	return g.sumSquares(ctx, fields, source{res: inputs})
}

// sumsqBlocks is the most blocks wa_sumsq runs with: the partial sums per input.
const sumsqBlocks = 256

func (g *GPU) sumSquares(ctx context.Context, fields []device.AccField, src source) ([]float64, error) {
	n := src.count()
	if n == 0 {
		return []float64{}, nil
	}
	bytes := int64(n) * sumsqBlocks * 8
	p := make([]float64, n*sumsqBlocks)
	op := &sumsqOp{}
	j := &job{g: g, fields: fields, src: src, op: op, ordered: true,
		begin: func(s cuStream) error {
			dev, _, err := g.scratchBuffers(bytes, bytes)
			if err != nil {
				return err
			}
			op.partial = dev
			return g.memsetErr(dev, bytes, s)
		},
		end: func(s cuStream) error { return g.fetch(s, p, op.partial) }}
	if _, err := j.run(ctx); err != nil {
		return nil, err
	}
	out := make([]float64, n)
	for i := range out {
		for _, v := range p[i*sumsqBlocks : (i+1)*sumsqBlocks] {
			out[i] += v
		}
	}
	return out, nil
}

type sumsqOp struct{ partial uint64 }

func (*sumsqOp) scratch(int) int { return 0 }

func (o *sumsqOp) segment(b *batch, k int) error {
	g := b.j.g
	sg := b.sl.segs[k]
	n := int64(sg.hi - sg.lo)
	grid, err := blocks(n, 4*256)
	if err != nil {
		return err
	}
	grid = min(grid, sumsqBlocks)
	rows, dts, scales := describeInputs(b, k)
	for i := range rows {
		args := []uint64{rows[i], argInt(int(dts[i])), argF32(scales[i]), uint64(n), o.partial + uint64(i*sumsqBlocks*8)}
		b.enqueue(func(s cuStream) error { return g.launch(s, "wa_sumsq", grid, 256, 0, args...) })
	}
	return nil
}

// Median writes the coordinate-wise median of the inputs (even N: v[N/2-1]·0.5 + v[N/2]·0.5) in
// each field's Out dtype (f32, f64, f16 or bf16) to the chunks of out. The arithmetic is f64 for
// an f64 output, else f32: for f32 inputs and output the result is the CPU's kernels.MedianF32,
// bit for bit (kernels/cuda/order.cu). Up to 32 inputs are sorted in registers; beyond, each
// coordinate's values are ranked in shared memory (O(N²) comparisons), up to MaxOrderInputs. A
// NaN or Inf result is a *tensor.NonFiniteError; inputs should be finite (device.CheckFinite).
func (g *GPU) Median(ctx context.Context, fields []device.AccField, inputs [][]device.Span, chunks []device.Chunk, out device.Output) (device.Stats, error) {
	return g.order(ctx, fields, inputs, -1, chunks, out)
}

// TrimmedMean writes the coordinate-wise mean of the inputs without the trim smallest and trim
// largest values of each coordinate (summed from +0 in ascending order, then divided by
// N-2·trim, in the arithmetic of Median: the CPU's kernels.TrimmedMeanF32 for f32), as Median
// does. 0 <= 2·trim < N.
func (g *GPU) TrimmedMean(ctx context.Context, fields []device.AccField, inputs [][]device.Span, trim int, chunks []device.Chunk, out device.Output) (device.Stats, error) {
	if trim < 0 {
		return device.Stats{}, fmt.Errorf("%w: trim %d", device.ErrJob, trim)
	}
	return g.order(ctx, fields, inputs, trim, chunks, out)
}

// MedianResident is Median from device-resident inputs into a device-resident output.
func (g *GPU) MedianResident(ctx context.Context, inputs []*Resident, out *Resident) (device.Stats, error) {
	return g.orderResident(ctx, inputs, -1, out)
}

// TrimmedMeanResident is TrimmedMean from device-resident inputs into a device-resident output.
func (g *GPU) TrimmedMeanResident(ctx context.Context, inputs []*Resident, trim int, out *Resident) (device.Stats, error) {
	if trim < 0 {
		return device.Stats{}, fmt.Errorf("%w: trim %d", device.ErrJob, trim)
	}
	return g.orderResident(ctx, inputs, trim, out)
}

// MaxOrderInputs is how many inputs Median and TrimmedMean take on this GPU: each coordinate's
// values must fit in a block's shared memory (320 bytes per input for a warp of coordinates).
func (g *GPU) MaxOrderInputs() int { return max(g.attrs.smemOptin, 48<<10) / orderSharedPerInput }

const orderSharedPerInput = 32 * (8 + 2)

func (g *GPU) checkOrder(n, trim int, fields []device.AccField) error {
	if n == 0 {
		return fmt.Errorf("%w: no inputs", device.ErrJob)
	}
	if n > g.MaxOrderInputs() {
		return fmt.Errorf("%s: %w: order statistics of %d inputs (at most %d on this GPU)", g.Name(), device.ErrUnsupported, n, g.MaxOrderInputs())
	}
	if 2*trim >= n {
		return fmt.Errorf("%w: trimming %d of each end leaves nothing of %d inputs", device.ErrJob, trim, n)
	}
	for _, f := range fields {
		switch f.Out {
		case tensor.F32, tensor.F64, tensor.F16, tensor.BF16:
		default:
			return fmt.Errorf("%w: field %q: output dtype %s", device.ErrUnsupported, f.Name, f.Out)
		}
	}
	return nil
}

func (g *GPU) order(ctx context.Context, fields []device.AccField, inputs [][]device.Span, trim int, chunks []device.Chunk, out device.Output) (device.Stats, error) {
	if err := checkInputs(fields, inputs, tensor.DType.Real, "ordered"); err != nil {
		return device.Stats{}, err
	}
	if err := g.checkOrder(len(inputs), trim, fields); err != nil {
		return device.Stats{}, err
	}
	if err := (&device.SumJob{Fields: fields, Chunks: chunks}).Validate(); err != nil {
		return device.Stats{}, err
	}
	j := &job{g: g, fields: fields, src: g.hostSource(inputs), op: &orderOp{trim: trim, fields: fields},
		out: output{chunks: chunks, out: out, check: true}}
	return j.run(ctx)
}

func (g *GPU) orderResident(ctx context.Context, inputs []*Resident, trim int, out *Resident) (device.Stats, error) {
	fields, err := residentFields(g, inputs, out)
	if err != nil {
		return device.Stats{}, err
	}
	if err := checkResidentDTypes(inputs, tensor.DType.Real, "ordered"); err != nil {
		return device.Stats{}, err
	}
	if err := g.checkOrder(len(inputs), trim, fields); err != nil {
		return device.Stats{}, err
	}
	j := &job{g: g, fields: fields, src: source{res: inputs}, op: &orderOp{trim: trim, fields: fields}, out: output{res: out}}
	stats, err := j.run(ctx)
	if err != nil {
		return stats, err
	}
	return stats, g.checkResidentFinite(ctx, out)
}

type orderOp struct {
	trim   int
	fields []device.AccField
}

func (*orderOp) scratch(int) int { return 0 }

func (o *orderOp) segment(b *batch, k int) error {
	g := b.j.g
	sg := b.sl.segs[k]
	n := int64(sg.hi - sg.lo)
	rows, dts, scales := describeInputs(b, k)
	args := []uint64{b.output(k), argInt(int(o.fields[sg.field].Out)), param(b, rows), param(b, dts), param(b, scales),
		argInt(len(rows)), argInt(o.trim), uint64(n)}
	if len(rows) <= 32 {
		p := 2
		for p < len(rows) {
			p *= 2
		}
		name := fmt.Sprintf("wa_order_r%d", p)
		grid, err := blocks(n, 256)
		if err != nil {
			return err
		}
		b.enqueue(func(s cuStream) error { return g.launch(s, name, grid, 256, 0, args...) })
		return nil
	}
	grid, err := blocks(n, 32)
	if err != nil {
		return err
	}
	shmem := orderSharedPerInput * len(rows)
	b.enqueue(func(s cuStream) error { return g.launch(s, "wa_order_shared", grid, 32, shmem, args...) })
	return nil
}

// ModSum writes Σ_i x_i mod 2^32 of u32 inputs (the masked vectors of secure aggregation) to the
// chunks of out, whose fields must have Out u32.
func (g *GPU) ModSum(ctx context.Context, fields []device.AccField, inputs [][]device.Span, chunks []device.Chunk, out device.Output) (device.Stats, error) {
	isU32 := func(d tensor.DType) bool { return d == tensor.U32 }
	if err := checkInputs(fields, inputs, isU32, "summed modulo 2^32"); err != nil {
		return device.Stats{}, err
	}
	for _, f := range fields {
		if f.Out != tensor.U32 {
			return device.Stats{}, fmt.Errorf("%w: field %q: output dtype %s (want u32)", device.ErrUnsupported, f.Name, f.Out)
		}
	}
	if err := (&device.SumJob{Fields: fields, Chunks: chunks}).Validate(); err != nil {
		return device.Stats{}, err
	}
	j := &job{g: g, fields: fields, src: g.hostSource(inputs), op: modSumOp{}, out: output{chunks: chunks, out: out}}
	return j.run(ctx)
}

// ModSumResident is ModSum from device-resident inputs into a device-resident u32 output.
func (g *GPU) ModSumResident(ctx context.Context, inputs []*Resident, out *Resident) (device.Stats, error) {
	fields, err := residentFields(g, inputs, out)
	if err != nil {
		return device.Stats{}, err
	}
	isU32 := func(d tensor.DType) bool { return d == tensor.U32 }
	if err := checkResidentDTypes(append(inputs[:len(inputs):len(inputs)], out), isU32, "summed modulo 2^32"); err != nil {
		return device.Stats{}, err
	}
	j := &job{g: g, fields: fields, src: source{res: inputs}, op: modSumOp{}, out: output{res: out}}
	return j.run(ctx)
}

type modSumOp struct{}

func (modSumOp) scratch(int) int { return 0 }

func (modSumOp) segment(b *batch, k int) error {
	g := b.j.g
	sg := b.sl.segs[k]
	n := int64(sg.hi - sg.lo)
	rows, _, _ := describeInputs(b, k)
	grid, err := blocks(n, 256)
	if err != nil {
		return err
	}
	args := []uint64{b.output(k), param(b, rows), argInt(len(rows)), uint64(n), argBool(true)}
	b.enqueue(func(s cuStream) error { return g.launch(s, "wa_modsum_u32", grid, 256, 0, args...) })
	return nil
}

// checkInputs validates host inputs: one span per field of an accepted dtype and the right length.
func checkInputs(fields []device.AccField, inputs [][]device.Span, ok func(tensor.DType) bool, what string) error {
	for i, in := range inputs {
		if len(in) != len(fields) {
			return fmt.Errorf("%w: input %d: %d spans for %d fields", device.ErrJob, i, len(in), len(fields))
		}
		for t, f := range fields {
			if !ok(in[t].DType) {
				return fmt.Errorf("%w: input %d: field %q: %s cannot be %s", device.ErrUnsupported, i, f.Name, in[t].DType, what)
			}
			if len(in[t].Data) != f.Len*in[t].DType.Size() {
				return fmt.Errorf("%w: input %d: field %q: %d bytes of %s for %d elements", device.ErrJob, i, f.Name, len(in[t].Data), in[t].DType, f.Len)
			}
		}
	}
	return nil
}

func checkResidentDTypes(rs []*Resident, ok func(tensor.DType) bool, what string) error {
	for i, r := range rs {
		for _, f := range r.fields {
			if !ok(f.DType) {
				return fmt.Errorf("%w: resident %d: tensor %q: %s cannot be %s", device.ErrUnsupported, i, f.Name, f.DType, what)
			}
		}
	}
	return nil
}
