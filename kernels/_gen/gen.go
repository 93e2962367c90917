// Command gen generates the AVX2+FMA+F16C assembly of package kernels with avo.
//
// Every function works on a prefix whose length is a multiple of its step (8 elements for most,
// 16 for the reductions, 32 bytes for the scans); the Go wrappers in variant_amd64.go finish the
// tail with the reference code of generic.go. Per element, each function performs exactly the
// operations of its reference loop, in the same order, so that results are bitwise identical:
// f32 accumulation is a rounded multiply then a rounded add (never a fused multiply-add), f64
// accumulation is one fused multiply-add (math.FMA), and inputs are applied in index order.
package main

//go:generate go run . -out ../kernels_amd64.s -stubs ../stubs_amd64.go -pkg kernels

import (
	"fmt"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"

	"github.com/wattagg/wattagg/kernels/_gen/internal/emit"
)

func main() {
	// avo v0.5.0 parses the old constraint syntax (a comma is an AND) and prints a //go:build line.
	ConstraintExpr("amd64,!purego,!noasm,gc")

	for _, in := range []input{inF32, inBF16, inF16, inI8} {
		genAcc(accF32, in)
	}
	for _, in := range []input{inF32, inBF16, inF16, inI8, inF64} {
		genAcc(accF64, in)
	}

	genStoreF32(outF32)
	genStoreF32(outBF16)
	genStoreF32(outF16)
	genStoreF64(outF64)
	genStoreF64(outF32)
	genStoreF64(outBF16)
	genStoreF64(outF16)

	for _, in := range []input{inF32, inBF16, inF16} {
		genSumSquares(in)
	}

	genAnyNonFinite("F32", 4)
	genAnyNonFinite("F64", 8)
	genAnyNonFinite("F16", 2)
	genAnyNonFinite("BF16", 2)

	genXorFold()

	genAVX512()

	Generate()
}

// input is the dtype of raw input bytes.
type input struct {
	name string
	size int // bytes per element
}

var (
	inF32  = input{"F32", 4}
	inBF16 = input{"BF16", 2}
	inF16  = input{"F16", 2}
	inI8   = input{"I8", 1}
	inF64  = input{"F64", 8}
)

// accum is the type of an accumulator (and of the source of a store or scale).
type accum struct {
	name   string // F32, F64
	goType string
	size   int // bytes per element
	lanes  int // elements per ymm register
}

var (
	accF32 = accum{"F32", "float32", 4, 8}
	accF64 = accum{"F64", "float64", 8, 4}
)

// output is the dtype a store writes.
type output struct {
	name string
	size int
}

var (
	outF32  = output{"F32", 4}
	outF64  = output{"F64", 8}
	outBF16 = output{"BF16", 2}
	outF16  = output{"F16", 2}
)

// broadcastD returns a ymm register holding v in every 32-bit lane.
func broadcastD(v uint32) VecVirtual {
	r := GP32()
	MOVL(U32(v), r)
	y := YMM()
	VMOVD(r, y.AsX())
	VPBROADCASTD(y.AsX(), y)
	return y
}

// ---------------------------------------------------------------------------------------------
// Weighted accumulation.

// widenF32 loads the 8 input elements at m and widens them exactly to f32 in dst.
func widenF32(in input, m Mem, dst VecVirtual) {
	switch in {
	case inF32:
		VMOVUPS(m, dst)
	case inBF16:
		VPMOVZXWD(m, dst)
		VPSLLD(U8(16), dst, dst)
	case inF16:
		VCVTPH2PS(m, dst)
	case inI8:
		VPMOVSXBD(m, dst)
		VCVTDQ2PS(dst, dst)
	default:
		panic("widenF32: " + in.name)
	}
}

// widenF64 loads the 4 input elements at m and widens them exactly to f64 in dst (for f16, bf16
// and i8 through f32, as the reference does; every step is exact).
func widenF64(in input, m Mem, dst VecVirtual) {
	switch in {
	case inF32:
		VCVTPS2PD(m, dst)
	case inBF16:
		VPMOVZXWD(m, dst.AsX())
		VPSLLD(U8(16), dst.AsX(), dst.AsX())
		VCVTPS2PD(dst.AsX(), dst)
	case inF16:
		VCVTPH2PS(m, dst.AsX())
		VCVTPS2PD(dst.AsX(), dst)
	case inI8:
		VPMOVSXBD(m, dst.AsX())
		VCVTDQ2PD(dst.AsX(), dst)
	case inF64:
		VMOVUPD(m, dst)
	default:
		panic("widenF64: " + in.name)
	}
}

