// reduce.cu: f64-accumulated reductions: sums of squares (norms), squared distances to a point,
// the Gram matrix of N client vectors centred on their mean (Krum's pairwise distances), and the
// search for the first non-finite element.
//
// Reductions are deterministic: every thread and block covers a fixed set of elements for a
// given launch shape, partial sums are combined in a fixed tree order inside a block and added to
// per-block partials in launch order, and the host or wa_gram_sum adds the partials in index
// order. No floating-point atomics are used.
#include "common.cuh"

// wa_sumsq adds the block's Σ x[j]² (j < n, f64 FMAs, grid-stride) times scale² to
// partial[blockIdx.x]. For I8 data x[j] is the quantised integer and scale the dequantisation
// scale; for the float dtypes scale is 1. blockDim.x must be WA_THREADS.
WA_ENTRY void wa_sumsq(const void *x, int dt, float scale, u64 n, double *partial) {
	__shared__ double s[WA_THREADS];
	double a = 0;
	u64 stride = (u64)gridDim.x * blockDim.x;
	for (u64 j = wa_gid(); j < n; j += stride) {
		double v = wa_ld(x, dt, 1.0f, j);
		a = fma(v, v, a);
	}
	s[threadIdx.x] = a;
	__syncthreads();
	for (int h = WA_THREADS / 2; h > 0; h >>= 1) {
		if ((int)threadIdx.x < h) s[threadIdx.x] = __dadd_rn(s[threadIdx.x], s[threadIdx.x + h]);
		__syncthreads();
	}
	if (threadIdx.x == 0) {
		double sc = (double)scale * (double)scale;
		partial[blockIdx.x] = __dadd_rn(partial[blockIdx.x], __dmul_rn(s[0], sc));
	}
}

// wa_sqdist adds, for input y = blockIdx.y, the block's Σ (x_y[j] - z[j])² and Σ x_y[j]² to
// pd[y·pstride + blockIdx.x] and pn[y·pstride + blockIdx.x] (j < n, grid-stride; x_y widened to
// f32 by wa_ld32, then to f64, where the difference is taken and f64 FMAs accumulate; the
// block's sums are combined in a fixed tree). xs[y], dts[y] and scales[y] describe input y, z
// is f32. For finite f32 values neither sum can overflow, so a non-finite pn says x_y holds a NaN
// or Inf. blockDim.x must be WA_THREADS, gridDim.x <= pstride.
WA_ENTRY void wa_sqdist(const u64 *xs, const int *dts, const float *scales, const float *z, u64 n, double *pd,
			double *pn, int pstride) {
	__shared__ double sd[WA_THREADS], sn[WA_THREADS];
	const int y = blockIdx.y;
	const void *x = (const void *)xs[y];
	const int dt = dts[y];
	const float sc = scales[y];
	double ad = 0, an = 0;
	u64 stride = (u64)gridDim.x * blockDim.x;
	// A thread's elements j, j+stride, ... in that order, four loaded ahead of their sums.
	for (u64 j = wa_gid(); j < n; j += 4 * stride) {
		float v[4], w[4];
#pragma unroll
		for (int k = 0; k < 4; k++) {
			const u64 jk = j + k * stride;
			v[k] = jk < n ? wa_ld32(x, dt, sc, jk) : 0.0f;
			w[k] = jk < n ? z[jk] : 0.0f;
		}
#pragma unroll
		for (int k = 0; k < 4; k++) {
			if (j + k * stride >= n) break;
			double vk = (double)v[k];
			double d = __dadd_rn(vk, -(double)w[k]);
			ad = fma(d, d, ad);
			an = fma(vk, vk, an);
		}
	}
	sd[threadIdx.x] = ad;
	sn[threadIdx.x] = an;
	__syncthreads();
	for (int h = WA_THREADS / 2; h > 0; h >>= 1) {
		if ((int)threadIdx.x < h) {
			sd[threadIdx.x] = __dadd_rn(sd[threadIdx.x], sd[threadIdx.x + h]);
			sn[threadIdx.x] = __dadd_rn(sn[threadIdx.x], sn[threadIdx.x + h]);
		}
		__syncthreads();
	}
	if (threadIdx.x == 0) {
		u64 e = (u64)y * pstride + blockIdx.x;
		pd[e] = __dadd_rn(pd[e], sd[0]);
		pn[e] = __dadd_rn(pn[e], sn[0]);
	}
}

