package cuda

import (
	"context"
	"fmt"
	"slices"
	"unsafe"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/kernels"
	"github.com/wattagg/wattagg/tensor"
)

// The GPU implements the capabilities the rules look for with type assertions, beside the
// device.Device every device is.
var (
	_ device.Device    = (*GPU)(nil)
	_ device.Robust    = (*GPU)(nil)
	_ device.Optimizer = (*GPU)(nil)
	_ device.ModSummer = (*GPU)(nil)
)

// The robust-rule operations. Each takes N inputs over the same fields, either host spans
// (streamed through the pipeline like WeightedSum) or residents, and treats a model as the flat
// concatenation of its fields.
//
// Select, Gram and SqDistances implement device.Robust with its semantics: f32, f16, bf16 and
// i8 inputs, widened to f32 as the CPU widens them (i8 as float32(scale·q)), the order
// statistics computed with the CPU's sorting network and f32 operations, so that they are the
// CPU device's bits (signed zeros included). The f64 sums (the Gram matrix, distances and norms)
// are exact products and differences added in an order of the GPU's own (per-thread FMA chains,
// block trees, partial sums in launch order): they are deterministic for a given GPU, job and
// slab size, and differ from the CPU's lane order in the last bits only, each within
// γ_N·Σ|terms| of the exact sum (γ_N = N·2⁻⁵³/(1−N·2⁻⁵³), N the elements summed) as any order of
// f64 additions is. squaredNorms is the exception to the robust semantics: it sums every real
// dtype (f64 included) and scales i8 exactly in f64.

// robustInputs checks host inputs as the CPU device's robust operations do (the same checks and
// messages: device.SelectJob.Validate's for the spans).
func robustInputs(fields []device.AccField, inputs [][]device.Span) error {
	if len(inputs) == 0 {
		return nil
	}
	f32 := make([]device.AccField, len(fields))
	for t, f := range fields {
		f32[t] = device.AccField{Name: f.Name, Len: f.Len, Acc: tensor.F32, Out: tensor.F32}
	}
	return (&device.SelectJob{Fields: f32, Inputs: inputs, Op: device.Median}).Validate()
}

// robustDType reports whether the robust operations take dt (device.Robust).
func robustDType(dt tensor.DType) bool { return dt.Real() && dt != tensor.F64 }

// Gram implements device.Robust: the Gram matrix of the inputs centred on their mean at each
// coordinate, and their squared norms (device.GramMatrix), the values widened to f32 as the CPU
// device widens them. Per segment, wa_gram_centre computes the centres r_j as kernels.GramF32
// does (the same f32 operations in the same order, so the same bits), wa_gram subtracts them as it
// loads, so every difference and product is the CPU's exact f64 value, and computes the matrix in
// 64×64 tiles through shared memory; it is symmetric bit for bit. The norms Σ x_a[j]² come from
// wa_sqdist with the centres as its point (its squared norms; the distances to the centres are
// not used): a third read of the inputs on the GPU, where host inputs already cost a PCIe copy.
// Only the order of the f64 additions differs from the CPU's (see above).
func (g *GPU) Gram(ctx context.Context, fields []device.AccField, inputs [][]device.Span) (device.GramMatrix, device.Stats, error) {
	if err := robustInputs(fields, inputs); err != nil {
		return device.GramMatrix{}, device.Stats{}, err
	}
	return g.gram(ctx, fields, g.hostSource(inputs))
}

// gramResident is Gram over device-resident inputs (f32, f16, bf16 or i8 tensors).
func (g *GPU) gramResident(ctx context.Context, inputs []*resident) (device.GramMatrix, device.Stats, error) {
	fields, err := residentFields(g, inputs, nil)
	if err != nil {
		return device.GramMatrix{}, device.Stats{}, err
	}
	if err := checkResidentDTypes(inputs, robustDType, "multiplied (the robust operations take f32, f16, bf16 and i8)"); err != nil {
		return device.GramMatrix{}, device.Stats{}, err
	}
	return g.gram(ctx, fields, source{res: inputs})
}

// Gram kernel geometry (reduce.cu).
const gramTile = 64

