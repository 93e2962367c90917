// Package bench measures wattagg against physical floors: it generates synthetic federations,
// measures the memory read bandwidth of the machine it runs on, runs the aggregation paths and
// the C yardsticks of shared/floors in the same session, and reports ratios.
package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// Model is the layout of a synthetic model: f32 tensors with names and shapes.
type Model struct {
	Name   string
	Fields tensor.Layout
}

// Params is the parameter count.
func (m Model) Params() int64 { return m.Fields.NumParams() }

// Transformer returns a decoder-only transformer layout (token embedding, layers of attention
// and MLP weights with biases and layer norms, a final norm) whose size is close to params.
// Its tensors have the shapes and the spread of sizes real checkpoints have.
func Transformer(params int64) Model {
	// Width grows with size; the layers take about five sixths of the budget and the
	// vocabulary fills the rest, so the total lands close to params.
	d := 64
	for d < 2048 && int64(d)*int64(d)*12*16 < params {
		d *= 2
	}
	perLayer := int64(12*d*d + 13*d) // qkv+out+mlp weights, their biases, two norms
	vocab := int(max(16, params/6/int64(d)))
	layers := max(1, int(math.Round(float64(params-int64(vocab*d))/float64(perLayer))))
	vocab = int(max(16, (params-int64(layers)*perLayer-int64(2*d))/int64(d)))
	var l tensor.Layout
	add := func(name string, shape ...int) {
		l = append(l, tensor.Field{Name: name, DType: tensor.F32, Shape: shape})
	}
	add("embed.weight", vocab, d)
	for i := range layers {
		p := "layers." + strconv.Itoa(i) + "."
		add(p+"attn_norm.weight", d)
		add(p+"attn_norm.bias", d)
		add(p+"attn.qkv.weight", 3*d, d)
		add(p+"attn.qkv.bias", 3*d)
		add(p+"attn.out.weight", d, d)
		add(p+"attn.out.bias", d)
		add(p+"mlp_norm.weight", d)
		add(p+"mlp_norm.bias", d)
		add(p+"mlp.up.weight", 4*d, d)
		add(p+"mlp.up.bias", 4*d)
		add(p+"mlp.down.weight", d, 4*d)
		add(p+"mlp.down.bias", d)
	}
	add("final_norm.weight", d)
	add("final_norm.bias", d)
	return Model{Name: fmt.Sprintf("transformer-d%d-l%d", d, layers), Fields: l}
}

// Flat returns a model of one f32 vector of n parameters.
func Flat(n int) Model {
	return Model{Name: fmt.Sprintf("flat-%d", n), Fields: tensor.Layout{{Name: "w", DType: tensor.F32, Shape: []int{n}}}}
}

// Client describes one synthetic client update.
type Client struct {
	DType       tensor.DType // F32, BF16 or F16
	NumExamples int          // written as num_examples metadata; 0 for none
}

// Federation is a set of client updates of one model.
type Federation struct {
	Model   Model
	Clients []Client
	Seed    uint64
}

// Value is the parameter j of client k: a shared base plus a client-specific perturbation,
// deterministic in (seed, k, j) so that tests can recompute any coordinate.
func (f *Federation) Value(k int, j int64) float32 {
	return float32(f.base(j) + f.delta(k, j))
}

// base is the part of parameter j that every client shares.
func (f *Federation) base(j int64) float64 { return gauss(f.Seed, j) * 0.02 }

// delta is client k's perturbation of parameter j.
func (f *Federation) delta(k int, j int64) float64 {
	return gauss(f.Seed^0x9e3779b97f4a7c15*uint64(k+1), j) * 0.002
}

// gauss is a cheap deterministic approximately-normal value (sum of four uniforms).
func gauss(seed uint64, j int64) float64 {
	h := splitmix(seed + uint64(j)*0x9e3779b97f4a7c15)
	var s float64
	for range 4 {
		s += float64(h&0xffff) / 65536
		h >>= 16
	}
	return (s - 2) * math.Sqrt(3)
}

func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}

