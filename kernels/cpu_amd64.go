//go:build amd64 && !purego && !noasm && gc

package kernels

import "github.com/klauspost/cpuid/v2"

// asmBuild reports whether this build holds the assembly kernels.
const asmBuild = true

// hasAVX2 reports whether the CPU and OS run the avx2 tables: AVX2 for the integer widening
// and packing, FMA for the f64 accumulation, F16C for the binary16 conversions.
var hasAVX2 = cpuid.CPU.Supports(cpuid.AVX2, cpuid.FMA3, cpuid.F16C)

// hasAVX512 reports whether the CPU and OS run the avx512 tables: AVX-512 F, BW (16-bit lanes
// and their compares), VL (EVEX ymm operations, for the 8-element steps) and DQ, and the avx2
// features, whose kernels the avx512 tables reuse where they have none of their own.
var hasAVX512 = hasAVX2 && cpuid.CPU.Supports(cpuid.AVX512F, cpuid.AVX512BW, cpuid.AVX512VL, cpuid.AVX512DQ)
