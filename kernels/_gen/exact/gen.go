// Command exact generates the assembly of package kernels' exact family with avo: weighted sums
// whose terms are rounded to integers and added exactly, so that the result does not depend on
// the order of the terms (kernels/exact.go holds the contracts and the reference loops).
//
// It is a generator of its own beside kernels/_gen and kernels/_gen/optim, with its own output
// files (kernels/exact_amd64.s, kernels/exact_stubs_amd64.go). Per term the accumulation does
// what kernels.ExactTerm does, with the same f64 operations in the same order: the fused
// multiply-add of w·x and the magic constant 1.5·2^104, whose mantissa holds the high part, its
// subtraction, the fused remainder w·x − h·2^52, and the addition of 1.5·2^52, whose mantissa
// holds the low part. Fusing the products (rather than rounding w·x to f64 first) rounds each
// term once to the grid, and puts two of the four operations on the FMA pipes beside the two
// additions. The limbs take the bit patterns of the two sums (VPADDQ) rather than the parts
// themselves: each term then adds the constants' bit patterns too, which the call's last pass
// over the limbs removes before it stores them, with the normalisation of the low limb, modulo
// 2^64 (finish). The sums are integers, so the assembly's limbs equal the reference's bit for
// bit whatever the grouping.
package main

//go:generate go run . -out ../../exact_amd64.s -stubs ../../exact_stubs_amd64.go -pkg kernels

import (
	"fmt"
	"math"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"

	"github.com/wattagg/wattagg/kernels/_gen/internal/emit"
)

func main() {
	// avo v0.5.0 parses the old constraint syntax (a comma is an AND) and prints a //go:build
	// line; the words are those of kernels/_gen.
	ConstraintExpr("amd64,!purego,!noasm,gc")

	genConsts()
	for _, in := range inputs {
		genAcc(in, avx2)
	}
	for _, out := range []output{outF32, outBF16, outF16} {
		genStore(out)
	}
	for _, in := range []input{inF32, inBF16, inF16} {
		genBeyond(in)
	}
	for _, in := range inputs {
		genAcc(in, avx512)
	}
	for _, s := range []isa{avx2, avx512} {
		for _, in := range inputs {
			genAcc1(in, s)
		}
	}

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
	inputs = []input{inF32, inBF16, inF16, inI8}
)

// output is the dtype a store writes.
type output struct {
	name string
	size int
}

var (
	outF32  = output{"F32", 4}
	outBF16 = output{"BF16", 2}
	outF16  = output{"F16", 2}
)

// isa is the vector width a function is generated for.
type isa struct {
	wide   bool // AVX-512 (zmm) rather than AVX2 (ymm)
	suffix string
	lanes  int // int64 / f64 lanes per register
	vec    func() VecVirtual
	step   int // elements of the main step of the accumulation
}

var (
	avx2   = isa{false, "AVX2", 4, YMM, 8}
	avx512 = isa{true, "AVX512", 8, ZMM, 32}
)

// The magic constants of kernels.ExactTerm and the constants of the int64 conversion.
const (
	magicHi = 0x1.8p104
	magicLo = 0x1.8p52
)

// maxGroup is the number of inputs applied per pass over the accumulator: their pointers, the
// two limb pointers and the loop's registers take the 14 general registers avo allocates.
const maxGroup = 7

// consts is the read-only table of 32-byte vector constants (each value in four 64-bit lanes):
// memory operands for the functions that need more constants than registers.
var consts Mem

const (
	cMagicLo   = iota // 1.5·2^52: its bits turn an int64 below 2^51 into a double, and back
	cTwo52            // 2^52: the weight of the high limb
	cC67              // bits of 3·2^67 (the high half of the int64 conversion)
	cBits52           // bits of 2^52, whose top word replaces an int64's (the low half)
	cC67Plus52        // 3·2^67 + 2^52, subtracted to leave hi as a double
	cAbsF32           // 0x7fffffff in every 32-bit lane
	cAbs16            // 0x7fff in every 16-bit lane
	cOne32            // 1 in every 32-bit lane (bf16 rounding)
	cBias32           // 0x7fff in every 32-bit lane (bf16 rounding)
	cQuiet32          // 0x40 in every 32-bit lane (bf16 NaN)
	nConsts
)

