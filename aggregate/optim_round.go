package aggregate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync/atomic"
	"unsafe"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/kernels"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// The machinery shared by the rules that move a global model (server optimizers, private means):
// one device job computes a weighted sum over the client models and the global model, and each
// finished chunk is post-processed (an optimizer step, noise) before it goes to memory or to
// the output file, together with the rule's per-coordinate state. Nothing model-sized is
// allocated in the file path beyond what the rule's state needs.

// Errors of the rules that move a global model.
var (
	// ErrUpdateKind reports a client file marked as a delta where full models are expected.
	ErrUpdateKind = errors.New("update kind mismatch")
	// ErrState reports a state file (optimizer moments, privacy accounting) that does not
	// belong to the rule: another rule, other hyperparameters, another model, or corrupt.
	ErrState = errors.New("invalid rule state")
)

// UpdateKindKey is the metadata key with which a client file may say what it holds: "model"
// (the default) or "delta". The server optimizers and the private means take full client models,
// as Flower's strategies do, and subtract the global model themselves; a file marked "delta" is
// an ErrUpdateKind error rather than a model silently taken for a step.
const UpdateKindKey = "wattagg.update"

// modelRound is one round of a rule that moves the global model: the updates validated as a
// batch whose outputs are f32, and the global model matched to them.
type modelRound struct {
	rule   string
	b      *batch
	global *tensor.Set
	gspans []device.Span // the global model's tensors in plan field order
	gx     [][]float32   // and their f32 views
}

func globalName(g *tensor.Set) string {
	if g.Source != "" {
		return g.Source
	}
	return "global model"
}

func newModelRound(ctx context.Context, rule string, updates []*tensor.Set, weights []float64, global *tensor.Set, common []Option) (*modelRound, error) {
	for k, u := range updates {
		switch kind := u.Metadata[UpdateKindKey]; kind {
		case "", "model":
		case "delta":
			return nil, fmt.Errorf("%s: %w: %s=delta, but %s takes full client models and subtracts the global model itself",
				sourceName(u, k), ErrUpdateKind, UpdateKindKey, rule)
		default:
			return nil, fmt.Errorf("%s: %w: %s=%q (want model or delta)", sourceName(u, k), ErrUpdateKind, UpdateKindKey, kind)
		}
	}
	cfg, err := newConfig(common)
	if err != nil {
		return nil, err
	}
	if cfg.out != tensor.Invalid && cfg.out != tensor.F32 {
		return nil, fmt.Errorf("%w: %s writes its model in f32 (the server's master copy), not %s", ErrOption, rule, cfg.out)
	}
	if cfg.dst != nil {
		return nil, fmt.Errorf("%w: %s cannot write into an output set", ErrOption, rule)
	}
	opts := append(slices.Clone(common), WithOutDType(tensor.F32))
	if cfg.acc == tensor.Invalid {
		// The sum of the client models minus the global model is a small difference of large
		// numbers: accumulate it in f64 (the accumulator block stays in cache, so it is free).
		opts = append(opts, WithAccumulator(tensor.F64))
	}
	b, err := prepare(ctx, updates, weights, opts)
	if err != nil {
		return nil, err
	}
	r := &modelRound{rule: rule, b: b, global: global}
	perm, err := b.plan.ref.Match(global.Layout(), false)
	if err != nil {
		return nil, fmt.Errorf("%s: %w (as in %s)", globalName(global), err, sourceName(updates[0], 0))
	}
	r.gspans = make([]device.Span, len(perm))
	r.gx = make([][]float32, len(perm))
	for t, j := range perm {
		gt := global.At(j)
		if gt.DType != tensor.F32 {
			return nil, fmt.Errorf("%s: %w: tensor %q is %s: the global model must be f32 (the server's master copy)",
				globalName(global), tensor.ErrDType, gt.Name, gt.DType)
		}
		x, err := gt.F32()
		if errors.Is(err, tensor.ErrUnaligned) {
			gt = gt.Clone() // a foreign file with an odd layout: copy the tensor once
			x, err = gt.F32()
		}
		if err != nil {
			return nil, err
		}
		r.gspans[t], r.gx[t] = device.SpanOf(gt), x
	}
	return r, nil
}

