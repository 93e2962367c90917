package cuda

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
	"unsafe"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/kernels"
	"github.com/wattagg/wattagg/tensor"
)

// The pipeline. A job runs an op over the flat coordinate space of its fields, reading N inputs
// (host spans or residents) and writing an output (the chunks of a device.Output, a resident, or
// nothing for reductions). The space is cut into slabs that fit one pipeline stage; slab k runs
// on slot k mod S (S = WithStreams), each slot with its own stream, device buffer and page-locked
// buffer:
//
//	host:   wait for slot's previous slab → hand its chunks to the Output → stage slab k's
//	        pageable inputs into the slot's page-locked buffer (several goroutines) → enqueue
//	stream: H2D inputs and kernel parameters → kernels → D2H output → event
//
// so the copy engine moves slab k+1 while the SMs compute slab k and the host stages slab k+2.
// Page-locked inputs (allocPinned) are copied straight from the caller's memory. Slots and their
// buffers belong to a lane (GPU.lock), are kept between jobs and grown on demand within the
// GPU's free memory.

// slot is one stage of the pipeline.
type slot struct {
	stream   cuStream
	done     cuEvent // after the slab's last operation: the slot's buffers are free again
	computed cuEvent // after the slab's kernels: reductions order the next slab after it
	dev      uint64
	devCap   int64
	host     unsafe.Pointer
	hostCap  int64
	busy     *slab // the slab in flight, or nil
}

// regions is where a slab's data lives in a slot's buffers: device [in | scratch | out | params],
// page-locked [out | params | in] (host in only when some input needs staging). Every region
// starts 16-byte aligned (paramAlign): the kernels read the parameter tables with 8- and 16-byte
// loads and the inputs and outputs with vector loads, and a GPU faults on a misaligned access
// (CUDA_ERROR_MISALIGNED_ADDRESS, sticky: the context is lost) where x86 would not.
type regions struct {
	in, scratch, out, params int64 // bytes of each
	stage                    bool
}

func (r regions) devBytes() int64 { return r.devParams() + r.params }

// hostBytes reaches the staging region's start even when nothing is staged: the pipeline takes
// the (empty) staging slice of every slot.
func (r regions) hostBytes() int64 {
	if r.stage {
		return r.hostStaging() + r.in
	}
	return r.hostStaging()
}

// Offsets of the regions in a slot's buffers (the buffers themselves are at least 256-byte
// aligned: cuMemAlloc's and cuMemAllocHost's guarantee).
func (r regions) devIn() int64       { return 0 }
func (r regions) devScratch() int64  { return align16(r.in) }
func (r regions) devOut() int64      { return r.devScratch() + align16(r.scratch) }
func (r regions) devParams() int64   { return r.devOut() + align16(r.out) }
func (r regions) hostOut() int64     { return 0 }
func (r regions) hostParams() int64  { return align16(r.out) }
func (r regions) hostStaging() int64 { return r.hostParams() + align16(r.params) }

// segment is an element range of one field inside a slab.
type segment struct {
	field   int
	lo, hi  int
	out     int64   // chunk output: byte offset in the out region (16-byte aligned)
	in      []int64 // host inputs: byte offset of each input's data in the in region
	scratch int64   // byte offset in the scratch region, or -1
}

// slab is the part of a job one slot runs at once.
type slab struct {
	index  int
	segs   []segment
	chunks []int // chunk output: the chunks it completes, in order
	// chunk output: where each of their pieces is in the out region (a piece's data is laid
	// out on its own, aligned, not at its offset in the chunk: see cut), or, for a raw output,
	// where each chunk is (pieceAt[c][0]).
	pieceAt  [][]int64
	use      regions // bytes used of each region
	stagedLo int64   // the part of the in region filled from staging: [stagedLo, stagedHi)
	stagedHi int64
}

// source is where a job's inputs are.
type source struct {
	host   [][]device.Span // [input][field]
	res    []*resident
	pinned [][]bool // host: per input and field, whether the data is page-locked
}

func (s *source) count() int {
	if s.res != nil {
		return len(s.res)
	}
	return len(s.host)
}

