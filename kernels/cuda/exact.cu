// exact.cu: exact sums (device.AccField with Acc I64), the GPU side of package kernels' exact
// family. Each term w·x is rounded to an integer with the operations of kernels.ExactTerm
//
//	s = fma(w, x, 1.5·2^104)          h = bits(s) − bits(1.5·2^104)
//	r = fma(w, x, −(s − 1.5·2^104))   l = bits(r + 1.5·2^52) − bits(1.5·2^52)
//
// and the integers are added into two int64 limbs per element, S = hi·2^52 + lo, normalised so
// that lo lies in [−2^51, 2^51). Integer addition is exact, so the limbs are bit for bit the
// CPU's whatever the order of the inputs, and the stores perform the CPU's roundings in the same
// order. A thread owns one element.
#include "common.cuh"

// 1.5·2^104 and 1.5·2^52 (exact decimal forms: hexadecimal floating literals are C++17).
#define WA_MAGIC_HI 30423614405477505635920876929024.0
#define WA_MAGIC_LO 6755399441055744.0

// WA_BAD is the high limb of an element one of whose inputs was beyond its bound (or NaN or
// Inf): wa_exact_store writes it as NaN, which the host reports naming the element.
#define WA_BAD ((long long)(1ull << 63))

// Ex<DT> loads element j of an input: its value, widened exactly (an i8 value unscaled: the scale
// is in the weight), and its magnitude as the bits of its dtype with the sign cleared, which the
// CPU's kernels compare with the same limits.
template <int DT> struct Ex;

template <> struct Ex<DT_F32> {
	static __device__ __forceinline__ double get(const void *p, u64 j, u32 *mag) {
		u32 b = ((const u32 *)p)[j];
		*mag = b & 0x7fffffffu;
		return (double)__uint_as_float(b);
	}
};

template <> struct Ex<DT_BF16> {
	static __device__ __forceinline__ double get(const void *p, u64 j, u32 *mag) {
		u32 b = ((const u16 *)p)[j];
		*mag = b & 0x7fffu;
		return (double)wa_bf16_to_f32(b);
	}
};

template <> struct Ex<DT_F16> {
	static __device__ __forceinline__ double get(const void *p, u64 j, u32 *mag) {
		u32 b = ((const u16 *)p)[j];
		*mag = b & 0x7fffu;
		return (double)wa_f16_to_f32(b);
	}
};

template <> struct Ex<DT_I8> {
	static __device__ __forceinline__ double get(const void *p, u64 j, u32 *mag) {
		int q = ((const signed char *)p)[j];
		*mag = (u32)(q < 0 ? -q : q);
		return (double)q;
	}
};

// wa_exact_normalize moves whole multiples of 2^52 from lo to hi (kernels.ExactNormalize).
__device__ __forceinline__ void wa_exact_normalize(long long *h, long long *l) {
	long long c = (*l + (1ll << 51)) >> 52;
	*h += c;
	*l -= (long long)((unsigned long long)c << 52);
}

// exact_acc adds Σ_i ExactTerm(w[i], x_i[j]) to (hi[j], lo[j]) for j < n; with first set the sums
// start from zero. xs[i] is the device address of input i's element 0, lim[i] the largest
// magnitude (as kernels' maxAbs) its elements may have. The low limb is normalised every 1024
// inputs and at the end, so any number of inputs is exact.
template <int DT>
__device__ __forceinline__ void exact_acc(long long *__restrict__ hi, long long *__restrict__ lo, const u64 *__restrict__ xs,
					  const double *__restrict__ w, const u32 *__restrict__ lim, int nin, u64 n, int first) {
	u64 j = wa_gid();
	if (j >= n) return;
	long long h = 0, l = 0;
	if (!first) h = hi[j], l = lo[j];
	bool bad = h == WA_BAD;
	const long long bhi = __double_as_longlong(WA_MAGIC_HI), blo = __double_as_longlong(WA_MAGIC_LO);
	for (int i = 0; i < nin; i++) {
		u32 mag;
		double x = Ex<DT>::get((const void *)xs[i], j, &mag);
		bad = bad || mag > lim[i];
		double s = fma(w[i], x, WA_MAGIC_HI);
		h += __double_as_longlong(s) - bhi;
		double r = fma(w[i], x, -__dadd_rn(s, -WA_MAGIC_HI));
		l += __double_as_longlong(__dadd_rn(r, WA_MAGIC_LO)) - blo;
		if ((i & 1023) == 1023) wa_exact_normalize(&h, &l);
	}
	wa_exact_normalize(&h, &l);
	if (bad) h = WA_BAD;
	hi[j] = h;
	lo[j] = l;
}

#define WA_EXACT_ACC(name, DT)                                                                                  \
	WA_ENTRY void name(long long *hi, long long *lo, const u64 *xs, const double *w, const u32 *lim, int nin, \
			   u64 n, int first) {                                                                  \
		exact_acc<DT>(hi, lo, xs, w, lim, nin, n, first);                                               \
	}

WA_EXACT_ACC(wa_exact_acc_f32, DT_F32)
WA_EXACT_ACC(wa_exact_acc_bf16, DT_BF16)
WA_EXACT_ACC(wa_exact_acc_f16, DT_F16)
WA_EXACT_ACC(wa_exact_acc_i8, DT_I8)

// wa_exact_store writes y[j] = float32(float64(hi[j])·2^52 + float64(lo[j]), times s) as dtype
// out (f32, bf16 or f16): kernels.ExactStoreF32, ExactStoreBF16 and ExactStoreF16, each step
// rounded once in the same order. An element marked WA_BAD is written as NaN.
WA_ENTRY void wa_exact_store(void *y, int out, const long long *hi, const long long *lo, double s, u64 n) {
	u64 j = wa_gid();
	if (j >= n) return;
	float v;
	if (hi[j] == WA_BAD) {
		v = __uint_as_float(0x7fc00000u);
	} else {
		double d = __dadd_rn(__dmul_rn(__ll2double_rn(hi[j]), 4503599627370496.0 /* 2^52 */), __ll2double_rn(lo[j]));
		v = __double2float_rn(__dmul_rn(d, s));
	}
	switch (out) {
	case DT_F32: ((float *)y)[j] = v; break;
	case DT_BF16: ((u16 *)y)[j] = wa_f32_to_bf16(v); break;
	case DT_F16: ((u16 *)y)[j] = wa_f32_to_f16(v); break;
	}
}