func genConsts() {
	consts = GLOBL("exactconsts", RODATA|NOPTR)
	q := func(k int, v uint64) {
		for l := range 4 {
			DATA(32*k+8*l, U64(v))
		}
	}
	d := func(k int, v uint32) { q(k, uint64(v)|uint64(v)<<32) }
	q(cMagicLo, math.Float64bits(magicLo))
	q(cTwo52, math.Float64bits(0x1p52))
	q(cC67, math.Float64bits(0x1.8p68))
	q(cBits52, math.Float64bits(0x1p52))
	q(cC67Plus52, math.Float64bits(0x1.8p68+0x1p52))
	d(cAbsF32, 0x7fffffff)
	d(cAbs16, 0x7fff7fff)
	d(cOne32, 1)
	d(cBias32, 0x7fff)
	d(cQuiet32, 0x40)
}

func konst(k int) Mem { return consts.Offset(32 * k) }

// broadcastQ returns a vector holding the 64-bit v in every lane.
func broadcastQ(s isa, v uint64) VecVirtual {
	r := GP64()
	MOVQ(U64(v), r)
	x := s.vec()
	if s.wide {
		VPBROADCASTQ(r, x)
		return x
	}
	VMOVQ(r, x.AsX())
	VPBROADCASTQ(x.AsX(), x)
	return x
}

// ---------------------------------------------------------------------------------------------
// Accumulation.

// genAcc generates exactAcc<I><ISA>(hi, lo, w, x, c) uint32: the terms of every input added to
// the limbs as bit patterns, for len(hi) a multiple of 8 (and of the ISA's step), the last pass
// over the limbs finishing them with c = kernels.exactFinishConsts(len(x)) (finish); it returns
// the largest magnitude among the input elements, as the bits of its dtype (|x| of a NaN above
// every number's), which the callers compare with their bound. Finishing in the last pass
// rather than in a pass of its own spares a load and a store of both limbs per element: for
// the one input of a piece arriving at the server, a third of the accumulator's traffic.
func genAcc(in input, s isa) {
	name := fmt.Sprintf("exactAcc%s%s", in.name, s.suffix)
	TEXT(name, NOSPLIT, "func(hi []int64, lo []int64, w []float64, x [][]byte, c *[4]int64) uint32")
	Pragma("noescape")
	Doc(fmt.Sprintf("%s adds the terms of ExactAcc%s to the limbs as the bit patterns of the two magic sums and finishes them (c is kernels.exactFinishConsts(len(x))), for len(hi) a multiple of 8 and len(x) > 0, and returns the largest magnitude among the elements as the bits of their dtype.", name, in.name))
	hip := Load(Param("hi").Base(), GP64())
	lop := Load(Param("lo").Base(), GP64())
	n, err := Param("hi").Len().Resolve()
	if err != nil {
		panic(err)
	}
	wp := Load(Param("w").Base(), GP64())
	xp := Load(Param("x").Base(), GP64())
	cnt := Load(Param("x").Len(), GP64())
	var wst Mem // AVX2: the group's weights, broadcast, on the stack (registers are short)
	if !s.wide {
		wst = AllocLocal(32 * maxGroup)
	}
	mx := newMaxCheck(in, s)
	rs := newAccRegs(s)
	fin := newFinish(s)

	groupPasses(cnt, wp, xp, mx, func(g int, last bool) {
		f := fin
		if !last {
			f = nil
		}
		accGroup(in, s, g, hip, lop, n.Addr, wp, xp, wst, mx, rs, f)
	})
}

