package aggregate

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"unsafe"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// sink is where a round's result goes: a Set in memory (new, or the WithOutput set) or a file
// written chunk by chunk, plus the chunk stages' side tensors (an optimizer's moments) in
// memory or in their state files. A failed computation can open the sink again (a robust rule
// retries without clients it found non-finite): open discards what an earlier try wrote.
type sink struct {
	r    *Round
	path string

	plan    *plan
	set     *tensor.Set // the result in memory (for a quantised file too, written at commit)
	arena   []byte      // the result's memory, from the round's allocator
	w       *safetensors.Writer
	pipes   []*pipeOutput
	sides   []*sideSink // one per chunk stage with sides, in stage order
	written int64
	info    *SumInfo
}

// sideSink is one stage's side tensors.
type sideSink struct {
	stage ChunkStage
	spec  *Sides
	sets  []*tensor.Set // in memory: one per prefix
	outs  []device.Output
	w     *safetensors.Writer // in a state file
	owned [][]byte            // per set: the arena allocated for it (nil: recycled)
}

func newSink(r *Round, path string) *sink { return &sink{r: r, path: path} }

// toFile reports whether the result is streamed to a file (a quantised result is computed in
// memory first: i8 scales depend on the whole tensor).
func (s *sink) toFile() bool { return s.path != "" && !s.plan.quantised() }

// open prepares the result's output for plan p, discarding an earlier try.
func (s *sink) open(p *plan) (device.Output, error) {
	s.abort()
	s.plan = p
	cfg := s.r.cfg
	if !s.toFile() {
		set, out, err := s.memory(p)
		if err != nil {
			return nil, err
		}
		s.set = set
		return out, nil
	}
	w, err := safetensors.Create(s.path, p.fileLayout(), s.r.metadata())
	if err != nil {
		return nil, err
	}
	s.w = w
	if err := checkPlacement(w, p, 0); err != nil {
		s.abort()
		return nil, err
	}
	// One writer: this VM's disk took 1 MiB direct writes from one sequential writer at
	// 2.2-2.5 GB/s but gave two concurrent writers 0.5-0.6 GB/s each.
	pipe := newPipeOutput(w, p, cfg.chunkBytes, 2*s.r.workers()+2, 1, cfg.alloc)
	s.pipes = append(s.pipes, pipe)
	return pipe, nil
}

// memory returns the Set receiving the result in memory: the WithOutput set, or a new one in
// one arena from the round's allocator, laid out like the data section.
func (s *sink) memory(p *plan) (*tensor.Set, *memOutput, error) {
	if dst := s.r.cfg.dst; dst != nil {
		if p.quantised() {
			return nil, nil, fmt.Errorf("%w: an output set cannot receive i8 tensors", ErrOption)
		}
		out := &memOutput{dst: make([][]byte, len(p.fields)), fields: p.fields, chunks: p.chunks}
		for t, f := range p.fields {
			tt, ok := dst.Tensor(f.Name)
			if !ok || tt.DType != p.setDType(t) || !slices.Equal(tt.Shape, p.ref[t].Shape) {
				return nil, nil, fmt.Errorf("%w: output set: tensor %q must be %s %v", tensor.ErrLayoutMismatch, f.Name, p.setDType(t), p.ref[t].Shape)
			}
			out.dst[t] = tt.Bytes()
		}
		if dst.Metadata == nil {
			dst.Metadata = map[string]string{}
		}
		return dst, out, nil
	}
	set, out, arena, err := newResultSet(p, s.r.cfg.alloc)
	if err != nil {
		return nil, nil, err
	}
	s.arena = arena
	return set, out, nil
}