// gram is Gram and gramResident over their inputs (src).
func (g *GPU) gram(ctx context.Context, fields []device.AccField, src source) (device.GramMatrix, device.Stats, error) {
	n := src.count()
	if n == 0 {
		return device.GramMatrix{Centred: [][]float64{}, SqNorms: []float64{}}, device.Stats{Device: g.Name()}, ctx.Err()
	}
	op, err := g.newGramOp(n)
	if err != nil {
		return device.GramMatrix{}, device.Stats{}, err
	}
	j := &job{g: g, fields: fields, src: src, op: op, ordered: true, begin: op.begin, end: op.end}
	stats, err := j.run(ctx)
	if err != nil {
		return device.GramMatrix{}, stats, err
	}
	return op.matrix(), stats, nil
}

// gramOp runs, per segment, wa_gram_centre into the segment's scratch (an f32 centre per
// element), wa_gram over the centred values, and wa_sqdist for the squared norms. Its device
// scratch is [partial tiles | summed tiles | partial distances | partial norms]; end sums the
// partial tiles and fetches the rest into v.
type gramOp struct {
	g             *GPU
	n             int       // inputs
	tiles         int       // tiles of inputs per side of the matrix
	slices, pairs int       // wa_gram's grid: shares of the coordinates × pairs of tiles
	m             int64     // f64 of the summed tiles: pairs·64·64
	sq            int64     // f64 of wa_sqdist's partial sums of each kind: n·sumsqBlocks
	v             []float64 // the summed tiles, partial distances and partial norms (end)
	partial       uint64    // the partial tiles: slices·pairs·64·64 f64
	pd, pn        uint64    // wa_sqdist's partial sums: n·sumsqBlocks f64 each
}

// newGramOp lays out the Gram matrix of n inputs: its pairs of tiles, the slices of the
// coordinates that blocks cover, and the scratch.
func (g *GPU) newGramOp(n int) (*gramOp, error) {
	tiles := (n + gramTile - 1) / gramTile
	pairs := tiles * (tiles + 1) / 2
	if pairs > 65535 {
		return nil, fmt.Errorf("%s: %w: Gram matrix of %d inputs (at most %d)", g.Name(), device.ErrUnsupported, n, 361*gramTile)
	}
	// Enough blocks to fill the GPU four times over, each covering a share of the coordinates.
	parts := max(1, min(1024, 4*g.attrs.sms/pairs))
	m := int64(pairs * gramTile * gramTile)
	sq := int64(n) * sumsqBlocks
	return &gramOp{g: g, n: n, tiles: tiles, slices: parts, pairs: pairs, m: m, sq: sq, v: make([]float64, m+2*sq)}, nil
}

// scratchBytes is the device scratch's bytes of partial tiles, and the bytes fetched from it
// (the summed tiles, distances and norms, which the page-locked scratch receives).
func (o *gramOp) scratchBytes() (partial, fetched int64) {
	return int64(o.slices) * o.m * 8, int64(len(o.v)) * 8
}

// begin takes the scratch and zeroes the partial tiles and partial sums.
func (o *gramOp) begin(ln *lane, s cuStream) error {
	g := o.g
	partial, fetched := o.scratchBytes()
	dev, _, err := g.scratchBuffers(ln, partial+fetched, fetched)
	if err != nil {
		return err
	}
	o.partial = dev
	o.pd = dev + uint64(partial+o.m*8)
	o.pn = o.pd + uint64(o.sq*8)
	if err := g.memsetErr(dev, partial, s); err != nil {
		return err
	}
	return g.memsetErr(o.pd, 2*o.sq*8, s)
}

// end sums the partial tiles (wa_gram_sum) and fetches the summed tiles, distances and norms
// into v.
func (o *gramOp) end(ln *lane, s cuStream) error {
	g := o.g
	partial, fetched := o.scratchBytes()
	dev, _, err := g.scratchBuffers(ln, partial+fetched, fetched)
	if err != nil {
		return err
	}
	grid, err := blocks(o.m, 256)
	if err != nil {
		return err
	}
	out := dev + uint64(partial)
	if err := g.launch(s, "wa_gram_sum", grid, 256, 0, dev, argInt(o.slices), uint64(o.m), out); err != nil {
		return err
	}
	return g.fetch(ln, s, o.v, out)
}