// staged reports whether some host input is pageable, to be staged through page-locked memory.
func (s *source) staged() bool {
	for _, p := range s.pinned {
		if slices.Contains(p, false) {
			return true
		}
	}
	return false
}

func (s *source) dtype(i, t int) tensor.DType {
	if s.res != nil {
		return s.res[i].fields[t].DType
	}
	return s.host[i][t].DType
}

func (s *source) scale(i, t int) float32 {
	if s.res != nil {
		return s.res[i].fields[t].Scale
	}
	return s.host[i][t].Scale
}

// op is what a job computes. Ops enqueue work for one segment at a time; the engine moves the
// data.
type op interface {
	// scratch is the device scratch an element of field t needs (bytes; 0 for none).
	scratch(t int) int
	// segment enqueues the work of segment k of the batch's slab.
	segment(b *batch, k int) error
}

// A job's output, when it has one.
type output struct {
	chunks []device.Chunk
	out    device.Output
	check  bool      // report a non-finite output value as a *tensor.NonFiniteError
	res    *resident // or a resident
	// progress is called with the input bytes of each finished chunk.
	progress func(int64)
	// raw, if set, receives each finished chunk's bytes of the out region whole, instead of out
	// receiving its pieces (results that are not one value per element of one dtype: Optimize's
	// x, m and v); elemBytes is then the out region's bytes per element.
	raw       func(c int, b []byte) error
	elemBytes int
}

// callsOut reports whether the job calls code of the caller's (an Output, a progress function)
// while it holds its lane.
func (o *output) callsOut() bool { return o.out != nil || o.progress != nil }

// job is one run of the pipeline.
type job struct {
	g       *GPU
	ln      *lane // the lane it runs on, while it runs
	fields  []device.AccField
	src     source
	op      op
	out     output
	ordered bool // slabs must run their kernels in order (they add into shared partial sums)
	// begin and end run on the first slot's stream before the first slab and after the last.
	begin func(ln *lane, s cuStream) error
	end   func(ln *lane, s cuStream) error
	stats device.Stats
}

// batch is what an op sees of one slab: the device addresses of its data, and the slot's
// parameter staging, which the op fills before the engine copies it to the GPU.
type batch struct {
	j      *job
	s      *slot
	sl     *slab
	r      regions
	params []byte // page-locked parameter staging
	pdev   uint64 // its device copy
	ppos   int
	work   []func(cuStream) error
	err    error // a parameter table that failed its checks (param)
}

// input returns the device address of input i's data for segment k.
func (b *batch) input(k, i int) uint64 {
	sg := &b.sl.segs[k]
	if b.j.src.res != nil {
		r := b.j.src.res[i]
		return r.ptrs[sg.field] + uint64(sg.lo*r.fields[sg.field].DType.Size())
	}
	return b.s.dev + uint64(b.r.devIn()+sg.in[i])
}

// output returns the device address of segment k's output (0 for a reduction).
func (b *batch) output(k int) uint64 {
	sg := &b.sl.segs[k]
	switch {
	case b.j.out.res != nil:
		r := b.j.out.res
		return r.ptrs[sg.field] + uint64(sg.lo*r.fields[sg.field].DType.Size())
	case b.j.chunked():
		return b.s.dev + uint64(b.r.devOut()+sg.out)
	}
	return 0
}

// scratchAt returns the device address of segment k's scratch.
func (b *batch) scratchAt(k int) uint64 {
	return b.s.dev + uint64(b.r.devScratch()+b.sl.segs[k].scratch)
}

// paramAlign is the alignment of every kernel parameter table on the GPU. The kernels read the
// tables with loads of up to 8 bytes (addresses, f64 weights); 16 leaves room for vector loads.
const paramAlign = 16

