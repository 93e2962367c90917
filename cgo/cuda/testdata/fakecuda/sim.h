// sim.h: just enough of CUDA C++ to compile wattagg's kernels (kernels/cuda/*.cu) as host C++
// for the fake driver in fake.cpp. Thread and block indices are per OS thread; a block's threads
// run one after another, or as fibers that switch at __syncthreads. Arithmetic follows the GPU's:
// the file must be compiled with -ffp-contract=off so that no multiply-add is fused.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#define WA_SIM 1
#define WA_ENTRY extern "C"
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
// Shared memory: one instance per OS thread, shared by the fibers of the block it runs.
#define __shared__ static thread_local

struct uint3 {
	unsigned x, y, z;
};
struct dim3 {
	unsigned x, y, z;
};
extern thread_local uint3 threadIdx, blockIdx;
extern thread_local dim3 blockDim, gridDim;

void __syncthreads();
void *wa_sim_dyn_shared();
#define WA_DYN_SHARED(T, name) T *name = (T *)wa_sim_dyn_shared()

struct alignas(16) float4 {
	float x, y, z, w;
};
struct alignas(16) double2 {
	double x, y;
};
struct alignas(8) uint2 {
	unsigned x, y;
};

inline float __uint_as_float(unsigned u) {
	float f;
	std::memcpy(&f, &u, 4);
	return f;
}
inline unsigned __float_as_uint(float f) {
	unsigned u;
	std::memcpy(&u, &f, 4);
	return u;
}
inline double __longlong_as_double(long long u) {
	double d;
	std::memcpy(&d, &u, 8);
	return d;
}
inline long long __double_as_longlong(double d) {
	long long u;
	std::memcpy(&u, &d, 8);
	return u;
}
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline float __double2float_rn(double d) { return (float)d; }
inline double __ll2double_rn(long long v) { return (double)v; }
using std::fma;
using std::log;
using std::sqrt;
inline void sincospi(double x, double *s, double *c) {
	*s = std::sin(M_PI * x);
	*c = std::cos(M_PI * x);
}
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
inline unsigned long long atomicMin(unsigned long long *p, unsigned long long v) {
	unsigned long long old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
	while (v < old && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
	}
	return old;
}

// wa_dmma_2x4 simulates common.cuh's (8 mma.sync.aligned.m8n8k4.row.col.f64 of a warp): every
// thread of the block posts its fragments, and after a barrier each computes its elements of D
// from its warp's, adding the products in k order with FMAs (the tensor cores' order is
// unspecified; only the rounding bound is relied on); a second barrier keeps the posts until
// every thread has read them. Every thread of the block must call it together.
inline void wa_dmma_2x4(double d[2][4][2], const double a[2], const double b[4]) {
	static thread_local double fa[2][1024], fb[4][1024];
	unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
	for (int i = 0; i < 2; i++) fa[i][t] = a[i];
	for (int k = 0; k < 4; k++) fb[k][t] = b[k];
	__syncthreads();
	unsigned w = t & ~31u, g = (t & 31) >> 2, q = t & 3;
	for (int i = 0; i < 2; i++)
		for (int k = 0; k < 4; k++)
			for (unsigned h = 0; h < 2; h++) {
				// D[g][2q+h] += Σ_j A[g][j]·B[j][2q+h]: A[g][j] is lane 4g+j's, B[j][c] lane 4c+j's.
				double acc = d[i][k][h];
				for (unsigned j = 0; j < 4; j++) acc = std::fma(fa[i][w + 4 * g + j], fb[k][w + 4 * (2 * q + h) + j], acc);
				d[i][k][h] = acc;
			}
	__syncthreads();
}
