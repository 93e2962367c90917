package main

// The AVX-512 (F, BW, VL, DQ) functions of the core family: accumulation, stores, scaling,
// scans and XorFold with 32 vector registers, mask registers and, where it pays, 512-bit
// registers, with the steps and contracts of the AVX2 functions
// (a prefix whose length is a multiple of 8 elements, or of 32 bytes for the scans; the Go
// wrappers finish the tail with the reference). Per element they perform the operations of the
// AVX2 functions, so the results are the reference's bits. The f64 reductions (Dot,
// SumSquares) have no AVX-512 version: their 16 partial sums are 16 serial FMA chains, which
// four ymm registers already keep busy; wider registers cannot shorten them.
//
// AVX512_BF16 is not used: VCVTNEPS2BF16 flushes subnormal inputs and results to zero and
// VDPBF16PS rounds its products differently from the references.
//
// Streams are read with loads of at most 256 bits. On the Zen 4 where these kernels were
// measured, 512-bit loads read DRAM 20% slower than 256-bit ones (XorFold over 64 MiB,
// alternating runs: 13.3 against 16.7 GB/s), so the kernels that only stream (f32 into f32,
// f64 into f64, the scans, XorFold) work on ymm registers with the AVX-512 encodings, and the
// converting kernels, whose inputs are narrower than their registers, load 256 bits or less
// per instruction anyway.

import (
	"fmt"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"

	"github.com/wattagg/wattagg/kernels/_gen/internal/emit"
)

func genAVX512() {
	for _, in := range []input{inF32, inBF16, inF16, inI8} {
		genAccFunc(fmt.Sprintf("accF32From%sAVX512", in.name), accF32, in, accGroup512)
	}
	for _, in := range []input{inF32, inBF16, inF16, inI8, inF64} {
		genAccFunc(fmt.Sprintf("accF64From%sAVX512", in.name), accF64, in, accGroup512)
	}

	genStoreF32AVX512(outF32)
	genStoreF32AVX512(outBF16)
	genStoreF32AVX512(outF16)
	genStoreF64AVX512(outF64)
	genStoreF64AVX512(outF32)
	genStoreF64AVX512(outBF16)
	genStoreF64AVX512(outF16)

	genAnyNonFiniteAVX512("F32", 4)
	genAnyNonFiniteAVX512("F64", 8)
	genAnyNonFiniteAVX512("F16", 2)
	genAnyNonFiniteAVX512("BF16", 2)

	genXorFoldAVX512()
}

// broadcastD512 returns a zmm register holding v in every 32-bit lane.
func broadcastD512(v uint32) VecVirtual {
	r := GP32()
	MOVL(U32(v), r)
	z := ZMM()
	VPBROADCASTD(r, z)
	return z
}

// vec returns the view of z that holds k elements of size bytes: z itself for 64 bytes, its
// ymm half for 32.
func vec(z VecVirtual, k, size int) Register {
	switch k * size {
	case 64:
		return z
	case 32:
		return z.AsY()
	}
	panic(fmt.Sprintf("vec: %d elements of %d bytes", k, size))
}

// ---------------------------------------------------------------------------------------------
// Weighted accumulation.

// accStep512 is the main step of a group pass: 4 zmm registers of f32 (64 elements), 8 of f64
// (64 elements); g weights, the accumulators and two temporaries fit in the 32 registers
// whatever g.
const accStep512 = 64

