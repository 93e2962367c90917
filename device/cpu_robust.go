package device

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"sync"
	"time"
	"unsafe"

	"github.com/wattagg/wattagg/kernels"
	"github.com/wattagg/wattagg/tensor"
)

// The CPU device's robust operations: the kernels of kernels/robust.go on blocks small enough
// that all inputs' blocks stay in the L2 cache while the kernels pass over them (once for an
// order statistic, then again for the distances to it; once per register tile for the Gram
// matrix). f32 inputs are read where they are (a mapped file stays mapped); other dtypes are
// widened block by block into per-worker scratch.

var _ Robust = (*CPU)(nil)

const (
	// selectBlockBytes bounds the inputs' bytes of one block of an order statistic: they are
	// still in L2 when the distances to the result are taken, beside the next block, which the
	// kernels prefetch while they sort this one (256 KiB: 2Ki elements of 32 inputs, 512 of
	// 128; a group of coordinates reads a line of every input, more streams than the
	// hardware prefetchers follow).
	selectBlockBytes = 256 << 10
	// selectBlockElems is the largest block of an order statistic.
	selectBlockElems = 4 << 10
	// gramPanelBytes bounds the Gram kernel's block as f64 values of every input (what the
	// packed kernels copy it to): every register tile streams over it, so it must stay in L2
	// beside the next block, which the kernels prefetch. 512 KiB: 2Ki elements of 32 inputs
	// (the direct avx2 tiles measured 2Ki 7% faster than 1Ki), 512 of 128 (as fast as 256).
	gramPanelBytes = 512 << 10
	// gramBlockMax is the Gram kernel's block for a few inputs.
	gramBlockMax = 2 << 10
	// distBlockElems is the block of SqDistances (one input at a time over a cached z block).
	distBlockElems = 16 << 10
	// robustChunkElems is the unit of work that Gram and SqDistances hand to workers; per-chunk
	// sums are added in chunk order, so results do not depend on the worker count.
	robustChunkElems = 64 << 10
	// maxRobustChunks bounds the per-chunk partial results that are kept (Gram: n² f64 each).
	maxRobustChunks = 512
)

// robustScratch is one worker's memory for the robust operations.
type robustScratch struct {
	wide [][]float32 // per input: a widened block (only inputs that are not f32 use theirs)
	xs   [][]byte
	res  []float32 // the f32 result block of an order statistic
	sort []float32 // the kernels' sorting slab
	gram []float64 // Gram partials, kernels.GramPartials(n)
	sq   []float64 // squared norms' partials, kernels.Lanes·n
	pack []float64 // the Gram kernel's scratch

	rd blockReader // read buffers for inputs copied from their files (fileread.go)
}

var robustScratchPool sync.Pool

func getRobustScratch(n, block int) *robustScratch {
	s, _ := robustScratchPool.Get().(*robustScratch)
	if s == nil {
		s = &robustScratch{}
	}
	if len(s.wide) < n {
		s.wide = append(s.wide, make([][]float32, n-len(s.wide))...)
		s.xs = make([][]byte, n)
	}
	if len(s.res) < block {
		s.res = tensor.AlignedF32(block)
	}
	if m := kernels.SortScratch(n); len(s.sort) < m {
		s.sort = tensor.AlignedF32(m)
	}
	return s
}

func putRobustScratch(s *robustScratch) {
	clear(s.xs) // do not keep inputs (mapped files) reachable from the pool
	s.rd.release()
	robustScratchPool.Put(s)
}

// blockOf returns elements [lo, hi) of every input's field t as f32 bytes: f32 data where it
// is (or read from its file, files, into the worker's buffers, a window at a time), other
// dtypes widened into the scratch.
func (s *robustScratch) blockOf(k *kernels.Impl, inputs [][]Span, files *fileInputs, t, lo, hi int) ([][]byte, error) {
	n := len(inputs)
	xs := s.xs[:n]
	window := robustWindow(n)
	for i, in := range inputs {
		sp := in[t]
		es := sp.DType.Size()
		b, err := s.rd.bytes(i, files.of(i, t), sp, es*lo, es*hi, window)
		if err != nil {
			return nil, err
		}
		if sp.DType == tensor.F32 {
			xs[i] = b
			continue
		}
		if cap(s.wide[i]) < hi-lo {
			s.wide[i] = tensor.AlignedF32(max(hi-lo, 256))
		}
		w := s.wide[i][:hi-lo]
		widen(k, w, Span{DType: sp.DType, Data: b, Scale: sp.Scale}, 0, hi-lo)
		xs[i] = f32Bytes(w)
	}
	return xs, nil
}