// genAcc generates acc<A>From<I>AVX2(acc, w, x): the weighted accumulation of len(x) inputs
// into acc, len(acc) a multiple of 8.
//
// Inputs are taken in groups of up to maxGroup whose weights stay broadcast in registers; for
// each group the accumulator is walked in steps of accStep elements (then 8): the step's
// accumulator registers are loaded once, every input of the group is widened, multiplied and
// added in input order, and the registers are stored once. Each input byte is read once and the
// accumulator, which callers keep cache-resident, is read and written once per group.
func genAcc(a accum, in input) {
	genAccFunc(fmt.Sprintf("acc%sFrom%sAVX2", a.name, in.name), a, in, accGroup)
}

// genAccFunc emits the function name: groups of maxGroup inputs, then one group of the rest,
// each pass emitted by group.
func genAccFunc(name string, a accum, in input, group func(a accum, in input, g int, accp Register, n Mem, wp, xp Register)) {
	TEXT(name, NOSPLIT, fmt.Sprintf("func(acc []%s, w []%s, x [][]byte)", a.goType, a.goType))
	Pragma("noescape")
	Doc(fmt.Sprintf("%s is Acc%sFrom%s for len(acc) a multiple of 8 and len(w) >= len(x).", name, a.name, in.name))

	accp := Load(Param("acc").Base(), GP64())
	// len(acc) is read from its argument slot, not kept in a register: a group of 8 inputs needs
	// all the others (without BP, which is left to the frame pointer).
	n, err := Param("acc").Len().Resolve()
	if err != nil {
		panic(err)
	}
	wp := Load(Param("w").Base(), GP64())
	xp := Load(Param("x").Base(), GP64())
	cnt := Load(Param("x").Len(), GP64())

	const hdr = 24 // size of a slice header: ptr, len, cap
	const G = maxGroup
	Label("groups")
	CMPQ(cnt, U8(G))
	JB(LabelRef("rest"))
	group(a, in, G, accp, n.Addr, wp, xp)
	ADDQ(U32(G*hdr), xp)
	ADDQ(U32(G*a.size), wp)
	SUBQ(U8(G), cnt)
	JMP(LabelRef("groups"))

	Label("rest")
	for g := G - 1; g >= 1; g-- {
		CMPQ(cnt, U8(g))
		JE(LabelRef(fmt.Sprintf("group%d", g)))
	}
	JMP(LabelRef("ret"))
	for g := G - 1; g >= 1; g-- {
		Label(fmt.Sprintf("group%d", g))
		group(a, in, g, accp, n.Addr, wp, xp)
		JMP(LabelRef("ret"))
	}

	Label("ret")
	VZEROUPPER()
	RET()
}

// maxGroup is the number of inputs whose weights stay in registers while they stream over the
// accumulator: the accumulator is loaded and stored once per maxGroup inputs, and maxGroup input
// streams are read at once, which keeps more DRAM reads in flight than fewer streams do.
const maxGroup = 8

// accStep is the number of elements of the main step of a group of g inputs: 4 accumulator
// registers for f32 (32 elements); for f64, 8 registers (32 elements) while 4 or fewer weights
// leave room for them, else 4 (16 elements): g weights + accumulators + 2 temporaries <= 16.
func accStep(a accum, g int) int {
	if a == accF64 && g > 4 {
		return 16
	}
	return 32
}