// param copies v into the parameter staging and returns the address it will have on the GPU.
// It checks that the address is aligned (a misaligned table would fault on the GPU and lose the
// context) and that the table fits the area; a failed check is the batch's error, reported
// before anything is enqueued.
func param[T uint64 | int32 | float32 | float64](b *batch, v []T) uint64 {
	b.ppos = (b.ppos + paramAlign - 1) &^ (paramAlign - 1)
	n := len(v) * int(unsafe.Sizeof(v[0]))
	addr := b.pdev + uint64(b.ppos)
	switch {
	case addr%paramAlign != 0:
		b.fail(fmt.Errorf("%s: %w: kernel parameter table at device address %#x is not %d-byte aligned",
			b.j.g.Name(), ErrDriver, addr, paramAlign))
		return 0
	case b.ppos+n > len(b.params):
		b.fail(fmt.Errorf("%s: %w: kernel parameter tables need more than the %d bytes set aside",
			b.j.g.Name(), ErrDriver, len(b.params)))
		return 0
	}
	copy(b.params[b.ppos:b.ppos+n], unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(v))), n))
	b.ppos += n
	return addr
}

// fail records the batch's first error.
func (b *batch) fail(err error) {
	if b.err == nil {
		b.err = err
	}
}

// enqueue adds work to run on the slot's stream after the parameters are on the GPU.
func (b *batch) enqueue(f func(cuStream) error) { b.work = append(b.work, f) }

// run executes the job.
func (j *job) run(ctx context.Context) (device.Stats, error) {
	g := j.g
	start := time.Now()
	ln, err := g.lock(!j.out.callsOut())
	if err != nil {
		return device.Stats{}, err
	}
	defer ln.mu.Unlock()
	j.ln = ln
	slabs, r, err := j.plan()
	if err != nil {
		return device.Stats{}, err
	}
	if err := g.ensureBuffers(ln, r); err != nil {
		return device.Stats{}, err
	}
	err = j.pipeline(ctx, slabs, r)
	j.stats.Device = g.Name()
	j.stats.Seconds = time.Since(start).Seconds()
	return j.stats, err
}

func (j *job) pipeline(ctx context.Context, slabs []*slab, r regions) error {
	g := j.g
	slots := j.ln.slots
	first := slots[0].stream
	var err error
	if j.begin != nil {
		err = j.begin(j.ln, first)
	}
	var prev *slot
	for k, sl := range slabs {
		if err != nil {
			break
		}
		s := slots[k%len(slots)]
		if s.busy != nil {
			if err = j.finish(s, r); err != nil {
				break
			}
		}
		if err = ctx.Err(); err != nil {
			break
		}
		if err = j.enqueueSlab(sl, s, r, prev); err != nil {
			break
		}
		s.busy, prev = sl, s
	}
	// Drain in slab order. After an error, only wait for every stream (a slab may have failed
	// half enqueued), so that nothing is in flight when the buffers are reused or freed.
	busy := slices.DeleteFunc(slices.Clone(slots), func(s *slot) bool { return s.busy == nil })
	slices.SortFunc(busy, func(a, b *slot) int { return a.busy.index - b.busy.index })
	for _, s := range busy {
		if err == nil {
			err = j.finish(s, r)
		}
	}
	if err == nil {
		// The loop checks the context only before it queues a slab: a job that fits in the
		// slabs already queued (one 64 MiB slab holds most jobs) would otherwise finish as if
		// nothing happened. Cancelled while they ran, it reports ctx.Err() as the CPU device
		// does (the Output may have received every chunk).
		err = ctx.Err()
	}
	if err != nil {
		for _, s := range slots {
			_ = g.drv.syncStream(g.ctx, s.stream)
			s.busy = nil
		}
		return err
	}
	if j.end != nil {
		return j.end(j.ln, first)
	}
	return nil
}

// enqueueSlab stages slab sl's pageable inputs and enqueues its copies and kernels on slot s.
func (j *job) enqueueSlab(sl *slab, s *slot, r regions, prev *slot) error {
	b, err := j.prepare(sl, s, r)
	if err != nil {
		return err
	}
	if err := b.copyIn(); err != nil {
		return err
	}
	if err := b.compute(prev); err != nil {
		return err
	}
	return b.copyOut()
}

