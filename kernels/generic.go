package kernels

import (
	"encoding/binary"
	"math"
	"unsafe"

	"github.com/wattagg/wattagg/internal/half"
)

// The pure-Go reference of every kernel. It is always compiled: it is the implementation under
// the purego and noasm tags and on other architectures, the tail handler of the assembly, and
// the oracle of the differential tests. Each loop here is the contract of its kernel: the
// assembly performs the same operations, in the same order per element, with the same roundings.

func ldF32(b []byte, j int) float32  { return math.Float32frombits(binary.LittleEndian.Uint32(b[4*j:])) }
func ldF64(b []byte, j int) float64  { return math.Float64frombits(binary.LittleEndian.Uint64(b[8*j:])) }
func ldBF16(b []byte, j int) float32 { return half.BF16ToF32(binary.LittleEndian.Uint16(b[2*j:])) }
func ldF16(b []byte, j int) float32  { return half.F16ToF32(binary.LittleEndian.Uint16(b[2*j:])) }
func ldI8(b []byte, j int) float32   { return float32(int8(b[j])) }

func accF32Generic(acc []float32, w []float32, x [][]byte, ld func([]byte, int) float32, from int) {
	for i, xi := range x {
		wi := w[i]
		for j := from; j < len(acc); j++ {
			acc[j] += float32(wi * ld(xi, j))
		}
	}
}

func accF64Generic(acc []float64, w []float64, x [][]byte, ld func([]byte, int) float32, from int) {
	for i, xi := range x {
		wi := w[i]
		for j := from; j < len(acc); j++ {
			acc[j] = math.FMA(wi, float64(ld(xi, j)), acc[j])
		}
	}
}

func accF64FromF64Generic(acc []float64, w []float64, x [][]byte, from int) {
	for i, xi := range x {
		wi := w[i]
		for j := from; j < len(acc); j++ {
			acc[j] = math.FMA(wi, ldF64(xi, j), acc[j])
		}
	}
}

func storeF32Generic(dst []byte, src []float32, s float32, from int) {
	for j := from; j < len(src); j++ {
		binary.LittleEndian.PutUint32(dst[4*j:], math.Float32bits(src[j]*s))
	}
}

func storeBF16FromF32Generic(dst []byte, src []float32, s float32, from int) {
	for j := from; j < len(src); j++ {
		binary.LittleEndian.PutUint16(dst[2*j:], half.F32ToBF16(src[j]*s))
	}
}

func storeF16FromF32Generic(dst []byte, src []float32, s float32, from int) {
	for j := from; j < len(src); j++ {
		binary.LittleEndian.PutUint16(dst[2*j:], half.F32ToF16(src[j]*s))
	}
}

func storeF64Generic(dst []byte, src []float64, s float64, from int) {
	for j := from; j < len(src); j++ {
		binary.LittleEndian.PutUint64(dst[8*j:], math.Float64bits(src[j]*s))
	}
}

func storeF32FromF64Generic(dst []byte, src []float64, s float64, from int) {
	for j := from; j < len(src); j++ {
		binary.LittleEndian.PutUint32(dst[4*j:], math.Float32bits(float32(src[j]*s)))
	}
}

func storeBF16FromF64Generic(dst []byte, src []float64, s float64, from int) {
	for j := from; j < len(src); j++ {
		binary.LittleEndian.PutUint16(dst[2*j:], half.F32ToBF16(float32(src[j]*s)))
	}
}

func storeF16FromF64Generic(dst []byte, src []float64, s float64, from int) {
	for j := from; j < len(src); j++ {
		binary.LittleEndian.PutUint16(dst[2*j:], half.F32ToF16(float32(src[j]*s)))
	}
}

// Lanes is the number of partial sums of the f64 reductions (SumSquares): element j is
// accumulated into partial j%Lanes, and the partials are combined by reducePartials. The order is
// fixed so that results are identical run to run, implementation to implementation.
const Lanes = 16

func sumSquaresGeneric(p *[Lanes]float64, x []byte, ld func([]byte, int) float32, from, n int) {
	for j := from; j < n; j++ {
		v := float64(ld(x, j))
		p[j%Lanes] = math.FMA(v, v, p[j%Lanes])
	}
}

// reducePartials combines the partial sums pairwise: halves are added lane by lane until one is
// left.
func reducePartials(p *[Lanes]float64) float64 {
	for h := Lanes / 2; h >= 1; h /= 2 {
		for k := 0; k < h; k++ {
			p[k] += p[k+h]
		}
	}
	return p[0]
}

// An element is NaN or ±Inf when all the bits of its exponent field (mask) are set.

func anyNonFinite16Generic(x []byte, mask uint16) bool {
	for j := 0; j+2 <= len(x); j += 2 {
		if binary.LittleEndian.Uint16(x[j:])&mask == mask {
			return true
		}
	}
	return false
}

func anyNonFiniteF32Generic(x []byte) bool {
	for j := 0; j+4 <= len(x); j += 4 {
		if binary.LittleEndian.Uint32(x[j:])&0x7f800000 == 0x7f800000 {
			return true
		}
	}
	return false
}

func anyNonFiniteF64Generic(x []byte) bool {
	for j := 0; j+8 <= len(x); j += 8 {
		if binary.LittleEndian.Uint64(x[j:])&0x7ff0000000000000 == 0x7ff0000000000000 {
			return true
		}
	}
	return false
}

func xorFoldGeneric(x []byte) uint64 {
	var r uint64
	for j := 0; j+8 <= len(x); j += 8 {
		r ^= binary.LittleEndian.Uint64(x[j:])
	}
	return r
}

// f32Bytes is the memory of x as bytes.
func f32Bytes(x []float32) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(x))), 4*len(x))
}