// matrix builds the result from v: the symmetric matrix from its tiles, and each input's
// squared norm from its partial sums.
func (o *gramOp) matrix() device.GramMatrix {
	n := o.n
	gm := device.GramMatrix{Centred: make([][]float64, n), SqNorms: make([]float64, n)}
	for a := range gm.Centred {
		gm.Centred[a] = make([]float64, n)
	}
	o.untile(gm.Centred)
	norms := o.v[o.m+o.sq:]
	for a := range n {
		for _, x := range norms[a*sumsqBlocks : (a+1)*sumsqBlocks] {
			gm.SqNorms[a] += x
		}
	}
	return gm
}

// untile copies the summed tiles, the upper triangle of tile pairs in row order, into both
// halves of the matrix c.
func (o *gramOp) untile(c [][]float64) {
	n, p := o.n, 0
	for ta := range o.tiles {
		for tb := ta; tb < o.tiles; tb++ {
			for a := range gramTile {
				for b := range gramTile {
					ra, rb := ta*gramTile+a, tb*gramTile+b
					if ra < n && rb < n {
						x := o.v[p*gramTile*gramTile+a*gramTile+b]
						c[ra][rb], c[rb][ra] = x, x
					}
				}
			}
			p++
		}
	}
}

func (*gramOp) scratch(int) int { return 4 }

func (o *gramOp) segment(b *batch, k int) error {
	g := b.j.g
	sg := b.sl.segs[k]
	n := int64(sg.hi - sg.lo)
	rows, dts, scales := describeInputs(b, k, b.j.src.count())
	prow, pdt, psc := param(b, rows), param(b, dts), param(b, scales)
	cen := b.scratchAt(k)
	cgrid, err := blocks(n, 256)
	if err != nil {
		return err
	}
	dgrid, err := blocks(n, sqdistPerBlock)
	if err != nil {
		return err
	}
	cargs := []uint64{prow, pdt, psc, argInt(len(rows)), uint64(n), cen}
	gargs := []uint64{prow, pdt, psc, argInt(len(rows)), uint64(n), cen, o.partial}
	dargs := []uint64{prow, pdt, psc, cen, uint64(n), o.pd, o.pn, argInt(sumsqBlocks)}
	ggrid := [3]uint32{uint32(o.slices), uint32(o.pairs), 1}
	dgrid2 := [3]uint32{min(dgrid, sumsqBlocks), uint32(len(rows)), 1}
	b.enqueue(func(s cuStream) error { return g.launch(s, "wa_gram_centre", cgrid, 256, 0, cargs...) })
	gram := "wa_gram" // one tile: k-tiles of 64 elements
	if o.pairs > 1 {
		gram = "wa_gram_pairs"
	}
	b.enqueue(func(s cuStream) error { return g.launch2(s, gram, ggrid, 256, 0, gargs...) })
	b.enqueue(func(s cuStream) error { return g.launch2(s, "wa_sqdist", dgrid2, 256, 0, dargs...) })
	return nil
}

