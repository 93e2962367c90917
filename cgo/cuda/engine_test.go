package cuda

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/device/devicetest"
	"github.com/wattagg/wattagg/tensor"
)

// Every region of a slot starts 16-byte aligned, whatever the sizes, and the regions do not
// overlap: the kernels read the parameter tables with 8-byte loads and the data with vector
// loads, which fault on a GPU when misaligned.
func TestRegionsAligned(t *testing.T) {
	for _, in := range []int64{0, 16, 48, 4096} {
		for _, scratch := range []int64{0, 4, 16, 1000} {
			for _, out := range []int64{0, 2, 6, 14, 16, 17, 4099} {
				for _, params := range []int64{0, 24 + 256, 24*7 + 256} {
					for _, stage := range []bool{false, true} {
						r := regions{in: in, scratch: scratch, out: out, params: params, stage: stage}
						for name, off := range map[string]int64{"device scratch": r.devScratch(), "device out": r.devOut(),
							"device params": r.devParams(), "host params": r.hostParams(), "host staging": r.hostStaging()} {
							if off%paramAlign != 0 {
								t.Fatalf("%+v: %s at %d", r, name, off)
							}
						}
						if r.devScratch() < in || r.devOut() < r.devScratch()+scratch || r.devParams() < r.devOut()+out ||
							r.devBytes() < r.devParams()+params {
							t.Fatalf("%+v: device regions overlap: %d %d %d %d", r, r.devScratch(), r.devOut(), r.devParams(), r.devBytes())
						}
						// The staging region's start is in the buffer even when nothing is staged
						// (enqueueSlab slices it): a fresh process's first job without staging
						// panicked when the parameter area ended short of it.
						host := r.hostStaging()
						if stage {
							host += in
						}
						if r.hostParams() < out || r.hostStaging() < r.hostParams()+params || r.hostBytes() < host {
							t.Fatalf("%+v: host regions overlap: %d %d %d", r, r.hostParams(), r.hostStaging(), r.hostBytes())
						}
					}
				}
			}
		}
	}
}

// oddChunks packs the fields' elements into chunks without any padding: pieces of up to 37
// elements, one after another, chunks of up to 100 bytes, so that pieces start at any byte (an
// f32 piece at byte 6, after 3 f16 elements) and the data end at any byte. (device.CutChunks
// aligns pieces to their elements; a job's chunks need not be.) The out region of a slab then
// ends at any byte, and so did the parameter tables that followed it before the regions were
// aligned.
func oddChunks(fields []device.AccField) []device.Chunk {
	var chunks []device.Chunk
	var off int64
	cur := device.Chunk{}
	for k, f := range fields {
		for lo := 0; lo < f.Len; lo += 37 {
			hi := min(lo+37, f.Len)
			n := (hi - lo) * f.Out.Size()
			if cur.Len > 0 && cur.Len+n > 100 {
				chunks = append(chunks, cur)
				off += int64(cur.Len)
				cur = device.Chunk{Off: off}
			}
			cur.Pieces = append(cur.Pieces, device.Piece{Field: k, Lo: lo, Hi: hi, Off: cur.Len})
			cur.Len += n
		}
	}
	return append(chunks, cur)
}

