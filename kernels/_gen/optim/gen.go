// Command optim generates the AVX2 assembly of package kernels' optimizer and secure-sum
// families with avo: the fused server-optimizer steps of adaptive federated optimization
// (FedAvgM, FedAdagrad, FedAdam, FedYogi) and the modular (mod 2^32) sum of u32 vectors.
//
// It is a second generator beside kernels/_gen (which it does not touch), with its own output
// files, kernels/optim_amd64.s and kernels/optim_stubs_amd64.go, so that the two families can
// change independently. As there, every function works on a prefix whose length is a multiple
// of its step (8 elements), the Go wrappers in kernels/optim_amd64.go finish the tail with the
// reference loops of kernels/optim.go, and every element goes through exactly the operations of
// its reference loop, in the same order, rounded the same way: the optimizer steps are f32
// multiplies, adds, a correctly rounded square root and a correctly rounded division, never a
// fused multiply-add, so the assembly equals the pure-Go reference bit for bit (and the CUDA
// kernel of kernels/cuda/optim.cu, built with --fmad=false, computes the same expressions).
package main

//go:generate go run . -out ../../optim_amd64.s -stubs ../../optim_stubs_amd64.go -pkg kernels

import (
	"fmt"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"

	"github.com/wattagg/wattagg/kernels/_gen/internal/emit"
)

func main() {
	// avo v0.5.0 parses the old constraint syntax (a comma is an AND) and prints a //go:build
	// line; the words are those of kernels/_gen, so both generated files carry the same tags.
	ConstraintExpr("amd64,!purego,!noasm,gc")

	for _, r := range []rule{avgM, adagrad, adam, yogi} {
		genStep(r)
	}
	genModSum()

	genAVX512()

	Generate()
}

// rule is one server optimizer.
type rule struct {
	name   string // FedAvgM, ...
	second bool   // whether it keeps a second moment v
	step   int    // elements per main step
}

var (
	avgM    = rule{"FedAvgM", false, 32}
	adagrad = rule{"FedAdagrad", true, 16}
	adam    = rule{"FedAdam", true, 16}
	yogi    = rule{"FedYogi", true, 8}
)

// Constants of the optimizer table (kernels.optimTable): row k holds constant k in all 8 lanes,
// so that each is a 32-byte memory operand and no register is spent on it.
const (
	cLR = iota
	cBeta1
	cOneMinusBeta1
	cBeta2
	cOneMinusBeta2
	cTau
	cOne
	cMinusOne
)

func konst(c Register, k int) Mem { return Mem{Base: c, Disp: 32 * k} }

// elem addresses element j+off of the float32 array at base.
func elem(base, j Register, off int) Mem { return emit.Elem(base, j, 4, off) }