// prepare stages slab sl's pageable inputs and has the op fill a batch of slot s with its
// parameter tables and work, enqueueing nothing yet.
func (j *job) prepare(sl *slab, s *slot, r regions) (*batch, error) {
	host := unsafe.Slice((*byte)(s.host), s.hostCap)
	b := &batch{j: j, s: s, sl: sl, r: r,
		params: host[r.hostParams() : r.hostParams()+r.params], pdev: s.dev + uint64(r.devParams())}
	j.stage(sl, host[r.hostStaging():], r)
	for k := range sl.segs {
		if err := j.op.segment(b, k); err != nil {
			return nil, err
		}
	}
	if b.err != nil {
		return nil, b.err
	}
	return b, nil
}

// copyIn enqueues the slab's host-to-device copies: the staged inputs, the page-locked inputs,
// then the kernel parameters.
func (b *batch) copyIn() error {
	g, s, sl, r := b.j.g, b.s, b.sl, b.r
	if sl.stagedHi > sl.stagedLo {
		p := unsafe.Add(s.host, r.hostStaging()+sl.stagedLo)
		if err := g.drv.h2d(g.ctx, s.dev+uint64(r.devIn()+sl.stagedLo), p, sl.stagedHi-sl.stagedLo, s.stream); err != nil {
			return fmt.Errorf("%s: inputs: %w", g.Name(), err)
		}
	}
	if err := b.copyPinned(); err != nil {
		return err
	}
	if b.ppos > 0 {
		if err := g.drv.h2d(g.ctx, b.pdev, unsafe.Pointer(unsafe.SliceData(b.params)), int64(b.ppos), s.stream); err != nil {
			return fmt.Errorf("%s: kernel parameters: %w", g.Name(), err)
		}
	}
	return nil
}

// copyPinned enqueues the copies of the slab's page-locked host inputs, straight from the
// caller's memory.
func (b *batch) copyPinned() error {
	j, g, s, r := b.j, b.j.g, b.s, b.r
	if j.src.host == nil {
		return nil
	}
	for _, sg := range b.sl.segs {
		for i, in := range j.src.host {
			if !j.src.pinned[i][sg.field] {
				continue
			}
			sp := in[sg.field]
			sz := sp.DType.Size()
			data := sp.Data[sg.lo*sz : sg.hi*sz]
			if err := g.drv.h2d(g.ctx, s.dev+uint64(r.devIn()+sg.in[i]), unsafe.Pointer(unsafe.SliceData(data)), int64(len(data)), s.stream); err != nil {
				return fmt.Errorf("%s: input %d: %w", g.Name(), i, err)
			}
		}
	}
	return nil
}

// compute enqueues the slab's work, after the kernels of the previous slab (on slot prev) when
// the job is ordered, and records the slot's computed event.
func (b *batch) compute(prev *slot) error {
	j, g, s := b.j, b.j.g, b.s
	if j.ordered && prev != nil {
		if err := g.drv.wait(g.ctx, s.stream, prev.computed); err != nil {
			return fmt.Errorf("%s: %w", g.Name(), err)
		}
	}
	for _, w := range b.work {
		if err := w(s.stream); err != nil {
			return err
		}
	}
	if err := g.drv.record(g.ctx, s.computed, s.stream); err != nil {
		return fmt.Errorf("%s: %w", g.Name(), err)
	}
	return nil
}

// copyOut enqueues the copy of the slab's results (a chunk or raw output) to the slot's
// page-locked buffer, and records the slot's done event.
func (b *batch) copyOut() error {
	j, g, s, sl, r := b.j, b.j.g, b.s, b.sl, b.r
	if j.chunked() && sl.use.out > 0 {
		p := unsafe.Add(s.host, r.hostOut())
		if err := g.drv.d2h(g.ctx, p, s.dev+uint64(r.devOut()), sl.use.out, s.stream); err != nil {
			return fmt.Errorf("%s: output: %w", g.Name(), err)
		}
	}
	if err := g.drv.record(g.ctx, s.done, s.stream); err != nil {
		return fmt.Errorf("%s: %w", g.Name(), err)
	}
	return nil
}