// accGroup emits the pass of g inputs (headers at xp, weights at wp) over the n accumulator
// elements at accp.
func accGroup(a accum, in input, g int, accp Register, n Mem, wp, xp Register) {
	const hdr = 24
	ptrs := make([]Register, g)
	ws := make([]VecVirtual, g)
	Commentf("%d inputs", g)
	for i := range g {
		ptrs[i] = GP64()
		MOVQ(Mem{Base: xp, Disp: i * hdr}, ptrs[i])
		ws[i] = YMM()
		if a == accF32 {
			VBROADCASTSS(Mem{Base: wp, Disp: i * a.size}, ws[i])
		} else {
			VBROADCASTSD(Mem{Base: wp, Disp: i * a.size}, ws[i])
		}
	}
	// bf16 into f64: VPUNPCKLWD/VPUNPCKHWD against zero turn 8 bf16 values into the f32 bit
	// patterns of two vectors of 4 (one µop each, the load folded in), where zero-extending and
	// shifting 4 at a time costs two: the f64 path is bound by these µops, not by memory.
	var zero VecVirtual
	if a == accF64 && in == inBF16 {
		zero = XMM()
		VPXOR(zero, zero, zero)
	}
	j := GP64()
	emit.Steps(fmt.Sprintf("g%d_", g), j, n, accStep(a, g), 8, func(k int) {
		units := k / a.lanes
		accs := make([]VecVirtual, units)
		for u := range units {
			accs[u] = YMM()
			if a == accF32 {
				VMOVUPS(emit.Elem(accp, j, a.size, u*a.lanes), accs[u])
			} else {
				VMOVUPD(emit.Elem(accp, j, a.size, u*a.lanes), accs[u])
			}
		}
		for i := range g {
			if a == accF64 && in == inBF16 {
				for u := 0; u < units; u += 2 {
					m := emit.Elem(ptrs[i], j, in.size, u*a.lanes)
					lo, hi := YMM(), YMM()
					VPUNPCKLWD(m, zero, lo.AsX())
					VPUNPCKHWD(m, zero, hi.AsX())
					VCVTPS2PD(lo.AsX(), lo)
					VCVTPS2PD(hi.AsX(), hi)
					VFMADD231PD(lo, ws[i], accs[u])
					VFMADD231PD(hi, ws[i], accs[u+1])
				}
				continue
			}
			for u := range units {
				m := emit.Elem(ptrs[i], j, in.size, u*a.lanes)
				switch {
				case a == accF32 && in == inF32:
					t := YMM()
					VMULPS(m, ws[i], t)
					VADDPS(t, accs[u], accs[u])
				case a == accF32:
					t := YMM()
					widenF32(in, m, t)
					VMULPS(t, ws[i], t)
					VADDPS(t, accs[u], accs[u])
				case in == inF64:
					VFMADD231PD(m, ws[i], accs[u])
				default:
					t := YMM()
					widenF64(in, m, t)
					VFMADD231PD(t, ws[i], accs[u])
				}
			}
		}
		for u := range units {
			if a == accF32 {
				VMOVUPS(accs[u], emit.Elem(accp, j, a.size, u*a.lanes))
			} else {
				VMOVUPD(accs[u], emit.Elem(accp, j, a.size, u*a.lanes))
			}
		}
	})
}

// ---------------------------------------------------------------------------------------------
// Stores and scaling.

type bf16Consts struct{ one, bias, quiet VecVirtual }

func newBF16Consts() bf16Consts {
	return bf16Consts{broadcastD(1), broadcastD(0x7fff), broadcastD(0x40)}
}

// storeBF16 packs the bfloat16s in the low halves of the 32-bit lanes of r (8 or 16 values in
// one or two registers) and stores them at m.
func storeBF16(m Mem, r ...VecVirtual) {
	switch len(r) {
	case 1:
		hi := XMM()
		VEXTRACTI128(U8(1), r[0], hi)
		VPACKUSDW(hi, r[0].AsX(), hi)
		VMOVDQU(hi, m)
	case 2:
		// VPACKUSDW packs within 128-bit lanes: qwords r0.lo r1.lo r0.hi r1.hi; reorder.
		VPACKUSDW(r[1], r[0], r[0])
		VPERMQ(U8(0xd8), r[0], r[0])
		VMOVDQU(r[0], m)
	default:
		panic("storeBF16")
	}
}

// genStoreF32 generates storeXFromF32AVX2(dst, src, s) for len(src) a multiple of 8.
func genStoreF32(out output) {
	name := fmt.Sprintf("store%sFromF32AVX2", out.name)
	TEXT(name, NOSPLIT, "func(dst []byte, src []float32, s float32)")
	Pragma("noescape")
	Doc(fmt.Sprintf("%s is Store%sFromF32 for len(src) a multiple of 8.", name, out.name))
	dst := Load(Param("dst").Base(), GP64())
	src := Load(Param("src").Base(), GP64())
	n := Load(Param("src").Len(), GP64())
	s := YMM()
	Load(Param("s"), s.AsX())
	VBROADCASTSS(s.AsX(), s)
	j := GP64()

	// scaled loads 8 elements and multiplies them by s (src[j] * s: the element is the first
	// operand, as in the Go reference).
	scaled := func(u int) VecVirtual {
		t := YMM()
		VMOVUPS(emit.Elem(src, j, 4, 8*u), t)
		VMULPS(s, t, t)
		return t
	}
	switch out {
	case outF32:
		emit.Steps("", j, n, 32, 8, func(k int) {
			for u := range k / 8 {
				VMOVUPS(scaled(u), emit.Elem(dst, j, 4, 8*u))
			}
		})
	case outF16:
		emit.Steps("", j, n, 32, 8, func(k int) {
			for u := range k / 8 {
				VCVTPS2PH(U8(0), scaled(u), emit.Elem(dst, j, 2, 8*u))
			}
		})
	case outBF16:
		c := newBF16Consts()
		emit.Steps("", j, n, 16, 8, func(k int) {
			rs := make([]VecVirtual, k/8)
			for u := range rs {
				rs[u] = emit.BF16Round(scaled(u), c.one, c.bias, c.quiet)
			}
			storeBF16(emit.Elem(dst, j, 2, 0), rs...)
		})
	}
	VZEROUPPER()
	RET()
}