// groupPasses emits the passes over the accumulator of an accumulation function, maxGroup
// inputs at a time (headers at xp, weights at wp, cnt of them), the last group (full or not)
// last, and the return of the largest magnitude: pass(g, last) emits the pass of g inputs.
func groupPasses(cnt, wp, xp Register, mx *maxCheck, pass func(g int, last bool)) {
	const hdr = 24 // a slice header: ptr, len, cap
	Label("groups")
	CMPQ(cnt, U8(maxGroup))
	JBE(LabelRef("rest")) // the last group, full or not, finishes
	pass(maxGroup, false)
	ADDQ(U32(maxGroup*hdr), xp)
	ADDQ(U32(maxGroup*8), wp)
	SUBQ(U8(maxGroup), cnt)
	JMP(LabelRef("groups"))

	Label("rest")
	for g := maxGroup; g >= 1; g-- {
		CMPQ(cnt, U8(g))
		JE(LabelRef(fmt.Sprintf("group%d", g)))
	}
	JMP(LabelRef("ret"))
	for g := maxGroup; g >= 1; g-- {
		Label(fmt.Sprintf("group%d", g))
		pass(g, true)
		JMP(LabelRef("ret"))
	}
	Label("ret")
	Store(mx.reduce(), ReturnIndex(0))
	VZEROUPPER()
	RET()
}

// groupInputs loads the pointers of the g inputs whose headers are at xp and makes their
// weights (at wp) memory operands: broadcast to the stack at wst on AVX2, embedded broadcasts
// on AVX-512.
func groupInputs(s isa, g int, wp, xp Register, wst Mem) ([]Register, []Op) {
	const hdr = 24
	ptrs := make([]Register, g)
	ws := make([]Op, g)
	Commentf("%d inputs", g)
	for i := range g {
		ptrs[i] = GP64()
		MOVQ(Mem{Base: xp, Disp: i * hdr}, ptrs[i])
		if s.wide {
			ws[i] = Mem{Base: wp, Disp: 8 * i} // embedded broadcast
			continue
		}
		v := s.vec()
		VBROADCASTSD(Mem{Base: wp, Disp: 8 * i}, v)
		VMOVUPD(v, wst.Offset(32*i))
		ws[i] = wst.Offset(32 * i)
	}
	return ptrs, ws
}

// maxCheck tracks the largest magnitude of the input elements as unsigned integers of the
// dtype's width: the sign bit cleared (VPAND; VPABSB for i8), then VPMAXU*. Non-negative floats,
// subnormals to infinity and NaN, order as their bits do. It keeps one maximum per load width
// (64, 32, 16 bytes; 8-byte loads go to the 16-byte one), each a register of exactly that width:
// avo's liveness takes a narrower write to a wider virtual register for a partial one, which
// keeps the register live before it and can make allocation fail.
type maxCheck struct {
	in   input
	maxs map[int]VecVirtual // by register width in bytes
}

func newMaxCheck(in input, s isa) *maxCheck {
	m := &maxCheck{in: in, maxs: map[int]VecVirtual{}}
	for _, k := range []int{s.step, 8} {
		for _, w := range loadWidths(k * in.size) {
			rw := max(w, 16)
			if m.maxs[rw] == nil {
				m.maxs[rw] = vecOfWidth(rw)
				zero(m.maxs[rw], rw)
			}
		}
	}
	return m
}

// loadWidths cuts n bytes into the loads of update: 64 bytes at a time, then what is left.
func loadWidths(n int) []int {
	var ws []int
	for ; n > 0; n -= min(n, 64) {
		ws = append(ws, min(n, 64))
	}
	return ws
}

func vecOfWidth(w int) VecVirtual {
	switch w {
	case 64:
		return ZMM()
	case 32:
		return YMM()
	}
	return XMM()
}

func zero(v VecVirtual, w int) {
	if w == 64 {
		VPXORQ(v, v, v)
	} else {
		VPXOR(v, v, v)
	}
}

