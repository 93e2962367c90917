package robust

import (
	"testing"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/internal/tensortest"
	"github.com/wattagg/wattagg/tensor"
)

var names = tensortest.Names

// relTol is the relative error allowed for an output dtype: its rounding plus the f32
// accumulation over a few inputs.
var relTol = map[tensor.DType]float64{tensor.F32: 1e-6, tensor.F64: 1e-12, tensor.BF16: 1.0 / 128, tensor.F16: 1.0 / 1024, tensor.I8: 1.0 / 100}

func mustCPU(t *testing.T, workers int) device.Device {
	t.Helper()
	d, err := device.NewCPU(device.WithWorkers(workers))
	if err != nil {
		t.Fatal(err)
	}
	return d
}