// The Gram matrix is taken of the vectors centred on their mean at each coordinate, as
// device.Robust defines it: G[a][b] = Σ_j (x_a[j] − r[j])·(x_b[j] − r[j]). ‖a−b‖² = ‖a‖² + ‖b‖² −
// 2a·b cancels catastrophically for clients that send full models differing slightly (issue
// 9.6); centred, the rounding is relative to ‖x − r‖² instead of ‖x‖², and the distances are the
// same. wa_gram_centre computes r for a segment first; wa_gram subtracts it as it loads.
//
// G is computed in 64×64 tiles: block (s, p) handles tile pair p = (ta, tb), ta <= tb (pairs
// numbered row by row), over the k-tiles s, s+S, s+2S, ... (S = gridDim.x) of K elements each
// (wa_gram: K = 64 for N <= 64, one tile; wa_gram_pairs: K = 32 for more, two slices). A k-tile's
// slices are staged in shared memory as f64, K rows of 64 values (one per vector, row stride 68
// so that the tensor cores' fragment loads are free of bank conflicts). Values are widened to
// f32 by wa_ld32 (the semantics of device.Robust: f32, f16, bf16 and i8 vectors) and then to f64,
// where r[j] is subtracted: the difference of two f32 values is exact in f64 (unless their
// exponents are more than 29 apart, when it is rounded as the CPU's is), and so is every
// product. The 8 warps multiply on the tensor cores (wa_dmma_2x4, f64: exact products, f64 sums):
// warp w owns rows 16(w/2) .. 16(w/2)+15 and columns 32(w%2) .. 32(w%2)+31 of the tile, 8 blocks
// of 8×8 in registers, 6 fragment loads per 8 multiplies. Each thread loads the next k-tile into
// registers while the tensor cores work on this one: a lane reads 4 consecutive f32 (one 16-byte
// load where the vector is f32 and aligned) of one vector, the lanes of a warp 32 vectors, so
// that each lane's 4 stores to shared memory fall in distinct banks. At the end every thread
// adds its elements to partial[s][p][64·64], so successive launches (segments of the coordinate
// space) accumulate in order; wa_gram_sum then adds the S partials of every entry in order.
//
// On an H200 (64 f32 vectors × 16M, 2026-12-04) this layout took the kernel from 13.1 ms (4×4
// f64 FMAs per thread over k-tiles of 32 elements, a warp's lanes reading 32 consecutive elements
// of one vector: each lane's 8 stores to shared memory fell in one bank) to 5.6 ms; the same
// layout with FMAs instead of the tensor cores took 8.8 ms.
#define GT 64
#define GLD (GT + 4)

__device__ __forceinline__ void wa_pair(int p, int tiles, int *ta, int *tb) {
	int a = 0;
	while (p >= tiles - a) {
		p -= tiles - a;
		a++;
	}
	*ta = a;
	*tb = a + p;
}

// wa_gram_centre writes r[j], the centre of coordinate j < n, as kernels.GramF32 takes it: the
// vectors' values widened by wa_ld32 and added from +0 in vector order, divided by nrows, every
// operation in f32; 0 where that is not finite (a vector holds a NaN or Inf there, or the sum
// overflowed), so that only such a vector's own row of G is not finite. rows, dts and scales as
// wa_gram's. One thread per coordinate: the loads of a vector are coalesced.
WA_ENTRY void wa_gram_centre(const u64 *rows, const int *dts, const float *scales, int nrows, u64 n, float *r) {
	u64 j = wa_gid();
	if (j >= n) return;
	// Eight loads in flight, then their sums in vector order (one load at a time, each waited
	// for by its add, left the kernel bound by latency).
	float t = 0.0f;
	int i = 0;
	for (; i + 8 <= nrows; i += 8) {
		float v[8];
#pragma unroll
		for (int k = 0; k < 8; k++) v[k] = wa_ld32((const void *)rows[i + k], dts[i + k], scales[i + k], j);
#pragma unroll
		for (int k = 0; k < 8; k++) t = __fadd_rn(t, v[k]);
	}
	for (; i < nrows; i++) t = __fadd_rn(t, wa_ld32((const void *)rows[i], dts[i], scales[i], j));
	float c = __fdiv_rn(t, (float)nrows);
	r[j] = (__float_as_uint(c) & 0x7f800000u) == 0x7f800000u ? 0.0f : c;
}

