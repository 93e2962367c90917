package cuda

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"unsafe"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
)

// resident is a set of tensors held in GPU memory: an update uploaded once and used by many
// operations (a server that keeps the round's updates on the GPU), or a result kept there for
// the next step (a server optimizer's state). It owns one device allocation, freed by free (or
// the GPU's Close). The device-resident operations are unexported (see the package doc): the
// benchmark and the tests use them.
type resident struct {
	g      *GPU
	fields []residentField
	ptrs   []uint64 // per field: device address of element 0 (256-byte aligned)
	base   uint64
	size   int64
	closed bool
}

// residentField describes one tensor of a resident.
type residentField struct {
	Name  string
	DType tensor.DType
	Shape []int
	Scale float32 // I8 dequantisation scale; 1 for the other dtypes
}

// Len is the element count.
func (f residentField) Len() int { return tensor.Field{Shape: f.Shape}.Len() }

// newResident allocates zeroed tensors in device memory.
func (g *GPU) newResident(fields []residentField) (*resident, error) {
	r := &resident{g: g, fields: slices.Clone(fields), ptrs: make([]uint64, len(fields))}
	offs := make([]int64, len(fields))
	for t, f := range fields {
		if !f.DType.Valid() {
			return nil, fmt.Errorf("%s: %w: tensor %q: dtype %s", g.Name(), device.ErrUnsupported, f.Name, f.DType)
		}
		for _, d := range f.Shape {
			if d < 0 {
				return nil, fmt.Errorf("%s: %w: tensor %q: shape %v", g.Name(), tensor.ErrShape, f.Name, f.Shape)
			}
		}
		r.fields[t].Shape = slices.Clone(f.Shape)
		if f.DType != tensor.I8 || f.Scale == 0 {
			r.fields[t].Scale = 1
		}
		offs[t] = r.size
		r.size += (int64(f.Len())*int64(f.DType.Size()) + 255) &^ 255
	}
	ln, err := g.lock(true)
	if err != nil {
		return nil, err
	}
	defer ln.mu.Unlock()
	if free, _, err := g.drv.memInfo(g.ctx); err != nil {
		return nil, fmt.Errorf("%s: %w", g.Name(), err)
	} else if r.size > free-headroom {
		return nil, fmt.Errorf("%s: %w: %d MiB of tensors, %d MiB free", g.Name(), ErrOutOfMemory, r.size>>20, max(free-headroom, 0)>>20)
	}
	if r.base, err = g.devAlloc(max(r.size, 256), useResident); err != nil {
		return nil, fmt.Errorf("%s: %d MiB of tensors: %w", g.Name(), r.size>>20, err)
	}
	for t := range fields {
		r.ptrs[t] = r.base + uint64(offs[t])
	}
	s := ln.slots[0].stream
	if err := g.drv.memset(g.ctx, r.base, 0, max(r.size, 256), s); err == nil {
		err = g.drv.syncStream(g.ctx, s)
	}
	if err != nil {
		return nil, errors.Join(fmt.Errorf("%s: %w", g.Name(), err), g.devFree(r.base))
	}
	g.memMu.Lock()
	g.live[r] = struct{}{}
	g.memMu.Unlock()
	return r, nil
}

// upload copies a Set to device memory (through page-locked staging, overlapping the host copy
// with the transfer, or straight from page-locked memory).
func (g *GPU) upload(ctx context.Context, s *tensor.Set) (*resident, error) {
	fields := make([]residentField, s.Len())
	spans := make([]device.Span, s.Len())
	for t, tt := range s.Tensors() {
		fields[t] = residentField{Name: tt.Name, DType: tt.DType, Shape: tt.Shape, Scale: tt.Scale}
		spans[t] = device.SpanOf(tt)
		if len(spans[t].Data) != tt.Len()*tt.DType.Size() || tt.Len() != fields[t].Len() {
			return nil, fmt.Errorf("%s: %w: tensor %q: %d bytes for shape %v", g.Name(), device.ErrJob, tt.Name, len(spans[t].Data), tt.Shape)
		}
	}
	r, err := g.newResident(fields)
	if err != nil {
		return nil, err
	}
	j := &job{g: g, fields: r.accFields(), src: g.hostSource([][]device.Span{spans}), op: copyOp{}, out: output{res: r}}
	if _, err := j.run(ctx); err != nil {
		return nil, errors.Join(err, r.free())
	}
	return r, nil
}

