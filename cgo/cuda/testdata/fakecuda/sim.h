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
