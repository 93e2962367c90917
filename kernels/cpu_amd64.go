//go:build amd64 && !purego && !noasm && gc

package kernels

import "github.com/klauspost/cpuid/v2"

// asmBuild reports whether this build holds the assembly kernels.
const asmBuild = true

// hasAVX2 reports whether the CPU and OS run the avx2 tables: AVX2 for the integer widening
// and packing, FMA for the f64 accumulation, F16C for the binary16 conversions.
var hasAVX2 = cpuid.CPU.Supports(cpuid.AVX2, cpuid.FMA3, cpuid.F16C)