// update folds the k elements at p into the maxima.
func (m *maxCheck) update(p Mem, k int) {
	off := 0
	for _, w := range loadWidths(k * m.in.size) {
		rw := max(w, 16)
		raw, mx := vecOfWidth(rw), m.maxs[rw]
		at := p.Offset(off)
		off += w
		switch w {
		case 64:
			VMOVDQU64(at, raw)
		case 32, 16:
			VMOVDQU(at, raw)
		case 8:
			VMOVQ(at, raw)
		default:
			panic(fmt.Sprintf("maxCheck: %d bytes", w))
		}
		switch {
		case m.in == inI8:
			VPABSB(raw, raw)
		case rw == 64:
			VPANDD_BCST(konst(m.absConst()), raw, raw)
		default:
			VPAND(konst(m.absConst()), raw, raw)
		}
		m.fold(raw, mx, mx)
	}
}

func (m *maxCheck) absConst() int {
	if m.in.size == 2 {
		return cAbs16
	}
	return cAbsF32
}

// reduce returns the largest lane of the maxima, zero-extended to 32 bits.
func (m *maxCheck) reduce() GPVirtual {
	h := XMM()
	if x := m.maxs[16]; x != nil {
		VMOVDQU(x, h)
	} else {
		VPXOR(h, h, h)
	}
	if z := m.maxs[64]; z != nil {
		y := YMM()
		VEXTRACTI64X4(U8(1), z, y)
		m.fold(y, z.AsY(), y)
		t := XMM()
		VEXTRACTI128(U8(1), y, t)
		m.fold(t, y.AsX(), t)
		m.fold(t, h, h)
	}
	if y := m.maxs[32]; y != nil {
		t := XMM()
		VEXTRACTI128(U8(1), y, t)
		m.fold(t, y.AsX(), t)
		m.fold(t, h, h)
	}
	t := XMM()
	VPSHUFD(U8(0x4e), h, t)
	m.fold(t, h, h)
	VPSHUFD(U8(0xb1), h, t)
	m.fold(t, h, h)
	if m.in.size <= 2 {
		VPSRLD(U8(16), h, t)
		m.fold(t, h, h)
	}
	if m.in.size == 1 {
		VPSRLW(U8(8), h, t)
		m.fold(t, h, h)
	}
	r := GP32()
	VMOVD(h, r)
	switch m.in.size {
	case 2:
		ANDL(U32(0xffff), r)
	case 1:
		ANDL(U32(0xff), r)
	}
	return r
}

// fold is dst = max(a, b) in the lanes of the check's width.
func (m *maxCheck) fold(a, b, dst Op) {
	switch m.in.size {
	case 4:
		VPMAXUD(a, b, dst)
	case 2:
		VPMAXUW(a, b, dst)
	default:
		VPMAXUB(a, b, dst)
	}
}

// widen loads s.lanes input elements at m and widens them exactly to f64 in dst.
func widen(in input, s isa, m Mem, dst VecVirtual) {
	half := dst.AsX() // the f32 or int32 lanes before the last widening
	if s.wide {
		half = dst.AsY()
	}
	switch in {
	case inF32:
		VCVTPS2PD(m, dst)
	case inBF16:
		VPMOVZXWD(m, half)
		VPSLLD(U8(16), half, half)
		VCVTPS2PD(half, dst)
	case inF16:
		VCVTPH2PS(m, half)
		VCVTPS2PD(half, dst)
	case inI8:
		VPMOVSXBD(m, half)
		VCVTDQ2PD(half, dst)
	default:
		panic("widen: " + in.name)
	}
}

