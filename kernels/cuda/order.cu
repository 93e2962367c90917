// order.cu: coordinate-wise order statistics over N inputs: the median (even N: the mean of the
// two middle values) and the trimmed mean (the k smallest and k largest values of each
// coordinate dropped, the rest averaged).
//
// Semantics, per coordinate j: the N values x_i[j] are decoded exactly to f64 (wa_ld: I8 as
// scale·q) and sorted ascending into v. The arithmetic type A is f64 for an f64 output and f32
// otherwise (each v[i] rounded to f32 once, exact for f32, bf16 and f16 inputs), every operation
// rounded in A:
//
//	median       = v[N/2]                                N odd
//	             = A(v[N/2-1]·0.5) + A(v[N/2]·0.5)        N even (no overflow where (a+b)/2 could)
//	trimmed mean = (((+0 + v[k]) + v[k+1]) + ... + v[N-k-1]) / A(N-2k)
//
// and the result is written in the output dtype (f16 and bf16 from the f32 result). For f32
// inputs and output these are the formulas of the CPU kernels kernels.MedianF32 and
// TrimmedMeanF32, so finite inputs give the same bits on both (the sign of a zero median aside:
// equal values may sort in another order). Inputs are expected to be finite (callers validate
// them): a NaN makes the order undefined, never a hang.
#include "common.cuh"

// wa_select computes the statistic of the sorted values and stores it: at(i) is v[i], and
// sum(lo, hi, a) adds v[lo..hi) in ascending order from +0 in the arithmetic type of a.
template <typename At, typename Sum>
__device__ __forceinline__ void wa_select(void *y, int out, u64 j, int nin, int trim, At at, Sum sum) {
	if (out == DT_F64) {
		double r;
		if (trim < 0)
			r = nin % 2 ? at(nin / 2) : __dadd_rn(__dmul_rn(at(nin / 2 - 1), 0.5), __dmul_rn(at(nin / 2), 0.5));
		else
			r = __ddiv_rn(sum(trim, nin - trim, 0.0), (double)(nin - 2 * trim));
		((double *)y)[j] = r;
		return;
	}
	float r;
	if (trim < 0)
		r = nin % 2 ? __double2float_rn(at(nin / 2))
			    : __fadd_rn(__fmul_rn(__double2float_rn(at(nin / 2 - 1)), 0.5f),
					__fmul_rn(__double2float_rn(at(nin / 2)), 0.5f));
	else
		r = __fdiv_rn(sum(trim, nin - trim, 0.0f), (float)(nin - 2 * trim));
	switch (out) {
	case DT_F32: ((float *)y)[j] = r; break;
	case DT_F16: ((u16 *)y)[j] = wa_f32_to_f16(r); break;
	case DT_BF16: ((u16 *)y)[j] = wa_f32_to_bf16(r); break;
	}
}

__device__ __forceinline__ double wa_add(double s, double v) { return __dadd_rn(s, v); }
__device__ __forceinline__ float wa_add(float s, double v) { return __fadd_rn(s, __double2float_rn(v)); }

// For N <= 32 each thread sorts its coordinate's values in registers with a bitonic network of
// P = next power of two >= N entries (the padding is +Inf, which sorts last). Every index is a
// compile-time constant once the loops are unrolled, so nothing is spilled to local memory.
template <int P>
__device__ __forceinline__ void order_reg(void *y, int out, const u64 *xs, const int *dts, const float *scales, int nin,
					  int trim, u64 n) {
	u64 j = wa_gid();
	if (j >= n) return;
	double v[P];
#pragma unroll
	for (int i = 0; i < P; i++)
		v[i] = i < nin ? wa_ld((const void *)xs[i], dts[i], scales[i], j) : __longlong_as_double(0x7ff0000000000000ll);
#pragma unroll
	for (int k = 2; k <= P; k <<= 1)
#pragma unroll
		for (int s = k >> 1; s > 0; s >>= 1)
#pragma unroll
			for (int i = 0; i < P; i++) {
				int l = i ^ s;
				if (l > i) {
					double a = v[i], b = v[l];
					bool swap = (i & k) == 0 ? b < a : a < b;
					v[i] = swap ? b : a;
					v[l] = swap ? a : b;
				}
			}
	// Registers cannot be indexed at run time: every index is compared instead.
	wa_select(
		y, out, j, nin, trim,
		[&](int k) {
			double x = 0;
#pragma unroll
			for (int i = 0; i < P; i++)
				if (i == k) x = v[i];
			return x;
		},
		[&](int lo, int hi, auto s) {
#pragma unroll
			for (int i = 0; i < P; i++)
				if (i >= lo && i < hi) s = wa_add(s, v[i]);
			return s;
		});
}

