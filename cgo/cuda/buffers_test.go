package cuda

import (
	"context"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/device/devicetest"
	"github.com/wattagg/wattagg/tensor"
)

// The GPU counts every device allocation and page-locked buffer it holds: the pipeline keeps one
// device and one page-locked buffer per stream plus a scratch pair, reused from job to job;
// residents, accumulators and page-locked memory handed out are counted until freed; Close frees
// everything, and the fake driver agrees that no device memory is left.
func TestBuffersAccounted(t *testing.T) {
	lib := fakeLibrary(t, fakeConfig{name: "fake-ledger", env: map[string]string{"FAKECUDA_SMS": "2"}})
	g, err := Open(0, WithLibraryPath(lib), WithSlabBytes(1<<20), WithStreams(3))
	skipNoCgo(t, err)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	free0, total0, err := g.memInfo()
	if err != nil {
		t.Fatal(err)
	}
	if free0 != total0 {
		t.Fatalf("a fresh fake has %d of %d bytes free", free0, total0)
	}

	r := rand.New(rand.NewPCG(80, 81))
	fields := []device.AccField{{Name: "a", Len: 70001, Acc: tensor.F32, Out: tensor.F32}, {Name: "b", Len: 77, Acc: tensor.F64, Out: tensor.BF16}}
	in := clients(r, fields, 5, tensor.F32, tensor.BF16)
	for range 2 {
		matchCPU(t, g, fields, in)
		rf := []device.AccField{{Name: "a", Len: 70001, Out: tensor.F32}, {Name: "b", Len: 77, Out: tensor.BF16}}
		chunks, err := device.CutChunks(rf, devicetest.Packed(rf), 64<<10)
		if err != nil {
			t.Fatal(err)
		}
		n := len(in)
		if _, err := g.Select(ctx, &device.SelectJob{Fields: rf, Inputs: in, Op: device.Median, Chunks: chunks,
			Output: devicetest.NewOutput(rf, chunks), SqDist: make([]float64, n), SqNorm: make([]float64, n)}); err != nil {
			t.Fatal(err)
		}
	}
	small := []device.AccField{{Name: "s", Len: 999, Out: tensor.F32}}
	if _, _, err := g.Gram(ctx, small, clients(r, small, 5, tensor.F32, tensor.I8)); err != nil {
		t.Fatal(err)
	}
	// The main lane: 3 streams' buffers and one scratch pair, whatever the number of jobs.
	c := g.buffers()
	if c.device[usePipeline].n != 4 || c.pinned[usePipeline].n != 4 || total(c.device).n != 4 || total(c.pinned).n != 4 {
		t.Fatalf("after 5 jobs the GPU holds %v, want 4 device and 4 page-locked pipeline buffers", c)
	}

	acc, err := g.NewAccumulator(fields)
	if err != nil {
		t.Fatal(err)
	}
	if err := acc.Add(ctx, in[0], 1); err != nil {
		t.Fatal(err)
	}
	res := uploadAll(t, g, fields, in[:2])
	pin, err := g.allocPinned(4096)
	if err != nil {
		t.Fatal(err)
	}
	c = g.buffers()
	if c.device[useResident].n != 3 || c.pinned[usePinned].n != 1 || c.pinned[usePinned].bytes != 4096 {
		t.Fatalf("with an accumulator, 2 residents and a page-locked buffer the GPU holds %v", c)
	}
	sum := acc.(*gpuAccumulator).sum.size + res[0].size + res[1].size
	if c.device[useResident].bytes != sum {
		t.Fatalf("residents counted as %d bytes, want %d", c.device[useResident].bytes, sum)
	}
	if err := acc.Close(); err != nil {
		t.Fatal(err)
	}
	if err := g.freePinned(pin); err != nil {
		t.Fatal(err)
	}
	if err := g.freePinned(pin); !errors.Is(err, device.ErrJob) {
		t.Fatalf("freeing page-locked memory twice: err = %v, want ErrJob", err)
	}
	if c := g.buffers(); c.device[useResident].n != 2 || c.pinned[usePinned].n != 0 {
		t.Fatalf("after freeing the accumulator and the page-locked buffer the GPU holds %v", c)
	}

	// Close frees what is still open (the two residents) with the pipeline.
	if _, err := g.allocPinned(1 << 20); err != nil {
		t.Fatal(err)
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if c := g.buffers(); total(c.device).n != 0 || total(c.pinned).n != 0 {
		t.Fatalf("after Close the GPU holds %v", c)
	}
	g2, err := Open(0, WithLibraryPath(lib))
	if err != nil {
		t.Fatal(err)
	}
	defer g2.Close()
	if free, total, err := g2.memInfo(); err != nil || free != total {
		t.Fatalf("the driver has %d of %d bytes free after Close (%v)", free, total, err)
	}
}
