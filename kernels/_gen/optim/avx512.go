package main

// The AVX-512 (F, VL) functions of the family: the fused optimizer steps and the mod-sum, with
// the contracts of the AVX2 functions (lengths a multiple of 8, the tails finished by the Go
// wrappers) and their operations per element, so the results are the reference's bits. The
// optimizer constants are broadcast into registers once per call (32 vector registers leave
// room for them), and FedYogi's sign is built under the masks of two compares.
//
// The adaptive steps (a square root and a division per element) work on zmm registers. The
// kernels that only stream, FedAvgM and the mod-sum, load 256 bits at a time into ymm
// registers: on the Zen 4 where they were measured, 512-bit loads read DRAM about 20% slower
// (see kernels/_gen/avx512.go).

import (
	"fmt"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"

	"github.com/wattagg/wattagg/kernels/_gen/internal/emit"
)

func genAVX512() {
	for _, r := range []rule{avgM, adagrad, adam, yogi} {
		genStepAVX512(r)
	}
	genModSumAVX512()
}

// view returns z, or its ymm half for a step of 8 elements.
func view(z VecVirtual, elems int) Register {
	if elems == 8 {
		return z.AsY()
	}
	return z
}

// genStepAVX512 generates <rule>StepAVX512, genStep's function with twice its main step: for the
// adaptive rules 16 elements per zmm register, 2 registers per main step (1 for FedYogi), then
// steps of 8 on ymm halves; for FedAvgM 8 ymm registers of 8.
func genStepAVX512(r rule) {
	name := fmt.Sprintf("%sStepAVX512", lowerFirst(r.name))
	sig := "func(xo, mo, x, d, m []float32, c *[8][8]float32)"
	if r.second {
		sig = "func(xo, mo, vo, x, d, m, v []float32, c *[8][8]float32)"
	}
	TEXT(name, NOSPLIT, sig)
	Pragma("noescape")
	Doc(fmt.Sprintf("%s is %sStepF32 for len(x) a multiple of 8, the constants in c (optimTable).", name, r.name))

	xo := Load(Param("xo").Base(), GP64())
	mo := Load(Param("mo").Base(), GP64())
	x := Load(Param("x").Base(), GP64())
	d := Load(Param("d").Base(), GP64())
	m := Load(Param("m").Base(), GP64())
	var vo, v Register
	if r.second {
		vo = Load(Param("vo").Base(), GP64())
		v = Load(Param("v").Base(), GP64())
	}
	c := Load(Param("c"), GP64())
	n := Load(Param("x").Len(), GP64())

	// The constants this rule uses, each in all 16 lanes of a register.
	used := []int{cLR, cBeta1}
	if r.second {
		used = append(used, cOneMinusBeta1, cTau)
	}
	switch r {
	case adam:
		used = append(used, cBeta2, cOneMinusBeta2)
	case yogi:
		used = append(used, cOneMinusBeta2, cOne, cMinusOne)
	}
	k := map[int]VecVirtual{}
	for _, i := range used {
		k[i] = ZMM()
		VBROADCASTSS(konst(c, i), k[i])
	}
	var zero VecVirtual
	if r == yogi {
		zero = ZMM()
		VXORPS(zero, zero, zero)
	}

	j := GP64()
	width := 16 // elements per register
	if !r.second {
		width = 8
	}
	emit.Steps("", j, n, 2*r.step, 8, func(step int) {
		per := min(step, width)
		kk := func(i int) Register { return view(k[i], per) }
		for u := range step / per {
			off := per * u
			if !r.second {
				// m' = β1·m + Δ;  x' = x + lr·m'
				mv, t := view(ZMM(), per), view(ZMM(), per)
				VMOVUPS(elem(m, j, off), mv)
				VMULPS(kk(cBeta1), mv, mv)
				VADDPS(elem(d, j, off), mv, mv)
				VMULPS(kk(cLR), mv, t)
				VADDPS(elem(x, j, off), t, t)
				VMOVUPS(mv, elem(mo, j, off))
				VMOVUPS(t, elem(xo, j, off))
				continue
			}
			// m' = β1·m + (1-β1)·Δ
			dv, mv, t := view(ZMM(), per), view(ZMM(), per), view(ZMM(), per)
			VMOVUPS(elem(d, j, off), dv)
			VMOVUPS(elem(m, j, off), mv)
			VMULPS(kk(cBeta1), mv, mv)
			VMULPS(kk(cOneMinusBeta1), dv, t)
			VADDPS(t, mv, mv)
			// Δ²
			VMULPS(dv, dv, dv)
			vv := view(ZMM(), per)
			VMOVUPS(elem(v, j, off), vv)
			switch r {
			case adagrad: // v' = v + Δ²
				VADDPS(dv, vv, vv)
			case adam: // v' = β2·v + (1-β2)·Δ²
				VMULPS(kk(cBeta2), vv, vv)
				VMULPS(kk(cOneMinusBeta2), dv, t)
				VADDPS(t, vv, vv)
			case yogi: // v' = v - ((1-β2)·Δ²)·sign(v - Δ²), sign(0) = sign(NaN) = 0
				diff, sgn := view(ZMM(), per), view(ZMM(), per)
				gt, lt := K(), K()
				VSUBPS(dv, vv, diff)
				VCMPPS(U8(0x11), view(zero, per), diff, lt) // LT_OQ: diff < 0
				VCMPPS(U8(0x1e), view(zero, per), diff, gt) // GT_OQ: diff > 0
				VMOVAPS(view(zero, per), sgn)
				VMOVAPS(kk(cOne), gt, sgn)
				VMOVAPS(kk(cMinusOne), lt, sgn)
				VMULPS(kk(cOneMinusBeta2), dv, t)
				VMULPS(sgn, t, t)
				VSUBPS(t, vv, vv)
			}
			// x' = x + (lr·m') / (√v' + τ)
			s := view(ZMM(), per)
			VSQRTPS(vv, s)
			VADDPS(kk(cTau), s, s)
			VMULPS(kk(cLR), mv, t)
			VDIVPS(s, t, t)
			VADDPS(elem(x, j, off), t, t)
			VMOVUPS(mv, elem(mo, j, off))
			VMOVUPS(vv, elem(vo, j, off))
			VMOVUPS(t, elem(xo, j, off))
		}
	})
	VZEROUPPER()
	RET()
}