// Download copies the tensors back into a new Set (owned, aligned buffers).
func (r *resident) download(ctx context.Context) (*tensor.Set, error) {
	if r.closed {
		return nil, fmt.Errorf("%s: resident tensors: %w", r.g.Name(), ErrClosed)
	}
	set := &tensor.Set{Metadata: map[string]string{}}
	out := &setOutput{}
	fields := r.accFields()
	offs := make([]int64, len(fields))
	var off int64
	for t, f := range r.fields {
		tt, err := tensor.New(f.Name, f.DType, f.Shape...)
		if err != nil {
			return nil, err
		}
		tt.Scale = f.Scale
		if err := set.Add(tt); err != nil {
			return nil, err
		}
		out.dst = append(out.dst, tt.Bytes())
		// 8-byte aligned offsets: no chunk boundary splits an element.
		offs[t] = off
		off += (int64(len(tt.Bytes())) + 7) &^ 7
	}
	chunks, err := device.CutChunks(fields, offs, downloadChunk)
	if err != nil {
		return nil, err
	}
	out.fields, out.chunks = fields, chunks
	j := &job{g: r.g, fields: fields, src: source{res: []*resident{r}}, op: copyOp{}, out: output{chunks: chunks, out: out}}
	if _, err := j.run(ctx); err != nil {
		return nil, err
	}
	return set, nil
}

// downloadChunk is the unit in which Download hands data to the host.
const downloadChunk = 1 << 20

// setOutput writes chunks into tensors.
type setOutput struct {
	dst    [][]byte
	fields []device.AccField
	chunks []device.Chunk
}

func (o *setOutput) Dest(c, p int) ([]byte, error) {
	pc := o.chunks[c].Pieces[p]
	es := o.fields[pc.Field].Out.Size()
	return o.dst[pc.Field][pc.Lo*es : pc.Hi*es], nil
}

func (o *setOutput) Done(int) error { return nil }

// accFields describes the tensors as job fields whose output dtype is the tensor's dtype.
func (r *resident) accFields() []device.AccField {
	fs := make([]device.AccField, len(r.fields))
	for t, f := range r.fields {
		fs[t] = device.AccField{Name: f.Name, Len: f.Len(), Acc: f.DType, Out: f.DType}
	}
	return fs
}

// free frees the device memory. It is safe to call more than once.
func (r *resident) free() error {
	g := r.g
	g.memMu.Lock()
	_, live := g.live[r]
	delete(g.live, r)
	g.memMu.Unlock()
	if r.closed || !live {
		r.closed = true
		return nil
	}
	r.closed = true
	if err := g.devFree(r.base); err != nil {
		return fmt.Errorf("%s: %w", g.Name(), err)
	}
	return nil
}

// copyOp copies each input segment to the output (upload, Download): inputs and output have the
// same dtype.
type copyOp struct{}

func (copyOp) scratch(int) int { return 0 }

func (copyOp) segment(b *batch, k int) error {
	sg := b.sl.segs[k]
	src, dst := b.input(k, 0), b.output(k)
	n := int64((sg.hi - sg.lo) * b.j.src.dtype(0, sg.field).Size())
	g := b.j.g
	b.enqueue(func(s cuStream) error {
		if err := g.drv.d2d(g.ctx, dst, src, n, s); err != nil {
			return fmt.Errorf("%s: %w", g.Name(), err)
		}
		return nil
	})
	return nil
}

// hostSource describes host inputs, noting which are page-locked.
func (g *GPU) hostSource(inputs [][]device.Span) source {
	s := source{host: inputs, pinned: make([][]bool, len(inputs))}
	for i, in := range inputs {
		s.pinned[i] = make([]bool, len(in))
		for t, sp := range in {
			s.pinned[i][t] = g.isPinned(sp.Data)
		}
	}
	return s
}

// residentFields checks that the residents share one layout (element counts per tensor; dtypes
// may differ) and returns it as job fields with the output dtypes of out (nil: those of the first
// input).
func residentFields(g *GPU, inputs []*resident, out *resident) ([]device.AccField, error) {
	if len(inputs) == 0 {
		return nil, fmt.Errorf("%s: %w: no inputs", g.Name(), device.ErrJob)
	}
	fields := inputs[0].accFields()
	check := func(what string, r *resident) error {
		if r.g != g {
			return fmt.Errorf("%s: %w: %s lives on %s", g.Name(), device.ErrJob, what, r.g.Name())
		}
		if r.closed {
			return fmt.Errorf("%s: %s: %w", g.Name(), what, ErrClosed)
		}
		if len(r.fields) != len(fields) {
			return fmt.Errorf("%s: %w: %s has %d tensors, want %d", g.Name(), tensor.ErrLayoutMismatch, what, len(r.fields), len(fields))
		}
		for t, f := range r.fields {
			if f.Len() != fields[t].Len {
				return fmt.Errorf("%s: %w: %s: tensor %q has %d elements, want %d", g.Name(), tensor.ErrLayoutMismatch, what, f.Name, f.Len(), fields[t].Len)
			}
		}
		return nil
	}
	for i, r := range inputs {
		if err := check(fmt.Sprintf("input %d", i), r); err != nil {
			return nil, err
		}
	}
	if out != nil {
		if err := check("the output", out); err != nil {
			return nil, err
		}
		if slices.Contains(inputs, out) {
			return nil, fmt.Errorf("%s: %w: the output is also an input", g.Name(), device.ErrJob)
		}
		for t, f := range out.fields {
			fields[t].Out = f.DType
		}
	}
	return fields, nil
}