// accGroup emits the pass of g inputs (headers at xp, weights at wp) over the n elements of the
// limbs at hip and lop. Per step, each column of s.lanes elements keeps its two limbs in
// registers while every input of the group adds its terms and folds its magnitudes into the
// check. The weights are memory operands: broadcast to the stack at wst on AVX2, embedded
// broadcasts on AVX-512.
func accGroup(in input, s isa, g int, hip, lop Register, n Mem, wp, xp Register, wst Mem, mx *maxCheck, rs *accRegs, fin *finish) {
	ptrs, ws := groupInputs(s, g, wp, xp, wst)
	mhi, mlo := rs.mhi, rs.mlo
	j := GP64()
	prefix := fmt.Sprintf("g%d_", g)
	if fin != nil {
		prefix = fmt.Sprintf("g%dfin_", g)
	}
	emit.Steps(prefix, j, n, s.step, 8, func(k int) {
		cols := k / s.lanes
		his, los := rs.his[:cols], rs.los[:cols]
		for c := range cols {
			VMOVDQU64orU(emit.Elem(hip, j, 8, c*s.lanes), his[c], s)
			VMOVDQU64orU(emit.Elem(lop, j, 8, c*s.lanes), los[c], s)
		}
		v, t := rs.v, rs.t
		for i := range g {
			mx.update(emit.Elem(ptrs[i], j, in.size, 0), k)
			for c := range cols {
				widen(in, s, emit.Elem(ptrs[i], j, in.size, c*s.lanes), v)
				fma, fms := VFMADD231PD, VFMSUB231PD
				if s.wide {
					fma, fms = VFMADD231PD_BCST, VFMSUB231PD_BCST
				}
				VMOVAPD(mhi, t)
				fma(ws[i], v, t)          // t = w·x + 1.5·2^104: w·x rounded to a multiple of 2^52
				VPADDQ(t, his[c], his[c]) // its bits: magic + h
				VSUBPD(mhi, t, t)         // h·2^52
				fms(ws[i], v, t)          // w·x − h·2^52, rounded once
				VADDPD(mlo, t, t)         // rounded to an integer
				VPADDQ(t, los[c], los[c]) // its bits: magic + l
			}
		}
		if fin != nil {
			for c := range cols {
				fin.apply(s, his[c], los[c], t)
			}
		}
		for c := range cols {
			VMOVDQU64orU(his[c], emit.Elem(hip, j, 8, c*s.lanes), s)
			VMOVDQU64orU(los[c], emit.Elem(lop, j, 8, c*s.lanes), s)
		}
	})
}

// accRegs are the vector registers of the accumulation, allocated once per function so that
// the passes of every group size share them (avo's greedy allocator fails on the interference
// graph of a fresh set per pass once a check register lives across them all).
type accRegs struct {
	his, los []VecVirtual
	v, t     VecVirtual
	mhi, mlo VecVirtual
}

func newAccRegs(s isa) *accRegs {
	cols := s.step / s.lanes
	rs := &accRegs{his: make([]VecVirtual, cols), los: make([]VecVirtual, cols), v: s.vec(), t: s.vec()}
	for c := range cols {
		rs.his[c], rs.los[c] = s.vec(), s.vec()
	}
	rs.mhi = broadcastQ(s, math.Float64bits(magicHi))
	rs.mlo = broadcastQ(s, math.Float64bits(magicLo))
	return rs
}

// VMOVDQU64orU moves a vector: VMOVDQU64 on zmm registers, VMOVDQU on ymm ones.
func VMOVDQU64orU(src, dst Op, s isa) {
	if s.wide {
		VMOVDQU64(src, dst)
		return
	}
	VMOVDQU(src, dst)
}

// finish removes the magic constants' bits from limbs that took n terms and normalises them,
// in registers, before the last pass stores them: with
// c = {2^51 + 2^62 − n·bits(1.5·2^52), −n·bits(1.5·2^104) − 2^10, 2^52 − 1, −2^51}
// (kernels.exactFinishConsts(n)),
//
//	t := lo + c[0]            // the true lo + 2^51 + 2^62: positive
//	hi += t>>52 + c[1]        // logical shift: the carry + 2^10
//	lo = t&c[2] + c[3]        // in [-2^51, 2^51)
//
// The constants are broadcast once per call: into four registers on AVX-512 (32 of them), into
// four 32-byte stack slots on AVX2, whose 16 registers the accumulation needs.
type finish struct {
	c [4]Op
}

