// noise.cu: Gaussian noise for differential privacy from a counter-based generator, so that any
// element's noise can be computed independently, on any device, in any order.
//
// Generator: Philox4x32-10 (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3";
// the constants and round structure of Random123). Key = the 64-bit seed (low word first);
// counter = (c mod 2^32, c / 2^32, 0, 0) for a 64-bit counter c. Each counter gives four 32-bit
// words and, by Box-Muller on the pairs (w0, w1) and (w2, w3), four standard normals:
//
//	u1 = (a + 0.5)·2^-32,  u2 = (b + 0.5)·2^-32   (in (0, 1), never 0)
//	r  = sqrt(-2·ln u1),   z0 = r·cos(2π·u2),   z1 = r·sin(2π·u2)   (cospi/sinpi of 2·u2)
//
// in f64 (the 32-bit uniforms bound |z| by 6.77: the normal mass beyond it is 1.3e-11). Element j of a
// buffer noised with counter base c0 uses normal j mod 4 of counter c0 + j/4; callers give each
// tensor its own counter range so that no noise is ever reused.
#include "common.cuh"

__device__ __forceinline__ void wa_philox(u32 c[4], u32 k0, u32 k1) {
#pragma unroll
	for (int r = 0; r < 10; r++) {
		if (r > 0) k0 += 0x9E3779B9u, k1 += 0xBB67AE85u;
		u32 hi0 = __umulhi(0xD2511F53u, c[0]), lo0 = 0xD2511F53u * c[0];
		u32 hi1 = __umulhi(0xCD9E8D57u, c[2]), lo1 = 0xCD9E8D57u * c[2];
		u32 n0 = hi1 ^ c[1] ^ k0, n2 = hi0 ^ c[3] ^ k1;
		c[0] = n0, c[1] = lo1, c[2] = n2, c[3] = lo0;
	}
}

__device__ __forceinline__ void wa_box_muller(u32 a, u32 b, double *z0, double *z1) {
	double u1 = __dmul_rn((double)a + 0.5, 2.3283064365386963e-10);
	double u2 = __dmul_rn((double)b + 0.5, 2.3283064365386963e-10);
	double r = sqrt(__dmul_rn(-2.0, log(u1)));
	double s, c;
	sincospi(__dmul_rn(2.0, u2), &s, &c);
	*z0 = __dmul_rn(r, c);
	*z1 = __dmul_rn(r, s);
}

// wa_noise adds sigma·z to each element of x (dt F32 or F64, n elements) in f64, then rounds to
// f32 for F32: x[j] = x[j] + sigma·z_j with z_j normal (j mod 4) of counter ctr0 + j/4 under key
// seed. One thread per counter (4 elements).
WA_ENTRY void wa_noise(void *x, int dt, u64 n, double sigma, u64 seed, u64 ctr0) {
	u64 g = wa_gid(), j = g * 4;
	if (j >= n) return;
	u64 c = ctr0 + g;
	u32 w[4] = {(u32)c, (u32)(c >> 32), 0u, 0u};
	wa_philox(w, (u32)seed, (u32)(seed >> 32));
	double z[4];
	wa_box_muller(w[0], w[1], &z[0], &z[1]);
	wa_box_muller(w[2], w[3], &z[2], &z[3]);
	for (int k = 0; k < 4 && j + k < n; k++) {
		double e = __dmul_rn(sigma, z[k]);
		if (dt == DT_F32) {
			float *p = (float *)x + j + k;
			*p = __double2float_rn(__dadd_rn((double)*p, e));
		} else {
			double *p = (double *)x + j + k;
			*p = __dadd_rn(*p, e);
		}
	}
}