// wa_gram_ld4 returns elements j .. j+3 of vector row (zeros past n or past nrows), widened by
// wa_ld32: one 16-byte load where the vector is f32 and the address aligned.
__device__ __forceinline__ float4 wa_gram_ld4(const u64 *rows, const int *dts, const float *scales, int nrows,
					      int row, u64 j, u64 n) {
	float4 v = {0.0f, 0.0f, 0.0f, 0.0f};
	if (row >= nrows) return v;
	const void *x = (const void *)rows[row];
	const int dt = dts[row];
	if (dt == DT_F32 && j + 4 <= n && (((u64)x + 4 * j) & 15) == 0) return *(const float4 *)((const float *)x + j);
	const float sc = scales[row];
	if (j < n) v.x = wa_ld32(x, dt, sc, j);
	if (j + 1 < n) v.y = wa_ld32(x, dt, sc, j + 1);
	if (j + 2 < n) v.z = wa_ld32(x, dt, sc, j + 2);
	if (j + 3 < n) v.w = wa_ld32(x, dt, sc, j + 3);
	return v;
}

// wa_gram_tile is the body of wa_gram (K = 64, PAIRS false: N <= 64, the one diagonal tile) and
// wa_gram_pairs (K = 32, PAIRS true: any N, both slices of an off-diagonal pair). Q is the
// 16-byte loads per thread and slice of a k-tile.
template <int K, bool PAIRS>
__device__ __forceinline__ void wa_gram_tile(const u64 *rows, const int *dts, const float *scales, int nrows, u64 n,
					     const float *cen, double *partial) {
	constexpr int Q = K * GT / (4 * WA_THREADS);
	__shared__ double st[(PAIRS ? 2 : 1) * K * GLD + K]; // the slices, then the negated centres
	double *cs = st + (PAIRS ? 2 : 1) * K * GLD;
	int ta = 0, tb = 0;
	if (PAIRS) wa_pair(blockIdx.y, (nrows + GT - 1) / GT, &ta, &tb);
	const int two = PAIRS && ta != tb; // a second slice (else B is A)
	double *sb = st + (two ? K * GLD : 0);
	const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, gq = lane >> 2, tq = lane & 3;
	const int r0 = 16 * (w >> 1), c0 = 32 * (w & 1);
	double acc[2][4][2];
#pragma unroll
	for (int i = 0; i < 2; i++)
#pragma unroll
		for (int b = 0; b < 4; b++) acc[i][b][0] = acc[i][b][1] = 0.0;

	float4 pre[2][Q];
	float cpre = 0.0f;
	// load fetches k-tile kt into registers: element e = tid + 256q of a slice is vector e % 64,
	// elements 4(e / 64) .. 4(e / 64)+3 of the k-tile; thread tid < K fetches centre tid.
	auto load = [&](u64 kt) {
		const u64 j0 = kt * K;
#pragma unroll
		for (int q = 0; q < Q; q++) {
			const int e = tid + WA_THREADS * q, r = e & (GT - 1);
			const u64 j = j0 + 4 * (e >> 6);
			pre[0][q] = wa_gram_ld4(rows, dts, scales, nrows, ta * GT + r, j, n);
			if (two) pre[1][q] = wa_gram_ld4(rows, dts, scales, nrows, tb * GT + r, j, n);
		}
		if (tid < K) cpre = j0 + tid < n ? cen[j0 + tid] : 0.0f;
	};
	// stage writes a slice's registers to shared memory, centred; rows past nrows stay 0.
	auto stage = [&](const float4 *v, double *sl, int t) {
#pragma unroll
		for (int q = 0; q < Q; q++) {
			const int e = tid + WA_THREADS * q, r = e & (GT - 1), c = 4 * (e >> 6);
			const bool ok = t * GT + r < nrows;
			sl[(c + 0) * GLD + r] = ok ? __dadd_rn((double)v[q].x, cs[c + 0]) : 0.0;
			sl[(c + 1) * GLD + r] = ok ? __dadd_rn((double)v[q].y, cs[c + 1]) : 0.0;
			sl[(c + 2) * GLD + r] = ok ? __dadd_rn((double)v[q].z, cs[c + 2]) : 0.0;
			sl[(c + 3) * GLD + r] = ok ? __dadd_rn((double)v[q].w, cs[c + 3]) : 0.0;
		}
	};
	const u64 nk = (n + K - 1) / K;
	u64 kt = blockIdx.x;
	if (kt < nk) load(kt);
	for (; kt < nk; kt += gridDim.x) {
		if (tid < K) cs[tid] = -(double)cpre;
		__syncthreads();
		stage(pre[0], st, ta);
		if (two) stage(pre[1], sb, tb);
		__syncthreads();
		if (kt + gridDim.x < nk) load(kt + gridDim.x);
#pragma unroll 4
		for (int k = 0; k < K; k += 4) {
			const double *ra = st + (k + tq) * GLD, *rb = sb + (k + tq) * GLD;
			const double a[2] = {ra[r0 + gq], ra[r0 + 8 + gq]};
			const double b[4] = {rb[c0 + gq], rb[c0 + 8 + gq], rb[c0 + 16 + gq], rb[c0 + 24 + gq]};
			wa_dmma_2x4(acc, a, b);
		}
		__syncthreads();
	}
	double *out = partial + ((u64)blockIdx.x * gridDim.y + blockIdx.y) * (GT * GT);
#pragma unroll
	for (int i = 0; i < 2; i++)
#pragma unroll
		for (int b = 0; b < 4; b++) {
			const int e = (r0 + 8 * i + gq) * GT + c0 + 8 * b + 2 * tq;
			out[e] = __dadd_rn(out[e], acc[i][b][0]);
			out[e + 1] = __dadd_rn(out[e + 1], acc[i][b][1]);
		}
}