// fetch copies len(dst) f64 from device address src to dst through the lane's scratch buffer,
// and waits. The caller holds ln.mu.
func (g *GPU) fetch(ln *lane, s cuStream, dst []float64, src uint64) error {
	n := int64(8 * len(dst))
	_, host, err := g.scratchBuffers(ln, 0, n)
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

// describeInputs returns, for segment k, the device address, dtype code and I8 scale (1 for the
// float dtypes) of the first n inputs.
func describeInputs(b *batch, k, n int) ([]uint64, []int32, []float32) {
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

// squaredNorms returns Σ_j x_i[j]² over every field for each input (squared L2 norms, for clipping
// and Krum), accumulated in f64 with a fixed reduction tree.
func (g *GPU) squaredNorms(ctx context.Context, fields []device.AccField, inputs [][]device.Span) ([]float64, error) {
	if err := checkInputs(fields, inputs, tensor.DType.Real, "squared"); err != nil {
		return nil, err
	}
	return g.sumSquares(ctx, fields, g.hostSource(inputs))
}

// squaredNormsResident is squaredNorms over device-resident inputs.
func (g *GPU) squaredNormsResident(ctx context.Context, inputs []*resident) ([]float64, error) {
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
		begin: func(ln *lane, s cuStream) error {
			dev, _, err := g.scratchBuffers(ln, bytes, bytes)
			if err != nil {
				return err
			}
			op.partial = dev
			return g.memsetErr(dev, bytes, s)
		},
		end: func(ln *lane, s cuStream) error { return g.fetch(ln, s, p, op.partial) }}
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
	rows, dts, scales := describeInputs(b, k, b.j.src.count())
	for i := range rows {
		args := []uint64{rows[i], argInt(int(dts[i])), argF32(scales[i]), uint64(n), o.partial + uint64(i*sumsqBlocks*8)}
		b.enqueue(func(s cuStream) error { return g.launch(s, "wa_sumsq", grid, 256, 0, args...) })
	}
	return nil
}

// Select implements device.Robust: the order statistic of the job's inputs, coordinate by
// coordinate, bit for bit the CPU device's (kernels/cuda/order.cu): up to 128 inputs sorted in
// registers, more in shared memory (or, beyond what a block's shared memory holds, in global
// scratch) by the same network driven from a table. With SqDist or SqNorm set, the f32 results
// stay on the GPU for the distances of every input to them (reduce.cu's wa_sqdist), whose f64
// sums are within rounding of the CPU's (see above). A non-finite result is a
// *tensor.NonFiniteError naming the field and element.
func (g *GPU) Select(ctx context.Context, sj *device.SelectJob) (device.Stats, error) {
	if err := sj.Validate(); err != nil {
		return device.Stats{}, err
	}
	dist := sj.SqDist != nil || sj.SqNorm != nil
	if err := g.checkSelect(len(sj.Inputs), dist); err != nil {
		return device.Stats{}, err
	}
	src := g.hostSource(sj.Inputs)
	op := g.newSelectOp(sj.Fields, len(sj.Inputs), sj.Op, sj.K, dist)
	j := &job{g: g, fields: sj.Fields, src: src, op: op, ordered: dist, begin: op.begin, end: op.end,
		out: output{chunks: sj.Chunks, out: sj.Output, check: true, progress: sj.Progress}}
	stats, err := j.run(ctx)
	if err != nil {
		return stats, err
	}
	if dist {
		n := len(sj.Inputs)
		for i := range n {
			var d, q float64
			for b := range sumsqBlocks {
				d += op.partial[i*sumsqBlocks+b]
				q += op.partial[(n+i)*sumsqBlocks+b]
			}
			if sj.SqDist != nil {
				sj.SqDist[i] = d
			}
			if sj.SqNorm != nil {
				sj.SqNorm[i] = q
			}
		}
	}
	return stats, nil
}

// Median writes the coordinate-wise median of the inputs (even N: v[N/2-1]·0.5 + v[N/2]·0.5 in
// f32) in each field's Out dtype (f32, f64, f16 or bf16) to the chunks of out: Select with
// device.Median.
func (g *GPU) median(ctx context.Context, fields []device.AccField, inputs [][]device.Span, chunks []device.Chunk, out device.Output) (device.Stats, error) {
	return g.Select(ctx, &device.SelectJob{Fields: fields, Inputs: inputs, Op: device.Median, Chunks: chunks, Output: out})
}

// selectResident is Select from device-resident inputs (f32, f16, bf16 or i8 tensors) into a
// device-resident output (f32, f64, f16 or bf16 tensors), without distances. A non-finite
// result is a *tensor.NonFiniteError.
func (g *GPU) selectResident(ctx context.Context, op device.SelectOp, k int, inputs []*resident, out *resident) (device.Stats, error) {
	fields, err := residentFields(g, inputs, out)
	if err != nil {
		return device.Stats{}, err
	}
	if err := checkResidentDTypes(inputs, robustDType, "ordered (the robust operations take f32, f16, bf16 and i8)"); err != nil {
		return device.Stats{}, err
	}
	// device.SelectJob.Validate's checks of op, k and the output dtypes.
	n := len(inputs)
	switch op {
	case device.Median:
	case device.TrimmedMean:
		if k < 0 || 2*k >= n {
			return device.Stats{}, fmt.Errorf("%w: trimmed mean cutting %d of %d values from each end", device.ErrJob, k, n)
		}
	case device.ClosestMean:
		if k < 1 || k > n {
			return device.Stats{}, fmt.Errorf("%w: closest mean of %d of %d values", device.ErrJob, k, n)
		}
	default:
		return device.Stats{}, fmt.Errorf("%w: %s", device.ErrJob, op)
	}
	for _, f := range fields {
		switch f.Out {
		case tensor.F32, tensor.F64, tensor.F16, tensor.BF16:
		default:
			return device.Stats{}, fmt.Errorf("%w: field %q: output dtype %s", device.ErrUnsupported, f.Name, f.Out)
		}
	}
	o := g.newSelectOp(fields, len(inputs), op, k, false)
	j := &job{g: g, fields: fields, src: source{res: inputs}, op: o, begin: o.begin, out: output{res: out}}
	stats, err := j.run(ctx)
	if err != nil {
		return stats, err
	}
	return stats, g.checkResidentFinite(ctx, out)
}

// medianResident is Median from device-resident inputs into a device-resident output.
func (g *GPU) medianResident(ctx context.Context, inputs []*resident, out *resident) (device.Stats, error) {
	return g.selectResident(ctx, device.Median, 0, inputs, out)
}

// trimmedMeanResident is TrimmedMean from device-resident inputs into a device-resident output.
func (g *GPU) trimmedMeanResident(ctx context.Context, inputs []*resident, trim int, out *resident) (device.Stats, error) {
	return g.selectResident(ctx, device.TrimmedMean, trim, inputs, out)
}

const (
	// maxDistInputs is how many inputs the distances take: wa_sqdist runs one grid row per input.
	maxDistInputs = 65535
	// sqdistPerBlock is the elements of one input a block of wa_sqdist covers at least (32 per
	// thread): its grid has a row of blocks per input already, so a slab of a few MiB per input
	// is enough to fill a GPU, and fewer blocks mean fewer partial sums.
	sqdistPerBlock = 32 * 256
)

func (g *GPU) checkSelect(n int, dist bool) error {
	if dist && n > maxDistInputs {
		return fmt.Errorf("%s: %w: distances of %d inputs (at most %d)", g.Name(), device.ErrUnsupported, n, maxDistInputs)
	}
	return nil
}

// Geometry of the order-statistic kernels (order.cu).
const (
	selectRegMax     = 128 // inputs sorted in registers by wa_select_rP
	selectRegThreads = 256 // WA_THREADS, or fewer where a closest mean's values would pass 48 KiB
	selectNetThreads = 32  // wa_select_net's block: a column of values per thread
)

// selectOp runs an order statistic (order.cu) and, with dist, the distances of every input to
// its f32 result (reduce.cu's wa_sqdist), which then stays in the segment's scratch.
type selectOp struct {
	g      *GPU
	fields []device.AccField
	n      int
	op     device.SelectOp
	k      int
	dist   bool
	global bool    // more than selectRegMax inputs, columns in global scratch (else shared memory)
	net    []int32 // the comparators of the network, for more than selectRegMax inputs
	netDev uint64  // the table on the GPU (begin)
	pd, pn uint64  // partial sums of the distances and norms: n·sumsqBlocks f64 each
	// partial receives pd then pn (end).
	partial []float64
}

func (g *GPU) newSelectOp(fields []device.AccField, n int, op device.SelectOp, k int, dist bool) *selectOp {
	o := &selectOp{g: g, fields: fields, n: n, op: op, k: k, dist: dist}
	if op == device.Median {
		o.k = 0
	}
	if n > selectRegMax {
		o.net = sortNetwork(n)
		o.global = 4*n*selectNetThreads > g.selectShared
	}
	if dist {
		o.partial = make([]float64, 2*n*sumsqBlocks)
	}
	return o
}

// scratch is, per element: the columns of the values in global memory, then the f32 result.
func (o *selectOp) scratch(int) int {
	s := 0
	if o.global {
		s += 4 * o.n
	}
	if o.dist {
		s += 4
	}
	return s
}

// begin puts the network's table and the zeroed partial sums on the GPU, and waits: slabs on
// other streams read the table.
func (o *selectOp) begin(ln *lane, s cuStream) error {
	g := o.g
	table := align16(int64(4 * len(o.net)))
	parts := int64(8 * len(o.partial))
	if table+parts == 0 {
		return nil
	}
	dev, host, err := g.scratchBuffers(ln, table+parts, table)
	if err != nil {
		return err
	}
	o.netDev, o.pd = dev, dev+uint64(table)
	o.pn = o.pd + uint64(parts/2)
	if len(o.net) > 0 {
		copy(host, unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(o.net))), 4*len(o.net)))
		if err := g.drv.h2d(g.ctx, dev, unsafe.Pointer(unsafe.SliceData(host)), table, s); err != nil {
			return fmt.Errorf("%s: sorting network: %w", g.Name(), err)
		}
	}
	if parts > 0 {
		if err := g.memsetErr(o.pd, parts, s); err != nil {
			return err
		}
	}
	if err := g.drv.syncStream(g.ctx, s); err != nil {
		return fmt.Errorf("%s: %w", g.Name(), err)
	}
	return nil
}