// genStep generates <rule>StepAVX2: one pass over x, d, m (and v) writing xo, mo (and vo), for
// a length that is a multiple of 8. Each output may be its input (xo may be x or d): every
// element's inputs are loaded before its outputs are stored.
func genStep(r rule) {
	name := fmt.Sprintf("%sStepAVX2", lowerFirst(r.name))
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
	j := GP64()

	emit.Steps("", j, n, r.step, 8, func(k int) {
		for u := range k / 8 {
			off := 8 * u
			if !r.second {
				// m' = β1·m + Δ;  x' = x + lr·m'
				mv := YMM()
				VMOVUPS(elem(m, j, off), mv)
				VMULPS(konst(c, cBeta1), mv, mv)
				VADDPS(elem(d, j, off), mv, mv)
				t := YMM()
				VMULPS(konst(c, cLR), mv, t)
				VADDPS(elem(x, j, off), t, t)
				VMOVUPS(mv, elem(mo, j, off))
				VMOVUPS(t, elem(xo, j, off))
				continue
			}
			// m' = β1·m + (1-β1)·Δ
			dv, mv, t := YMM(), YMM(), YMM()
			VMOVUPS(elem(d, j, off), dv)
			VMOVUPS(elem(m, j, off), mv)
			VMULPS(konst(c, cBeta1), mv, mv)
			VMULPS(konst(c, cOneMinusBeta1), dv, t)
			VADDPS(t, mv, mv)
			// Δ²
			VMULPS(dv, dv, dv)
			vv := YMM()
			VMOVUPS(elem(v, j, off), vv)
			switch r {
			case adagrad: // v' = v + Δ²
				VADDPS(dv, vv, vv)
			case adam: // v' = β2·v + (1-β2)·Δ²
				VMULPS(konst(c, cBeta2), vv, vv)
				VMULPS(konst(c, cOneMinusBeta2), dv, t)
				VADDPS(t, vv, vv)
			case yogi: // v' = v - ((1-β2)·Δ²)·sign(v - Δ²), sign(0) = sign(NaN) = 0
				diff, gt, lt := YMM(), YMM(), YMM()
				VSUBPS(dv, vv, diff)
				VXORPS(gt, gt, gt)
				VCMPPS(U8(0x11), gt, diff, lt) // LT_OQ: diff < 0
				VCMPPS(U8(0x1e), gt, diff, gt) // GT_OQ: diff > 0
				VANDPS(konst(c, cOne), gt, gt)
				VANDPS(konst(c, cMinusOne), lt, lt)
				VORPS(lt, gt, gt)
				VMULPS(konst(c, cOneMinusBeta2), dv, t)
				VMULPS(gt, t, t)
				VSUBPS(t, vv, vv)
			}
			// x' = x + (lr·m') / (√v' + τ)
			s := YMM()
			VSQRTPS(vv, s)
			VADDPS(konst(c, cTau), s, s)
			VMULPS(konst(c, cLR), mv, t)
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

func lowerFirst(s string) string { return string(s[0]+'a'-'A') + s[1:] }

// maxGroup is the number of inputs a mod-sum pass adds to the accumulator registers before it
// stores them: the accumulator is read and written once per maxGroup inputs, and maxGroup input
// streams are read at once.
const maxGroup = 8

// genModSum generates modSumU32AVX2(acc, x): acc[j] += x[i][j] mod 2^32 for every input, the
// inputs raw little-endian u32 bytes at any alignment, len(acc) a multiple of 8.
func genModSum() {
	TEXT("modSumU32AVX2", NOSPLIT, "func(acc []uint32, x [][]byte)")
	Pragma("noescape")
	Doc("modSumU32AVX2 is ModSumU32 for len(acc) a multiple of 8.")

	accp := Load(Param("acc").Base(), GP64())
	// len(acc) stays in its argument slot: a group of 8 inputs needs the other registers.
	n, err := Param("acc").Len().Resolve()
	if err != nil {
		panic(err)
	}
	xp := Load(Param("x").Base(), GP64())
	cnt := Load(Param("x").Len(), GP64())

	const hdr = 24 // size of a slice header
	Label("groups")
	CMPQ(cnt, U8(maxGroup))
	JB(LabelRef("rest"))
	modSumGroup(maxGroup, accp, n.Addr, xp)
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
		modSumGroup(g, accp, n.Addr, xp)
		JMP(LabelRef("ret"))
	}

	Label("ret")
	VZEROUPPER()
	RET()
}

// modSumGroup emits the pass of g inputs (slice headers at xp) over the n accumulator elements
// at accp: 32 elements per step in 4 registers (then 8), each input added with VPADDD.
func modSumGroup(g int, accp Register, n Mem, xp Register) {
	const hdr = 24
	Commentf("%d inputs", g)
	ptrs := make([]Register, g)
	for i := range g {
		ptrs[i] = GP64()
		MOVQ(Mem{Base: xp, Disp: i * hdr}, ptrs[i])
	}
	j := GP64()
	emit.Steps(fmt.Sprintf("g%d_", g), j, n, 32, 8, func(k int) {
		accs := make([]VecVirtual, k/8)
		for u := range accs {
			accs[u] = YMM()
			VMOVDQU(elem(accp, j, 8*u), accs[u])
		}
		for i := range g {
			for u := range accs {
				VPADDD(elem(ptrs[i], j, 8*u), accs[u], accs[u])
			}
		}
		for u := range accs {
			VMOVDQU(accs[u], elem(accp, j, 8*u))
		}
	})
}