// stage copies the pageable host inputs of a slab into page-locked staging (laid out like the
// device in region) with several goroutines.
func (j *job) stage(sl *slab, staging []byte, r regions) {
	sl.stagedLo, sl.stagedHi = 0, 0
	if !r.stage {
		return
	}
	type task struct{ dst, src []byte }
	var tasks []task
	const piece = 4 << 20
	lo, hi := int64(-1), int64(0)
	for _, sg := range sl.segs {
		for i, in := range j.src.host {
			if j.src.pinned[i][sg.field] {
				continue
			}
			sp := in[sg.field]
			sz := sp.DType.Size()
			src := sp.Data[sg.lo*sz : sg.hi*sz]
			off := sg.in[i]
			if lo < 0 {
				lo = off
			}
			lo, hi = min(lo, off), max(hi, off+int64(len(src)))
			for p := 0; p < len(src); p += piece {
				q := min(p+piece, len(src))
				tasks = append(tasks, task{staging[off+int64(p) : off+int64(q)], src[p:q]})
			}
		}
	}
	if len(tasks) == 0 {
		return
	}
	sl.stagedLo, sl.stagedHi = lo, hi
	var wg sync.WaitGroup
	next := make(chan task)
	for range min(j.g.opts.stagers, len(tasks)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for t := range next {
				copy(t.dst, t.src)
			}
		}()
	}
	for _, t := range tasks {
		next <- t
	}
	close(next)
	wg.Wait()
}

// finish waits for slot s and hands the chunks its slab completed to the Output.
func (j *job) finish(s *slot, r regions) error {
	g := j.g
	sl := s.busy
	s.busy = nil
	if err := g.drv.syncEvent(g.ctx, s.done); err != nil {
		return fmt.Errorf("%s: %w", g.Name(), err)
	}
	if j.out.out == nil && j.out.raw == nil {
		for _, sg := range sl.segs {
			j.count(sg.field, sg.hi-sg.lo)
		}
		return nil
	}
	if j.out.callsOut() {
		// Callback-free work the callbacks start must not wait for this lane (GPU.lock).
		g.calling.Add(1)
		defer g.calling.Add(-1)
	}
	res := unsafe.Slice((*byte)(unsafe.Add(s.host, r.hostOut())), max(r.out, 1))
	for ci, c := range sl.chunks {
		ch := j.out.chunks[c]
		at := sl.pieceAt[ci]
		read := j.stats.BytesRead
		if j.out.raw != nil {
			if err := j.out.raw(c, res[at[0]:at[0]+int64(ch.Len)]); err != nil {
				return err
			}
			for _, pc := range ch.Pieces {
				j.count(pc.Field, pc.Hi-pc.Lo)
			}
			j.stats.Chunks++
			j.stats.BytesWritten += int64(ch.Len)
			continue
		}
		for p, pc := range ch.Pieces {
			f := j.fields[pc.Field]
			n := (pc.Hi - pc.Lo) * f.Out.Size()
			dst, err := j.out.out.Dest(c, p)
			if err != nil {
				return err
			}
			if len(dst) < n {
				return fmt.Errorf("%w: chunk %d piece %d: Dest gave %d bytes for %d", device.ErrJob, c, p, len(dst), n)
			}
			copy(dst[:n], res[at[p]:])
			if j.out.check {
				if err := checkFinite(f, pc.Lo, dst[:n]); err != nil {
					return err
				}
			}
			j.count(pc.Field, pc.Hi-pc.Lo)
		}
		if err := j.out.out.Done(c); err != nil {
			return err
		}
		if j.out.progress != nil {
			j.out.progress(j.stats.BytesRead - read)
		}
		j.stats.Chunks++
		j.stats.BytesWritten += int64(ch.Len)
	}
	return nil
}

// count adds n elements of field t to the job's statistics.
func (j *job) count(t, n int) {
	j.stats.Elements += int64(n)
	for i := range j.src.count() {
		j.stats.BytesRead += int64(n) * int64(j.src.dtype(i, t).Size())
	}
}

// checkFinite reports the first NaN or Inf of an output piece as the CPU device does.
func checkFinite(f device.AccField, lo int, out []byte) error {
	if !anyNonFinite(f.Out, out) {
		return nil
	}
	i := tensor.FirstNonFinite(f.Out, out)
	t, err := tensor.FromBytes(f.Name, f.Out, []int{len(out) / f.Out.Size()}, out)
	if err != nil {
		return err
	}
	return &tensor.NonFiniteError{Tensor: f.Name, Index: lo + i, Value: t.Value(i)}
}