// genStoreF64 generates storeXFromF64AVX2(dst, src, s) for len(src) a multiple of 8.
func genStoreF64(out output) {
	name := fmt.Sprintf("store%sFromF64AVX2", out.name)
	TEXT(name, NOSPLIT, "func(dst []byte, src []float64, s float64)")
	Pragma("noescape")
	Doc(fmt.Sprintf("%s is Store%sFromF64 for len(src) a multiple of 8.", name, out.name))
	dst := Load(Param("dst").Base(), GP64())
	src := Load(Param("src").Base(), GP64())
	n := Load(Param("src").Len(), GP64())
	s := YMM()
	Load(Param("s"), s.AsX())
	VBROADCASTSD(s.AsX(), s)
	j := GP64()

	// scaled loads 4 elements and multiplies them by s.
	scaled := func(u int) VecVirtual {
		t := YMM()
		VMOVUPD(emit.Elem(src, j, 8, 4*u), t)
		VMULPD(s, t, t)
		return t
	}
	// narrowed returns float32(src[j]*s) of 4 elements in an xmm register.
	narrowed := func(u int) VecVirtual {
		t := scaled(u)
		f := XMM()
		VCVTPD2PSY(t, f)
		return f
	}
	switch out {
	case outF64:
		emit.Steps("", j, n, 32, 8, func(k int) {
			for u := range k / 4 {
				VMOVUPD(scaled(u), emit.Elem(dst, j, 8, 4*u))
			}
		})
	case outF32:
		emit.Steps("", j, n, 32, 8, func(k int) {
			for u := range k / 4 {
				VMOVUPS(narrowed(u), emit.Elem(dst, j, 4, 4*u))
			}
		})
	case outF16:
		emit.Steps("", j, n, 32, 8, func(k int) {
			for u := range k / 4 {
				VCVTPS2PH(U8(0), narrowed(u), emit.Elem(dst, j, 2, 4*u))
			}
		})
	case outBF16:
		c := newBF16Consts()
		emit.Steps("", j, n, 16, 8, func(k int) {
			rs := make([]VecVirtual, k/8)
			for u := range rs {
				lo, hi := narrowed(2*u), narrowed(2*u+1)
				v := YMM()
				VINSERTF128(U8(1), hi, lo.AsY(), v)
				rs[u] = emit.BF16Round(v, c.one, c.bias, c.quiet)
			}
			storeBF16(emit.Elem(dst, j, 2, 0), rs...)
		})
	}
	VZEROUPPER()
	RET()
}

// ---------------------------------------------------------------------------------------------
// Reductions.

// partials loads the 16 f64 partial sums at p into 4 ymm registers: register k holds partials
// 4k..4k+3, so element j of a 16-element step lands in partial j (= j%16 overall).
func partials(p Register) []VecVirtual {
	acc := make([]VecVirtual, 4)
	for k := range acc {
		acc[k] = YMM()
		VMOVUPD(Mem{Base: p, Disp: 32 * k}, acc[k])
	}
	return acc
}

func storePartials(p Register, acc []VecVirtual) {
	for k := range acc {
		VMOVUPD(acc[k], Mem{Base: p, Disp: 32 * k})
	}
}

// genSumSquares generates sumSquaresXAVX2(p, x): p[j%16] = FMA(x[j], x[j], p[j%16]) for the
// len(x)/size elements of x, a multiple of 16.
func genSumSquares(in input) {
	name := fmt.Sprintf("sumSquares%sAVX2", in.name)
	TEXT(name, NOSPLIT, "func(p *[16]float64, x []byte)")
	Pragma("noescape")
	Doc(fmt.Sprintf("%s is SumSquares%s's partial sums for len(x)/%d a multiple of 16.", name, in.name, in.size))
	p := Load(Param("p"), GP64())
	x := Load(Param("x").Base(), GP64())
	n := Load(Param("x").Len(), GP64())
	switch in.size {
	case 4:
		SHRQ(U8(2), n)
	case 2:
		SHRQ(U8(1), n)
	}
	acc := partials(p)
	j := GP64()
	emit.Steps("", j, n, 16, 16, func(int) {
		for k := range acc {
			v := YMM()
			widenF64(in, emit.Elem(x, j, in.size, 4*k), v)
			VFMADD231PD(v, v, acc[k])
		}
	})
	storePartials(p, acc)
	VZEROUPPER()
	RET()
}