// wa_gram: rows[r] is the device address of element 0 of vector r, dts[r] its dtype and
// scales[r] its I8 scale; n is the number of elements and cen the centres wa_gram_centre wrote for
// them. Launch with blockDim.x = 256, gridDim = (S, tiles·(tiles+1)/2) where
// tiles = ceil(nrows/64): wa_gram for nrows <= 64 (one tile), wa_gram_pairs for any nrows.
WA_ENTRY void __launch_bounds__(WA_THREADS, 2)
wa_gram(const u64 *rows, const int *dts, const float *scales, int nrows, u64 n, const float *cen, double *partial) {
	wa_gram_tile<64, false>(rows, dts, scales, nrows, n, cen, partial);
}

WA_ENTRY void __launch_bounds__(WA_THREADS, 2) wa_gram_pairs(const u64 *rows, const int *dts, const float *scales,
							      int nrows, u64 n, const float *cen, double *partial) {
	wa_gram_tile<32, true>(rows, dts, scales, nrows, n, cen, partial);
}

// wa_gram_sum writes out[e] = Σ_s partial[s·m + e] for e < m, s = 0 .. slices-1 in order.
WA_ENTRY void wa_gram_sum(const double *partial, int slices, u64 m, double *out) {
	u64 e = wa_gid();
	if (e >= m) return;
	double s = 0;
	for (int k = 0; k < slices; k++) s = __dadd_rn(s, partial[(u64)k * m + e]);
	out[e] = s;
}

// wa_first_nonfinite lowers *first to the index of any NaN or ±Inf element of x (dtype dt, n
// elements); the caller sets *first to all ones beforehand. Integer dtypes are always finite.
WA_ENTRY void wa_first_nonfinite(const void *x, int dt, u64 n, u64 *first) {
	u64 j = wa_gid();
	if (j < n && wa_nonfinite(x, dt, j)) atomicMin(first, j);
}
