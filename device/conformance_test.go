package device_test

import (
	"testing"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/device/devicetest"
)

// The CPU device is the reference every other device is compared with; it must pass the
// conformance tests itself, those of its capabilities (Robust, Optimizer, ModSummer) included.
// Small blocks and several workers exercise the splitting of pieces into blocks and of chunks
// over goroutines (cpu_test.go checks that neither changes a bit).
func TestConformance(t *testing.T) {
	dev, err := device.NewCPU(device.WithWorkers(3), device.WithBlockElems(256))
	if err != nil {
		t.Fatal(err)
	}
	devicetest.All(t, dev)
}
