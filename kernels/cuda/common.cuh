// common.cuh: what every wattagg kernel shares: integer types, dtype codes (the numbers of
// tensor.DType), exact 16-bit float conversions and element loads by dtype.
//
// The sources compile two ways: with nvcc to PTX (`make ptx`), and as host C++ under the CUDA
// simulator of cgo/cuda/testdata/fakecuda (sim.h defines WA_SIM), which is how the kernels are
// executed by tests on machines without a GPU. Only what sim.h provides may be used: no warp
// intrinsics but wa_dmma_2x4, static shared memory or WA_DYN_SHARED, no library headers.
#pragma once

#ifndef WA_SIM
#define WA_ENTRY extern "C" __global__
#define WA_DYN_SHARED(T, name) extern __shared__ T name[]

// wa_dmma is one f64 matrix multiply-add of a warp on the tensor cores (compute capability 8.0
// and newer): D = A·B + D with A 8×4, B 4×8 and D 8×8, each lane l holding A[l/4][l%4] in a,
// B[l%4][l/4] in b, and D[l/4][2(l%4)] and D[l/4][2(l%4)+1] in d0 and d1. Every product is exact
// and every sum rounded in f64. Every lane of the warp must call it together.
__device__ __forceinline__ void wa_dmma(double &d0, double &d1, double a, double b) {
	asm("mma.sync.aligned.m8n8k4.row.col.f64.f64.f64.f64 {%0,%1}, {%2}, {%3}, {%0,%1};"
	    : "+d"(d0), "+d"(d1)
	    : "d"(a), "d"(b));
}

// wa_dmma_2x4 is a warp's 2×4 blocks of 8×8: D[i][k] += A_i·B_k (i < 2, k < 4) with wa_dmma's
// fragments (a[i] of A_i, b[k] of B_k, d[i][k][0..1] of D[i][k]). sim.h has a version for the
// simulator, which needs every thread of the block to call it together.
__device__ __forceinline__ void wa_dmma_2x4(double d[2][4][2], const double a[2], const double b[4]) {
#pragma unroll
	for (int k = 0; k < 4; k++) {
		wa_dmma(d[0][k][0], d[0][k][1], a[0], b[k]);
		wa_dmma(d[1][k][0], d[1][k][1], a[1], b[k]);
	}
}
#endif

typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned short u16;

// Element types: the values of tensor.DType.
enum { DT_F32 = 1, DT_F64 = 2, DT_F16 = 3, DT_BF16 = 4, DT_I8 = 5, DT_U32 = 6 };

// Threads per block of every kernel unless its comment says otherwise.
#define WA_THREADS 256

__device__ __forceinline__ u64 wa_gid() { return (u64)blockIdx.x * blockDim.x + threadIdx.x; }

__device__ __forceinline__ float wa_bf16_to_f32(u32 h) { return __uint_as_float((h & 0xffffu) << 16); }

// wa_f16_to_f32 widens binary16 exactly (subnormals included), as half.F16ToF32.
__device__ __forceinline__ float wa_f16_to_f32(u32 h) {
#ifdef __CUDA_ARCH__
	float f;
	unsigned short s = (unsigned short)h;
	asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(s));
	return f;
#else
	u32 sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
	if (exp == 0) {
		float f = (float)man * (1.0f / 16777216.0f);
		return __uint_as_float(__float_as_uint(f) | sign);
	}
	if (exp == 0x1f) return __uint_as_float(sign | 0x7f800000u | man << 13);
	return __uint_as_float(sign | (exp + 112) << 23 | man << 13);
#endif
}

