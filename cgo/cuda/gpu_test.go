package cuda

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/device/devicetest"
	"github.com/wattagg/wattagg/tensor"
)

func TestDiscoverWithoutDriver(t *testing.T) {
	_, err := Discover(WithLibraryPath("/nonexistent/libcuda.so.1"))
	if errors.Is(err, ErrNoCgo) {
		if !strings.Contains(err.Error(), "built without cgo") {
			t.Fatalf("err = %v", err)
		}
		return
	}
	if !errors.Is(err, ErrNoDriver) || !strings.Contains(err.Error(), "/nonexistent/libcuda.so.1 not found: no NVIDIA driver") {
		t.Fatalf("err = %v, want ErrNoDriver naming the library", err)
	}
	if _, err := Open(0, WithLibraryPath("/nonexistent/libcuda.so.1")); !errors.Is(err, ErrNoDriver) {
		t.Fatalf("Open: err = %v, want ErrNoDriver", err)
	}
}

func TestDiscoverNoDevice(t *testing.T) {
	lib := fakeLibrary(t, fakeConfig{name: "fake-nodevice", env: map[string]string{"FAKECUDA_DEVICES": "0"}})
	_, err := Discover(WithLibraryPath(lib))
	if !errors.Is(err, ErrNoDevice) || !strings.HasPrefix(err.Error(), "cuInit: CUDA_ERROR_NO_DEVICE") {
		t.Fatalf("err = %v, want cuInit: CUDA_ERROR_NO_DEVICE", err)
	}
	if _, err := Open(0, WithLibraryPath(lib)); !errors.Is(err, ErrNoDevice) {
		t.Fatalf("Open: err = %v, want ErrNoDevice", err)
	}
}

func TestDiscoverFake(t *testing.T) {
	lib := fakeLibrary(t, fakeConfig{name: "fake-two", env: map[string]string{"FAKECUDA_DEVICES": "2", "FAKECUDA_CC": "80"}})
	infos, err := Discover(WithLibraryPath(lib))
	skipNoCgo(t, err)
	if err != nil || len(infos) != 2 {
		t.Fatalf("Discover = %v, %v; want two devices", infos, err)
	}
	i := infos[1]
	if i.Name != "cuda:1" || i.Kind != "gpu" || i.Model != "wattagg fake GPU (CPU simulation)" || i.MemBytes != 1<<30 ||
		i.Kernels != "ptx compute_80" || !slices.Contains(i.Features, "sm_80") || !strings.Contains(strings.Join(i.Notes, "; "), "CUDA driver 12.4") {
		t.Fatalf("info = %+v", i)
	}
	if _, err := Open(2, WithLibraryPath(lib)); !errors.Is(err, ErrNoDevice) {
		t.Fatalf("Open(2): err = %v, want ErrNoDevice", err)
	}
}

func TestOpenRefusesOldGPU(t *testing.T) {
	lib := fakeLibrary(t, fakeConfig{name: "fake-turing", env: map[string]string{"FAKECUDA_CC": "75"}})
	infos, err := Discover(WithLibraryPath(lib))
	skipNoCgo(t, err)
	if err != nil || len(infos) != 1 || infos[0].Kernels != "none" || !strings.Contains(strings.Join(infos[0].Notes, "; "), "compute capability 7.5") {
		t.Fatalf("Discover = %+v, %v", infos, err)
	}
	_, err = Open(0, WithLibraryPath(lib))
	if !errors.Is(err, device.ErrUnsupported) || !strings.Contains(err.Error(), "need 8.0 or newer") {
		t.Fatalf("Open: err = %v, want ErrUnsupported", err)
	}
}

// The package registers the "cuda" backend: device.Discover lists it with devices or a reason.
func TestRegisteredBackend(t *testing.T) {
	for _, f := range device.Discover() {
		if f.Kind == "cuda" {
			if len(f.Devices) == 0 && f.Reason == "" {
				t.Fatalf("cuda backend: no devices and no reason")
			}
			t.Logf("cuda: %d devices; %s", len(f.Devices), f.Reason)
			if _, err := device.Open("cuda:99"); err == nil {
				t.Fatal("device.Open(cuda:99) succeeded")
			}
			return
		}
	}
	t.Fatal("no cuda backend registered")
}

func TestOptionsRejectBadValues(t *testing.T) {
	for _, o := range []Option{WithLibraryPath(""), WithStreams(1), WithStreams(17), WithSlabBytes(1000), WithStagingWorkers(0)} {
		if _, err := Discover(o); err == nil || errors.Is(err, ErrNoDriver) || errors.Is(err, ErrNoCgo) {
			t.Errorf("bad option: err = %v, want a validation error", err)
		}
	}
}

