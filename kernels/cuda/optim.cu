// optim.cu: fused server optimizer steps of adaptive federated optimization (Reddi et al. 2021,
// "Adaptive Federated Optimization", Algorithm 2, without bias correction), one pass over the
// server state per round.
//
// Δ is the round's aggregated client update (mean of client model deltas), x the server model,
// m and v the first and second moment states, all f32. Per element, every operation rounded in
// f32 (no FMA: the PTX is built with --fmad=false and the intrinsics below are never fused):
//
//	FedAvgM:    m = β1·m + Δ;                        x = x + lr·m
//	FedAdagrad: m = β1·m + (1-β1)·Δ;  v = v + Δ²;                            x = x + lr·m/(√v + τ)
//	FedAdam:    m = β1·m + (1-β1)·Δ;  v = β2·v + (1-β2)·Δ²;                  x = x + lr·m/(√v + τ)
//	FedYogi:    m = β1·m + (1-β1)·Δ;  v = v - (1-β2)·Δ²·sign(v - Δ²);       x = x + lr·m/(√v + τ)
//
// with √ and / correctly rounded and sign(0) = 0. FedAvgM ignores v, β2 and τ.
#include "common.cuh"

enum { OPT_AVGM = 1, OPT_ADAGRAD = 2, OPT_ADAM = 3, OPT_YOGI = 4 };

WA_ENTRY void wa_optim(int rule, float *x, const float *d, float *m, float *v, float lr, float b1, float b2, float tau,
		       u64 n) {
	u64 j = wa_gid();
	if (j >= n) return;
	float dj = d[j], mj = m[j];
	if (rule == OPT_AVGM) {
		mj = __fadd_rn(__fmul_rn(b1, mj), dj);
		x[j] = __fadd_rn(x[j], __fmul_rn(lr, mj));
		m[j] = mj;
		return;
	}
	mj = __fadd_rn(__fmul_rn(b1, mj), __fmul_rn(__fsub_rn(1.0f, b1), dj));
	float d2 = __fmul_rn(dj, dj), vj = v[j];
	switch (rule) {
	case OPT_ADAGRAD: vj = __fadd_rn(vj, d2); break;
	case OPT_ADAM: vj = __fadd_rn(__fmul_rn(b2, vj), __fmul_rn(__fsub_rn(1.0f, b2), d2)); break;
	case OPT_YOGI: {
		float diff = __fsub_rn(vj, d2);
		float sg = diff > 0.0f ? 1.0f : diff < 0.0f ? -1.0f : 0.0f;
		vj = __fsub_rn(vj, __fmul_rn(__fmul_rn(__fsub_rn(1.0f, b2), d2), sg));
		break;
	}
	}
	x[j] = __fadd_rn(x[j], __fdiv_rn(__fmul_rn(lr, mj), __fadd_rn(__fsqrt_rn(vj), tau)));
	m[j] = mj;
	v[j] = vj;
}