// wa_f32_to_f16 rounds to nearest even exactly as half.F32ToF16 (NaN payloads included), so
// that GPU outputs are bit-identical to the CPU's.
__device__ __forceinline__ u16 wa_f32_to_f16(float f) {
	u32 b = __float_as_uint(f);
	u32 sign = (b >> 16) & 0x8000u;
	b &= 0x7fffffffu;
	if (b > 0x7f800000u) return (u16)(sign | 0x7e00u | ((b >> 13) & 0x3ffu));
	if (b >= 0x477ff000u) return (u16)(sign | 0x7c00u);
	if (b >= 0x38800000u) {
		u32 r = b - (112u << 23);
		r += 0xfffu + ((r >> 13) & 1u);
		return (u16)(sign | (r >> 13));
	}
	if (b >= 0x33000000u) {
		u32 e = b >> 23, m = (b & 0x7fffffu) | 0x800000u, s = 126 - e;
		u32 k = m >> s, rem = m & ((1u << s) - 1), half = 1u << (s - 1);
		if (rem > half || (rem == half && (k & 1u))) k++;
		return (u16)(sign | k);
	}
	return (u16)sign;
}

// wa_f32_to_bf16 rounds to nearest even as half.F32ToBF16 (NaN quieted, payload kept).
__device__ __forceinline__ u16 wa_f32_to_bf16(float f) {
	u32 b = __float_as_uint(f);
	if ((b & 0x7fffffffu) > 0x7f800000u) return (u16)((b >> 16) | 0x40u);
	b += 0x7fffu + ((b >> 16) & 1u);
	return (u16)(b >> 16);
}

// wa_ld returns element j of x (dtype dt) as a double, exactly as device.Span.Value decodes
// it: I8 elements are scale·q (exact in f64), the float types are widened.
__device__ __forceinline__ double wa_ld(const void *x, int dt, float scale, u64 j) {
	switch (dt) {
	case DT_F32: return (double)((const float *)x)[j];
	case DT_F64: return ((const double *)x)[j];
	case DT_F16: return (double)wa_f16_to_f32(((const u16 *)x)[j]);
	case DT_BF16: return (double)wa_bf16_to_f32(((const u16 *)x)[j]);
	case DT_I8: return (double)scale * (double)((const signed char *)x)[j];
	}
	return 0;
}

// wa_ld32 returns element j of x (dtype f32, f16, bf16 or i8) widened to f32 as the CPU's
// robust operations widen it (device.Robust): f32 as is, the others as +0 + float32(w·x) with
// w = 1 or the I8 scale, the product and the sum rounded (the accumulation kernels with one
// input). So an I8 value is float32(scale·q), and a negative zero of a 16-bit input becomes +0.
__device__ __forceinline__ float wa_ld32(const void *x, int dt, float scale, u64 j) {
	switch (dt) {
	case DT_F32: return ((const float *)x)[j];
	case DT_F16: return __fadd_rn(0.0f, wa_f16_to_f32(((const u16 *)x)[j]));
	case DT_BF16: return __fadd_rn(0.0f, wa_bf16_to_f32(((const u16 *)x)[j]));
	case DT_I8: return __fadd_rn(0.0f, __fmul_rn(scale, (float)((const signed char *)x)[j]));
	}
	return 0.0f;
}

// wa_st_f64 writes v as element j of y (dtype dt): f64 as is, f32 rounded once, f16 and bf16
// through f32 as the CPU's Store*FromF64 kernels do.
__device__ __forceinline__ void wa_st_f64(void *y, int dt, u64 j, double v) {
	switch (dt) {
	case DT_F64: ((double *)y)[j] = v; break;
	case DT_F32: ((float *)y)[j] = __double2float_rn(v); break;
	case DT_F16: ((u16 *)y)[j] = wa_f32_to_f16(__double2float_rn(v)); break;
	case DT_BF16: ((u16 *)y)[j] = wa_f32_to_bf16(__double2float_rn(v)); break;
	}
}

// wa_nonfinite reports whether element j of x is NaN or ±Inf (all exponent bits set).
__device__ __forceinline__ bool wa_nonfinite(const void *x, int dt, u64 j) {
	switch (dt) {
	case DT_F32: return (((const u32 *)x)[j] & 0x7f800000u) == 0x7f800000u;
	case DT_F64: return (((const u64 *)x)[j] & 0x7ff0000000000000ull) == 0x7ff0000000000000ull;
	case DT_F16: return (((const u16 *)x)[j] & 0x7c00u) == 0x7c00u;
	case DT_BF16: return (((const u16 *)x)[j] & 0x7f80u) == 0x7f80u;
	}
	return false;
}