// The regression test of the parameter tables' alignment: jobs whose out regions end at odd
// bytes run on the fakes, whose kernels are built with -fsanitize=alignment and fail with
// CUDA_ERROR_MISALIGNED_ADDRESS on a misaligned load or store, as a GPU does. Before the regions
// were aligned, the first weighted sum failed so (acc.cu reading the input addresses).
func TestOddLayoutsAligned(t *testing.T) {
	r := rand.New(rand.NewPCG(70, 71))
	for _, d := range gpus(t, fakePlain, fakePipeline) {
		t.Run(d.name, func(t *testing.T) {
			fields := []device.AccField{
				{Name: "h", Len: 3, Acc: tensor.F32, Out: tensor.F16},
				{Name: "w", Len: 1001, Acc: tensor.F32, Out: tensor.F32},
				{Name: "b", Len: 5, Acc: tensor.F64, Out: tensor.BF16},
				{Name: "d", Len: 77, Acc: tensor.F64, Out: tensor.F64},
			}
			chunks := oddChunks(fields)
			in := clients(r, fields, 5, tensor.F32, tensor.BF16, tensor.I8)
			w := []float64{1, 0.5, 2, 3, 0.25}
			job := &device.SumJob{Fields: fields, Inputs: in, Weights: w, Scale: 0.125, Chunks: chunks}
			out, ref := devicetest.NewOutput(fields, chunks), devicetest.NewOutput(fields, chunks)
			job.Output = out
			if _, err := d.g.WeightedSum(context.Background(), job); err != nil {
				t.Fatalf("weighted sum: %v", err)
			}
			cpu, err := device.NewCPU()
			if err != nil {
				t.Fatal(err)
			}
			job.Output = ref
			if _, err := cpu.WeightedSum(context.Background(), job); err != nil {
				t.Fatal(err)
			}
			out.Check(t)
			for k, f := range fields {
				if !slices.Equal(out.Data(k), ref.Data(k)) {
					t.Fatalf("weighted sum: field %s differs from the CPU device's", f.Name)
				}
			}

			rf := slices.Clone(fields)
			for k := range rf {
				rf[k].Acc = tensor.F32
			}
			sin := clients(r, rf, 7, tensor.F32, tensor.F16, tensor.I8)
			sj := device.SelectJob{Fields: rf, Inputs: sin, Op: device.TrimmedMean, K: 2, Chunks: chunks,
				SqDist: make([]float64, 7), SqNorm: make([]float64, 7)}
			want := cpuSelect(t, sj)
			got := devicetest.NewOutput(rf, chunks)
			sj.Output = got
			if _, err := d.g.Select(context.Background(), &sj); err != nil {
				t.Fatalf("select: %v", err)
			}
			got.Check(t)
			for k, f := range rf {
				if !slices.Equal(got.Data(k), want.Data(k)) {
					t.Fatalf("select: field %s differs from the CPU device's", f.Name)
				}
			}
		})
	}
}

// fakeOneSlab runs jobs in slabs of the real GPU's default size (64 MiB), where a test's job
// fits one slab: the engine never reaches the check between slabs.
var fakeOneSlab = fakeConfig{name: "fake-slab64", env: map[string]string{"FAKECUDA_SMS": "2"},
	opts: []Option{WithSlabBytes(64 << 20)}}

// A job cancelled while its only slab runs returns ctx.Err(), as the CPU device does, not nil;
// the GPU is ready for the next job.
func TestCancelWithinOneSlab(t *testing.T) {
	r := rand.New(rand.NewPCG(72, 73))
	for _, d := range gpus(t, fakeOneSlab) {
		t.Run(d.name, func(t *testing.T) {
			fields := []device.AccField{{Name: "w", Len: 1 << 16, Acc: tensor.F32, Out: tensor.F32}}
			in := clients(r, fields, 3, tensor.F32)
			chunks, err := device.CutChunks(fields, []int64{0}, 16<<10)
			if err != nil {
				t.Fatal(err)
			}
			for name, run := range map[string]func(ctx context.Context, cancel func()) error{
				"weighted sum": func(ctx context.Context, cancel func()) error {
					_, err := d.g.WeightedSum(ctx, &device.SumJob{Fields: fields, Inputs: in, Weights: []float64{1, 2, 3}, Scale: 1,
						Chunks: chunks, Output: devicetest.NewOutput(fields, chunks), Progress: func(int64) { cancel() }})
					return err
				},
				"median": func(ctx context.Context, cancel func()) error {
					_, err := d.g.Select(ctx, &device.SelectJob{Fields: fields, Inputs: in, Op: device.Median, Chunks: chunks,
						Output: devicetest.NewOutput(fields, chunks), Progress: func(int64) { cancel() }})
					return err
				},
				"accumulator emit": func(ctx context.Context, cancel func()) error {
					acc, err := d.g.NewAccumulator(fields)
					if err != nil {
						t.Fatal(err)
					}
					defer acc.Close()
					if err := acc.Add(ctx, in[0], 1); err != nil {
						t.Fatal(err)
					}
					out := onDone{devicetest.NewOutput(fields, chunks), func(int) error { cancel(); return nil }}
					_, err = acc.Emit(ctx, 1, chunks, out)
					return err
				},
			} {
				ctx, cancel := context.WithCancel(context.Background())
				err := run(ctx, cancel)
				cancel()
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("%s cancelled in its only slab: err = %v, want context.Canceled", name, err)
				}
			}
			matchCPU(t, d.g, fields, in)
		})
	}
}