// robustReadBytes bounds a worker's read buffers for inputs read from their files: the robust
// kernels take small blocks of every input at once, so each input is read a window ahead
// (robustWindow), n windows in all.
const robustReadBytes = 4 << 20

// robustWindow is the bytes read ahead per input of n: robustReadBytes shared by n, between
// 16 KiB and 256 KiB.
func robustWindow(n int) int {
	return max(16<<10, min(256<<10, robustReadBytes/max(1, n))) &^ (directAlign - 1)
}

// widen converts elements [lo, hi) of a 16-bit or i8 span to f32 exactly (i8 as
// float32(Scale·q)) with the accumulation kernels: 0 + float32(1·x).
func widen(k *kernels.Impl, dst []float32, sp Span, lo, hi int) {
	clear(dst)
	es := sp.DType.Size()
	x := [][]byte{sp.Data[es*lo : es*hi]}
	w := []float32{1}
	if sp.DType == tensor.I8 {
		w[0] = sp.Scale
	}
	acc32Kernel(k, sp.DType)(dst, w, x)
}

func f32Bytes(v []float32) []byte {
	if len(v) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(v))), 4*len(v))
}

// selectBlockFor is the block of an order statistic over n inputs: selectBlockBytes of them,
// 256 to selectBlockElems elements, a multiple of 16 (whole groups of the widest kernels).
func selectBlockFor(n int) int {
	return min(selectBlockElems, max(256, selectBlockBytes/(4*n)&^15))
}

// Select implements Robust.
func (c *CPU) Select(ctx context.Context, job *SelectJob) (Stats, error) {
	if err := job.Validate(); err != nil {
		return Stats{}, err
	}
	start := time.Now()
	n := len(job.Inputs)
	block := selectBlockFor(n)
	inBytesPerElem := inputBytesPerElem(len(job.Fields), job.Inputs)
	parts := cutParts(job.Chunks, inBytesPerElem, block)
	// Per part, per input: the squared distances and norms, added in part order at the end.
	var dist, norm [][]float64
	lanesWanted := job.SqDist != nil || job.SqNorm != nil
	if lanesWanted {
		dist, norm = make([][]float64, len(parts)), make([][]float64, len(parts))
	}
	files := lookupFiles(job.Inputs) // inputs read from their files (fileread.go)
	var stats chunkStats
	err := c.runParts(ctx, job.Chunks, parts, job.Output, job.Progress, 0, &stats, func(_ *cpuScratch, pi int, pt chunkPart, ch Chunk, dests [][]byte) (elems, read int64, err error) {
		s := getRobustScratch(n, block)
		defer putRobustScratch(s)
		var dl, nl [][kernels.Lanes]float64
		if lanesWanted {
			dl, nl = make([][kernels.Lanes]float64, n), make([][kernels.Lanes]float64, n)
		}
		for _, pp := range pt.pieces {
			pc := ch.Pieces[pp.p]
			f := job.Fields[pc.Field]
			for lo := pp.lo; lo < pp.hi; lo += block {
				hi := min(lo+block, pp.hi)
				if err := c.selectBlock(job, s, files, dl, nl, f, pc.Field, lo, hi, dests[pp.p][(lo-pc.Lo)*f.Out.Size():]); err != nil {
					return 0, 0, err
				}
				elems += int64(hi - lo)
				read += int64(hi-lo) * inBytesPerElem[pc.Field]
			}
		}
		if lanesWanted {
			dist[pi], norm[pi] = laneSums(dl, nl)
		}
		return elems, read, nil
	})
	if err != nil {
		return stats.total(c.Name(), start), err
	}
	addChunks(job.SqDist, dist)
	addChunks(job.SqNorm, norm)
	return stats.total(c.Name(), start), nil
}

