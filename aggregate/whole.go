package aggregate

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// The rules that need every update at once (KindWhole: median, trimmed mean, the Krum family,
// Bulyan, the geometric median, centered clipping, quantile-bound clipping) compute at the
// close from every update where it is. A batch (WithRetainedUpdates) keeps references to the
// caller's sets; an incremental round writes each accepted update to its spool as it arrives
// and maps the spool files at the close, so its own memory stays bounded whatever the clients.
// An update a weigher scaled (clipping composed before a robust statistic) is kept as its
// scaled f32 copy, in the spool.

// wholeState is a whole-set round's updates.
type wholeState struct {
	dir     string // the spool directory ("" until the first spooled update)
	ownDir  bool   // created by the round: removed on Close
	files   []string
	mapped  []*tensor.Set // spool files mapped at the close
	scratch []*tensor.Set // scaled copies made in memory
}

// keep holds an admitted client for the close: a reference, or a copy in the spool.
func (r *Round) keep(ctx context.Context, c *Client) error {
	if c.excluded != "" {
		c.spans, c.set = nil, nil
		return nil
	}
	scaled := c.factor != 1
	if r.cfg.retained && !scaled {
		return nil // the caller keeps c.set valid until the close
	}
	u := c.set
	if scaled {
		var err error
		if u, err = r.scaledCopy(ctx, c); err != nil {
			return err
		}
	}
	path, err := r.whole.spool(r.cfg.spoolDir, len(r.clients), u)
	if err != nil {
		return fmt.Errorf("%s: spooling the update: %w", c.Source, err)
	}
	c.spool = path
	c.spans, c.set = nil, nil
	return nil
}

// spool writes u to the spool directory (created on first use) and returns its path.
func (w *wholeState) spool(dir string, k int, u *tensor.Set) (string, error) {
	if w.dir == "" {
		if dir == "" {
			d, err := os.MkdirTemp("", "wattagg-spool-")
			if err != nil {
				return "", err
			}
			w.dir, w.ownDir = d, true
		} else {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return "", err
			}
			w.dir = dir
		}
	}
	path := filepath.Join(w.dir, "update-"+strconv.Itoa(k)+".safetensors")
	if err := safetensors.WriteFile(path, u); err != nil {
		return "", err
	}
	w.files = append(w.files, path)
	return path, nil
}

// scaledCopy is factor·x of client c as f32 tensors (clipping before a robust statistic).
func (r *Round) scaledCopy(ctx context.Context, c *Client) (*tensor.Set, error) {
	fields := make([]device.AccField, len(c.layout))
	offsets := make([]int64, len(c.layout))
	set := &tensor.Set{Source: c.Source, Metadata: map[string]string{}}
	var size int64
	for t, f := range c.layout {
		fields[t] = device.AccField{Name: f.Name, Len: f.Len(), Acc: tensor.F64, Out: tensor.F32}
		offsets[t] = size
		size += 4 * int64(f.Len())
	}
	chunks, err := device.CutChunks(fields, offsets, r.cfg.chunkBytes)
	if err != nil {
		return nil, err
	}
	data := make([][]byte, len(fields))
	for t, f := range c.layout {
		tt, err := tensor.New(f.Name, tensor.F32, f.Shape...)
		if err != nil {
			return nil, err
		}
		data[t] = tt.Bytes()
		if err := set.Add(tt); err != nil {
			return nil, err
		}
	}
	job := &device.SumJob{Fields: fields, Inputs: [][]device.Span{c.spans}, Weights: []float64{c.factor}, Scale: 1,
		Chunks: chunks, Output: &memOutput{dst: data, fields: fields, chunks: chunks}}
	st, err := r.cfg.dev().WeightedSum(ctx, job)
	r.acct.record(st)
	return set, err
}

