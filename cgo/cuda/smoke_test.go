package cuda

import (
	"context"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/device/devicetest"
	"github.com/wattagg/wattagg/tensor"
)

// TestSmoke is the first step of the GPU check (gpu-check.sh), seconds long: open the first GPU,
// print what it is, run one small weighted sum and compare it with the CPU device's bits. When
// it fails, nothing else is worth running. Without a real GPU it runs on the plain fake (and
// fails under WATTAGG_REQUIRE_GPU=1).
func TestSmoke(t *testing.T) {
	start := time.Now()
	var g *GPU
	if infos, err := Discover(); err == nil {
		g, err = openShared(infos[0].Name, func() (*GPU, error) { return Open(0) })
		if err != nil {
			t.Fatalf("%s: %v", infos[0].Name, err)
		}
	} else if requireGPU() {
		t.Fatalf("WATTAGG_REQUIRE_GPU=1, but there is no GPU: %v", err)
	} else {
		t.Logf("no real GPU (%v): the plain fake", err)
		if g = tryFake(t, fakePlain); g == nil {
			skipUnlessRequired(t, requireFakes(), "no GPU and no fake GPU")
		}
	}
	opened := time.Since(start)
	info := g.Info()
	t.Logf("smoke: %s: %s, %s, %.1f GiB; kernels %s; %s (opened in %.2fs: driver, context, PTX JIT)", info.Name, info.Model,
		strings.Join(info.Features, ", "), float64(info.MemBytes)/(1<<30), info.Kernels, strings.Join(info.Notes, "; "), opened.Seconds())

	r := rand.New(rand.NewPCG(90, 91))
	fields := []device.AccField{{Name: "w", Len: 4099, Acc: tensor.F32, Out: tensor.F32}, {Name: "b", Len: 33, Acc: tensor.F64, Out: tensor.BF16}}
	in := clients(r, fields, 3, tensor.F32, tensor.BF16, tensor.I8)
	chunks, err := device.CutChunks(fields, devicetest.Packed(fields), 8<<10)
	if err != nil {
		t.Fatal(err)
	}
	job := &device.SumJob{Fields: fields, Inputs: in, Weights: []float64{1, 2, 3}, Scale: 1.0 / 6, Chunks: chunks}
	got, want := devicetest.NewOutput(fields, chunks), devicetest.NewOutput(fields, chunks)
	job.Output = got
	t0 := time.Now()
	stats, err := g.WeightedSum(context.Background(), job)
	if err != nil {
		t.Fatalf("weighted sum on %s: %v", g.Name(), err)
	}
	took := time.Since(t0)
	cpu, err := device.NewCPU(device.WithWorkers(1))
	if err != nil {
		t.Fatal(err)
	}
	job.Output = want
	if _, err := cpu.WeightedSum(context.Background(), job); err != nil {
		t.Fatal(err)
	}
	got.Check(t)
	for k, f := range fields {
		if !slices.Equal(got.Data(k), want.Data(k)) {
			t.Fatalf("weighted sum on %s: field %s differs from the CPU device's bits", g.Name(), f.Name)
		}
	}
	t.Logf("smoke: weighted sum of 3 × %d elements on %s in %.2f ms, bit-identical to the CPU device", stats.Elements, g.Name(), 1e3*took.Seconds())
}