// selectBlock computes the order statistic of elements [lo, hi) of field t into out (from its
// first byte), and adds the block's squared distances and norms to dl and nl if they are not nil.
func (c *CPU) selectBlock(job *SelectJob, s *robustScratch, files *fileInputs, dl, nl [][kernels.Lanes]float64, f AccField, t, lo, hi int, out []byte) error {
	xs, err := s.blockOf(c.kern, job.Inputs, files, t, lo, hi)
	if err != nil {
		return err
	}
	res := s.res[:hi-lo]
	switch job.Op {
	case Median:
		c.kern.MedianF32(res, xs, s.sort)
	case TrimmedMean:
		c.kern.TrimmedMeanF32(res, xs, job.K, s.sort)
	case ClosestMean:
		c.kern.ClosestMeanF32(res, xs, job.K, s.sort)
	}
	if dl != nil {
		c.kern.SqDistNormF32Runs(dl, nl, xs, res)
	}
	out = out[:(hi-lo)*f.Out.Size()]
	storeF32(c.kern, f.Out, out, res)
	return checkOut(c.kern, f, lo, out)
}

// laneSums returns, per input, the sums of the lanes of its squared distances (dl) and norms (nl).
func laneSums(dl, nl [][kernels.Lanes]float64) (d, q []float64) {
	d, q = make([]float64, len(dl)), make([]float64, len(nl))
	for i := range d {
		d[i], q[i] = kernels.SumLanes(&dl[i]), kernels.SumLanes(&nl[i])
	}
	return d, q
}

// addChunks sets dst (if not nil) to the sum of the per-chunk (or per-part) values, in order.
func addChunks(dst []float64, chunks [][]float64) {
	if dst == nil {
		return
	}
	clear(dst)
	for _, c := range chunks {
		for i, v := range c {
			dst[i] += v
		}
	}
}

// storeF32 converts an f32 block to the output dtype.
func storeF32(k *kernels.Impl, dt tensor.DType, dst []byte, src []float32) {
	if dt == tensor.F64 {
		for j, v := range src {
			putF64(dst[8*j:], float64(v))
		}
		return
	}
	store32Kernel(k, dt)(dst, src, 1)
}

func putF64(b []byte, v float64) { binary.LittleEndian.PutUint64(b, math.Float64bits(v)) }

// robustChunks cuts the flat coordinate space of fields into the work units of Gram and
// SqDistances: at least robustChunkElems elements, at most maxRobustChunks of them.
func robustChunks(fields []AccField) ([]Chunk, error) {
	f32 := make([]AccField, len(fields))
	offsets := make([]int64, len(fields))
	var total int64
	for t, f := range fields {
		f32[t] = AccField{Name: f.Name, Len: f.Len, Acc: tensor.F32, Out: tensor.F32}
		offsets[t] = 4 * total
		total += int64(f.Len)
	}
	elems := int64(robustChunkElems)
	if need := (total + maxRobustChunks - 1) / maxRobustChunks; need > elems {
		elems = (need + robustChunkElems - 1) / robustChunkElems * robustChunkElems
	}
	return CutChunks(f32, offsets, int(4*elems))
}

func (c *CPU) checkRobustInputs(fields []AccField, inputs [][]Span) error {
	for i, in := range inputs {
		if err := checkRobustSpans(fields, in); err != nil {
			return fmt.Errorf("input %d: %w", i, err)
		}
	}
	return nil
}

// gramBlockFor is the block of one Gram kernel call for n inputs: as many elements as keep the
// packed block within gramPanelBytes, at most gramBlockMax, a multiple of 16 (so lanes stay j%4
// across blocks and the assembly covers whole blocks). The kernel bounds the time it spends in
// assembly by itself (row ranges of its tiles).
func gramBlockFor(n int) int {
	return max(16, min(gramBlockMax, gramPanelBytes/8/kernels.GramStride(n))&^15)
}

// Gram implements Robust. It computes the raw Gram matrix first (the inputs as they are: one
// read of each block, whose diagonal holds the squared norms) and keeps it when every squared
// distance it gives is within rawGramTolerance of the exact one by the error bound of its sums
// (rawGramPrecise); otherwise (inputs close to each other relative to their norms: full models
// that differ slightly, issue 9.6) it computes the matrix centred on the inputs' mean
// (kernels.GramF32), whose distances do not cancel.
func (c *CPU) Gram(ctx context.Context, fields []AccField, inputs [][]Span) (GramMatrix, Stats, error) {
	if err := c.checkRobustInputs(fields, inputs); err != nil {
		return GramMatrix{}, Stats{}, err
	}
	start := time.Now()
	chunks, err := robustChunks(fields)
	if err != nil {
		return GramMatrix{}, Stats{}, err
	}
	var raw chunkStats
	gm, err := c.gramPass(ctx, chunks, inputs, true, &raw)
	if err != nil {
		return GramMatrix{}, raw.total(c.Name(), start), err
	}
	if rawGramPrecise(gm, chunks) {
		gm.Raw = true
		return gm, raw.total(c.Name(), start), nil
	}
	var centred chunkStats
	gm, err = c.gramPass(ctx, chunks, inputs, false, &centred)
	stats := centred.total(c.Name(), start)
	stats.BytesRead += raw.s.BytesRead
	stats.Chunks += raw.s.Chunks
	return gm, stats, err
}