// sum runs out = scale·(Σ_k w[k]·update_k + gw·global) chunk by chunk into out.
func (r *modelRound) sum(ctx context.Context, w []float64, gw, scale float64, out device.Output) (device.Stats, error) {
	inputs := append(slices.Clone(r.b.inputs), r.gspans)
	job := &device.SumJob{
		Fields:  r.b.plan.fields,
		Inputs:  inputs,
		Weights: append(slices.Clone(w), gw),
		Scale:   scale,
		Chunks:  r.b.plan.chunks,
		Output:  out,
	}
	if fn := r.b.cfg.progress; fn != nil {
		var done atomic.Int64
		total := r.b.bytesIn + r.global.NumBytes()
		job.Progress = func(n int64) { fn(done.Add(n), total) }
	}
	stats, err := r.b.cfg.dev.WeightedSum(ctx, job)
	if err != nil {
		return stats, blame(err, r.b.plan, inputs, append(slices.Clone(r.b.updates), r.global))
	}
	return stats, nil
}

// f32View views b (4-byte aligned: arenas and pipe buffers are, and f32 pieces start at
// multiples of 4) as float32s.
func f32View(b []byte) []float32 {
	if len(b) == 0 {
		return nil
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(unsafe.SliceData(b))), len(b)/4)
}

// piece is one piece of a finished chunk: x holds the weighted sum on entry and the new model
// on return; sides are the rule's state outputs for the same elements.
type piece struct {
	pc    device.Piece
	x     []float32
	sides [][]float32
}

// postFunc post-processes the pieces of chunk c (an optimizer step, noise) before they are
// passed on. It is called once per chunk, from the goroutine that computed it.
type postFunc func(c int, pieces []piece) error

// postOutput hands the device's chunks to a postFunc before passing them on.
type postOutput struct {
	main   device.Output
	sides  []device.Output
	chunks []device.Chunk
	post   postFunc
}

func (o *postOutput) Dest(c, p int) ([]byte, error) { return o.main.Dest(c, p) }

func (o *postOutput) Done(c int) error {
	pieces := make([]piece, len(o.chunks[c].Pieces))
	for p, pc := range o.chunks[c].Pieces {
		x, err := o.main.Dest(c, p)
		if err != nil {
			return err
		}
		pieces[p] = piece{pc: pc, x: f32View(x), sides: make([][]float32, len(o.sides))}
		for k, s := range o.sides {
			b, err := s.Dest(c, p)
			if err != nil {
				return err
			}
			pieces[p].sides[k] = f32View(b)
		}
	}
	if err := o.post(c, pieces); err != nil {
		return err
	}
	for _, s := range o.sides {
		if err := s.Done(c); err != nil {
			return err
		}
	}
	return o.main.Done(c)
}

// roundOutputs are where a round writes the new model and the rule's per-coordinate state
// tensors (the sides, each laid out like the model): memory, or files written chunk by chunk.
type roundOutputs struct {
	out *postOutput

	model *tensor.Set   // in memory: the new model
	state []*tensor.Set // in memory: one set per side, tensors named as the model's

	mw, sw *safetensors.Writer // files: the model and the state
	pipes  []*pipeOutput
	size   int64 // bytes of the model's data section
}

