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
	for (u64 j = wa_gid(); j < n; j += stride) {
		double v = (double)wa_ld32(x, dt, sc, j);
		double d = __dadd_rn(v, -(double)z[j]);
		ad = fma(d, d, ad);
		an = fma(v, v, an);
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
// numbered row by row), over the k-tiles s, s+S, s+2S, ... (S = gridDim.x) of 32 elements each,
// staging both 64×32 slices in shared memory as f64 so that one load feeds 64 FMAs. Values are
// widened to f32 by wa_ld32 (the semantics of device.Robust: f32, f16, bf16 and i8 vectors) and
// then to f64, where r[j] is subtracted: the difference of two f32 values is exact in f64 (unless
// their exponents are more than 29 apart, when it is rounded as the CPU's is), and so is every
// product. Each of the 256 threads owns a 4×4 block of the tile (rows ty+16i, columns tx+16k) in
// registers and adds it to partial[s][p][64·64] at the end, so successive launches (segments of
// the coordinate space) accumulate in order. wa_gram_sum then adds the S partials of every entry
// in order.
#define GT 64
#define GK 32

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
	float t = 0.0f;
	for (int i = 0; i < nrows; i++) t = __fadd_rn(t, wa_ld32((const void *)rows[i], dts[i], scales[i], j));
	float c = __fdiv_rn(t, (float)nrows);
	r[j] = (__float_as_uint(c) & 0x7f800000u) == 0x7f800000u ? 0.0f : c;
}

// wa_gram: rows[r] is the device address of element 0 of vector r, dts[r] its dtype and
// scales[r] its I8 scale; n is the number of elements and cen the centres wa_gram_centre wrote for
// them. Launch with blockDim.x = 256, gridDim = (S, tiles·(tiles+1)/2) where
// tiles = ceil(nrows/64).
WA_ENTRY void __launch_bounds__(WA_THREADS, 2)
wa_gram(const u64 *rows, const int *dts, const float *scales, int nrows, u64 n, const float *cen, double *partial) {
	// st[0] holds tile ta's slice, st[1] tile tb's; a diagonal pair (ta = tb, the only one for
	// N <= 64) loads one slice and reads it twice.
	__shared__ double st[2][GK][GT + 1];
	int tiles = (nrows + GT - 1) / GT;
	int ta, tb;
	wa_pair(blockIdx.y, tiles, &ta, &tb);
	const int bi = ta == tb ? 0 : 1;
	int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
	double g[4][4];
#pragma unroll
	for (int i = 0; i < 4; i++)
#pragma unroll
		for (int k = 0; k < 4; k++) g[i][k] = 0;

	u64 nk = (n + GK - 1) / GK;
	for (u64 kt = blockIdx.x; kt < nk; kt += gridDim.x) {
		// A thread loads column col = tid % GK of every slice row it covers (WA_THREADS is a
		// multiple of GK): one centre per k-tile. Padding (rows >= nrows, j >= n) stays 0. The
		// loop is unrolled so that a thread's 8 (or 16) loads are in flight together: one at a
		// time, their latency was most of the kernel's time on an H200.
		const int col = tid % GK;
		const u64 j = kt * GK + col;
		const double mr = j < n ? -(double)cen[j] : 0.0;
#pragma unroll
		for (int q = 0; q < GT * GK / WA_THREADS; q++) {
			int r = (tid + WA_THREADS * q) / GK;
			int ra = ta * GT + r, rb = tb * GT + r;
			st[0][col][r] = ra < nrows && j < n
					  ? __dadd_rn((double)wa_ld32((const void *)rows[ra], dts[ra], scales[ra], j), mr)
					  : 0.0;
			if (bi)
				st[1][col][r] = rb < nrows && j < n
						  ? __dadd_rn((double)wa_ld32((const void *)rows[rb], dts[rb], scales[rb], j), mr)
						  : 0.0;
		}
		__syncthreads();
#pragma unroll 4
		for (int c = 0; c < GK; c++) {
			double a[4], b[4];
#pragma unroll
			for (int i = 0; i < 4; i++) a[i] = st[0][c][ty + 16 * i], b[i] = st[bi][c][tx + 16 * i];
#pragma unroll
			for (int i = 0; i < 4; i++)
#pragma unroll
				for (int k = 0; k < 4; k++) g[i][k] = fma(a[i], b[k], g[i][k]);
		}
		__syncthreads();
	}
	double *out = partial + ((u64)blockIdx.x * gridDim.y + blockIdx.y) * (GT * GT);
#pragma unroll
	for (int i = 0; i < 4; i++)
#pragma unroll
		for (int k = 0; k < 4; k++) {
			int e = (ty + 16 * i) * GT + tx + 16 * k;
			out[e] = __dadd_rn(out[e], g[i][k]);
		}
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