// accGroup512 is accGroup on zmm registers. The main step holds 4 (f32) or 8 (f64) accumulator
// registers; the step of 8 elements runs on one ymm (f32) or zmm (f64) register.
//
// bf16 into f64 keeps VPUNPCKLWD/VPUNPCKHWD against zero, on ymm registers: 16 bf16 values become
// the f32 bit patterns of elements 0-3, 8-11 and of 4-7, 12-15, and VCVTPS2PD widens each group
// of 8 to a zmm register. The accumulators of the main step are held in that order (loaded and
// stored in 32-byte halves, once per group of inputs), so each input element costs half the
// shuffles of the AVX2 loop.
func accGroup512(a accum, in input, g int, accp Register, n Mem, wp, xp Register) {
	const hdr = 24
	ptrs := make([]Register, g)
	ws := make([]VecVirtual, g)
	Commentf("%d inputs", g)
	for i := range g {
		ptrs[i] = GP64()
		MOVQ(Mem{Base: xp, Disp: i * hdr}, ptrs[i])
		ws[i] = ZMM()
		if a == accF32 {
			VBROADCASTSS(Mem{Base: wp, Disp: i * a.size}, ws[i])
		} else {
			VBROADCASTSD(Mem{Base: wp, Disp: i * a.size}, ws[i])
		}
	}
	permuted := a == accF64 && in == inBF16
	var zero VecVirtual
	if permuted {
		zero = ZMM()
		VPXORQ(zero, zero, zero)
	}
	// Elements per register: a zmm register's worth, or a ymm register's where that measured
	// faster on Zen 4 (see ymmLanes).
	lanes := 64 / a.size
	if ymmLanes(a, in) {
		lanes = 32 / a.size
	}
	j := GP64()
	emit.Steps(fmt.Sprintf("g%d_", g), j, n, accStep512, 8, func(k int) {
		per := min(k, lanes) // elements per register in this step
		units := k / per
		accs := make([]VecVirtual, units)
		for u := range accs {
			accs[u] = ZMM()
		}
		pairs := permuted && k == accStep512
		// Load the accumulators (in the permuted order of the bf16 pairs).
		for u := range units {
			r := vec(accs[u], per, a.size)
			switch {
			case pairs:
				// Register u of pair p holds elements 16p+4(u%2) + {0..3, 8..11}.
				base := 16*(u/2) + 4*(u%2)
				VMOVUPD(emit.Elem(accp, j, 8, base), accs[u].AsY())
				VINSERTF64X4(U8(1), emit.Elem(accp, j, 8, base+8), accs[u], accs[u])
			case a == accF32:
				VMOVUPS(emit.Elem(accp, j, 4, u*per), r)
			default:
				VMOVUPD(emit.Elem(accp, j, 8, u*per), r)
			}
		}
		for i := range g {
			w := vec(ws[i], per, a.size)
			if pairs {
				for u := 0; u < units; u += 2 {
					m := emit.Elem(ptrs[i], j, in.size, 8*u)
					lo, hi := ZMM(), ZMM()
					VPUNPCKLWD(m, zero.AsY(), lo.AsY())
					VPUNPCKHWD(m, zero.AsY(), hi.AsY())
					VCVTPS2PD(lo.AsY(), lo)
					VCVTPS2PD(hi.AsY(), hi)
					VFMADD231PD(lo, w, accs[u])
					VFMADD231PD(hi, w, accs[u+1])
				}
				continue
			}
			for u := range units {
				m := emit.Elem(ptrs[i], j, in.size, u*per)
				acc := vec(accs[u], per, a.size)
				t := ZMM()
				tv := vec(t, per, a.size)
				switch {
				case a == accF32 && in == inF32:
					VMULPS(m, w, tv)
					VADDPS(tv, acc, acc)
				case a == accF32:
					widen512F32(in, m, tv)
					VMULPS(tv, w, tv)
					VADDPS(tv, acc, acc)
				case in == inF64:
					VFMADD231PD(m, w, acc)
				default:
					widen512F64(in, m, t, per)
					VFMADD231PD(tv, w, acc)
				}
			}
		}
		for u := range units {
			r := vec(accs[u], per, a.size)
			switch {
			case pairs:
				base := 16*(u/2) + 4*(u%2)
				VMOVUPD(accs[u].AsY(), emit.Elem(accp, j, 8, base))
				VEXTRACTF64X4(U8(1), accs[u], emit.Elem(accp, j, 8, base+8))
			case a == accF32:
				VMOVUPS(r, emit.Elem(accp, j, 4, u*per))
			default:
				VMOVUPD(r, emit.Elem(accp, j, 8, u*per))
			}
		}
	})
}