// scratchBuffers returns device and page-locked memory for one call's small results (partial
// sums, a Gram matrix, the index of a NaN), kept between calls and grown on demand: allocating
// page-locked memory costs more than a whole device-resident FedAvg. The caller holds ln.mu and
// copies what it needs out of the host buffer before releasing it.
func (g *GPU) scratchBuffers(ln *lane, devBytes, hostBytes int64) (uint64, []byte, error) {
	sc := &ln.scratch
	devBytes, hostBytes = max(devBytes, 256), max(hostBytes, 256)
	if devBytes > sc.devCap {
		if sc.devCap > 0 {
			if err := g.devFree(sc.dev); err != nil {
				return 0, nil, fmt.Errorf("%s: %w", g.Name(), err)
			}
			sc.devCap = 0
		}
		p, err := g.devAlloc(devBytes, usePipeline)
		if err != nil {
			return 0, nil, fmt.Errorf("%s: %d MiB of partial results: %w", g.Name(), devBytes>>20, err)
		}
		sc.dev, sc.devCap = p, devBytes
	}
	if hostBytes > sc.hostCap {
		if sc.hostCap > 0 {
			if err := g.hostFree(sc.host); err != nil {
				return 0, nil, fmt.Errorf("%s: %w", g.Name(), err)
			}
			sc.hostCap = 0
		}
		p, err := g.hostAlloc(hostBytes, usePipeline)
		if err != nil {
			return 0, nil, fmt.Errorf("%s: %w", g.Name(), err)
		}
		sc.host, sc.hostCap = p, hostBytes
	}
	return sc.dev, unsafe.Slice((*byte)(sc.host), hostBytes), nil
}

// freeScratch releases a lane's scratch buffers (Close).
func (g *GPU) freeScratch(ln *lane) error {
	var errs []error
	if ln.scratch.devCap > 0 {
		errs = append(errs, g.devFree(ln.scratch.dev))
	}
	if ln.scratch.hostCap > 0 {
		errs = append(errs, g.hostFree(ln.scratch.host))
	}
	ln.scratch = scratch{}
	return errors.Join(errs...)
}

// onStream runs f on the first stream of a lane (callback-free work: see GPU.lock) and waits
// for the GPU.
func (g *GPU) onStream(ctx context.Context, f func(ln *lane, s cuStream) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	ln, err := g.lock(true)
	if err != nil {
		return err
	}
	defer ln.mu.Unlock()
	s := ln.slots[0].stream
	err = f(ln, s)
	if serr := g.drv.syncStream(g.ctx, s); err == nil && serr != nil {
		err = fmt.Errorf("%s: %w", g.Name(), serr)
	}
	return err
}

// checkResidentFinite reports the first NaN or Inf of r (lowest tensor, then lowest element) as
// a *tensor.NonFiniteError, as the CPU device checks its outputs.
func (g *GPU) checkResidentFinite(ctx context.Context, r *resident) error {
	n := int64(len(r.fields))
	var bad *tensor.NonFiniteError
	err := g.onStream(ctx, func(ln *lane, s cuStream) error {
		dev, host, err := g.scratchBuffers(ln, 8*n, 8*n+8)
		if err != nil {
			return err
		}
		if err := g.drv.memset(g.ctx, dev, 0xff, 8*n, s); err != nil {
			return fmt.Errorf("%s: %w", g.Name(), err)
		}
		for t, f := range r.fields {
			if f.Len() == 0 {
				continue
			}
			grid, err := blocks(int64(f.Len()), 256)
			if err != nil {
				return err
			}
			if err := g.launch(s, "wa_first_nonfinite", grid, 256, 0, r.ptrs[t], argInt(int(f.DType)), uint64(f.Len()), dev+uint64(8*t)); err != nil {
				return err
			}
		}
		if err := g.drv.d2h(g.ctx, unsafe.Pointer(unsafe.SliceData(host)), dev, 8*n, s); err != nil {
			return fmt.Errorf("%s: %w", g.Name(), err)
		}
		if err := g.drv.syncStream(g.ctx, s); err != nil {
			return fmt.Errorf("%s: %w", g.Name(), err)
		}
		first := unsafe.Slice((*uint64)(unsafe.Pointer(unsafe.SliceData(host))), n)
		for t, f := range r.fields {
			i := first[t]
			if i == ^uint64(0) {
				continue
			}
			// Fetch the element for the message.
			sz := int64(f.DType.Size())
			if err := g.drv.d2h(g.ctx, unsafe.Pointer(&host[8*n]), r.ptrs[t]+i*uint64(sz), sz, s); err != nil {
				return fmt.Errorf("%s: %w", g.Name(), err)
			}
			if err := g.drv.syncStream(g.ctx, s); err != nil {
				return fmt.Errorf("%s: %w", g.Name(), err)
			}
			v, err := tensor.FromBytes(f.Name, f.DType, []int{1}, host[8*n:8*n+sz])
			if err != nil {
				return err
			}
			bad = &tensor.NonFiniteError{Tensor: f.Name, Index: int(i), Value: v.Value(0)}
			return nil
		}
		return nil
	})
	if err != nil {
		return err
	}
	if bad != nil {
		return bad
	}
	return nil
}