// wa_order_rP: xs[i], dts[i], scales[i] describe input i (device address of element 0, dtype,
// I8 scale); out is the dtype of y; trim < 0 selects the median, else the trimmed mean cutting
// trim values from each end (N-2·trim >= 1). Requires nin <= P; blockDim.x = WA_THREADS.
#define WA_ORDER_REG(P)                                                                                        \
	WA_ENTRY void wa_order_r##P(void *y, int out, const u64 *xs, const int *dts, const float *scales, int nin, \
				    int trim, u64 n) {                                                            \
		order_reg<P>(y, out, xs, dts, scales, nin, trim, n);                                           \
	}
WA_ORDER_REG(2)
WA_ORDER_REG(4)
WA_ORDER_REG(8)
WA_ORDER_REG(16)
WA_ORDER_REG(32)

// wa_key maps a double to an integer with the same order (IEEE totalOrder: -0 before +0, NaNs at
// the ends), so that ranks are a permutation whatever the values.
__device__ __forceinline__ long long wa_key(double d) {
	long long b = __double_as_longlong(d);
	return b >= 0 ? b : b ^ 0x7fffffffffffffffll;
}

// wa_order_shared is wa_order_rP for any N: blockDim.x = 32 and each thread keeps its column of N
// values in shared memory (dynamic: N·32 doubles, then N·32 u16 ranks: 320·N bytes). It ranks the
// values (rank = number of smaller keys, ties broken by input index: O(N²) comparisons, four
// candidates per pass over the column), permutes the column into sorted order by following the
// cycles of the ranks, and selects as above. Threads never exchange data, so no barrier is used.
WA_ENTRY void wa_order_shared(void *y, int out, const u64 *xs, const int *dts, const float *scales, int nin, int trim,
			      u64 n) {
	WA_DYN_SHARED(double, smem);
	u64 j = wa_gid();
	if (j >= n) return;
	const int t = threadIdx.x, W = 32;
	double *col = smem;
	u16 *rank = (u16 *)(smem + (u64)nin * W);
	for (int i = 0; i < nin; i++) col[i * W + t] = wa_ld((const void *)xs[i], dts[i], scales[i], j);
	for (int i = 0; i < nin; i += 4) {
		long long ki[4];
		int ri[4] = {0, 0, 0, 0};
#pragma unroll
		for (int c = 0; c < 4; c++) ki[c] = i + c < nin ? wa_key(col[(i + c) * W + t]) : 0;
		for (int k = 0; k < nin; k++) {
			long long kk = wa_key(col[k * W + t]);
#pragma unroll
			for (int c = 0; c < 4; c++) ri[c] += kk < ki[c] || (kk == ki[c] && k < i + c);
		}
#pragma unroll
		for (int c = 0; c < 4; c++)
			if (i + c < nin) rank[(i + c) * W + t] = (u16)ri[c];
	}
	for (int i = 0; i < nin; i++) {
		int r = rank[i * W + t];
		while (r != i) {
			double v = col[r * W + t];
			int rr = rank[r * W + t];
			col[r * W + t] = col[i * W + t];
			rank[r * W + t] = (u16)r;
			col[i * W + t] = v;
			rank[i * W + t] = (u16)rr;
			r = rr;
		}
	}
	wa_select(
		y, out, j, nin, trim, [&](int k) { return col[k * W + t]; },
		[&](int lo, int hi, auto s) {
			for (int i = lo; i < hi; i++) s = wa_add(s, col[i * W + t]);
			return s;
		});
}