// ymmLanes reports whether the accumulation of in into a runs on ymm registers (with the
// AVX-512 encodings and 32 registers) rather than zmm ones: the streams as wide as the
// accumulator, loaded 256 bits at a time (see the top of the file), and f16 into f32, where
// VCVTPH2PS into a zmm register converts fewer elements per cycle than into a ymm one on Zen 4
// (8 inputs of 8Ki elements into an L2-resident accumulator, median thread CPU time of
// alternating runs: zmm 0.81x the speed of the AVX2 loop, ymm 0.99x). f32 into f64 keeps zmm
// registers although the AVX2 loop is faster on L2-resident data (zmm 0.74x, ymm 0.84x): in
// the FedAvg-shaped benchmark (32 inputs of 4Mi elements from DRAM) zmm runs 1.11x the AVX2
// loop's speed, ymm 0.98x.
func ymmLanes(a accum, in input) bool {
	return in.size == a.size || a == accF32 && in == inF16
}

// widen512F32 loads the input elements at m (16 for a zmm dst, 8 for a ymm one) and widens them
// exactly to f32.
func widen512F32(in input, m Mem, dst Register) {
	switch in {
	case inBF16:
		VPMOVZXWD(m, dst)
		VPSLLD(U8(16), dst, dst)
	case inF16:
		VCVTPH2PS(m, dst)
	case inI8:
		VPMOVSXBD(m, dst)
		VCVTDQ2PS(dst, dst)
	default:
		panic("widen512F32: " + in.name)
	}
}

// widen512F64 loads the per (8, or 4 for f32 inputs on ymm registers) input elements at m and
// widens them exactly to f64 in dst (16-bit floats and i8 through f32, as the reference does;
// every step is exact).
func widen512F64(in input, m Mem, dst VecVirtual, per int) {
	switch in {
	case inF32:
		VCVTPS2PD(m, vec(dst, per, 8))
	case inBF16:
		VPMOVZXWD(m, dst.AsY())
		VPSLLD(U8(16), dst.AsY(), dst.AsY())
		VCVTPS2PD(dst.AsY(), dst)
	case inF16:
		VCVTPH2PS(m, dst.AsY())
		VCVTPS2PD(dst.AsY(), dst)
	case inI8:
		VPMOVSXBD(m, dst.AsY())
		VCVTDQ2PD(dst.AsY(), dst)
	default:
		panic("widen512F64: " + in.name)
	}
}

// ---------------------------------------------------------------------------------------------
// Stores and scaling.

// bf16Round512 is emit.BF16Round on a zmm or ymm register: the bfloat16 of each f32 lane of v in the
// low 16 bits of its 32-bit lane, (b + 0x7fff + (b>>16)&1) >> 16, or (b>>16) | 0x40 for a NaN
// (merged under the mask of the unordered compare).
func bf16Round512(v Register, c bf16Consts) Register {
	w := func(z VecVirtual) Register { return vecLike(z, v) }
	hi, lsb, r := w(ZMM()), w(ZMM()), w(ZMM())
	VPSRLD(U8(16), v, hi)
	VPANDD(w(c.one), hi, lsb)
	VPADDD(w(c.bias), v, r)
	VPADDD(lsb, r, r)
	VPSRLD(U8(16), r, r)
	nan := K()
	VCMPPS(U8(3), v, v, nan) // unordered: v is NaN
	VPORD(w(c.quiet), hi, nan, r)
	return r
}

// vecLike returns the view of the zmm z as wide as v.
func vecLike(z VecVirtual, v Register) Register {
	if v.Size() == 32 {
		return z.AsY()
	}
	return z
}

func newBF16Consts512() bf16Consts {
	return bf16Consts{broadcastD512(1), broadcastD512(0x7fff), broadcastD512(0x40)}
}

// storeBF16AVX512 narrows the bfloat16s in the low halves of the 32-bit lanes of r (16 in a
// zmm, 8 in a ymm register) to words, in order, and stores them at m.
func storeBF16AVX512(m Mem, r Register) { VPMOVDW(r, m) }

