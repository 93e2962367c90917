// acc.cu: weighted accumulation of f32/bf16/f16/i8/f64 inputs into f32 or f64 accumulators,
// conversion of accumulators to the output dtypes, scaling, and the u32 modular sum.
//
// Each accumulate kernel performs, per element, exactly the operations of the CPU kernel of the
// same name in package kernels, in the same order, so results are bit-identical:
//
//	f32: acc[j] = acc[j] + w[i]*x_i[j]       product rounded, then sum rounded (no FMA)
//	f64: acc[j] = fma(w[i], x_i[j], acc[j])   one rounding
//
// for i = 0 .. nin-1 in order. A thread owns 4 consecutive elements; with vec set every pointer
// is 16-byte aligned and the loads are vector loads.
#include "common.cuh"

// In<DT> loads input elements of dtype DT, widened exactly (V is the widened type).
template <int DT> struct In;

template <> struct In<DT_F32> {
	typedef float V;
	static __device__ __forceinline__ V get(const void *p, u64 j) { return ((const float *)p)[j]; }
	static __device__ __forceinline__ void get4(const void *p, u64 j, V v[4]) {
		float4 q = *(const float4 *)((const float *)p + j);
		v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
	}
};

template <> struct In<DT_BF16> {
	typedef float V;
	static __device__ __forceinline__ V get(const void *p, u64 j) { return wa_bf16_to_f32(((const u16 *)p)[j]); }
	static __device__ __forceinline__ void get4(const void *p, u64 j, V v[4]) {
		uint2 q = *(const uint2 *)((const u16 *)p + j);
		v[0] = wa_bf16_to_f32(q.x), v[1] = wa_bf16_to_f32(q.x >> 16);
		v[2] = wa_bf16_to_f32(q.y), v[3] = wa_bf16_to_f32(q.y >> 16);
	}
};

template <> struct In<DT_F16> {
	typedef float V;
	static __device__ __forceinline__ V get(const void *p, u64 j) { return wa_f16_to_f32(((const u16 *)p)[j]); }
	static __device__ __forceinline__ void get4(const void *p, u64 j, V v[4]) {
		uint2 q = *(const uint2 *)((const u16 *)p + j);
		v[0] = wa_f16_to_f32(q.x & 0xffffu), v[1] = wa_f16_to_f32(q.x >> 16);
		v[2] = wa_f16_to_f32(q.y & 0xffffu), v[3] = wa_f16_to_f32(q.y >> 16);
	}
};

template <> struct In<DT_I8> {
	typedef float V;
	static __device__ __forceinline__ V get(const void *p, u64 j) { return (float)((const signed char *)p)[j]; }
	static __device__ __forceinline__ void get4(const void *p, u64 j, V v[4]) {
		u32 q = *(const u32 *)((const signed char *)p + j);
		v[0] = (float)(signed char)(q & 0xffu), v[1] = (float)(signed char)((q >> 8) & 0xffu);
		v[2] = (float)(signed char)((q >> 16) & 0xffu), v[3] = (float)(signed char)(q >> 24);
	}
};

template <> struct In<DT_F64> {
	typedef double V;
	static __device__ __forceinline__ V get(const void *p, u64 j) { return ((const double *)p)[j]; }
	static __device__ __forceinline__ void get4(const void *p, u64 j, V v[4]) {
		double2 a = *(const double2 *)((const double *)p + j), b = *(const double2 *)((const double *)p + j + 2);
		v[0] = a.x, v[1] = a.y, v[2] = b.x, v[3] = b.y;
	}
};

__device__ __forceinline__ float wa_madd(float a, float w, float x) { return __fadd_rn(a, __fmul_rn(w, x)); }
__device__ __forceinline__ double wa_madd(double a, double w, double x) { return fma(w, x, a); }

__device__ __forceinline__ void wa_load4(const float *p, float a[4]) {
	float4 q = *(const float4 *)p;
	a[0] = q.x, a[1] = q.y, a[2] = q.z, a[3] = q.w;
}
__device__ __forceinline__ void wa_load4(const double *p, double a[4]) {
	double2 x = *(const double2 *)p, y = *(const double2 *)(p + 2);
	a[0] = x.x, a[1] = x.y, a[2] = y.x, a[3] = y.y;
}
__device__ __forceinline__ void wa_store4(float *p, const float a[4]) {
	float4 q;
	q.x = a[0], q.y = a[1], q.z = a[2], q.w = a[3];
	*(float4 *)p = q;
}
__device__ __forceinline__ void wa_store4(double *p, const double a[4]) {
	double2 x, y;
	x.x = a[0], x.y = a[1], y.x = a[2], y.y = a[3];
	*(double2 *)p = x;
	*(double2 *)(p + 2) = y;
}

