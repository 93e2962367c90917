// Package emit holds what every generator program of kernels/_gen emits the same way: an
// element's address, the loop over a slice in big steps then small ones, and the rounding of
// f32 lanes to bfloat16. It writes into avo's global build context, as the programs do.
package emit

import (
	"github.com/mmcloughlin/avo/build"
	"github.com/mmcloughlin/avo/operand"
	"github.com/mmcloughlin/avo/reg"
)

// Elem addresses element j+off of an array at base whose elements are size bytes.
func Elem(base, j reg.Register, size, off int) operand.Mem {
	return operand.Mem{Base: base, Index: j, Scale: uint8(size), Disp: off * size}
}

// Steps emits
//
//	for j = 0; j+big <= n; j += big { body(big) }
//	for ; j < n; j += small { body(small) }
//
// for n (a register or memory) a multiple of small and big a power of two. Labels are prefixed
// with prefix.
func Steps(prefix string, j reg.Register, n operand.Op, big, small int, body func(k int)) {
	nbig := build.GP64()
	build.MOVQ(n, nbig)
	build.ANDQ(operand.I32(-big), nbig)
	build.XORQ(j, j)
	build.CMPQ(j, nbig)
	build.JAE(operand.LabelRef(prefix + "small"))
	build.Label(prefix + "big")
	body(big)
	build.ADDQ(operand.U32(big), j)
	build.CMPQ(j, nbig)
	build.JB(operand.LabelRef(prefix + "big"))
	build.Label(prefix + "small")
	if small == big {
		return
	}
	build.CMPQ(j, n)
	build.JAE(operand.LabelRef(prefix + "done"))
	body(small)
	build.ADDQ(operand.U32(small), j)
	build.JMP(operand.LabelRef(prefix + "small"))
	build.Label(prefix + "done")
}

// BF16Round returns the bfloat16 of each f32 lane of the ymm register v, in the low 16 bits of
// each 32-bit lane, as half.F32ToBF16: round to nearest even on the bits
// (b + 0x7fff + (b>>16)&1) >> 16, and for a NaN its upper half with the quiet bit set,
// (b>>16) | 0x40. one, bias and quiet hold 1, 0x7fff and 0x40 in every lane: registers, or
// memory the program keeps them in.
func BF16Round(v reg.VecVirtual, one, bias, quiet operand.Op) reg.VecVirtual {
	hi, lsb, r, nan := build.YMM(), build.YMM(), build.YMM(), build.YMM()
	build.VPSRLD(operand.U8(16), v, hi)
	build.VPAND(one, hi, lsb)
	build.VPADDD(bias, v, r)
	build.VPADDD(lsb, r, r)
	build.VPSRLD(operand.U8(16), r, r)
	build.VPOR(quiet, hi, hi)
	build.VCMPPS(operand.U8(3), v, v, nan) // unordered: v is NaN
	build.VBLENDVPS(nan, hi, r, r)
	return r
}