// genModSumAVX512 generates modSumU32AVX512(acc, x), genModSum's function on zmm registers.
func genModSumAVX512() {
	TEXT("modSumU32AVX512", NOSPLIT, "func(acc []uint32, x [][]byte)")
	Pragma("noescape")
	Doc("modSumU32AVX512 is ModSumU32 for len(acc) a multiple of 8.")

	accp := Load(Param("acc").Base(), GP64())
	n, err := Param("acc").Len().Resolve()
	if err != nil {
		panic(err)
	}
	xp := Load(Param("x").Base(), GP64())
	cnt := Load(Param("x").Len(), GP64())

	const hdr = 24
	Label("groups")
	CMPQ(cnt, U8(maxGroup))
	JB(LabelRef("rest"))
	modSumGroupAVX512(maxGroup, accp, n.Addr, xp)
	ADDQ(U32(maxGroup*hdr), xp)
	SUBQ(U8(maxGroup), cnt)
	JMP(LabelRef("groups"))

	Label("rest")
	for g := maxGroup - 1; g >= 1; g-- {
		CMPQ(cnt, U8(g))
		JE(LabelRef(fmt.Sprintf("group%d", g)))
	}
	JMP(LabelRef("ret"))
	for g := maxGroup - 1; g >= 1; g-- {
		Label(fmt.Sprintf("group%d", g))
		modSumGroupAVX512(g, accp, n.Addr, xp)
		JMP(LabelRef("ret"))
	}

	Label("ret")
	VZEROUPPER()
	RET()
}

// modSumGroupAVX512 is modSumGroup with 64 elements per step in 8 ymm registers (then 8).
func modSumGroupAVX512(g int, accp Register, n Mem, xp Register) {
	const hdr = 24
	Commentf("%d inputs", g)
	ptrs := make([]Register, g)
	for i := range g {
		ptrs[i] = GP64()
		MOVQ(Mem{Base: xp, Disp: i * hdr}, ptrs[i])
	}
	j := GP64()
	emit.Steps(fmt.Sprintf("g%d_", g), j, n, 64, 8, func(k int) {
		const per = 8
		accs := make([]Register, k/per)
		for u := range accs {
			accs[u] = view(ZMM(), per)
			VMOVDQU32(elem(accp, j, per*u), accs[u])
		}
		for i := range g {
			for u := range accs {
				VPADDD(elem(ptrs[i], j, per*u), accs[u], accs[u])
			}
		}
		for u := range accs {
			VMOVDQU32(accs[u], elem(accp, j, per*u))
		}
	})
}