// outputs prepares the outputs of a round: the model in memory (modelPath "") or in a file, and
// len(prefixes) side tensors per model tensor, in memory (statePath "") or in one state file
// whose tensors are prefix+name, side by side in prefix order. In memory, the sets of recycle
// (one per prefix, or nil) receive the sides when they hold the model's tensors: the rule's
// retired state, so that a server's steady state does not touch fresh pages every round.
func (r *modelRound) outputs(modelPath string, modelMeta map[string]string, prefixes []string,
	statePath string, stateMeta map[string]string, recycle []*tensor.Set, post postFunc) (*roundOutputs, error) {
	p := r.b.plan
	o := &roundOutputs{size: p.size}
	buffers := 2*workersOf(r.b.cfg.dev) + 2
	o.out = &postOutput{chunks: p.chunks, post: post}
	if modelPath == "" {
		set, mem, err := newResultSet(p)
		if err != nil {
			return nil, err
		}
		o.model, o.out.main = set, mem
	} else {
		w, err := safetensors.Create(modelPath, p.fileLayout(), modelMeta)
		if err != nil {
			return nil, err
		}
		o.mw = w
		if err := checkPlacement(w, p, 0); err != nil {
			o.abort()
			return nil, err
		}
		pipe := newPipeOutput(w, p, r.b.cfg.chunkBytes, buffers, 2)
		o.pipes = append(o.pipes, pipe)
		o.out.main = pipe
	}
	if len(prefixes) == 0 {
		return o, nil
	}
	if statePath == "" {
		for k := range prefixes {
			var set *tensor.Set
			var mem *memOutput
			if k < len(recycle) {
				set, mem = reuseOutput(recycle[k], p)
			}
			if set == nil {
				var err error
				if set, mem, err = newResultSet(p); err != nil {
					return nil, err
				}
			}
			o.state = append(o.state, set)
			o.out.sides = append(o.out.sides, mem)
		}
		return o, nil
	}
	var layout tensor.Layout
	for _, prefix := range prefixes {
		for _, f := range p.fileLayout() {
			layout = append(layout, tensor.Field{Name: prefix + f.Name, DType: f.DType, Shape: f.Shape})
		}
	}
	w, err := safetensors.Create(statePath, layout, stateMeta)
	if err != nil {
		o.abort()
		return nil, err
	}
	o.sw = w
	for k := range prefixes {
		if err := checkPlacement(w, p, k); err != nil {
			o.abort()
			return nil, err
		}
		var dst io.WriterAt = w
		if k > 0 {
			dst = io.NewOffsetWriter(w, int64(k)*p.size)
		}
		pipe := newPipeOutput(dst, p, r.b.cfg.chunkBytes, buffers, 2)
		o.pipes = append(o.pipes, pipe)
		o.out.sides = append(o.out.sides, pipe)
	}
	return o, nil
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

// finish waits for the writes and, if the round and every write succeeded, commits the model
// file and then the state file: a failure before the model commit leaves both files as they
// were. It aborts both otherwise and returns the first error.
func (o *roundOutputs) finish(ctx context.Context, err error) error {
	for _, pipe := range o.pipes {
		if cerr := pipe.close(); err == nil {
			err = cerr
		}
	}
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		o.abort()
		return err
	}
	if o.mw != nil {
		if err := o.mw.Commit(); err != nil {
			o.abort()
			return err
		}
	}
	if o.sw != nil {
		if err := o.sw.Commit(); err != nil {
			return fmt.Errorf("the model was written but its state was not, rerun the round from the previous state: %w", err)
		}
	}
	return nil
}

func (o *roundOutputs) abort() {
	if o.mw != nil {
		_ = o.mw.Abort()
	}
	if o.sw != nil {
		_ = o.sw.Abort()
	}
}

// written is the bytes of the model and state data sections.
func (o *roundOutputs) written() int64 { return int64(1+len(o.out.sides)) * o.size }

// finiteCheck reports the first NaN or Inf of a post-processed piece as an overflow of the rule.
func (r *modelRound) finiteCheck(what string, pc device.Piece, v []float32) error {
	if !anyNonFinite32(v) {
		return nil
	}
	for j, x := range v {
		if x != x || x-x != 0 {
			f := r.b.plan.fields[pc.Field]
			return fmt.Errorf("%s: tensor %q element %d: %w: the new %s is %v", r.rule, f.Name, pc.Lo+j, ErrOverflow, what, x)
		}
	}
	return nil
}

func f32Bytes(v []float32) []byte {
	if len(v) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(v))), 4*len(v))
}

func anyNonFinite32(v []float32) bool { return kernels.AnyNonFiniteF32(f32Bytes(v)) }