// rawGramTolerance is the relative error of the squared distances that the raw Gram matrix
// may have, by its error bound, for Gram to keep it: 2⁻²⁰ (about 1e-6). Krum's scores are sums
// of these distances; what matters is that they are not percents off (the uncentred matrix of
// full models that differ by 1e-6 was 1.7% off and picked the wrong client).
const rawGramTolerance = 0x1p-20

// rawGramPrecise reports whether every squared distance d = G_aa + G_bb − 2G_ab of the raw
// matrix g, between inputs of finite norm, is within rawGramTolerance of the exact distance.
// Each entry is an f64 sum of exact products (f32 values), at most m = e/4 + 2 + k roundings
// deep for chunks of at most e elements (a chain of FMAs per lane, the lanes' tree, the chunks
// in order): |ΔG_ab| ≤ γ_m Σ|x_a x_b| ≤ γ_m (G_aa + G_bb)/2 (Higham, Accuracy and Stability of
// Numerical Algorithms, §4.2), so |Δd| ≤ (2γ_m + 8u)(G_aa + G_bb) with the 3 operations of d.
func rawGramPrecise(g GramMatrix, chunks []Chunk) bool {
	e := 0
	for _, c := range chunks {
		k := 0
		for _, pc := range c.Pieces {
			k += pc.Hi - pc.Lo
		}
		e = max(e, k)
	}
	const u = 0x1p-53
	m := float64(e/4 + 2 + len(chunks))
	gamma := m * u / (1 - m*u)
	n := len(g.SqNorms)
	for a := range n {
		na := g.SqNorms[a]
		if math.IsInf(na, 0) || math.IsNaN(na) {
			continue
		}
		for b := a + 1; b < n; b++ {
			nb := g.SqNorms[b]
			if math.IsInf(nb, 0) || math.IsNaN(nb) {
				continue
			}
			d := na + nb - 2*g.Centred[a][b]
			if !((2*gamma+8*u)*(na+nb) <= rawGramTolerance*d) {
				return false
			}
		}
	}
	return true
}

// gramPass computes the Gram matrix of the inputs over chunks, raw (kernels.GramRawF32) or
// centred (kernels.GramF32), chunk by chunk on the workers, the chunks' sums added in chunk
// order.
func (c *CPU) gramPass(ctx context.Context, chunks []Chunk, inputs [][]Span, raw bool, stats *chunkStats) (GramMatrix, error) {
	g := gramWork{
		kern:   c.kern,
		chunks: chunks,
		inputs: inputs,
		files:  lookupFiles(inputs), // inputs read from their files (fileread.go)
		block:  gramBlockFor(len(inputs)),
		raw:    raw,
		sums:   make([][]float64, len(chunks)),
		stats:  stats,
	}
	err := c.parallelChunks(ctx, len(chunks), func(_ *cpuScratch, ci int) error { return g.chunk(ctx, ci) }, 0)
	if err != nil {
		return GramMatrix{}, err
	}
	return addGrams(g.sums, len(inputs)), nil
}

// gramWork is what the workers of a Gram pass share. It is passed by value (the closure that
// parallelChunks runs holds it without an allocation of its own); its slices and stats are
// shared.
type gramWork struct {
	kern   *kernels.Impl
	chunks []Chunk
	inputs [][]Span
	files  *fileInputs
	block  int
	raw    bool
	sums   [][]float64 // per chunk: its n·n Gram matrix, then its n norms
	stats  *chunkStats
}