func newFinish(s isa) *finish {
	cp := Load(Param("c"), GP64())
	f := &finish{}
	var st Mem
	if !s.wide {
		st = AllocLocal(4 * 32)
	}
	for k := range f.c {
		v := s.vec()
		VPBROADCASTQ(Mem{Base: cp, Disp: 8 * k}, v)
		if s.wide {
			f.c[k] = v
			continue
		}
		VMOVDQU(v, st.Offset(32*k))
		f.c[k] = st.Offset(32 * k)
	}
	return f
}

// apply finishes the limbs h and l in place, with t as scratch.
func (f *finish) apply(s isa, h, l, t VecVirtual) {
	VPADDQ(f.c[0], l, t)
	VPSRLQ(U8(52), t, l)
	VPADDQ(l, h, h)
	VPADDQ(f.c[1], h, h)
	if s.wide {
		VPANDQ(f.c[2], t, t)
	} else {
		VPAND(f.c[2], t, t)
	}
	VPADDQ(f.c[3], t, l)
}

// ---------------------------------------------------------------------------------------------
// One-limb accumulation.

// oneLimbBias is what a term adds to a one-limb sum beyond its value when the limb takes the
// bits of the two magic sums: bits(1.5·2^104)·2^52 + bits(1.5·2^52), modulo 2^64.
var oneLimbBias = math.Float64bits(magicHi)<<52 + math.Float64bits(magicLo)

// genAcc1 generates exactAcc1<I><ISA>(one, w, x) uint32: the terms of every input added to
// one-limb sums (kernels.ExactAcc1F32), for len(one) a multiple of 8 and len(x) > 0. Per term
// it computes the two magic sums of accGroup and adds both to the limb, the first shifted left
// by 52 (bits(s)·2^52 + bits(r) = (h + bits(1.5·2^104))·2^52 + l + bits(1.5·2^52), modulo
// 2^64); each pass of g inputs then subtracts g·oneLimbBias once per column. No normalisation:
// the sum is a plain int64, wrapping, so the limb equals the reference's whatever the grouping.
func genAcc1(in input, s isa) {
	name := fmt.Sprintf("exactAcc1%s%s", in.name, s.suffix)
	TEXT(name, NOSPLIT, "func(one []int64, w []float64, x [][]byte) uint32")
	Pragma("noescape")
	Doc(fmt.Sprintf("%s is ExactAcc1%s for len(one) a multiple of 8 and len(x) > 0.", name, in.name))
	op := Load(Param("one").Base(), GP64())
	n, err := Param("one").Len().Resolve()
	if err != nil {
		panic(err)
	}
	wp := Load(Param("w").Base(), GP64())
	xp := Load(Param("x").Base(), GP64())
	cnt := Load(Param("x").Len(), GP64())
	var wst Mem
	if !s.wide {
		wst = AllocLocal(32 * maxGroup)
	}
	mx := newMaxCheck(in, s)
	rs := newAcc1Regs(s)

	groupPasses(cnt, wp, xp, mx, func(g int, last bool) {
		prefix := "l"
		if last {
			prefix = "o"
		}
		acc1Group(in, s, g, prefix, op, n.Addr, wp, xp, wst, mx, rs)
	})
}

// acc1Regs are the vector registers of the one-limb accumulation (see accRegs).
type acc1Regs struct {
	ones        []VecVirtual
	v, t, u     VecVirtual
	mhi, mlo, b VecVirtual
}

func newAcc1Regs(s isa) *acc1Regs {
	cols := s.step / s.lanes
	rs := &acc1Regs{ones: make([]VecVirtual, cols), v: s.vec(), t: s.vec(), u: s.vec(), b: s.vec()}
	for c := range cols {
		rs.ones[c] = s.vec()
	}
	rs.mhi = broadcastQ(s, math.Float64bits(magicHi))
	rs.mlo = broadcastQ(s, math.Float64bits(magicLo))
	return rs
}