// finish waits for the writes of a successful computation and completes the result: the i8
// quantisation of an in-memory result, the metadata.
func (s *sink) finish(ctx context.Context) error {
	if err := s.closePipes(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.toFile() {
		s.written = s.plan.size
	} else {
		q, err := quantiseResult(s.set, s.plan)
		if err != nil {
			return err
		}
		if q != s.set { // quantised: the f32 result is no longer needed
			s.set = q
			if s.arena != nil {
				s.r.cfg.alloc.Free(s.arena)
				s.arena = nil
			}
		}
		maps.Copy(s.set.Metadata, s.r.metadata())
		s.written = s.set.NumBytes()
	}
	for _, sd := range s.sides {
		s.written += int64(len(sd.spec.Prefixes)) * s.plan.size
	}
	return nil
}

func (s *sink) closePipes() error {
	var first error
	for _, p := range s.pipes {
		if err := p.close(); err != nil && first == nil {
			first = err
		}
	}
	s.pipes = nil
	return first
}

// abort discards what the sink holds: the partial file, the in-memory result and sides.
func (s *sink) abort() {
	_ = s.closePipes()
	if s.w != nil {
		_ = s.w.Abort()
		s.w = nil
	}
	for _, sd := range s.sides {
		if sd.w != nil {
			_ = sd.w.Abort()
		}
		for _, b := range sd.owned {
			if b != nil {
				s.r.cfg.alloc.Free(b)
			}
		}
	}
	s.sides = nil
	if s.arena != nil {
		s.r.cfg.alloc.Free(s.arena)
		s.arena = nil
	}
	s.set = nil
}

// release hands the committed result and in-memory sides over: their Close gives their memory
// back to the round's allocator. It returns the result (nil for a file).
func (s *sink) release() *tensor.Set {
	alloc := s.r.cfg.alloc
	own := func(set *tensor.Set, arena []byte) {
		if arena != nil {
			set.SetCloser(closerFunc(func() error { alloc.Free(arena); return nil }))
		}
	}
	for _, sd := range s.sides {
		for k, set := range sd.sets {
			own(set, sd.owned[k])
		}
		sd.owned, sd.w = nil, nil
	}
	var set *tensor.Set
	if s.path == "" {
		set = s.set
		own(set, s.arena)
		s.arena = nil
	}
	s.w = nil
	return set
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// postOutput wraps dst so that every finished chunk goes through the chunk stages, in order,
// before it is passed on; it opens the stages' side outputs.
func (r *Round) postOutput(ctx context.Context, out *sink, dst device.Output) (device.Output, error) {
	var stages []ChunkStage
	for _, st := range r.stages {
		if c, ok := st.(ChunkStage); ok {
			stages = append(stages, c)
		}
	}
	if len(stages) == 0 {
		return dst, nil
	}
	po := &postOutput{ctx: ctx, main: dst, plan: r.plan, stages: stages, global: r.global}
	for _, st := range stages {
		spec := st.Sides()
		var outs []device.Output
		if spec != nil && len(spec.Prefixes) > 0 {
			sd, err := out.openSides(st, spec)
			if err != nil {
				return nil, err
			}
			outs = sd.outs
		}
		po.sides = append(po.sides, outs)
	}
	return po, nil
}

// openSides prepares a stage's side tensors: in its state file when the result goes to a file
// and the stage names one, else in memory (recycling the stage's retired sets when they fit).
func (s *sink) openSides(st ChunkStage, spec *Sides) (*sideSink, error) {
	p := s.plan
	sd := &sideSink{stage: st, spec: spec}
	s.sides = append(s.sides, sd)
	if s.path != "" && spec.Path != "" {
		var layout tensor.Layout
		for _, prefix := range spec.Prefixes {
			for _, f := range p.fileLayout() {
				layout = append(layout, tensor.Field{Name: prefix + f.Name, DType: f.DType, Shape: f.Shape})
			}
		}
		w, err := safetensors.Create(spec.Path, layout, spec.Metadata)
		if err != nil {
			return nil, err
		}
		sd.w = w
		for k := range spec.Prefixes {
			if err := checkPlacement(w, p, k); err != nil {
				return nil, err
			}
			var dst io.WriterAt = w
			if k > 0 {
				dst = io.NewOffsetWriter(w, int64(k)*p.size)
			}
			pipe := newPipeOutput(dst, p, s.r.cfg.chunkBytes, 2*s.r.workers()+2, 2, s.r.cfg.alloc)
			s.pipes = append(s.pipes, pipe)
			sd.outs = append(sd.outs, pipe)
		}
		return sd, nil
	}
	for k := range spec.Prefixes {
		var set *tensor.Set
		var mem *memOutput
		if k < len(spec.Recycle) {
			set, mem = reuseOutput(spec.Recycle[k], p)
		}
		var arena []byte
		if set == nil {
			var err error
			if set, mem, arena, err = newResultSet(p, s.r.cfg.alloc); err != nil {
				return nil, err
			}
		}
		sd.owned = append(sd.owned, arena)
		sd.sets = append(sd.sets, set)
		sd.outs = append(sd.outs, mem)
	}
	return sd, nil
}

// reuseOutput returns an output writing into s, or nil if s does not hold every field of the
// plan as an f32 tensor of its shape.
func reuseOutput(s *tensor.Set, p *plan) (*tensor.Set, *memOutput) {
	if s == nil || s.Len() != len(p.fields) {
		return nil, nil
	}
	out := &memOutput{dst: make([][]byte, len(p.fields)), fields: p.fields, chunks: p.chunks}
	for t, f := range p.fields {
		tt, ok := s.Tensor(f.Name)
		if !ok || tt.DType != tensor.F32 || !slices.Equal(tt.Shape, p.ref[t].Shape) || !tensor.IsAligned(tt.Bytes(), 4) {
			return nil, nil
		}
		out.dst[t] = tt.Bytes()
	}
	return s, out
}

// checkPlacement checks that the writer put copy k of the plan's tensors where the plan's
// offsets (shifted by k data sections) say, as the chunks assume.
func checkPlacement(w *safetensors.Writer, p *plan, k int) error {
	for i, t := range p.order {
		if got, want := w.TensorOffset(k*len(p.order)+i), int64(k)*p.size+p.offsets[t]; got != want {
			return fmt.Errorf("aggregate: writer placed tensor %q at %d, plan at %d", p.fields[t].Name, got, want)
		}
	}
	return nil
}

// Chunk is one finished chunk of a sum as a ChunkStage sees it: its pieces, each an element
// range of one tensor.
type Chunk struct {
	Index  int
	Pieces []Piece
}

// Piece is the element range [Lo, Hi) of tensor Field of a finished chunk.
type Piece struct {
	Field  int
	Name   string
	Lo, Hi int
	// X holds the chunk's values (the sum, or what earlier stages made of it); a stage
	// updates it in place. For a mod-sum it views the u32 sums (Bytes) as f32 for the stage
	// that decodes them.
	X     []float32
	Bytes []byte
	// Global is x_t's elements (nil without a global model).
	Global []float32
	// Sides are the stage's side outputs for these elements, one per prefix.
	Sides [][]float32
}

// postOutput hands each chunk the device finished to the chunk stages before passing it on.
type postOutput struct {
	ctx    context.Context
	main   device.Output
	plan   *plan
	stages []ChunkStage
	sides  [][]device.Output // per stage
	global *globalModel
}

func (o *postOutput) Dest(c, p int) ([]byte, error) { return o.main.Dest(c, p) }

func (o *postOutput) Done(c int) error {
	ch := &Chunk{Index: c, Pieces: make([]Piece, len(o.plan.chunks[c].Pieces))}
	for p, pc := range o.plan.chunks[c].Pieces {
		b, err := o.main.Dest(c, p)
		if err != nil {
			return err
		}
		ch.Pieces[p] = Piece{Field: pc.Field, Name: o.plan.fields[pc.Field].Name, Lo: pc.Lo, Hi: pc.Hi, X: f32View(b), Bytes: b}
		if o.global != nil {
			ch.Pieces[p].Global = o.global.f32[pc.Field][pc.Lo:pc.Hi]
		}
	}
	for k, st := range o.stages {
		for p := range ch.Pieces {
			ch.Pieces[p].Sides = ch.Pieces[p].Sides[:0]
			for _, side := range o.sides[k] {
				b, err := side.Dest(c, p)
				if err != nil {
					return err
				}
				ch.Pieces[p].Sides = append(ch.Pieces[p].Sides, f32View(b))
			}
		}
		if err := st.Process(o.ctx, ch); err != nil {
			return err
		}
	}
	for _, outs := range o.sides {
		for _, side := range outs {
			if err := side.Done(c); err != nil {
				return err
			}
		}
	}
	return o.main.Done(c)
}

// f32View views b (4-byte aligned: arenas and pipe buffers are, and f32 pieces start at
// multiples of 4) as float32s.
func f32View(b []byte) []float32 {
	if len(b) == 0 {
		return nil
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(unsafe.SliceData(b))), len(b)/4)
}

// metadata is what the result carries: the caller's metadata, the rule, the clients it
// aggregates, and, for a sum weighted by example counts, their total.
func (r *Round) metadata() map[string]string {
	m := maps.Clone(r.cfg.metadata)
	if m == nil {
		m = map[string]string{}
	}
	m[RuleKey] = r.rule.Name()
	m[ClientsKey] = strconv.Itoa(r.counted())
	if ex := len(r.clients) - r.counted(); ex > 0 {
		m[ExcludedKey] = strconv.Itoa(ex)
	}
	if r.req.Kind == KindSum && r.weights.source(r.req.Weights) == WeightsNumExamples {
		m[NumExamplesKey] = strconv.FormatFloat(r.weights.unscaled(r.weights.total), 'g', -1, 64)
	}
	for _, st := range r.stages {
		if a, ok := st.(Annotator); ok {
			a.Annotate(m)
		}
	}
	return m
}

// Annotator adds a stage's metadata (its round number, say) to the result.
type Annotator interface {
	Stage
	Annotate(m map[string]string)
}
