// order.cu: coordinate-wise order statistics over N inputs, with the semantics of device.Robust
// (the CPU's kernels.MedianF32, TrimmedMeanF32 and ClosestMeanF32), bit for bit:
//
//   - Each input's value at coordinate j is widened to f32 as the CPU widens it (wa_ld32: f32 as
//     is, 16-bit floats and I8 as +0 + float32(w·x), w = 1 or the I8 scale).
//   - The N values are sorted ascending by Batcher's odd-even merge sort network for N wires
//     (built for the next power of two P and pruned of every comparator that touches a wire >= N,
//     as kernels/robust_network.go builds it), each comparator writing min = a < b ? a : b to its
//     low wire and max = a > b ? a : b to its high wire (VMINPS/VMAXPS). With two zeros of either
//     sign, or a NaN, both wires receive b: the network is not a permutation then, so only the
//     very same comparators in the same order give the CPU's bits.
//   - With v the sorted values, every operation an f32 operation rounded to nearest even:
//
//	median        m = v[N/2] (N odd), v[N/2-1]·0.5 + v[N/2]·0.5 (N even)
//	trimmed mean  (((+0 + v[k]) + v[k+1]) + ... + v[N-k-1]) / (N-2k)        2k < N
//	closest mean  mean(s) = (((+0 + v[s]) + v[s+1]) + ... + v[s+k-1]) / k over the window of k
//	              values starting at s, for the starts lo .. hi of the tied closest windows:
//	              lo = 1 + the last t < N-k with |v[t+k] - m| < |v[t] - m| (or 0), hi = the end of
//	              the run of slides from lo with |v[t+k] - m| = |v[t] - m|; with a = (lo+hi)/2 and
//	              b = (lo+hi+1)/2 the result is mean(a) if a = b, else
//	              mean(a)·0.5 + mean(b)·0.5                                 1 <= k <= N
//
//     Every start in lo .. hi has the same sum of distances to m; the middle one resolves ties to
//     neither side (kernels.ClosestMeanF32's rule, issue 9.11: the first one biased every tie
//     downwards).
//
// The f32 result r is written to y in the output dtype (f64 widened exactly, f16 and bf16 rounded
// to nearest even as half.F32ToF16 and F32ToBF16) and, when res is not null, to res as f32 (the
// distances of each input to the result are taken from it, reduce.cu's wa_sqdist).
//
// The PTX is built with --fmad=false and every rounding is an explicit intrinsic; no comparison
// is turned into min.f32/max.f32 (whose NaN rule differs).
#include "common.cuh"

// The statistics (the values of device.SelectOp).
enum { OP_MEDIAN = 1, OP_TRIMMED = 2, OP_CLOSEST = 3 };

// wa_cmp is one comparator of the network.
__device__ __forceinline__ void wa_cmp(float &a, float &b) {
	float x = a, y = b;
	a = x < y ? x : y;
	b = x > y ? x : y;
}

__device__ __forceinline__ float wa_half_sum(float lo, float hi) {
	return __fadd_rn(__fmul_rn(lo, 0.5f), __fmul_rn(hi, 0.5f));
}

// wa_mean is the mean of the sorted values c[lo·s] .. c[(lo+cnt-1)·s]: their sum from +0 in
// ascending order divided by cnt, in f32 (kernels' windowMean).
__device__ __forceinline__ float wa_mean(const float *c, u64 s, int lo, int cnt) {
	float acc = 0.0f;
	for (int i = lo; i < lo + cnt; i++) acc = __fadd_rn(acc, c[(u64)i * s]);
	return __fdiv_rn(acc, (float)cnt);
}

// wa_pick computes the statistic of the sorted values c[0], c[s], ..., c[(nin-1)·s].
__device__ __forceinline__ float wa_pick(const float *c, u64 s, int nin, int op, int k) {
	float m = nin % 2 ? c[(u64)(nin / 2) * s] : wa_half_sum(c[(u64)(nin / 2 - 1) * s], c[(u64)(nin / 2) * s]);
	if (op == OP_MEDIAN) return m;
	if (op != OP_CLOSEST) return wa_mean(c, s, k, nin - 2 * k);
	// kernels.closestWindows: lo and hi are the first and last start of the tied closest windows.
	int lo = 0, hi = 0;
	for (int t = 0; t < nin - k; t++) {
		float dh = fabsf(__fsub_rn(c[(u64)(t + k) * s], m)), dl = fabsf(__fsub_rn(c[(u64)t * s], m));
		if (dh < dl) lo = hi = t + 1;
		else if (dh == dl && hi == t) hi = t + 1;
	}
	int a = (lo + hi) / 2, b = (lo + hi + 1) / 2;
	float ma = wa_mean(c, s, a, k);
	return a == b ? ma : wa_half_sum(ma, wa_mean(c, s, b, k));
}

// wa_put writes the result r of coordinate j.
__device__ __forceinline__ void wa_put(void *y, int out, float *res, u64 j, float r) {
	if (res) res[j] = r;
	switch (out) {
	case DT_F32: ((float *)y)[j] = r; break;
	case DT_F64: ((double *)y)[j] = (double)r; break;
	case DT_F16: ((u16 *)y)[j] = wa_f32_to_f16(r); break;
	case DT_BF16: ((u16 *)y)[j] = wa_f32_to_bf16(r); break;
	}
}