func anyNonFinite(dt tensor.DType, b []byte) bool {
	switch dt {
	case tensor.F32:
		return kernels.AnyNonFiniteF32(b)
	case tensor.F64:
		return kernels.AnyNonFiniteF64(b)
	case tensor.F16:
		return kernels.AnyNonFiniteF16(b)
	case tensor.BF16:
		return kernels.AnyNonFiniteBF16(b)
	}
	return false
}

// segmentParams bounds the kernel parameter bytes an op stages for one segment of n inputs: at
// most 16 bytes per input (an address and a weight, or an address, a dtype and a scale) and a few
// 16-byte aligned arrays.
func segmentParams(n int) int64 { return 24*int64(n) + 256 }

// align16 rounds a byte count up to 16, the alignment of every region part (vector loads).
func align16(n int64) int64 { return (n + 15) &^ 15 }

// plan cuts the job into slabs that fit one slot, and returns the region sizes every slot needs.
// The element budget of a slab starts from WithSlabBytes and shrinks until S slots fit in the
// GPU's free memory.
func (j *job) plan() ([]*slab, regions, error) {
	g := j.g
	n := j.src.count()
	var perElem int64 // device bytes per element of a slab, worst field
	for t, f := range j.fields {
		var b int64
		if j.src.host != nil {
			for i := range n {
				b += int64(j.src.dtype(i, t).Size())
			}
		}
		b += int64(j.op.scratch(t))
		switch {
		case j.out.raw != nil:
			b += int64(j.out.elemBytes)
		case j.out.out != nil:
			b += int64(f.Out.Size())
		}
		perElem = max(perElem, b)
	}
	perElem = max(perElem, 1)
	free, _, err := g.drv.memInfo(g.ctx)
	if err != nil {
		return nil, regions{}, fmt.Errorf("%s: %w", g.Name(), err)
	}
	slots := int64(len(j.ln.slots))
	free += j.ln.slotBytes() // the slots' own buffers can be reallocated
	budget := min(g.opts.slabBytes, (free-headroom)/slots)
	elems := max(int(budget/perElem)&^255, 256)
	for {
		slabs, r := j.cut(elems)
		need := slots * r.devBytes()
		if need <= free-headroom {
			return slabs, r, nil
		}
		if elems == 256 || j.chunked() && elems <= j.largestChunk() {
			return nil, r, fmt.Errorf("%s: %w: the job needs %d MiB of device memory for %d streams, %d MiB free",
				g.Name(), ErrOutOfMemory, need>>20, slots, max(free-headroom, 0)>>20)
		}
		elems = max(elems/2&^255, 256, j.largestChunk())
	}
}

// headroom is device memory left free for the driver and other users (kernel launches, JIT).
const headroom = 64 << 20

// chunked reports whether the job's output is cut into chunks that slabs must not split.
func (j *job) chunked() bool { return j.out.out != nil || j.out.raw != nil }

func (j *job) largestChunk() int {
	m := 0
	for _, ch := range j.out.chunks {
		m = max(m, chunkElems(ch))
	}
	return m
}

// chunkElems is the number of elements of a chunk, all its pieces together.
func chunkElems(ch device.Chunk) int {
	e := 0
	for _, p := range ch.Pieces {
		e += p.Hi - p.Lo
	}
	return e
}

// cut builds the slabs for a budget of elems elements per slab.
func (j *job) cut(elems int) ([]*slab, regions) {
	c := cutter{j: j, elems: elems, cur: &slab{}}
	if j.chunked() {
		for ci, ch := range j.out.chunks {
			c.addChunk(ci, ch)
		}
	} else {
		c.addFields()
	}
	c.flush()
	c.r.stage = j.src.staged()
	return c.slabs, c.r
}

// cutter is the state of cut: the slabs so far, the regions that fit all of them, and the slab
// being filled with the count of its elements.
type cutter struct {
	j     *job
	elems int
	slabs []*slab
	r     regions
	cur   *slab
	count int
}