// Write writes the federation to dir as client-NNN.safetensors files, on all cores, with
// buffered I/O. progress, if set, gets the bytes written so far and in all; it is called from
// every worker, so it must be safe for concurrent use (cli.Progress is). Each core takes
// every GOMAXPROCS-th client and writes its clients' files block by block together, so that
// the block's shared part of the values (base) is computed once per core, not once per client:
// it was half of the generation's time.
func (f *Federation) Write(ctx context.Context, dir string, progress func(done, total int64)) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var total int64
	for k, c := range f.Clients {
		if err := encode(make([]byte, 4), 0, c.DType, 0); err != nil {
			return nil, fmt.Errorf("client %d: %w", k, err) // before any file is made
		}
		total += f.Model.Params() * int64(c.DType.Size())
	}
	paths := make([]string, len(f.Clients))
	for k := range f.Clients {
		paths[k] = filepath.Join(dir, fmt.Sprintf("client-%03d.safetensors", k))
	}
	workers := min(runtime.GOMAXPROCS(0), len(f.Clients))
	errs := make([]error, workers)
	var done atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		var ks []int
		for k := w; k < len(f.Clients); k += workers {
			ks = append(ks, k)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[w] = f.writeClients(ctx, ks, paths, func(n int64) {
				if progress != nil {
					progress(done.Add(n), total)
				}
			})
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return paths, nil
}

// writeBlock is the parameters writeBlocks generates at a time for each of its clients.
const writeBlock = 1 << 18

// writeClients writes the files of clients ks (to paths[k]) together, writeBlock parameters at
// a time: their shared base once, then each client's values from it. A file that fails is
// aborted, and so are the others of ks.
func (f *Federation) writeClients(ctx context.Context, ks []int, paths []string, progress func(int64)) error {
	ws := make([]*safetensors.Writer, len(ks))
	for i, k := range ks {
		w, err := f.createClient(k, paths[k])
		if err != nil {
			return abortAll(ws, err)
		}
		ws[i] = w
	}
	if err := f.writeBlocks(ctx, ks, ws, progress); err != nil {
		return abortAll(ws, err)
	}
	for i, w := range ws {
		if err := w.Commit(); err != nil {
			ws[i] = nil
			return abortAll(ws, err)
		}
		ws[i] = nil
	}
	return nil
}

// abortAll aborts every writer of ws (nil: not created yet, or committed) and returns err.
func abortAll(ws []*safetensors.Writer, err error) error {
	for _, w := range ws {
		if w != nil {
			_ = w.Abort()
		}
	}
	return err
}

// createClient creates client k's file at path: the model's tensors in the client's dtype, and
// its num_examples metadata where set.
func (f *Federation) createClient(k int, path string) (*safetensors.Writer, error) {
	c := f.Clients[k]
	layout := make(tensor.Layout, len(f.Model.Fields))
	for t, fl := range f.Model.Fields {
		layout[t] = tensor.Field{Name: fl.Name, DType: c.DType, Shape: fl.Shape}
	}
	meta := map[string]string{"format": "pt"}
	if c.NumExamples > 0 {
		meta["num_examples"] = strconv.Itoa(c.NumExamples)
	}
	// Buffered, as a server receiving uploads writes them: the page cache then holds the
	// files in large folios, which is the state "already in the page cache" means (direct
	// I/O would leave them uncached, and a later read brings them back in small folios, 8x
	// slower to map).
	return safetensors.Create(path, layout, meta, safetensors.WithDirectIO(false))
}

// writeBlocks writes the values of clients ks into their writers ws, writeBlock parameters at a
// time: the block's shared base once, then each client's values from it.
func (f *Federation) writeBlocks(ctx context.Context, ks []int, ws []*safetensors.Writer, progress func(int64)) error {
	params := f.Model.Params()
	base := make([]float64, writeBlock)
	buf := make([]byte, 4*writeBlock)
	for lo := int64(0); lo < params; lo += writeBlock {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := int(min(writeBlock, params-lo))
		for i := range n {
			base[i] = f.base(lo + int64(i))
		}
		for i, k := range ks {
			b := f.encodeBlock(buf, k, lo, base[:n])
			if _, err := ws[i].WriteAt(b, lo*int64(f.Clients[k].DType.Size())); err != nil {
				return err
			}
			progress(int64(len(b)))
		}
	}
	return nil
}

// encodeBlock encodes client k's values of the block of parameters from lo, whose shared part
// is base, into buf and returns the bytes it filled.
func (f *Federation) encodeBlock(buf []byte, k int, lo int64, base []float64) []byte {
	dt := f.Clients[k].DType
	b := buf[:len(base)*dt.Size()]
	for e, v := range base {
		_ = encode(b, e, dt, float32(v+f.delta(k, lo+int64(e)))) // Write checked dt
	}
	return b
}