// For N <= 128 each thread sorts its coordinate's values in registers with the network of
// P = the next power of two >= N wires (P = 2 for N = 1: no comparator survives the pruning
// either way). Every wire index is a compile-time constant once the loops are unrolled, so
// nothing is spilled; whether a comparator survives (its high wire < N) is a predicate. The
// median and the trimmed mean select and add registers by comparing indices; the closest mean
// needs its window at a run-time index, so it stores the sorted values to dynamic shared memory
// first (P·blockDim.x floats, a column per thread: no bank conflicts, no barrier).
template <int P>
__device__ __forceinline__ void select_reg(void *y, int out, float *res, const u64 *xs, const int *dts,
					   const float *scales, int nin, int op, int k, u64 n) {
	u64 j = wa_gid();
	if (j >= n) return;
	float v[P];
#pragma unroll
	for (int i = 0; i < P; i++) v[i] = i < nin ? wa_ld32((const void *)xs[i], dts[i], scales[i], j) : 0.0f;
	// Batcher's odd-even merge sort: the loops of kernels.sortNetwork,
	//
	//	for p := 1; p < P; p <<= 1
	//		for k := p; k >= 1; k >>= 1
	//			for j := k % p; j+k < P; j += 2*k
	//				for i := 0; i < min(k, P-j-k); i++ { a, b := i+j, i+j+k; if a/(2p) == b/(2p) && b < N ... }
	//
	// rewritten with trip counts that do not depend on the enclosing loops (p = 2^lp, k = 2^lk,
	// and the low wires a of one (p, k) step in ascending order, as j then i visit them), so
	// that the compiler unrolls them completely and every predicate but b < N folds away.
	const int L = P >= 128 ? 7 : P >= 64 ? 6 : P >= 32 ? 5 : P >= 16 ? 4 : P >= 8 ? 3 : P >= 4 ? 2 : 1;
#pragma unroll
	for (int lp = 0; lp < L; lp++)
#pragma unroll
		for (int lk = L - 1; lk >= 0; lk--)
#pragma unroll
			for (int a = 0; a < P; a++) {
				const int p = 1 << lp, kk = 1 << lk, j0 = kk % p, b = a + kk;
				if (lk <= lp && a >= j0 && (a - j0) % (2 * kk) < kk && b < P && a / (2 * p) == b / (2 * p) &&
				    b < nin)
					wa_cmp(v[a], v[b]);
			}
	float r;
	if (op == OP_CLOSEST) {
		WA_DYN_SHARED(float, col);
		float *c = col + threadIdx.x;
#pragma unroll
		for (int i = 0; i < P; i++) c[(u64)i * blockDim.x] = v[i];
		r = wa_pick(c, blockDim.x, nin, op, k);
	} else {
		// Registers cannot be indexed at run time: every index is compared instead.
		int lo = nin / 2, hi = nin / 2;
		if (op == OP_TRIMMED) lo = k, hi = nin - k - 1;
		else if (nin % 2 == 0) lo = nin / 2 - 1;
		float a = 0.0f, b = 0.0f, acc = 0.0f;
#pragma unroll
		for (int i = 0; i < P; i++) {
			if (i == lo) a = v[i];
			if (i == hi) b = v[i];
			if (op == OP_TRIMMED && i >= lo && i <= hi) acc = __fadd_rn(acc, v[i]);
		}
		if (op == OP_TRIMMED) r = __fdiv_rn(acc, (float)(nin - 2 * k));
		else r = nin % 2 ? b : wa_half_sum(a, b);
	}
	wa_put(y, out, res, j, r);
}

// wa_select_rP: xs[i], dts[i], scales[i] describe input i (device address of element 0, dtype,
// I8 scale); out is the dtype of y; res, if not null, receives the f32 results; op and k as
// device.SelectJob's. Requires nin <= P; any blockDim.x up to WA_THREADS; dynamic shared memory
// 4·P·blockDim.x bytes for OP_CLOSEST, none otherwise.
#define WA_SELECT_REG(P)                                                                                       \
	WA_ENTRY void wa_select_r##P(void *y, int out, float *res, const u64 *xs, const int *dts,               \
				     const float *scales, int nin, int op, int k, u64 n) {                      \
		select_reg<P>(y, out, res, xs, dts, scales, nin, op, k, n);                                     \
	}
WA_SELECT_REG(2)
WA_SELECT_REG(4)
WA_SELECT_REG(8)
WA_SELECT_REG(16)
WA_SELECT_REG(32)
WA_SELECT_REG(64)
WA_SELECT_REG(128)

// wa_select_net is wa_select_rP for any N: the network's comparators come from a table, net[2q]
// and net[2q+1] the low and high wire of comparator q (ncomp of them, in the order of
// kernels.sortNetwork), and each thread keeps its coordinate's values in a column: in dynamic
// shared memory (gcol null: nin·blockDim.x floats, value i at i·blockDim.x + threadIdx.x) or,
// for more inputs than shared memory holds, in global scratch (value i of coordinate j at
// gcol[i·n + j]). Threads never exchange data, so no barrier is used. Any blockDim.x.
WA_ENTRY void wa_select_net(void *y, int out, float *res, const u64 *xs, const int *dts, const float *scales,
			    int nin, int op, int k, u64 n, const int *net, int ncomp, float *gcol) {
	WA_DYN_SHARED(float, smem);
	u64 j = wa_gid();
	if (j >= n) return;
	float *c = gcol ? gcol + j : smem + threadIdx.x;
	u64 s = gcol ? n : blockDim.x;
	for (int i = 0; i < nin; i++) c[(u64)i * s] = wa_ld32((const void *)xs[i], dts[i], scales[i], j);
	for (int q = 0; q < ncomp; q++) {
		u64 a = (u64)net[2 * q] * s, b = (u64)net[2 * q + 1] * s;
		float x = c[a], z = c[b];
		wa_cmp(x, z);
		c[a] = x;
		c[b] = z;
	}
	wa_put(y, out, res, j, wa_pick(c, s, nin, op, k));
}
