package bench

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/wattagg/wattagg/tensor"
)

// encode stores v as element j of b in dtype dt (f32, bf16 or f16: what synthetic clients send).
func encode(b []byte, j int, dt tensor.DType, v float32) error {
	switch dt {
	case tensor.F32:
		binary.LittleEndian.PutUint32(b[4*j:], math.Float32bits(v))
	case tensor.BF16:
		binary.LittleEndian.PutUint16(b[2*j:], tensor.F32ToBF16(v))
	case tensor.F16:
		binary.LittleEndian.PutUint16(b[2*j:], tensor.F32ToF16(v))
	default:
		return fmt.Errorf("bench: synthetic clients are f32, bf16 or f16, not %s", dt)
	}
	return nil
}