// flush closes the slab being filled, unless it is empty, and grows the regions to fit it.
func (c *cutter) flush() {
	cur := c.cur
	if len(cur.segs) == 0 && len(cur.chunks) == 0 {
		return
	}
	cur.index = len(c.slabs)
	c.r.in, c.r.scratch = max(c.r.in, cur.use.in), max(c.r.scratch, cur.use.scratch)
	c.r.out, c.r.params = max(c.r.out, cur.use.out), max(c.r.params, cur.use.params)
	c.slabs = append(c.slabs, cur)
	c.cur, c.count = &slab{}, 0
}

// addFields cuts an output without chunks: the fields one after another, in slabs of elems
// elements (the last one fewer).
func (c *cutter) addFields() {
	for t, f := range c.j.fields {
		for lo := 0; lo < f.Len; {
			if c.count == c.elems {
				c.flush()
			}
			hi := min(f.Len, lo+c.elems-c.count)
			c.add(t, lo, hi, -1)
			lo = hi
		}
	}
}

// addChunk puts chunk ci of the output in the slab, whole: it closes the slab first when the
// chunk would take it past the budget (a slab without elements takes any chunk).
func (c *cutter) addChunk(ci int, ch device.Chunk) {
	if e := chunkElems(ch); c.count > 0 && c.count+e > c.elems {
		c.flush()
	}
	c.cur.chunks = append(c.cur.chunks, ci)
	if c.j.out.raw != nil {
		c.addRaw(ch)
	} else {
		c.addPieces(ch)
	}
}

// addRaw lays a chunk of a raw output out whole, at the next 16-byte boundary of the out region,
// each piece at its offset in the chunk.
func (c *cutter) addRaw(ch device.Chunk) {
	at := align16(c.cur.use.out)
	for _, p := range ch.Pieces {
		if p.Hi > p.Lo {
			c.add(p.Field, p.Lo, p.Hi, at+int64(p.Off))
		}
	}
	c.cur.pieceAt = append(c.cur.pieceAt, []int64{at})
	c.cur.use.out = at + int64(ch.Len)
}

// addPieces puts the pieces of a chunk in the slab, noting where the results of each go.
func (c *cutter) addPieces(ch device.Chunk) {
	at := make([]int64, len(ch.Pieces))
	for q, p := range ch.Pieces {
		if p.Hi > p.Lo {
			at[q] = c.add(p.Field, p.Lo, p.Hi, -1)
		}
	}
	c.cur.pieceAt = append(c.cur.pieceAt, at)
}

// add puts elements [lo, hi) of field t in the slab and, for a chunk output, returns where their
// results go in the out region: right after the last segment's results when they continue it
// (the segment grows), else at the next 16-byte boundary (a new segment), so that every
// segment's output is aligned for the kernels' stores whatever the chunk's layout. A raw output
// gives the place (at) and always starts a segment: its op lays the results out.
func (c *cutter) add(t, lo, hi int, at int64) int64 {
	j, cur := c.j, c.cur
	size := int64(j.fields[t].Out.Size())
	if k := len(cur.segs) - 1; k >= 0 && at < 0 {
		p := &cur.segs[k]
		if p.field == t && p.hi == lo {
			out := p.out + int64(p.hi-p.lo)*size
			j.grow(cur, k, hi)
			c.count += hi - lo
			if j.chunked() {
				cur.use.out = out + int64(hi-lo)*size
			}
			return out
		}
	}
	out := at
	if at < 0 {
		out = align16(cur.use.out)
	}
	cur.segs = append(cur.segs, segment{field: t, lo: lo, hi: lo, out: out, scratch: -1})
	j.grow(cur, len(cur.segs)-1, hi)
	c.count += hi - lo
	if j.chunked() && at < 0 {
		cur.use.out = out + int64(hi-lo)*size
	}
	return out
}

