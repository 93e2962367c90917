package device_test

import (
	"errors"
	"slices"
	"testing"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/device/devicetest"
	"github.com/wattagg/wattagg/kernels"
)

// The CPU device is the reference every other device is compared with; it must pass the
// conformance tests itself, those of its capabilities (Robust, Optimizer, ModSummer) included,
// with every kernel implementation this CPU runs (the ...MatchesCPU checks then compare each
// implementation with the default one, bit for bit). Small blocks and several workers exercise
// the splitting of pieces into blocks and of chunks over goroutines (cpu_test.go checks that
// neither changes a bit).
func TestConformance(t *testing.T) {
	for _, k := range kernels.Impls() {
		t.Run(k.Name(), func(t *testing.T) {
			dev, err := device.NewCPU(device.WithWorkers(3), device.WithBlockElems(256), device.WithKernels(k.Name()))
			if err != nil {
				t.Fatal(err)
			}
			devicetest.All(t, dev)
		})
	}
}

func TestWithKernels(t *testing.T) {
	dev, err := device.NewCPU()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := dev.Info().Kernels, kernels.Default().Name(); got != want {
		t.Errorf("default CPU runs %q, want kernels.Default() %q", got, want)
	}
	for _, k := range kernels.Impls() {
		dev, err := device.NewCPU(device.WithKernels(k.Name()))
		if err != nil {
			t.Fatal(err)
		}
		info := dev.Info()
		if info.Kernels != k.Name() || !slices.Equal(info.Features, k.Features()) {
			t.Errorf("WithKernels(%q): Info says kernels %q, features %v; want %v", k.Name(), info.Kernels, info.Features, k.Features())
		}
	}
	for _, bad := range []string{"nope", ""} {
		if _, err := device.NewCPU(device.WithKernels(bad)); !errors.Is(err, kernels.ErrNoImpl) {
			t.Errorf("WithKernels(%q): %v, want an error wrapping kernels.ErrNoImpl", bad, err)
		}
	}
}