// end fetches the partial sums of the distances and norms.
func (o *selectOp) end(ln *lane, s cuStream) error {
	if !o.dist {
		return nil
	}
	return o.g.fetch(ln, s, o.partial, o.pd)
}

func (o *selectOp) segment(b *batch, k int) error {
	g := b.j.g
	sg := b.sl.segs[k]
	n := int64(sg.hi - sg.lo)
	rows, dts, scales := describeInputs(b, k, o.n)
	prow, pdt, psc := param(b, rows), param(b, dts), param(b, scales)
	var col, res uint64
	if o.global || o.dist {
		base := b.scratchAt(k)
		if o.global {
			col = base
			base += uint64(4 * int64(o.n) * n)
		}
		if o.dist {
			res = base
		}
	}
	args := []uint64{b.output(k), argInt(int(o.fields[sg.field].Out)), res, prow, pdt, psc,
		argInt(o.n), argInt(int(o.op)), argInt(o.k), uint64(n)}
	if o.n <= selectRegMax {
		p := 2
		for p < o.n {
			p *= 2
		}
		threads, shmem := uint32(selectRegThreads), 0
		if o.op == device.ClosestMean {
			// The sorted values, to index the window at run time: a column per thread, within
			// the 48 KiB a block has without opting in (128 threads for 64 wires, 64 for 128).
			for 4*p*int(threads) > 48<<10 {
				threads /= 2
			}
			shmem = 4 * p * int(threads)
		}
		name := fmt.Sprintf("wa_select_r%d", p)
		grid, err := blocks(n, int64(threads))
		if err != nil {
			return err
		}
		b.enqueue(func(s cuStream) error { return g.launch(s, name, grid, threads, shmem, args...) })
	} else {
		args = append(args, o.netDev, argInt(len(o.net)/2), col)
		shmem := 0
		if !o.global {
			shmem = 4 * o.n * selectNetThreads
		}
		grid, err := blocks(n, selectNetThreads)
		if err != nil {
			return err
		}
		b.enqueue(func(s cuStream) error { return g.launch(s, "wa_select_net", grid, selectNetThreads, shmem, args...) })
	}
	if o.dist {
		grid, err := blocks(n, sqdistPerBlock)
		if err != nil {
			return err
		}
		grid2 := [3]uint32{min(grid, sumsqBlocks), uint32(o.n), 1}
		dargs := []uint64{prow, pdt, psc, res, uint64(n), o.pd, o.pn, argInt(sumsqBlocks)}
		b.enqueue(func(s cuStream) error { return g.launch2(s, "wa_sqdist", grid2, 256, 0, dargs...) })
	}
	return nil
}