// chunk computes the Gram matrix and squared norms of chunk ci into sums[ci], block by block.
func (g gramWork) chunk(ctx context.Context, ci int) error {
	n := len(g.inputs)
	w := gramChunk{gramWork: g, s: getRobustScratch(n, 0)}
	defer putRobustScratch(w.s)
	w.p, w.sq = w.s.gramPartials(n, g.block)
	var read, elems int64
	for _, pc := range g.chunks[ci].Pieces {
		for lo := pc.Lo; lo < pc.Hi; lo += g.block {
			hi := min(lo+g.block, pc.Hi)
			if err := w.addBlock(pc.Field, lo, hi); err != nil {
				return err
			}
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		elems += int64(pc.Hi - pc.Lo)
		read += pieceBytes(g.inputs, pc)
	}
	g.sums[ci] = w.matrix()
	g.stats.add(elems, read, 0)
	return nil
}

// gramChunk is a worker's state over one chunk of a Gram pass: its scratch and the kernel's
// partial sums (p, and sq for the centred matrix).
type gramChunk struct {
	gramWork
	s     *robustScratch
	p, sq []float64
}

// gramPartials returns the Gram kernel's partial sums of n inputs, cleared, growing the scratch
// to them and to the kernel's scratch for blocks of block elements.
func (s *robustScratch) gramPartials(n, block int) (p, sq []float64) {
	if len(s.gram) < kernels.GramPartials(n) {
		s.gram = make([]float64, kernels.GramPartials(n))
	}
	if len(s.sq) < kernels.Lanes*n {
		s.sq = make([]float64, kernels.Lanes*n)
	}
	if m := kernels.GramScratch(n, block); len(s.pack) < m {
		s.pack = make([]float64, m)
	}
	p, sq = s.gram[:kernels.GramPartials(n)], s.sq[:kernels.Lanes*n]
	clear(p)
	clear(sq)
	return p, sq
}

// addBlock adds elements [lo, hi) of field t to the partial sums.
func (w *gramChunk) addBlock(t, lo, hi int) error {
	xs, err := w.s.blockOf(w.kern, w.inputs, w.files, t, lo, hi)
	if err != nil {
		return err
	}
	if w.raw {
		w.kern.GramRawF32(w.p, xs, hi-lo, w.s.pack)
	} else {
		w.kern.GramF32(w.p, w.sq, xs, hi-lo, w.s.pack)
	}
	return nil
}

// matrix returns the chunk's n·n Gram matrix, then its n squared norms, from the partial sums.
func (w *gramChunk) matrix() []float64 {
	n := len(w.inputs)
	g := make([]float64, n*n+n)
	if w.raw {
		kernels.GramRawSums(g[:n*n], g[n*n:], w.p, n)
	} else {
		kernels.GramSums(g[:n*n], g[n*n:], w.p, w.sq, n)
	}
	return g
}

// addGrams adds the chunks' Gram matrices and squared norms of n inputs (sums, as
// gramChunk.matrix lays them out) in chunk order.
func addGrams(sums [][]float64, n int) GramMatrix {
	gm := GramMatrix{Centred: make([][]float64, n), SqNorms: make([]float64, n)}
	for a := range n {
		gm.Centred[a] = make([]float64, n)
	}
	for _, g := range sums {
		for a := range n {
			for b := range n {
				gm.Centred[a][b] += g[a*n+b]
			}
			gm.SqNorms[a] += g[n*n+a]
		}
	}
	return gm
}

// pieceBytes is the bytes all inputs hold of piece pc.
func pieceBytes(inputs [][]Span, pc Piece) int64 {
	var read int64
	for _, in := range inputs {
		read += int64(pc.Hi-pc.Lo) * int64(in[pc.Field].DType.Size())
	}
	return read
}

// SqDistances implements Robust.
func (c *CPU) SqDistances(ctx context.Context, fields []AccField, inputs [][]Span, z []Span) ([]float64, []float64, Stats, error) {
	if err := c.checkRobustInputs(fields, inputs); err != nil {
		return nil, nil, Stats{}, err
	}
	zs, err := pointF32(fields, z)
	if err != nil {
		return nil, nil, Stats{}, err
	}
	start := time.Now()
	n := len(inputs)
	chunks, err := robustChunks(fields)
	if err != nil {
		return nil, nil, Stats{}, err
	}
	var stats chunkStats
	d := distWork{
		kern:   c.kern,
		chunks: chunks,
		inputs: inputs,
		zs:     zs,
		files:  lookupFiles(inputs), // inputs read from their files (fileread.go)
		window: robustWindow(n),
		dist:   make([][]float64, len(chunks)),
		norm:   make([][]float64, len(chunks)),
		stats:  &stats,
	}
	if err := c.parallelChunks(ctx, len(chunks), d.chunk, 0); err != nil {
		return nil, nil, stats.total(c.Name(), start), err
	}
	outD, outN := make([]float64, n), make([]float64, n)
	addChunks(outD, d.dist)
	addChunks(outN, d.norm)
	return outD, outN, stats.total(c.Name(), start), nil
}

// pointF32 returns the point z of SqDistances as f32 values by field, read where they are: one
// span per field, of the field's length of f32.
func pointF32(fields []AccField, z []Span) ([][]float32, error) {
	if len(z) != len(fields) {
		return nil, fmt.Errorf("%w: point has %d spans for %d fields", ErrJob, len(z), len(fields))
	}
	zs := make([][]float32, len(fields))
	for t, f := range fields {
		if z[t].DType != tensor.F32 || len(z[t].Data) != 4*f.Len {
			return nil, fmt.Errorf("%w: point: field %q must be %d f32 values", ErrJob, f.Name, f.Len)
		}
		zs[t] = unsafe.Slice((*float32)(unsafe.Pointer(unsafe.SliceData(z[t].Data))), f.Len)
	}
	return zs, nil
}

// distWork is what the workers of SqDistances share. It is passed by value (the method value
// that parallelChunks runs holds it without an allocation of its own); its slices and stats
// are shared.
type distWork struct {
	kern       *kernels.Impl
	chunks     []Chunk
	inputs     [][]Span
	zs         [][]float32 // the point, by field
	files      *fileInputs
	window     int         // the bytes read ahead per input read from its file
	dist, norm [][]float64 // per chunk: every input's squared distance and norm
	stats      *chunkStats
}

// chunk computes every input's squared distance and norm over chunk ci into dist[ci] and
// norm[ci], block by block.
func (d distWork) chunk(_ *cpuScratch, ci int) error {
	n := len(d.inputs)
	w := distChunk{distWork: d, s: getRobustScratch(n, 0)}
	defer putRobustScratch(w.s)
	w.dl, w.nl = make([][kernels.Lanes]float64, n), make([][kernels.Lanes]float64, n)
	var read, elems int64
	for _, pc := range d.chunks[ci].Pieces {
		for lo := pc.Lo; lo < pc.Hi; lo += distBlockElems {
			hi := min(lo+distBlockElems, pc.Hi)
			if err := w.addBlock(pc.Field, lo, hi); err != nil {
				return err
			}
		}
		elems += int64(pc.Hi - pc.Lo)
		read += pieceBytes(d.inputs, pc)
		read += 4 * int64(pc.Hi-pc.Lo) // and the point's f32
	}
	d.dist[ci], d.norm[ci] = laneSums(w.dl, w.nl)
	d.stats.add(elems, read, 0)
	return nil
}

// distChunk is a worker's state over one chunk of SqDistances: its scratch and, per input, the
// lanes of its squared distance (dl) and norm (nl).
type distChunk struct {
	distWork
	s      *robustScratch
	dl, nl [][kernels.Lanes]float64
}

// addBlock adds every input's squared distance to the point and norm over elements [lo, hi) of
// field t, one input at a time against the cached block of the point.
func (w *distChunk) addBlock(t, lo, hi int) error {
	zb := w.zs[t][lo:hi]
	for i := range w.inputs {
		xb, err := w.input(i, t, lo, hi)
		if err != nil {
			return err
		}
		w.kern.SqDistNormF32(&w.dl[i], &w.nl[i], xb, zb)
	}
	return nil
}

// input returns elements [lo, hi) of input i's field t as f32 bytes: f32 data where it is (or
// read from its file), other dtypes widened into the scratch's first widened block.
func (w *distChunk) input(i, t, lo, hi int) ([]byte, error) {
	sp := w.inputs[i][t]
	es := sp.DType.Size()
	xb, err := w.s.rd.bytes(i, w.files.of(i, t), sp, es*lo, es*hi, w.window)
	if err != nil {
		return nil, err
	}
	if sp.DType == tensor.F32 {
		return xb, nil
	}
	if cap(w.s.wide[0]) < hi-lo {
		w.s.wide[0] = tensor.AlignedF32(distBlockElems)
	}
	wb := w.s.wide[0][:hi-lo]
	widen(w.kern, wb, Span{DType: sp.DType, Data: xb, Scale: sp.Scale}, 0, hi-lo)
	return f32Bytes(wb), nil
}
