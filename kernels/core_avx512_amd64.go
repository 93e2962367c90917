//go:build amd64 && !purego && !noasm && gc

package kernels

// coreAVX512 is the AVX-512 table: the assembly of kernels_amd64.s's AVX512 functions (generated
// by kernels/_gen, avx512.go) behind the wrappers of the avx2 table, whose contracts it shares.
// The f64 reductions run the avx2 assembly: their 16 partial sums are 16 serial chains of
// fused multiply-adds that four ymm registers already keep busy.
var coreAVX512 = coreKernels{
	name: "avx512",

	accF32FromF32:  func(acc, w []float32, x [][]byte) { accF32Asm(acc, w, x, 4, ldF32, accF32FromF32AVX512) },
	accF32FromBF16: func(acc, w []float32, x [][]byte) { accF32Asm(acc, w, x, 2, ldBF16, accF32FromBF16AVX512) },
	accF32FromF16:  func(acc, w []float32, x [][]byte) { accF32Asm(acc, w, x, 2, ldF16, accF32FromF16AVX512) },
	accF32FromI8:   func(acc, w []float32, x [][]byte) { accF32Asm(acc, w, x, 1, ldI8, accF32FromI8AVX512) },
	accF64FromF32:  func(acc, w []float64, x [][]byte) { accF64Asm(acc, w, x, 4, ldF32, accF64FromF32AVX512) },
	accF64FromBF16: func(acc, w []float64, x [][]byte) { accF64Asm(acc, w, x, 2, ldBF16, accF64FromBF16AVX512) },
	accF64FromF16:  func(acc, w []float64, x [][]byte) { accF64Asm(acc, w, x, 2, ldF16, accF64FromF16AVX512) },
	accF64FromI8:   func(acc, w []float64, x [][]byte) { accF64Asm(acc, w, x, 1, ldI8, accF64FromI8AVX512) },
	accF64FromF64:  func(acc, w []float64, x [][]byte) { accF64Asm(acc, w, x, 8, nil, accF64FromF64AVX512) },

	storeF32FromF32: func(dst []byte, src []float32, s float32) {
		storeAsm(dst, src, s, 4, storeF32Generic, storeF32FromF32AVX512)
	},
	storeBF16FromF32: func(dst []byte, src []float32, s float32) {
		storeAsm(dst, src, s, 2, storeBF16FromF32Generic, storeBF16FromF32AVX512)
	},
	storeF16FromF32: func(dst []byte, src []float32, s float32) {
		storeAsm(dst, src, s, 2, storeF16FromF32Generic, storeF16FromF32AVX512)
	},
	storeF64FromF64: func(dst []byte, src []float64, s float64) {
		storeAsm(dst, src, s, 8, storeF64Generic, storeF64FromF64AVX512)
	},
	storeF32FromF64: func(dst []byte, src []float64, s float64) {
		storeAsm(dst, src, s, 4, storeF32FromF64Generic, storeF32FromF64AVX512)
	},
	storeBF16FromF64: func(dst []byte, src []float64, s float64) {
		storeAsm(dst, src, s, 2, storeBF16FromF64Generic, storeBF16FromF64AVX512)
	},
	storeF16FromF64: func(dst []byte, src []float64, s float64) {
		storeAsm(dst, src, s, 2, storeF16FromF64Generic, storeF16FromF64AVX512)
	},

	sumSquaresF32:  coreAVX2.sumSquaresF32,
	sumSquaresBF16: coreAVX2.sumSquaresBF16,
	sumSquaresF16:  coreAVX2.sumSquaresF16,

	anyNonFiniteF32: func(x []byte) bool {
		return anyNonFiniteAsm(x, anyNonFiniteF32Generic, anyNonFiniteF32AVX512)
	},
	anyNonFiniteF64: func(x []byte) bool {
		return anyNonFiniteAsm(x, anyNonFiniteF64Generic, anyNonFiniteF64AVX512)
	},
	anyNonFiniteF16: func(x []byte) bool {
		return anyNonFiniteAsm(x, coreGeneric.anyNonFiniteF16, anyNonFiniteF16AVX512)
	},
	anyNonFiniteBF16: func(x []byte) bool {
		return anyNonFiniteAsm(x, coreGeneric.anyNonFiniteBF16, anyNonFiniteBF16AVX512)
	},

	xorFold: func(x []byte) uint64 { return xorFoldAsm(x, xorFoldAVX512) },
}

var _ = register(coreFamily, "avx512", hasAVX512, &coreAVX512)