// grow extends segment k of sl to hi, re-laying out its input and scratch space. Only the last
// segment grows, so its regions are the last ones and can extend in place.
func (j *job) grow(sl *slab, k, hi int) {
	sg := &sl.segs[k]
	n := j.src.count()
	if j.src.host != nil && n > 0 {
		if sg.in == nil {
			sg.in = make([]int64, n)
			for i := range n {
				sg.in[i] = -1
			}
		}
		// Inputs are interleaved per segment: [seg k: input 0 | input 1 | ...]; the layout
		// is recomputed from the segment's start.
		var start int64
		if sg.in[0] >= 0 {
			start = sg.in[0]
		} else {
			start = sl.use.in
		}
		off := start
		for i := range n {
			sg.in[i] = off
			off += align16(int64((hi - sg.lo) * j.src.dtype(i, sg.field).Size()))
		}
		sl.use.in = off
	}
	if s := j.op.scratch(sg.field); s > 0 {
		if sg.scratch < 0 {
			sg.scratch = sl.use.scratch
		}
		sl.use.scratch = sg.scratch + align16(int64((hi-sg.lo)*s))
	}
	if sg.hi == sg.lo {
		sl.use.params += segmentParams(n)
	}
	sg.hi = hi
}

// ensureStreams creates a lane's streams and events once per GPU.
func (g *GPU) ensureStreams(ln *lane) error {
	for len(ln.slots) < g.opts.streams {
		s := &slot{}
		var err error
		if s.stream, err = g.drv.newStream(g.ctx); err != nil {
			return fmt.Errorf("%s: %w", g.Name(), err)
		}
		if s.done, err = g.drv.newEvent(g.ctx); err == nil {
			s.computed, err = g.drv.newEvent(g.ctx)
		}
		ln.slots = append(ln.slots, s)
		if err != nil {
			return fmt.Errorf("%s: %w", g.Name(), err)
		}
	}
	return nil
}

// slotBytes is the device memory the lane's slots hold.
func (ln *lane) slotBytes() int64 {
	var n int64
	for _, s := range ln.slots {
		n += s.devCap
	}
	return n
}

// ensureBuffers grows every slot's buffers to hold regions r. Buffers only grow: a GPU keeps
// the memory of its largest job until Close (fresh page-locked memory costs milliseconds per
// hundred MiB to pin).
func (g *GPU) ensureBuffers(ln *lane, r regions) error {
	for _, s := range ln.slots {
		if need := r.devBytes(); need > s.devCap {
			if s.devCap > 0 {
				if err := g.devFree(s.dev); err != nil {
					return fmt.Errorf("%s: %w", g.Name(), err)
				}
				s.dev, s.devCap = 0, 0
			}
			p, err := g.devAlloc(need, usePipeline)
			if err != nil {
				return fmt.Errorf("%s: pipeline buffer of %d MiB: %w", g.Name(), need>>20, err)
			}
			s.dev, s.devCap = p, need
		}
		if need := r.hostBytes(); need > s.hostCap {
			if s.hostCap > 0 {
				if err := g.hostFree(s.host); err != nil {
					return fmt.Errorf("%s: %w", g.Name(), err)
				}
				s.host, s.hostCap = nil, 0
			}
			p, err := g.hostAlloc(need, usePipeline)
			if err != nil {
				return fmt.Errorf("%s: page-locked staging of %d MiB: %w", g.Name(), need>>20, err)
			}
			s.host, s.hostCap = p, need
		}
	}
	return nil
}

// freeLane waits for and releases a lane's pipeline and scratch (Close).
func (g *GPU) freeLane(ln *lane) error {
	var errs []error
	for _, s := range ln.slots {
		errs = append(errs, g.drv.syncStream(g.ctx, s.stream))
		if s.devCap > 0 {
			errs = append(errs, g.devFree(s.dev))
		}
		if s.hostCap > 0 {
			errs = append(errs, g.hostFree(s.host))
		}
		for _, e := range []cuEvent{s.done, s.computed} {
			if e != nil {
				errs = append(errs, g.drv.destroyEvent(g.ctx, e))
			}
		}
		errs = append(errs, g.drv.destroyStream(g.ctx, s.stream))
	}
	ln.slots = nil
	errs = append(errs, g.freeScratch(ln))
	return errors.Join(errs...)
}