// acc adds Σ_i w[i]·x_i[j] to acc[j] for j < n, inputs in order; with first set the sum starts
// from +0 instead of acc (the CPU clears its accumulator block the same way). xs[i] is the
// device address of input i's element 0.
template <typename A, int DT>
__device__ __forceinline__ void acc(A *__restrict__ acc, const u64 *__restrict__ xs, const A *__restrict__ w, int nin,
				    u64 n, int first, int vec) {
	u64 j = wa_gid() * 4;
	if (j >= n) return;
	A a[4];
	if (vec && j + 4 <= n) {
		if (first) {
			a[0] = a[1] = a[2] = a[3] = 0;
		} else {
			wa_load4(acc + j, a);
		}
#pragma unroll 4
		for (int i = 0; i < nin; i++) {
			typename In<DT>::V x[4];
			In<DT>::get4((const void *)xs[i], j, x);
			A wi = w[i];
#pragma unroll
			for (int k = 0; k < 4; k++) a[k] = wa_madd(a[k], wi, (A)x[k]);
		}
		wa_store4(acc + j, a);
		return;
	}
	int m = n - j < 4 ? (int)(n - j) : 4;
	for (int k = 0; k < m; k++) a[k] = first ? (A)0 : acc[j + k];
	for (int i = 0; i < nin; i++) {
		const void *x = (const void *)xs[i];
		A wi = w[i];
		for (int k = 0; k < m; k++) a[k] = wa_madd(a[k], wi, (A)In<DT>::get(x, j + k));
	}
	for (int k = 0; k < m; k++) acc[j + k] = a[k];
}

#define WA_ACC(name, A, DT)                                                                                     \
	WA_ENTRY void name(A *acc_, const u64 *xs, const A *w, int nin, u64 n, int first, int vec) {            \
		acc<A, DT>(acc_, xs, w, nin, n, first, vec);                                                    \
	}

WA_ACC(wa_acc_f32_f32, float, DT_F32)
WA_ACC(wa_acc_f32_bf16, float, DT_BF16)
WA_ACC(wa_acc_f32_f16, float, DT_F16)
WA_ACC(wa_acc_f32_i8, float, DT_I8)
WA_ACC(wa_acc_f64_f32, double, DT_F32)
WA_ACC(wa_acc_f64_bf16, double, DT_BF16)
WA_ACC(wa_acc_f64_f16, double, DT_F16)
WA_ACC(wa_acc_f64_i8, double, DT_I8)
WA_ACC(wa_acc_f64_f64, double, DT_F64)

// wa_store_f32 writes y[j] = src[j]·s (f32 product) as dtype out (f32, bf16 or f16): the CPU's
// StoreF32FromF32, StoreBF16FromF32 and StoreF16FromF32. One element per thread.
WA_ENTRY void wa_store_f32(void *y, int out, const float *src, float s, u64 n) {
	u64 j = wa_gid();
	if (j >= n) return;
	float v = __fmul_rn(src[j], s);
	switch (out) {
	case DT_F32: ((float *)y)[j] = v; break;
	case DT_BF16: ((u16 *)y)[j] = wa_f32_to_bf16(v); break;
	case DT_F16: ((u16 *)y)[j] = wa_f32_to_f16(v); break;
	}
}

// wa_store_f64 writes y[j] = src[j]·s (f64 product) as dtype out (f64, or f32/bf16/f16 through
// one f32 rounding): the CPU's Store*FromF64.
WA_ENTRY void wa_store_f64(void *y, int out, const double *src, double s, u64 n) {
	u64 j = wa_gid();
	if (j >= n) return;
	wa_st_f64(y, out, j, __dmul_rn(src[j], s));
}

// wa_scale multiplies in place: x[j] = x[j]·s, in f32 (dt 1, s rounded to f32 by the caller) or
// f64 (dt 2).
WA_ENTRY void wa_scale(void *x, int dt, double s, u64 n) {
	u64 j = wa_gid();
	if (j >= n) return;
	if (dt == DT_F32)
		((float *)x)[j] = __fmul_rn(((float *)x)[j], (float)s);
	else
		((double *)x)[j] = __dmul_rn(((double *)x)[j], s);
}

// wa_modsum_u32 adds u32 inputs modulo 2^32 (secure aggregation): y[j] = (first ? 0 : y[j]) +
// Σ_i x_i[j], wrapping.
WA_ENTRY void wa_modsum_u32(u32 *y, const u64 *xs, int nin, u64 n, int first) {
	u64 j = wa_gid();
	if (j >= n) return;
	u32 s = first ? 0u : y[j];
	for (int i = 0; i < nin; i++) s += ((const u32 *)xs[i])[j];
	y[j] = s;
}