// genStoreF32AVX512 generates storeXFromF32AVX512(dst, src, s) for len(src) a multiple of 8.
func genStoreF32AVX512(out output) {
	name := fmt.Sprintf("store%sFromF32AVX512", out.name)
	TEXT(name, NOSPLIT, "func(dst []byte, src []float32, s float32)")
	Pragma("noescape")
	Doc(fmt.Sprintf("%s is Store%sFromF32 for len(src) a multiple of 8.", name, out.name))
	dst := Load(Param("dst").Base(), GP64())
	src := Load(Param("src").Base(), GP64())
	n := Load(Param("src").Len(), GP64())
	s := ZMM()
	Load(Param("s"), s.AsX())
	VBROADCASTSS(s.AsX(), s)
	j := GP64()
	var c bf16Consts
	if out == outBF16 {
		c = newBF16Consts512()
	}
	// scaled loads per elements (16 or 8) from element off and multiplies them by s (src[j] * s:
	// the element is the first operand, as in the Go reference, which decides a NaN's payload).
	scaled := func(off, per int) Register {
		t := vec(ZMM(), per, 4)
		VMOVUPS(emit.Elem(src, j, 4, off), t)
		VMULPS(vec(s, per, 4), t, t)
		return t
	}
	emit.Steps("", j, n, 64, 8, func(k int) {
		per := min(k, 16)
		for u := range k / per {
			v := scaled(u*per, per)
			switch out {
			case outF32:
				VMOVUPS(v, emit.Elem(dst, j, 4, u*per))
			case outF16:
				VCVTPS2PH(U8(0), v, emit.Elem(dst, j, 2, u*per))
			case outBF16:
				storeBF16AVX512(emit.Elem(dst, j, 2, u*per), bf16Round512(v, c))
			}
		}
	})
	VZEROUPPER()
	RET()
}

// genStoreF64AVX512 generates storeXFromF64AVX512(dst, src, s) for len(src) a multiple of 8.
func genStoreF64AVX512(out output) {
	name := fmt.Sprintf("store%sFromF64AVX512", out.name)
	TEXT(name, NOSPLIT, "func(dst []byte, src []float64, s float64)")
	Pragma("noescape")
	Doc(fmt.Sprintf("%s is Store%sFromF64 for len(src) a multiple of 8.", name, out.name))
	dst := Load(Param("dst").Base(), GP64())
	src := Load(Param("src").Base(), GP64())
	n := Load(Param("src").Len(), GP64())
	s := ZMM()
	Load(Param("s"), s.AsX())
	VBROADCASTSD(s.AsX(), s)
	j := GP64()
	var c bf16Consts
	if out == outBF16 {
		c = newBF16Consts512()
	}
	// scaled loads 8 elements from element off and multiplies them by s.
	scaled := func(off int) VecVirtual {
		t := ZMM()
		VMOVUPD(emit.Elem(src, j, 8, off), t)
		VMULPD(s, t, t)
		return t
	}
	// narrowed returns float32(src[j]*s) of 8 elements in the ymm half of a zmm register.
	narrowed := func(off int) VecVirtual {
		f := ZMM()
		VCVTPD2PS(scaled(off), f.AsY())
		return f
	}
	emit.Steps("", j, n, 32, 8, func(k int) {
		if out == outBF16 && k == 32 {
			// 16 elements per bf16 register: two narrowed halves.
			for h := 0; h < k; h += 16 {
				v := narrowed(h)
				VINSERTF64X4(U8(1), narrowed(h+8).AsY(), v, v)
				storeBF16AVX512(emit.Elem(dst, j, 2, h), bf16Round512(v, c))
			}
			return
		}
		for u := 0; u < k; u += 8 {
			switch out {
			case outF64:
				VMOVUPD(scaled(u), emit.Elem(dst, j, 8, u))
			case outF32:
				VMOVUPS(narrowed(u).AsY(), emit.Elem(dst, j, 4, u))
			case outF16:
				VCVTPS2PH(U8(0), narrowed(u).AsY(), emit.Elem(dst, j, 2, u))
			case outBF16:
				storeBF16AVX512(emit.Elem(dst, j, 2, u), bf16Round512(narrowed(u).AsY(), c))
			}
		}
	})
	VZEROUPPER()
	RET()
}

// ---------------------------------------------------------------------------------------------
// Scans.