// ---------------------------------------------------------------------------------------------
// Scans.

// genAnyNonFinite generates anyNonFiniteXAVX2(x) for len(x) a multiple of 32: whether an
// element has all its exponent bits set. It tests 128 bytes per step and returns at the first
// step with a hit.
func genAnyNonFinite(name string, size int) {
	fn := fmt.Sprintf("anyNonFinite%sAVX2", name)
	TEXT(fn, NOSPLIT, "func(x []byte) bool")
	Pragma("noescape")
	Doc(fmt.Sprintf("%s is AnyNonFinite%s for len(x) a multiple of 32.", fn, name))
	x := Load(Param("x").Base(), GP64())
	n := Load(Param("x").Len(), GP64())

	mask := YMM()
	switch size {
	case 2:
		exp := uint32(0x7c00) // f16
		if name == "BF16" {
			exp = 0x7f80
		}
		r := GP32()
		MOVL(U32(exp), r)
		VMOVD(r, mask.AsX())
		VPBROADCASTW(mask.AsX(), mask)
	case 4:
		r := GP32()
		MOVL(U32(0x7f800000), r)
		VMOVD(r, mask.AsX())
		VPBROADCASTD(mask.AsX(), mask)
	case 8:
		r := GP64()
		MOVQ(U64(0x7ff0000000000000), r)
		VMOVQ(r, mask.AsX())
		VPBROADCASTQ(mask.AsX(), mask)
	}
	// hit sets each element of t to all ones where the element at m is non-finite.
	hit := func(m Mem) VecVirtual {
		t := YMM()
		VPAND(m, mask, t)
		switch size {
		case 2:
			VPCMPEQW(mask, t, t)
		case 4:
			VPCMPEQD(mask, t, t)
		case 8:
			VPCMPEQQ(mask, t, t)
		}
		return t
	}
	j := GP64()
	emit.Steps("", j, n, 128, 32, func(k int) {
		if k == 32 {
			t := hit(Mem{Base: x, Index: j, Scale: 1})
			VPTEST(t, t)
		} else {
			t := make([]VecVirtual, 4)
			for u := range t {
				t[u] = hit(Mem{Base: x, Index: j, Scale: 1, Disp: 32 * u})
			}
			VPOR(t[1], t[0], t[0])
			VPOR(t[3], t[2], t[2])
			VPOR(t[2], t[0], t[0])
			VPTEST(t[0], t[0])
		}
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

// genXorFold generates xorFoldAVX2(x) for len(x) a multiple of 32: the XOR of its 8-byte words,
// 128 bytes per step into 4 independent registers.
func genXorFold() {
	TEXT("xorFoldAVX2", NOSPLIT, "func(x []byte) uint64")
	Pragma("noescape")
	Doc("xorFoldAVX2 is XorFold for len(x) a multiple of 32.")
	x := Load(Param("x").Base(), GP64())
	n := Load(Param("x").Len(), GP64())
	acc := make([]VecVirtual, 4)
	for u := range acc {
		acc[u] = YMM()
		VPXOR(acc[u], acc[u], acc[u])
	}
	j := GP64()
	emit.Steps("", j, n, 128, 32, func(k int) {
		for u := range k / 32 {
			VPXOR(Mem{Base: x, Index: j, Scale: 1, Disp: 32 * u}, acc[u], acc[u])
		}
	})
	VPXOR(acc[1], acc[0], acc[0])
	VPXOR(acc[3], acc[2], acc[2])
	VPXOR(acc[2], acc[0], acc[0])
	hi := XMM()
	VEXTRACTI128(U8(1), acc[0], hi)
	VPXOR(hi, acc[0].AsX(), hi)
	r, r1 := GP64(), GP64()
	VMOVQ(hi, r)
	VPEXTRQ(U8(1), hi, r1)
	XORQ(r1, r)
	Store(r, ReturnIndex(0))
	VZEROUPPER()
	RET()
}