// acc1Group emits the pass of g inputs over the n one-limb sums at op (accGroup's, one limb);
// prefix tells its labels from those of the other pass of g inputs.
func acc1Group(in input, s isa, g int, prefix string, op Register, n Mem, wp, xp Register, wst Mem, mx *maxCheck, rs *acc1Regs) {
	ptrs, ws := groupInputs(s, g, wp, xp, wst)
	bias := GP64()
	MOVQ(U64(-uint64(g)*oneLimbBias), bias) // minus g biases, modulo 2^64
	if s.wide {
		VPBROADCASTQ(bias, rs.b)
	} else {
		VMOVQ(bias, rs.b.AsX())
		VPBROADCASTQ(rs.b.AsX(), rs.b)
	}
	j := GP64()
	emit.Steps(fmt.Sprintf("%s%d_", prefix, g), j, n, s.step, 8, func(k int) {
		cols := k / s.lanes
		ones := rs.ones[:cols]
		for c := range cols {
			VMOVDQU64orU(emit.Elem(op, j, 8, c*s.lanes), ones[c], s)
		}
		v, t, u := rs.v, rs.t, rs.u
		for i := range g {
			mx.update(emit.Elem(ptrs[i], j, in.size, 0), k)
			for c := range cols {
				widen(in, s, emit.Elem(ptrs[i], j, in.size, c*s.lanes), v)
				fma, fms := VFMADD231PD, VFMSUB231PD
				if s.wide {
					fma, fms = VFMADD231PD_BCST, VFMSUB231PD_BCST
				}
				VMOVAPD(rs.mhi, t)
				fma(ws[i], v, t)            // t = w·x + 1.5·2^104
				VPSLLQ(U8(52), t, u)        // (magic + h)·2^52
				VPADDQ(u, ones[c], ones[c]) //
				VSUBPD(rs.mhi, t, t)        // h·2^52
				fms(ws[i], v, t)            // w·x − h·2^52, rounded once
				VADDPD(rs.mlo, t, t)        // rounded to an integer
				VPADDQ(t, ones[c], ones[c]) // its bits: magic + l
			}
		}
		for c := range cols {
			VPADDQ(rs.b, ones[c], ones[c])
			VMOVDQU64orU(ones[c], emit.Elem(op, j, 8, c*s.lanes), s)
		}
	})
}

// ---------------------------------------------------------------------------------------------
// Stores.

// toDouble converts the 4 int64 lanes of x to f64 in dst, correctly rounded as CVTSI2SDQ and Go's
// float64(int64): the top 16 bits (sign-extended, scaled by 2^48) ride on 3·2^67, the low 48
// bits on 2^52, and one addition rounds their sum.
func toDouble(x, dst VecVirtual) {
	h, l := YMM(), YMM()
	zero := YMM()
	VPXOR(zero, zero, zero)
	VPSRAD(U8(16), x, h)
	VPBLENDW(U8(0x33), zero, h, h)           // (x >> 48) << 32, as an int64
	VPADDQ(konst(cC67), h, h)                // 3·2^67 + (x>>48)·2^48
	VPBLENDW(U8(0x88), konst(cBits52), x, l) // 2^52 + (x mod 2^48)
	VSUBPD(konst(cC67Plus52), h, h)
	VADDPD(l, h, dst)
}

