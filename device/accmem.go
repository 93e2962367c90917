package device

import (
	"unsafe"

	"github.com/wattagg/wattagg/tensor"
)

// Accumulator memory comes from tensor.SharedPool: a streaming round's running sum is
// model-sized and new each round, and fresh pages are the dearest memory on the development
// VMs (1.4-2.3 GB/s to fault in, against 35 GB/s to clear pages already touched). Pooled, a
// server's next round reuses the last one's pages, and the first round's are pre-faulted on all
// cores instead of one fault at a time by the first Add.

// accF32 returns n zeroed float32s from the pool.
func accF32(n int) []float32 {
	b := tensor.SharedPool.Allocate(4 * n)
	if n == 0 {
		return nil
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(unsafe.SliceData(b))), n)
}

// accF64 returns n zeroed float64s from the pool.
func accF64(n int) []float64 {
	b := tensor.SharedPool.Allocate(8 * n)
	if n == 0 {
		return nil
	}
	return unsafe.Slice((*float64)(unsafe.Pointer(unsafe.SliceData(b))), n)
}

// freeAcc gives an accF32 or accF64 buffer back, or a view of one (nil is ignored).
func freeAcc[T float32 | float64 | uint32 | int64](v []T) {
	if len(v) == 0 {
		return
	}
	var zero T
	tensor.SharedPool.Free(unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(v))), len(v)*int(unsafe.Sizeof(zero))))
}