// sortNetwork is the table wa_select_net reads: the comparators of kernels.SortNetwork(n) (the
// network of the CPU's kernels, and of order.cu's register kernels), low wire then high wire,
// in the same order.
func sortNetwork(n int) []int32 {
	comps := kernels.SortNetwork(n)
	net := make([]int32, 0, 2*len(comps))
	for _, c := range comps {
		net = append(net, int32(c[0]), int32(c[1]))
	}
	return net
}

// SqDistances implements device.Robust: ‖x_i − z‖² and ‖x_i‖² of every input over all fields,
// the values widened to f32 as Select widens them and accumulated in f64 (reduce.cu's
// wa_sqdist), within rounding of the CPU's sums. z holds one f32 span per field; it is streamed
// to the GPU beside the inputs.
func (g *GPU) SqDistances(ctx context.Context, fields []device.AccField, inputs [][]device.Span, z []device.Span) ([]float64, []float64, device.Stats, error) {
	if err := robustInputs(fields, inputs); err != nil {
		return nil, nil, device.Stats{}, err
	}
	if len(z) != len(fields) {
		return nil, nil, device.Stats{}, fmt.Errorf("%w: point has %d spans for %d fields", device.ErrJob, len(z), len(fields))
	}
	for t, f := range fields {
		if z[t].DType != tensor.F32 || len(z[t].Data) != 4*f.Len {
			return nil, nil, device.Stats{}, fmt.Errorf("%w: point: field %q must be %d f32 values", device.ErrJob, f.Name, f.Len)
		}
	}
	n := len(inputs)
	if err := g.checkSelect(n, true); err != nil {
		return nil, nil, device.Stats{}, err
	}
	dist, norm := make([]float64, n), make([]float64, n)
	if n == 0 {
		return dist, norm, device.Stats{Device: g.Name()}, ctx.Err()
	}
	op := &distOp{n: n}
	bytes := int64(2 * n * sumsqBlocks * 8)
	p := make([]float64, 2*n*sumsqBlocks)
	j := &job{g: g, fields: fields, src: g.hostSource(append(slices.Clip(inputs), z)), op: op, ordered: true,
		begin: func(ln *lane, s cuStream) error {
			dev, _, err := g.scratchBuffers(ln, bytes, bytes)
			if err != nil {
				return err
			}
			op.pd, op.pn = dev, dev+uint64(bytes/2)
			return g.memsetErr(dev, bytes, s)
		},
		end: func(ln *lane, s cuStream) error { return g.fetch(ln, s, p, op.pd) }}
	stats, err := j.run(ctx)
	if err != nil {
		return nil, nil, stats, err
	}
	for i := range n {
		for b := range sumsqBlocks {
			dist[i] += p[i*sumsqBlocks+b]
			norm[i] += p[(n+i)*sumsqBlocks+b]
		}
	}
	return dist, norm, stats, nil
}