// genStore generates exactStore<O>AVX2(dst, hi, lo, s) for len(hi) a multiple of 8: per element
// float64(hi)·2^52 + float64(lo), times s, to f32 (then to f16 or bf16), as the reference.
func genStore(out output) {
	name := fmt.Sprintf("exactStore%sAVX2", out.name)
	TEXT(name, NOSPLIT, "func(dst []byte, hi []int64, lo []int64, s float64)")
	Pragma("noescape")
	Doc(fmt.Sprintf("%s is ExactStore%s for len(hi) a multiple of 8.", name, out.name))
	dst := Load(Param("dst").Base(), GP64())
	hip := Load(Param("hi").Base(), GP64())
	lop := Load(Param("lo").Base(), GP64())
	n := Load(Param("hi").Len(), GP64())
	sc := YMM()
	sa, err := Param("s").Resolve()
	if err != nil {
		panic(err)
	}
	VBROADCASTSD(sa.Addr, sc)
	j := GP64()
	// value returns the 4 f32 values of elements j+4c..j+4c+3.
	value := func(c int) VecVirtual {
		x, v, l := YMM(), YMM(), YMM()
		VMOVDQU(emit.Elem(hip, j, 8, 4*c), x)
		toDouble(x, v)
		VMULPD(konst(cTwo52), v, v) // exact
		VMOVDQU(emit.Elem(lop, j, 8, 4*c), l)
		VPADDQ(konst(cMagicLo), l, l) // |lo| < 2^51: exact through the magic constant
		VSUBPD(konst(cMagicLo), l, l)
		VADDPD(l, v, v) // the sum, rounded once
		VMULPD(sc, v, v)
		f := XMM()
		VCVTPD2PSY(v, f)
		return f
	}
	emit.Steps("", j, n, 8, 8, func(int) {
		a, b := value(0), value(1)
		switch out {
		case outF32:
			VMOVUPS(a, emit.Elem(dst, j, 4, 0))
			VMOVUPS(b, emit.Elem(dst, j, 4, 4))
		case outF16:
			y := YMM()
			VINSERTF128(U8(1), b, a.AsY(), y)
			VCVTPS2PH(U8(0), y, emit.Elem(dst, j, 2, 0))
		case outBF16:
			y := YMM()
			VINSERTF128(U8(1), b, a.AsY(), y)
			r := emit.BF16Round(y, konst(cOne32), konst(cBias32), konst(cQuiet32))
			hi := XMM()
			VEXTRACTI128(U8(1), r, hi)
			VPACKUSDW(hi, r.AsX(), hi)
			VMOVDQU(hi, emit.Elem(dst, j, 2, 0))
		}
	})
	VZEROUPPER()
	RET()
}

// ---------------------------------------------------------------------------------------------
// Range checks.

// genBeyond generates beyond<I>AVX2(x, bound) for len(x) a multiple of 32 bytes: whether some
// element is NaN or beyond ±bound, by VCMPPS with NLE_UQ (true for >, and for unordered).
func genBeyond(in input) {
	name := fmt.Sprintf("beyond%sAVX2", in.name)
	TEXT(name, NOSPLIT, "func(x []byte, bound float32) bool")
	Pragma("noescape")
	Doc(fmt.Sprintf("%s is Beyond%s for len(x) a multiple of 32.", name, in.name))
	x := Load(Param("x").Base(), GP64())
	n := Load(Param("x").Len(), GP64())
	b := YMM()
	ba, err := Param("bound").Resolve()
	if err != nil {
		panic(err)
	}
	VBROADCASTSS(ba.Addr, b)
	hit := func(m Mem) VecVirtual {
		v := YMM()
		switch in {
		case inF32:
			VMOVUPS(m, v)
			VANDPS(konst(cAbsF32), v, v)
		case inBF16:
			VPMOVZXWD(m, v)
			VPSLLD(U8(16), v, v)
			VANDPS(konst(cAbsF32), v, v)
		case inF16:
			VCVTPH2PS(m, v)
			VANDPS(konst(cAbsF32), v, v)
		}
		VCMPPS(U8(0x16), b, v, v) // !(|x| <= bound)
		return v
	}
	j := GP64()
	emit.Steps("", j, n, 32, 32, func(int) {
		var t []VecVirtual
		for off := 0; off < 32; off += 8 * in.size {
			t = append(t, hit(Mem{Base: x, Index: j, Scale: 1, Disp: off}))
		}
		if len(t) == 2 {
			VORPS(t[1], t[0], t[0])
		}
		VPTEST(t[0], t[0])
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