// The conformance tests of every device, on every GPU.
func TestConformance(t *testing.T) {
	for _, d := range gpus(t, fakePlain, fakePipeline) {
		t.Run(d.name, func(t *testing.T) { devicetest.All(t, d.g) })
	}
}

// Closing frees every buffer: the free memory returns to what it was, and a closed device or
// buffer refuses work.
func TestCloseReleasesMemory(t *testing.T) {
	lib := fakeLibrary(t, fakePlain)
	g, err := Open(0, WithLibraryPath(lib))
	skipNoCgo(t, err)
	if err != nil {
		t.Fatal(err)
	}
	free0, _, err := g.memInfo()
	if err != nil {
		t.Fatal(err)
	}
	r, err := g.newResident([]residentField{{Name: "x", DType: tensor.F32, Shape: []int{1000}}})
	if err != nil {
		t.Fatal(err)
	}
	pin, err := g.allocPinned(4096)
	if err != nil {
		t.Fatal(err)
	}
	if free, _, _ := g.memInfo(); free >= free0 {
		t.Fatalf("free memory %d after allocating, was %d", free, free0)
	}
	if err := r.free(); err != nil {
		t.Fatal(err)
	}
	if err := g.freePinned(pin); err != nil {
		t.Fatal(err)
	}
	if free, _, _ := g.memInfo(); free != free0 {
		t.Fatalf("free memory %d after Close, was %d", free, free0)
	}
	r2, _ := g.newResident([]residentField{{Name: "x", DType: tensor.F32, Shape: []int{10}}})
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := r2.download(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Download after Close: err = %v, want ErrClosed", err)
	}
	if _, err := g.newResident(nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("newResident after Close: err = %v, want ErrClosed", err)
	}
	if err := g.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// Jobs are sized to the free device memory: slabs shrink until the pipeline fits, and what
// cannot fit at all is an ErrOutOfMemory error before anything runs.
func TestMemoryLimits(t *testing.T) {
	lib := fakeLibrary(t, fakeConfig{name: "fake-small", env: map[string]string{"FAKECUDA_MEM_MIB": "96"}})
	g, err := openShared("fake-small", func() (*GPU, error) { return Open(0, WithLibraryPath(lib)) })
	skipNoCgo(t, err)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.newResident([]residentField{{Name: "big", DType: tensor.F32, Shape: []int{10 << 20}}}); !errors.Is(err, ErrOutOfMemory) {
		t.Fatalf("40 MiB resident on a 32 MiB budget: err = %v, want ErrOutOfMemory", err)
	}
	r := rand.New(rand.NewPCG(40, 41))
	fields := []device.AccField{{Name: "w", Len: 1 << 20, Acc: tensor.F32, Out: tensor.F32}}
	in := clients(r, fields, 8, tensor.F32) // 32 MiB of inputs: only small slabs fit
	matchCPU(t, g, fields, in)

	chunks := must(device.CutChunks(fields, []int64{0}, 4<<20))(t) // one chunk of every input: 36 MiB a stage
	_, err = g.WeightedSum(context.Background(), &device.SumJob{Fields: fields, Inputs: in, Weights: make([]float64, 8), Scale: 1,
		Chunks: chunks, Output: devicetest.NewOutput(fields, chunks)})
	if !errors.Is(err, ErrOutOfMemory) || !strings.Contains(err.Error(), "MiB free") {
		t.Fatalf("a chunk larger than the GPU: err = %v, want ErrOutOfMemory", err)
	}
}

// Cancelling a job in flight stops it with ctx.Err() and leaves the GPU ready for the next.
func TestCancelInFlight(t *testing.T) {
	r := rand.New(rand.NewPCG(42, 43))
	for _, d := range gpus(t, fakePipeline) {
		t.Run(d.name, func(t *testing.T) {
			fields := []device.AccField{{Name: "w", Len: 1 << 20, Acc: tensor.F32, Out: tensor.F32}}
			in := clients(r, fields, 3, tensor.F32)
			chunks := must(device.CutChunks(fields, []int64{0}, 16<<10))(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			out := devicetest.NewOutput(fields, chunks)
			_, err := d.g.WeightedSum(ctx, &device.SumJob{Fields: fields, Inputs: in, Weights: []float64{1, 2, 3}, Scale: 1,
				Chunks: chunks, Output: out, Progress: func(int64) { cancel() }})
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("err = %v, want context.Canceled", err)
			}
			matchCPU(t, d.g, fields, in)
		})
	}
}