// distOp sums the squared distances of the first n inputs to input n (the point) and their
// squared norms.
type distOp struct {
	n      int
	pd, pn uint64
}

func (*distOp) scratch(int) int { return 0 }

func (o *distOp) segment(b *batch, k int) error {
	g := b.j.g
	sg := b.sl.segs[k]
	n := int64(sg.hi - sg.lo)
	rows, dts, scales := describeInputs(b, k, o.n)
	grid, err := blocks(n, sqdistPerBlock)
	if err != nil {
		return err
	}
	grid2 := [3]uint32{min(grid, sumsqBlocks), uint32(o.n), 1}
	args := []uint64{param(b, rows), param(b, dts), param(b, scales), b.input(k, o.n), uint64(n), o.pd, o.pn, argInt(sumsqBlocks)}
	b.enqueue(func(s cuStream) error { return g.launch2(s, "wa_sqdist", grid2, 256, 0, args...) })
	return nil
}

// ModSum implements device.ModSummer: Σ_i x_i mod 2^32 of u32 inputs (the masked vectors of
// secure aggregation) into the chunks of out, whose fields must have Out u32. Modular addition
// is exact, so the result is the CPU device's.
func (g *GPU) ModSum(ctx context.Context, fields []device.AccField, inputs [][]device.Span, chunks []device.Chunk, out device.Output) (device.Stats, error) {
	if err := device.CheckModSum(fields, inputs, chunks); err != nil {
		return device.Stats{}, err
	}
	j := &job{g: g, fields: fields, src: g.hostSource(inputs), op: modSumOp{}, out: output{chunks: chunks, out: out}}
	return j.run(ctx)
}

// modSumResident is ModSum from device-resident inputs into a device-resident u32 output.
func (g *GPU) modSumResident(ctx context.Context, inputs []*resident, out *resident) (device.Stats, error) {
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
	rows, _, _ := describeInputs(b, k, b.j.src.count())
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

func checkResidentDTypes(rs []*resident, ok func(tensor.DType) bool, what string) error {
	for i, r := range rs {
		for _, f := range r.fields {
			if !ok(f.DType) {
				return fmt.Errorf("%w: resident %d: tensor %q: %s cannot be %s", device.ErrUnsupported, i, f.Name, f.DType, what)
			}
		}
	}
	return nil
}