// genAnyNonFiniteAVX512 generates anyNonFiniteXAVX512(x) for len(x) a multiple of 32: 256 bytes
// per step in 8 ymm loads, then 32. Each element's exponent bits (x & mask) are at most mask,
// and equal to it exactly when the element is non-finite, so a step takes the unsigned maximum
// of its 8 masked registers and compares that with mask once, into a mask register.
func genAnyNonFiniteAVX512(name string, size int) {
	fn := fmt.Sprintf("anyNonFinite%sAVX512", name)
	TEXT(fn, NOSPLIT, "func(x []byte) bool")
	Pragma("noescape")
	Doc(fmt.Sprintf("%s is AnyNonFinite%s for len(x) a multiple of 32.", fn, name))
	x := Load(Param("x").Base(), GP64())
	n := Load(Param("x").Len(), GP64())

	var mask VecVirtual
	switch size {
	case 2:
		exp := uint32(0x7c00) // f16
		if name == "BF16" {
			exp = 0x7f80
		}
		mask = broadcastD512(exp<<16 | exp)
	case 4:
		mask = broadcastD512(0x7f800000)
	case 8:
		r := GP64()
		MOVQ(U64(0x7ff0000000000000), r)
		mask = ZMM()
		VPBROADCASTQ(r, mask)
	}
	// masked returns the exponent bits of the 32 bytes at m.
	masked := func(m Mem) Register {
		t := ZMM().AsY()
		VPANDD(m, mask.AsY(), t)
		return t
	}
	maxU := func(a, b, dst Register) {
		switch size {
		case 2:
			VPMAXUW(a, b, dst)
		case 4:
			VPMAXUD(a, b, dst)
		case 8:
			VPMAXUQ(a, b, dst)
		}
	}
	j := GP64()
	emit.Steps("", j, n, 256, 32, func(k int) {
		ts := make([]Register, k/32)
		for u := range ts {
			ts[u] = masked(Mem{Base: x, Index: j, Scale: 1, Disp: 32 * u})
		}
		for w := 1; w < len(ts); w *= 2 { // a tree: 4, 2, 1 maxima
			for u := 0; u+w < len(ts); u += 2 * w {
				maxU(ts[u+w], ts[u], ts[u])
			}
		}
		t := ts[0]
		h := K()
		mk := mask.AsY()
		switch size {
		case 2:
			VPCMPEQW(mk, t, h)
		case 4:
			VPCMPEQD(mk, t, h)
		case 8:
			VPCMPEQQ(mk, t, h)
		}
		KORTESTD(h, h)
		JNZ(LabelRef("found"))
	})
	r := GP8()
	XORB(r, r)
	Store(r, ReturnIndex(0))
	VZEROUPPER()
	RET()

	Label("found")
	MOVB(U8(1), r)
	Store(r, ReturnIndex(0))
	VZEROUPPER()
	RET()
}

// genXorFoldAVX512 generates xorFoldAVX512(x) for len(x) a multiple of 32: the XOR of its 8-byte
// words, 256 bytes per step into 8 ymm registers (256-bit loads, see above), then 32 bytes.
func genXorFoldAVX512() {
	TEXT("xorFoldAVX512", NOSPLIT, "func(x []byte) uint64")
	Pragma("noescape")
	Doc("xorFoldAVX512 is XorFold for len(x) a multiple of 32.")
	x := Load(Param("x").Base(), GP64())
	n := Load(Param("x").Len(), GP64())
	acc := make([]Register, 8)
	for u := range acc {
		acc[u] = ZMM().AsY()
		VPXORQ(acc[u], acc[u], acc[u])
	}
	j := GP64()
	emit.Steps("", j, n, 256, 32, func(k int) {
		for u := range k / 32 {
			VPXORQ(Mem{Base: x, Index: j, Scale: 1, Disp: 32 * u}, acc[u], acc[u])
		}
	})
	for w := 1; w < len(acc); w *= 2 {
		for u := 0; u+w < len(acc); u += 2 * w {
			VPXORQ(acc[u+w], acc[u], acc[u])
		}
	}
	hi := ZMM()
	VEXTRACTI32X4(U8(1), acc[0], hi.AsX())
	VPXORQ(acc[0].(Vec).AsX(), hi.AsX(), hi.AsX())
	r, r1 := GP64(), GP64()
	VMOVQ(hi.AsX(), r)
	VPEXTRQ(U8(1), hi.AsX(), r1)
	XORQ(r1, r)
	Store(r, ReturnIndex(0))
	VZEROUPPER()
	RET()
}