// close unmaps and removes the spool.
func (w *wholeState) close() error {
	var errs []error
	for _, s := range w.mapped {
		errs = append(errs, s.Close())
	}
	w.mapped = nil
	for _, f := range w.files {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	w.files = nil
	if w.ownDir {
		errs = append(errs, os.Remove(w.dir))
		w.ownDir = false
	}
	return errors.Join(errs...)
}

// closeWhole maps the spooled updates, makes the plan and runs the rule's computation, which
// emits the result into out.
func (r *Round) closeWhole(ctx context.Context, out *sink) error {
	if err := r.mapSpool(); err != nil {
		return err
	}
	if r.plan == nil {
		p, err := newPlan(r.refLayout, func(t int) []tensor.DType {
			var dts []tensor.DType
			for _, c := range r.clients {
				if c.dtypes != nil {
					dts = append(dts, c.dtypes[t])
				}
			}
			return dts
		}, r.cfg, r.req)
		if err != nil {
			return err
		}
		r.plan = p
	}
	var comp Computer
	for _, st := range r.stages {
		if c, ok := st.(Computer); ok {
			comp = c
		}
	}
	if comp == nil {
		return fmt.Errorf("%w: %s needs every update but computes nothing", ErrOption, r.rule.Name())
	}
	in := &Inputs{r: r, out: out}
	if err := comp.Compute(ctx, in); err != nil {
		return err
	}
	if !in.emitted {
		return fmt.Errorf("%s: the rule produced no result", r.rule.Name())
	}
	return nil
}

// mapSpool maps the spooled updates back into their clients.
func (r *Round) mapSpool() error {
	for _, c := range r.clients {
		if c.spool == "" || c.spans != nil {
			continue
		}
		s, err := safetensors.Open(c.spool)
		if err != nil {
			return fmt.Errorf("%s: the spooled update: %w", c.Source, err)
		}
		r.whole.mapped = append(r.whole.mapped, s)
		perm, err := r.refLayout.Match(s.Layout(), false)
		if err != nil {
			return fmt.Errorf("%s: the spooled update: %w", c.Source, err)
		}
		c.spans = make([]device.Span, len(perm))
		for t, j := range perm {
			c.spans[t] = device.SpanOf(s.At(j))
			c.dtypes[t] = s.At(j).DType
		}
	}
	return nil
}

// Inputs are the updates of a whole-set round where they are (mapped files or memory), validated
// by the engine, for a Computer: it reads them with device operations, excludes the clients it
// finds unusable (Client.Exclude) and emits the result once through Emit.
type Inputs struct {
	r       *Round
	out     *sink
	emitted bool
}

// Clients are the round's clients in arrival order, excluded ones included.
func (in *Inputs) Clients() []*Client { return in.r.clients }

// Layout is the round's tensors (names, shapes, the first update's dtypes), in field order.
func (in *Inputs) Layout() tensor.Layout { return in.r.refLayout }

// Fields are the round's tensors with the result's dtypes.
func (in *Inputs) Fields() []device.AccField { return in.r.plan.fields }

// Chunks cut the result's data section into the units of device jobs.
func (in *Inputs) Chunks() []device.Chunk { return in.r.plan.chunks }

// ChunkBytes is the round's work unit.
func (in *Inputs) ChunkBytes() int { return in.r.cfg.chunkBytes }

// Device is the device the rule runs on.
func (in *Inputs) Device() device.Device { return in.r.cfg.dev() }

// Reducer is the device that scans updates and takes their norms.
func (in *Inputs) Reducer() (device.Reducer, error) { return in.r.reducer() }

// MemoryBudget bounds the memory the rule may fill with its own model-sized iterates.
func (in *Inputs) MemoryBudget() int64 { return in.r.cfg.memBudget }

// Allocator is where the rule's own model-sized buffers come from.
func (in *Inputs) Allocator() tensor.Allocator { return in.r.cfg.alloc }

// Record adds one device pass to the round's report.
func (in *Inputs) Record(st device.Stats) { in.r.acct.record(st) }

// Progress reports the progress of a pass over the given clients (nil if nobody listens).
func (in *Inputs) Progress(clients []*Client) func(int64) {
	fn := in.r.cfg.progress
	if fn == nil {
		return nil
	}
	var total int64
	for _, c := range clients {
		total += c.bytes
	}
	var done atomic.Int64 // jobs report from several goroutines
	return func(n int64) { fn(done.Add(n), total) }
}

// Overflow explains a non-finite result of finite inputs (a trimmed mean beyond the f32
// range, an output dtype too narrow for the aggregate) as an ErrOverflow error.
func (in *Inputs) Overflow(err error) error { return in.r.overflow(err) }

// Emit runs compute — a device job writing the result to an Output, chunk by chunk — into the
// round's result (memory, the WithOutput set, or the file written as the chunks finish). If
// compute fails, what it wrote is discarded and Emit may be called again. Once compute has
// succeeded the updates may be released (WithInputsDone): a Computer reads none of them after.
func (in *Inputs) Emit(ctx context.Context, compute func(out device.Output) (device.Stats, error)) error {
	dst, err := in.out.open(in.r.plan)
	if err != nil {
		return err
	}
	st, err := compute(dst)
	in.r.acct.record(st)
	if err == nil {
		in.r.cfg.inputsRead()
		err = in.out.finish(ctx)
	}
	if err != nil {
		in.out.abort()
		return err
	}
	in.emitted = true
	return nil
}
