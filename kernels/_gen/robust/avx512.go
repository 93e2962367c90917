package main

// The AVX-512 (F, BW, VL, DQ) functions of the robust family. Per element they perform the
// operations of the AVX2 functions and of the references, so the results are the same bits:
//
//   - The sorting networks run on 16 coordinates per zmm register, and up to 32 inputs stay in
//     the 32 registers (spilling only where the network needs a 33rd). The median takes a
//     selection network, the comparators the middle wires depend on, and writes its result
//     straight to dst instead of storing every sorted value.
//   - The Gram tiles hold 4 rows by 6 pairs of columns: 24 zmm accumulators, each the 4 lanes of
//     two adjacent pairs (a, b) and (a, b+1), whose partials are adjacent in p; the row operand
//     is input a's 4 values broadcast to both halves, the column operand the packed group of
//     inputs b and b+1. Each group of 4 coordinates loads 4 broadcasts and 6 vectors for 24
//     FMAs (48 f64 pair-updates), against 7 loads for 12 in the AVX2 tiles. Lane l of a pair
//     still receives coordinates j ≡ l mod 4 in order, so the partials are the AVX2 ones.
//
// On Zen 4 a 512-bit operation occupies two 256-bit pipes, so zmm registers give no more
// arithmetic per cycle than ymm ones: what they give is twice the registers, fewer spills and
// loads, and half the instructions. The kernels registry picks by measurement (see
// kernels/robust_avx512_amd64.go).

import (
	"fmt"
	"math"
	"math/bits"
	"slices"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

var zmm = []VecPhysical{
	Z0, Z1, Z2, Z3, Z4, Z5, Z6, Z7, Z8, Z9, Z10, Z11, Z12, Z13, Z14, Z15,
	Z16, Z17, Z18, Z19, Z20, Z21, Z22, Z23, Z24, Z25, Z26, Z27, Z28, Z29, Z30, Z31,
}

// slot512 is the byte size of one value of a group in the AVX-512 slabs: 16 f32 lanes.
const slot512 = 64

// The order-statistic functions take pf, how many bytes ahead each input is prefetched into L2
// as it is read: a caller that walks the inputs block by block passes the block's bytes, so
// that the next block's lines are on their way while this block is sorted (the hardware
// prefetchers follow a few dozen streams at most, and a group reads one line of each input).

func genAVX512() {
	genSortSmall512()
	genMedianSmall512()
	genTrimmedSmall512()
	for _, p := range paddedSizes {
		genSortPadded(p, false, 16)
		genSortPadded(p, true, 16)
	}
	genSortNet512()
	genMedianNet512()
	genMedianSorted512()
	genTrimmedSorted512()
	genClosestSorted512()
	genGramPack()
	genGramPackRaw()
	genGramTiles512()
	genFMALoop512()
	genSqDistRuns4()
	genSortPaddedKeys(512)
	for _, l := range mergeSizes {
		genMergeKeys(l)
	}
}

// ---------------------------------------------------------------------------------------------
// Sorting and selection networks.

// dispatchCounts emits the jump to label prefix+"n<k>" for the input count in n (1..smallMax).
func dispatchCounts(n Register, prefix string) {
	for k := 1; k <= smallMax; k++ {
		CMPQ(n, U8(k))
		JE(LabelRef(fmt.Sprintf("%sn%d", prefix, k)))
	}
	RET()
}

// genSortSmall512 generates sortSmallF32AVX512(tmp, x, off, groups): sortSmallF32AVX2 on groups
// of 16 coordinates (tmp[(g*n+i)*16+lane]).
func genSortSmall512() {
	TEXT("sortSmallF32AVX512", NOSPLIT, "func(tmp []float32, x [][]byte, off, groups, pf int)")
	Pragma("noescape")
	Doc(fmt.Sprintf("sortSmallF32AVX512 is sortGroupsGeneric with width 16 for 1 <= len(x) <= %d, groups > 0, prefetching pf bytes ahead.", smallMax))
	dispatchCounts(Load(Param("x").Len(), GP64()), "")
	for k := 1; k <= smallMax; k++ {
		Label(fmt.Sprintf("n%d", k))
		xp := Load(Param("x").Base(), GP64())
		tp := Load(Param("tmp").Base(), GP64())
		j := Load(Param("off"), GP64())
		SHLQ(U8(2), j)
		g := Load(Param("groups"), GP64())
		pf := Load(Param("pf"), GP64())
		Label(fmt.Sprintf("n%d_loop", k))
		r := newRegFile(zmm, slot512, k, xp, j, tp)
		r.prefetch = pf
		comps := emitNetwork(sortNetwork(k), r)
		r.storeAll()
		Commentf("n=%d: %d comparators, %d loads, %d stores per group", k, comps, r.loads, r.stores)
		ADDQ(U8(slot512), j)
		ADDQ(U32(slot512*k), tp)
		DECQ(g)
		JNZ(LabelRef(fmt.Sprintf("n%d_loop", k)))
		VZEROUPPER()
		RET()
	}
}

// genMedianSmall512 generates medianSmallF32AVX512(dst, tmp, x, off, groups): the median of
// each of groups groups of 16 coordinates by the selection network of the middle wires, the
// result written to dst (16 per group); tmp (len(x)·16 floats) holds the wires the network
// spills.
func genMedianSmall512() {
	TEXT("medianSmallF32AVX512", NOSPLIT, "func(dst []float32, tmp []float32, x [][]byte, off, groups, pf int)")
	Pragma("noescape")
	Doc(fmt.Sprintf("medianSmallF32AVX512 is the median of sortGroupsGeneric's groups with width 16 for 1 <= len(x) <= %d, groups > 0, len(dst) = 16*groups, prefetching pf bytes ahead.", smallMax))
	dispatchCounts(Load(Param("x").Len(), GP64()), "")
	for k := 1; k <= smallMax; k++ {
		Label(fmt.Sprintf("n%d", k))
		xp := Load(Param("x").Base(), GP64())
		tp := Load(Param("tmp").Base(), GP64())
		dst := Load(Param("dst").Base(), GP64())
		j := Load(Param("off"), GP64())
		SHLQ(U8(2), j)
		g := Load(Param("groups"), GP64())
		pf := Load(Param("pf"), GP64())
		Label(fmt.Sprintf("n%d_loop", k))
		r := newRegFile(zmm, slot512, k, xp, j, tp)
		r.prefetch = pf
		mw := middleWires(k)
		r.keep = make([]bool, k)
		for _, w := range mw {
			r.keep[w] = true
		}
		net := selectNetwork(sortNetwork(k), mw...)
		comps := emitNetwork(net, r)
		// Every input feeds the median; one that no comparator reads (k = 1) is read here.
		if len(mw) == 1 {
			VMOVUPS(r.regs[r.ensure(mw[0])], Mem{Base: dst})
		} else {
			a := r.ensure(mw[0])
			b := r.ensure(mw[1], a)
			h := r.free(a, b)
			c := GP32()
			MOVL(U32(0x3f000000), c) // 0.5
			VPBROADCASTD(c, r.regs[h])
			VMULPS(r.regs[h], r.regs[a], r.regs[a])
			VMULPS(r.regs[h], r.regs[b], r.regs[b])
			VADDPS(r.regs[b], r.regs[a], r.regs[a])
			VMOVUPS(r.regs[a], Mem{Base: dst})
		}
		Commentf("n=%d: %d of %d comparators, %d loads, %d stores per group", k, comps, len(sortNetwork(k)), r.loads, r.stores)
		ADDQ(U8(slot512), j)
		ADDQ(U8(slot512), dst)
		DECQ(g)
		JNZ(LabelRef(fmt.Sprintf("n%d_loop", k)))
		VZEROUPPER()
		RET()
	}
}

// paddedSizes are the wire counts of the straight-line networks for more than smallMax inputs:
// n inputs run the network of the next size up, the wires from n on holding +Inf. For inputs
// without NaN that is the network of n wires itself (sortNetwork prunes exactly the
// comparators that touch a wire >= n, and a comparator of a finite or infinite value with +Inf
// leaves both where they are); a NaN would be moved by them, so the kernel reports a NaN it
// reads and the caller sorts those groups again with the table of the pruned network.
var paddedSizes = []int{64, 128, 256, 512}

// paddedFrom is the fewest inputs the padded network of P wires serves (paddedWires in
// kernels/robust.go).
func paddedFrom(P int) int {
	if P == 64 {
		return smallMax + 1
	}
	return P/2 + 1
}

// genMedianSorted512 generates medianSortedF32AVX512(dst, tmp, n, wires): medianSortedF32AVX2 on
// 16-coordinate groups wires·64 bytes apart.
func genMedianSorted512() {
	TEXT("medianSortedF32AVX512", NOSPLIT, "func(dst []float32, tmp []float32, n, wires int)")
	Pragma("noescape")
	Doc("medianSortedF32AVX512 is medianSortedGeneric with width 16 for len(dst) a positive multiple of 16, the groups wires apart.")
	dst, tp, g, stride, mid, n := sortedArgs512()
	half := broadcastF32x16(0x3f000000)
	TESTQ(U32(1), n)
	JZ(LabelRef("even"))
	for _, odd := range []bool{true, false} {
		lbl := "odd"
		if !odd {
			lbl = "even"
			Label(lbl)
		}
		Label(lbl + "_loop")
		m := median512(tp, mid, odd, half)
		VMOVUPS(m, Mem{Base: dst})
		ADDQ(U8(64), dst)
		ADDQ(stride, tp)
		DECQ(g)
		JNZ(LabelRef(lbl + "_loop"))
		VZEROUPPER()
		RET()
	}
}

// genTrimmedSmall512 generates trimmedSmallF32AVX512(dst, tmp, x, off, groups, pf, k, c): the
// trimmed mean of each group of 16 coordinates straight from the network's registers: values
// k..n-k-1 added from +0 in ascending order and divided by c = n-2k, without storing the sorted
// values. Which wires are added is decided by a branch per wire on k, the same for every group
// (so predicted), and adds a wire from its register or, when spilled, from tmp; no register
// moves under a branch, so the code after it knows where every wire is. tmp (len(x)·16 floats)
// holds the spilled wires.
func genTrimmedSmall512() {
	TEXT("trimmedSmallF32AVX512", NOSPLIT, "func(dst []float32, tmp []float32, x [][]byte, off, groups, pf, k int, c float32)")
	Pragma("noescape")
	Doc(fmt.Sprintf("trimmedSmallF32AVX512 is the trimmed mean of sortGroupsGeneric's groups with width 16 for 1 <= len(x) <= %d, groups > 0, 2k < len(x), c = len(x)-2k, len(dst) = 16*groups, prefetching pf bytes ahead.", smallMax))
	dispatchCounts(Load(Param("x").Len(), GP64()), "")
	acc, cz := Z30, Z31 // the network's registers are Z0..Z29
	for n := 1; n <= smallMax; n++ {
		Label(fmt.Sprintf("n%d", n))
		xp := Load(Param("x").Base(), GP64())
		tp := Load(Param("tmp").Base(), GP64())
		dst := Load(Param("dst").Base(), GP64())
		j := Load(Param("off"), GP64())
		SHLQ(U8(2), j)
		g := Load(Param("groups"), GP64())
		pf := Load(Param("pf"), GP64())
		k := Load(Param("k"), GP64())
		end := GP64() // n-k
		MOVQ(U32(n), end)
		SUBQ(k, end)
		cp, err := Param("c").Resolve()
		if err != nil {
			panic(err)
		}
		VBROADCASTSS(cp.Addr, cz) // X31 has no SSE encoding: broadcast from memory

		Label(fmt.Sprintf("n%d_loop", n))
		r := newRegFile(zmm[:30], slot512, n, xp, j, tp)
		r.prefetch = pf
		comps := emitNetwork(sortNetwork(n), r)
		for w := range n {
			if !r.loaded[w] {
				r.ensure(w)
			}
		}
		VXORPS(acc, acc, acc)
		for w := range n {
			skip := fmt.Sprintf("n%d_w%d", n, w)
			CMPQ(k, U32(w))
			JA(LabelRef(skip))
			CMPQ(end, U32(w))
			JBE(LabelRef(skip))
			if i := r.reg[w]; i >= 0 {
				VADDPS(r.regs[i], acc, acc)
			} else {
				VADDPS(r.tmp(w), acc, acc)
			}
			Label(skip)
		}
		VDIVPS(cz, acc, acc)
		VMOVUPS(acc, Mem{Base: dst})
		Commentf("n=%d: %d comparators, %d loads, %d stores per group", n, comps, r.loads, r.stores)
		ADDQ(U8(slot512), j)
		ADDQ(U8(slot512), dst)
		DECQ(g)
		JNZ(LabelRef(fmt.Sprintf("n%d_loop", n)))
		VZEROUPPER()
		RET()
	}
}

// gather512 copies the 16 values at byte j of every input into the slab at tp (value i at
// tp + 64i), prefetching pf bytes ahead, and returns the slab's end.
func gather512(tp, j, pf Register) Register {
	h := Load(Param("x").Base(), GP64())
	cnt := Load(Param("x").Len(), GP64())
	d := GP64()
	MOVQ(tp, d)
	Label("gather")
	p := GP64()
	MOVQ(Mem{Base: h}, p)
	VMOVUPS(Mem{Base: p, Index: j, Scale: 1}, Z0)
	ADDQ(pf, p)
	PREFETCHT1(Mem{Base: p, Index: j, Scale: 1})
	VMOVUPS(Z0, Mem{Base: d})
	ADDQ(U8(24), h)
	ADDQ(U8(slot512), d)
	DECQ(cnt)
	JNZ(LabelRef("gather"))
	return d
}

// genSortNet512 generates sortNetF32AVX512(tmp, x, off, groups, net): sortNetF32AVX2 on groups of
// 16 coordinates.
func genSortNet512() {
	TEXT("sortNetF32AVX512", NOSPLIT, "func(tmp []float32, x [][]byte, off, groups, pf int, net []uint32)")
	Pragma("noescape")
	Doc("sortNetF32AVX512 is sortGroupsGeneric with width 16 for len(x) >= 1, groups > 0, net the wires of sortNetwork(len(x)), prefetching pf bytes ahead.")
	tp := Load(Param("tmp").Base(), GP64())
	j := Load(Param("off"), GP64())
	SHLQ(U8(2), j)
	g := Load(Param("groups"), GP64())
	pf := Load(Param("pf"), GP64())
	Label("group")
	d := gather512(tp, j, pf)
	tableNetwork("net", tp, 6, Z0, Z1, Z2)
	ADDQ(U8(slot512), j)
	MOVQ(d, tp)
	DECQ(g)
	JNZ(LabelRef("group"))
	VZEROUPPER()
	RET()
}

// genMedianNet512 generates medianNetF32AVX512(dst, tmp, x, off, groups, net, lo, hi): per group of
// 16 coordinates the inputs gathered into tmp (len(x)·16 floats, reused), the selection network
// net applied, and the median of wires lo and hi (lo = hi for an odd count) written to dst.
func genMedianNet512() {
	TEXT("medianNetF32AVX512", NOSPLIT, "func(dst []float32, tmp []float32, x [][]byte, off, groups, pf int, net []uint32, lo, hi int)")
	Pragma("noescape")
	Doc("medianNetF32AVX512 is the median of sortGroupsGeneric's groups with width 16 for len(x) >= 1, groups > 0, net the wires of the selection network of the middle wires lo <= hi, len(dst) = 16*groups, prefetching pf bytes ahead.")
	tp := Load(Param("tmp").Base(), GP64())
	dst := Load(Param("dst").Base(), GP64())
	j := Load(Param("off"), GP64())
	SHLQ(U8(2), j)
	g := Load(Param("groups"), GP64())
	lo := Load(Param("lo"), GP64())
	SHLQ(U8(6), lo)
	hi := Load(Param("hi"), GP64())
	SHLQ(U8(6), hi)
	half := GP32()
	MOVL(U32(0x3f000000), half)
	pf := Load(Param("pf"), GP64())
	Label("group")
	gather512(tp, j, pf)
	tableNetwork("net", tp, 6, Z0, Z1, Z2)
	CMPQ(lo, hi)
	JE(LabelRef("odd"))
	VPBROADCASTD(half, Z3)
	VMULPS(Mem{Base: tp, Index: lo, Scale: 1}, Z3, Z0)
	VMULPS(Mem{Base: tp, Index: hi, Scale: 1}, Z3, Z1)
	VADDPS(Z1, Z0, Z0)
	JMP(LabelRef("store"))
	Label("odd")
	VMOVUPS(Mem{Base: tp, Index: lo, Scale: 1}, Z0)
	Label("store")
	VMOVUPS(Z0, Mem{Base: dst})
	ADDQ(U8(slot512), j)
	ADDQ(U8(slot512), dst)
	DECQ(g)
	JNZ(LabelRef("group"))
	VZEROUPPER()
	RET()
}

// broadcastF32x16 returns a zmm register holding f in every lane.
func broadcastF32x16(f uint32) VecVirtual {
	r := GP32()
	MOVL(U32(f), r)
	z := ZMM()
	VPBROADCASTD(r, z)
	return z
}

// sortedArgs512 is sortedArgs for slabs of 16-coordinate groups of the given wires (n, or the
// padded network's size).
func sortedArgs512() (dst, tp, g, stride, mid, n Register) {
	dst = Load(Param("dst").Base(), GP64())
	tp = Load(Param("tmp").Base(), GP64())
	g = Load(Param("dst").Len(), GP64())
	SHRQ(U8(4), g)
	n = Load(Param("n"), GP64())
	stride = Load(Param("wires"), GP64())
	SHLQ(U8(6), stride)
	mid = GP64()
	MOVQ(n, mid)
	SHRQ(U8(1), mid)
	SHLQ(U8(6), mid)
	return
}

// median512 is median on a 16-coordinate slab.
func median512(tp, mid Register, odd bool, half VecVirtual) VecVirtual {
	m := ZMM()
	if odd {
		VMOVUPS(Mem{Base: tp, Index: mid, Scale: 1}, m)
		return m
	}
	lo := ZMM()
	VMULPS(Mem{Base: tp, Index: mid, Scale: 1, Disp: -slot512}, half, lo)
	VMULPS(Mem{Base: tp, Index: mid, Scale: 1}, half, m)
	VADDPS(m, lo, m)
	return m
}

// genTrimmedSorted512 generates trimmedSortedF32AVX512(dst, tmp, n, wires, k, c):
// trimmedSortedF32AVX2 on 16-coordinate groups wires·64 bytes apart.
func genTrimmedSorted512() {
	TEXT("trimmedSortedF32AVX512", NOSPLIT, "func(dst []float32, tmp []float32, n, wires, k int, c float32)")
	Pragma("noescape")
	Doc("trimmedSortedF32AVX512 is trimmedSortedGeneric with width 16 for len(dst) a positive multiple of 16, the groups wires apart, 2k < n, c = n-2k.")
	dst := Load(Param("dst").Base(), GP64())
	tp := Load(Param("tmp").Base(), GP64())
	g := Load(Param("dst").Len(), GP64())
	SHRQ(U8(4), g)
	n := Load(Param("n"), GP64())
	k := Load(Param("k"), GP64())
	stride := Load(Param("wires"), GP64())
	SHLQ(U8(6), stride)
	first, end := GP64(), GP64()
	MOVQ(k, first)
	SHLQ(U8(6), first)
	MOVQ(n, end)
	SUBQ(k, end)
	SHLQ(U8(6), end)
	c := ZMM()
	Load(Param("c"), c.AsX())
	VBROADCASTSS(c.AsX(), c)
	// Four groups at a time: each sum is a chain of n-2k dependent additions, so four keep the
	// adder busy; then the groups left one at a time.
	for _, u := range []int{4, 1} {
		lbl := fmt.Sprintf("loop%d", u)
		Label(lbl)
		CMPQ(g, U8(u))
		JB(LabelRef(lbl + "_done"))
		acc := make([]VecVirtual, u)
		for q := range acc {
			acc[q] = ZMM()
			VXORPS(acc[q], acc[q], acc[q])
		}
		i := GP64()
		MOVQ(first, i)
		ADDQ(tp, i)
		e := GP64()
		LEAQ(Mem{Base: tp, Index: end, Scale: 1}, e)
		Label(lbl + "_sum")
		s := GP64()
		MOVQ(i, s)
		for q := range acc {
			VADDPS(Mem{Base: s}, acc[q], acc[q])
			if q+1 < u {
				ADDQ(stride, s)
			}
		}
		ADDQ(U8(slot512), i)
		CMPQ(i, e)
		JB(LabelRef(lbl + "_sum"))
		for q := range acc {
			VDIVPS(c, acc[q], acc[q])
			VMOVUPS(acc[q], Mem{Base: dst, Disp: 64 * q})
			ADDQ(stride, tp)
		}
		ADDQ(U32(64*u), dst)
		SUBQ(U8(u), g)
		JMP(LabelRef(lbl))
		Label(lbl + "_done")
	}
	VZEROUPPER()
	RET()
}

// genClosestSorted512 generates closestSortedF32AVX512(dst, tmp, n, wires, beta, c):
// closestSortedF32AVX2 on 16-coordinate groups wires·64 bytes apart, with mask registers for the comparisons; the window sums add under a
// mask (a lane outside the window keeps its sum, as adding +0 to a sum that is never -0 does).
func genClosestSorted512() {
	TEXT("closestSortedF32AVX512", NOSPLIT, "func(dst []float32, tmp []float32, n, wires, beta int, c float32)")
	Pragma("noescape")
	Doc("closestSortedF32AVX512 is closestSortedGeneric with width 16 for len(dst) a positive multiple of 16, the groups wires apart, 1 <= beta <= n, c = beta.")
	dst, tp, g, stride, mid, n := sortedArgs512()
	beta := Load(Param("beta"), GP64())
	last := GP64()
	MOVQ(n, last)
	SUBQ(beta, last)
	bo := GP64()
	MOVQ(beta, bo)
	SHLQ(U8(6), bo)
	half := broadcastF32x16(0x3f000000)
	one := broadcastF32x16(0x3f800000)
	abs := broadcastF32x16(0x7fffffff)
	c := ZMM()
	Load(Param("c"), c.AsX())
	VBROADCASTSS(c.AsX(), c)
	bv := ZMM()
	VCVTSI2SSQ(beta, bv.AsX(), bv.AsX())
	VBROADCASTSS(bv.AsX(), bv)
	TESTQ(U32(1), n)
	JZ(LabelRef("even"))
	for _, odd := range []bool{true, false} {
		lbl := "odd"
		if !odd {
			lbl = "even"
			Label(lbl)
		}
		Label(lbl + "_loop")
		m := median512(tp, mid, odd, half)
		lo, hi, sv := ZMM(), ZMM(), ZMM()
		VXORPS(lo, lo, lo)
		VXORPS(hi, hi, hi)
		VMOVUPS(one, sv)
		s := GP64()
		MOVQ(tp, s)
		cnt := GP64()
		MOVQ(last, cnt)
		TESTQ(cnt, cnt)
		JZ(LabelRef(lbl + "_window"))
		Label(lbl + "_start")
		d0, d1 := ZMM(), ZMM()
		// |m - v| is |v - m| exactly (IEEE subtraction is antisymmetric), and lets the value
		// be the memory operand.
		VSUBPS(Mem{Base: s}, m, d0)
		VANDPS(abs, d0, d0)
		VSUBPS(Mem{Base: s, Index: bo, Scale: 1}, m, d1)
		VANDPS(abs, d1, d1)
		klt, keq, kat := K(), K(), K()
		VCMPPS(U8(1), d0, d1, klt) // dh < dl
		VCMPPS(U8(0), d0, d1, keq) // dh == dl
		at := ZMM()
		VADDPS(one, hi, at)
		VCMPPS(U8(0), sv, at, keq, kat) // and hi == t
		KORW(klt, kat, kat)             // hi moves
		VBLENDMPS(sv, lo, klt, lo)
		VBLENDMPS(sv, hi, kat, hi)
		VADDPS(one, sv, sv)
		ADDQ(U8(slot512), s)
		DECQ(cnt)
		JNZ(LabelRef(lbl + "_start"))
		Label(lbl + "_window")
		a, b := ZMM(), ZMM()
		VADDPS(hi, lo, b)
		VMULPS(half, b, a)
		VRNDSCALEPS(U8(9), a, a) // floor, no precision exception
		VSUBPS(a, b, b)
		ae, be := ZMM(), ZMM()
		VADDPS(bv, a, ae)
		VADDPS(bv, b, be)
		accA, accB := ZMM(), ZMM()
		VXORPS(accA, accA, accA)
		VXORPS(accB, accB, accB)
		iv := windowSpan(a, be, tp, s, cnt, 16)
		Label(lbl + "_sum")
		for _, w := range []struct{ start, end, acc VecVirtual }{{a, ae, accA}, {b, be, accB}} {
			in, both := K(), K()
			VCMPPS(U8(13), w.start, iv, in)    // iv >= start
			VCMPPS(U8(1), w.end, iv, in, both) // and iv < start+beta
			VADDPS(Mem{Base: s}, w.acc, both, w.acc)
		}
		VADDPS(one, iv, iv)
		ADDQ(U8(slot512), s)
		DECQ(cnt)
		JNZ(LabelRef(lbl + "_sum"))
		VDIVPS(c, accA, accA)
		VDIVPS(c, accB, accB)
		eq := K()
		VCMPPS(U8(0), b, a, eq) // a == b
		t := ZMM()
		VMULPS(half, accA, t)
		VMULPS(half, accB, accB)
		VADDPS(accB, t, t)
		VBLENDMPS(accA, t, eq, t)
		VMOVUPS(t, Mem{Base: dst})
		ADDQ(U8(64), dst)
		ADDQ(stride, tp)
		DECQ(g)
		JNZ(LabelRef(lbl + "_loop"))
		VZEROUPPER()
		RET()
	}
}

// ---------------------------------------------------------------------------------------------
// Gram tiles.

// The zmm Gram tiles work on a packed block (GramF32 in kernels/robust_gram.go): the centred f64
// values of the inputs taken in pairs (2q, 2q+1), in groups of 4 coordinates, each group the 4
// values of input 2q then the 4 of input 2q+1 (64 bytes), then the block's centre (elems f64,
// at (ne+2)·elems f64). An odd count gets a zero partner, so that a 64-byte load always holds
// two inputs. With ne = n rounded up to even, input i's values of group g are at byte
// g·(ne·32+64) + (i>>1)·64 + (i&1)·32: a group's pairs are contiguous, so the tiles address all
// their rows and columns from one pointer with constant displacements.

// genGramPack generates gramPackF32AVX512(tmp, sq, x, elems): the centre of each coordinate (the
// inputs' f32 sum in input order divided by n in f32, 0 where not finite), every input's
// centred values packed into tmp, and sq[16i + j%16] = FMA(x_i[j], x_i[j], ...), for elems a
// positive multiple of 8 (AVX2 instructions: the zmm tiles are what the packing is for).
func genGramPack() {
	TEXT("gramPackF32AVX512", NOSPLIT, "func(tmp []float64, sq []float64, x [][]byte, elems int)")
	Pragma("noescape")
	Doc("gramPackF32AVX512 packs the centred block of gramGeneric into tmp and adds the squares to sq, for elems a positive multiple of 8.")
	elems := Load(Param("elems"), GP64())
	n := Load(Param("x").Len(), GP64())
	panel := Load(Param("tmp").Base(), GP64())
	centre := GP64() // after the panel: (ne+2)·elems f64
	MOVQ(n, centre)
	INCQ(centre)
	ANDQ(I8(-2), centre)
	ADDQ(U8(2), centre)
	IMULQ(elems, centre)
	SHLQ(U8(3), centre)
	ADDQ(panel, centre)
	end := GP64() // f32 bytes of the block
	MOVQ(elems, end)
	SHLQ(U8(2), end)
	stride := groupStride(n) // a group's bytes, ne·32 + 64
	nf := YMM()              // n in f32 lanes
	VCVTSI2SSQ(n, nf.AsX(), nf.AsX())
	VBROADCASTSS(nf.AsX(), nf)
	zero := YMM()
	VXORPD(zero, zero, zero)

	emitCentre(centre, n, end, nf, zero)

	// Pass 2: input by input, the centred values and the squares (16 lanes: four chains of
	// FMAs), 16 coordinates per step, then 8.
	{
		i := GP64()
		XORQ(i, i)
		Label("input")
		p, pend := inputPtr(i), GP64()
		LEAQ(Mem{Base: p, Index: end, Scale: 1}, pend)
		row := packRow(panel, i)
		sqp := Load(Param("sq").Base(), GP64())
		sh := GP64()
		MOVQ(i, sh)
		SHLQ(U8(7), sh) // 16 f64 per input
		ADDQ(sh, sqp)
		acc := make([]VecVirtual, 4)
		for k := range acc {
			acc[k] = YMM()
			VMOVUPD(Mem{Base: sqp, Disp: 32 * k}, acc[k])
		}
		cp := GP64()
		MOVQ(centre, cp)
		packSteps("", p, pend, func(u int) {
			v, y := YMM(), YMM()
			VCVTPS2PD(Mem{Base: p, Disp: 16 * u}, v)
			VFMADD231PD(v, v, acc[u])
			VSUBPD(Mem{Base: cp, Disp: 32 * u}, v, y)
			VMOVUPD(y, Mem{Base: row})
			ADDQ(stride, row)
		}, func(w int) { ADDQ(U32(32*w), cp) })
		for k := range acc {
			VMOVUPD(acc[k], Mem{Base: sqp, Disp: 32 * k})
		}
		INCQ(i)
		CMPQ(i, n)
		JB(LabelRef("input"))
	}
	packZeroPartner("", panel, n, elems, stride, zero)
	VZEROUPPER()
	RET()
}

// packSteps emits the walk over one input's f32 values from p to pend, groups of 4 coordinates
// at a time, 4 groups per step and then 2: pack(u) packs group u of the step (16 bytes at
// p + 16u), advance(w) moves the caller's other pointers past a step of w groups, then p moves
// (labels prefix+"pack4", prefix+"pack2").
func packSteps(prefix string, p, pend Register, pack func(u int), advance func(w int)) {
	for _, w := range []int{4, 2} {
		lbl := fmt.Sprintf("%spack%d", prefix, w)
		lim := GP64()
		LEAQ(Mem{Base: pend, Disp: -16*w + 16}, lim)
		Label(lbl)
		CMPQ(p, lim)
		JAE(LabelRef(lbl + "_done"))
		for u := range w {
			pack(u)
		}
		advance(w)
		ADDQ(U32(16*w), p)
		JMP(LabelRef(lbl))
		Label(lbl + "_done")
	}
}

// packZeroPartner emits the zero partner of an odd count n: the packed rows of input n, elems
// values, all zero (labels prefix+"pad" and prefix+"done").
func packZeroPartner(prefix string, panel, n, elems, stride Register, zero VecVirtual) {
	TESTQ(U32(1), n)
	JZ(LabelRef(prefix + "done"))
	row := packRow(panel, n)
	cnt := GP64()
	MOVQ(elems, cnt)
	SHRQ(U8(2), cnt)
	Label(prefix + "pad")
	VMOVUPD(zero, Mem{Base: row})
	ADDQ(stride, row)
	DECQ(cnt)
	JNZ(LabelRef(prefix + "pad"))
	Label(prefix + "done")
}

// genGramPackRaw generates gramPackRawF32AVX512(tmp, x, elems): every input's values as they
// are (no centre), converted to f64 and packed into tmp as genGramPack packs the centred ones,
// an odd count's partner zero, for elems a positive multiple of 8. The zmm tiles over this
// block give GramRawF32's partials: each pair's lane j%4 receives FMA(x_a[j], x_b[j], ·) in
// element order, as in gramRawGeneric.
func genGramPackRaw() {
	TEXT("gramPackRawF32AVX512", NOSPLIT, "func(tmp []float64, x [][]byte, elems int)")
	Pragma("noescape")
	Doc("gramPackRawF32AVX512 packs the block of gramRawGeneric (the inputs as they are) into tmp as gramPackF32AVX512 packs the centred one, for elems a positive multiple of 8.")
	elems := Load(Param("elems"), GP64())
	n := Load(Param("x").Len(), GP64())
	panel := Load(Param("tmp").Base(), GP64())
	end := GP64() // f32 bytes of the block
	MOVQ(elems, end)
	SHLQ(U8(2), end)
	stride := groupStride(n)
	i := GP64()
	XORQ(i, i)
	Label("raw_input")
	p, pend := inputPtr(i), GP64()
	LEAQ(Mem{Base: p, Index: end, Scale: 1}, pend)
	row := packRow(panel, i)
	packSteps("raw_", p, pend, func(u int) {
		v := YMM()
		VCVTPS2PD(Mem{Base: p, Disp: 16 * u}, v)
		VMOVUPD(v, Mem{Base: row})
		ADDQ(stride, row)
	}, func(int) {})
	INCQ(i)
	CMPQ(i, n)
	JB(LabelRef("raw_input"))
	zero := YMM()
	VXORPD(zero, zero, zero)
	packZeroPartner("raw_", panel, n, elems, stride, zero)
	VZEROUPPER()
	RET()
}

// genPrefetchBlocks generates prefetchBlocksT1(x, from, to, off, bytes): a prefetch into L2 of
// every 64-byte line of bytes [off, off+bytes) past the start of the inputs x[from:to] (which
// may lie beyond their lengths: a prefetch does not fault). The Gram kernels call it between
// their tiles to bring the next block in while the tiles compute, spread over the block so
// that the prefetches do not queue up at once.
func genPrefetchBlocks() {
	TEXT("prefetchBlocksT1", NOSPLIT, "func(x [][]byte, from, to, off, bytes int)")
	Pragma("noescape")
	Doc("prefetchBlocksT1 prefetches bytes [off, off+bytes) of the inputs x[from:to] into L2.")
	i := Load(Param("from"), GP64())
	to := Load(Param("to"), GP64())
	CMPQ(i, to)
	JAE(LabelRef("done"))
	Label("input")
	p := inputPtr(i)
	ADDQ(Load(Param("off"), GP64()), p)
	e := GP64()
	MOVQ(p, e)
	ADDQ(Load(Param("bytes"), GP64()), e)
	Label("line")
	PREFETCHT1(Mem{Base: p})
	ADDQ(U8(64), p)
	CMPQ(p, e)
	JB(LabelRef("line"))
	INCQ(i)
	CMPQ(i, to)
	JB(LabelRef("input"))
	Label("done")
	RET()
}

// groupStride returns the bytes of one group of the group-major layout for the count in n:
// ne·32, padded by a cache line so that the groups of one input, which the packing writes one
// after the other, do not all fall in the same L1 set when ne·32 is a multiple of 4 KiB.
func groupStride(n Register) Register {
	s := GP64()
	MOVQ(n, s)
	INCQ(s)
	ANDQ(I8(-2), s)
	ADDQ(U8(2), s)
	SHLQ(U8(5), s)
	return s
}

// packRow returns the address of input i's first group in the packed block at panel:
// panel + (i>>1)·64 + (i&1)·32.
func packRow(panel, i Register) Register {
	r, t := GP64(), GP64()
	MOVQ(i, r)
	SHRQ(U8(1), r)
	SHLQ(U8(6), r)
	ADDQ(panel, r)
	MOVQ(i, t)
	ANDQ(U32(1), t)
	SHLQ(U8(5), t)
	ADDQ(t, r)
	return r
}

// Tile shape: rows by pairs of columns (24 accumulators, 4 broadcasts, one column vector).
const (
	tileRows  = 4
	tilePairs = 6
)

// genGramTiles512 generates gramTilesAVX512(p, tmp, n, elems, c0, c1, g0, g1): the pairs of
// the column pairs [c0, c1) (c0 a multiple of 6) over the groups [g0, g1), in tiles of up to 4
// rows by 6 pairs of columns taken column-major: for each group of up to 6 column pairs, every
// row group from 0 that meets a pair a <= b. Its first tiles compute pairs a > b, which p leaves
// unspecified, and with an odd count the last pair holds the zero partner n. A column group's
// values over the chunk of groups stay in L1 while the row groups stream from L2 past them: 4
// broadcasts of 32 bytes per 24 FMAs come from L2, against 6 vectors of 64 bytes when the rows
// stay and the columns stream (the order before 2026-12-02: 5-7% slower at 128 inputs on Zen 5).
func genGramTiles512() {
	TEXT("gramTilesAVX512", NOSPLIT, "func(p []float64, tmp []float64, n, elems, c0, c1, g0, g1 int)")
	Pragma("noescape")
	Doc("gramTilesAVX512 adds the pairs of the column pairs [c0, c1) over the groups [g0, g1) of the packed block in tmp to p (gramGeneric's), for elems a positive multiple of 8, c0 a multiple of 6 and g1 > g0.")
	n := Load(Param("n"), GP64())
	np := GP64() // column pairs
	MOVQ(n, np)
	INCQ(np)
	SHRQ(U8(1), np)
	cp := Load(Param("c0"), GP64())
	a0, left, lim := GP64(), GP64(), GP64()
	Label("cols")
	CMPQ(cp, Load(Param("c1"), GP64()))
	JAE(LabelRef("done"))
	MOVQ(np, left)
	SUBQ(cp, left)
	for c := 1; c < tilePairs; c++ {
		CMPQ(left, U8(c))
		JE(LabelRef(fmt.Sprintf("cols%d", c)))
	}
	JMP(LabelRef(fmt.Sprintf("cols%d", tilePairs)))
	for c := 1; c <= tilePairs; c++ {
		Label(fmt.Sprintf("cols%d", c))
		XORQ(a0, a0)
		rows := fmt.Sprintf("c%d_rows", c)
		Label(rows)
		// rows a0 < min(n, 2(cp+c))
		LEAQ(Mem{Base: cp, Disp: c}, lim)
		SHLQ(U8(1), lim)
		CMPQ(lim, n)
		CMOVQGT(n, lim)
		CMPQ(a0, lim)
		JAE(LabelRef("nextcols"))
		MOVQ(n, left)
		SUBQ(a0, left)
		for r := 1; r < tileRows; r++ {
			CMPQ(left, U8(r))
			JE(LabelRef(fmt.Sprintf("tile%dx%d", r, c)))
		}
		JMP(LabelRef(fmt.Sprintf("tile%dx%d", tileRows, c)))
		for r := 1; r <= tileRows; r++ {
			Label(fmt.Sprintf("tile%dx%d", r, c))
			gramTile512(r, c, n, a0, cp)
			ADDQ(U8(tileRows), a0)
			JMP(LabelRef(rows))
		}
	}
	Label("nextcols")
	ADDQ(U8(tilePairs), cp)
	JMP(LabelRef("cols"))
	Label("done")
	VZEROUPPER()
	RET()
}

// gramTile512 emits one tile over all groups of the packed block (group-major): R rows from a0
// by C column pairs from cp. Every operand is one pointer, the group index and a constant
// displacement away: row r of the tile at rp + j + 32r, column pair c at cpp + j + 64c.
func gramTile512(R, C int, n, a0, cp Register) {
	panel := Load(Param("tmp").Base(), GP64())
	stride := groupStride(Load(Param("n"), GP64())) // a group's bytes
	// end = panel + g1·stride; j runs from -(g1-g0)·stride to 0.
	end := Load(Param("g1"), GP64())
	IMULQ(stride, end)
	ADDQ(panel, end)
	j := Load(Param("g1"), GP64())
	SUBQ(Load(Param("g0"), GP64()), j)
	IMULQ(stride, j)
	NEGQ(j)
	rp, cpp := GP64(), GP64()
	MOVQ(a0, rp)
	SHRQ(U8(1), rp)
	SHLQ(U8(6), rp)
	ADDQ(end, rp)
	MOVQ(cp, cpp)
	SHLQ(U8(6), cpp)
	ADDQ(end, cpp)
	// pt = &p[(a0*s + 2cp)*4]; pair (row r, column pair c) at pt + r*s*32 + c*64.
	ns := GP64()
	MOVQ(n, ns)
	INCQ(ns)
	ANDQ(I8(-2), ns)
	SHLQ(U8(5), ns)
	pt := GP64()
	MOVQ(a0, pt)
	IMULQ(ns, pt)
	t := GP64()
	MOVQ(cp, t)
	SHLQ(U8(6), t)
	ADDQ(t, pt)
	ADDQ(Load(Param("p").Base(), GP64()), pt)
	// Rows 2 and 3 from pt2 = pt + 2·ns (an index scales by 1, 2, 4 or 8, not 3).
	pt2 := GP64()
	LEAQ(Mem{Base: pt, Index: ns, Scale: 2}, pt2)
	pm := func(r, c int) Mem {
		m := Mem{Base: pt, Disp: 64 * c}
		if r >= 2 {
			m.Base, r = pt2, r-2
		}
		if r > 0 {
			m.Index, m.Scale = ns, uint8(r)
		}
		return m
	}
	acc := make([][]VecVirtual, R)
	for r := range R {
		acc[r] = make([]VecVirtual, C)
		for c := range C {
			acc[r][c] = ZMM()
			VMOVUPD(pm(r, c), acc[r][c])
		}
	}
	loop := fmt.Sprintf("t%dx%d_loop", R, C)
	Label(loop)
	av := make([]VecVirtual, R)
	for r := range R {
		av[r] = ZMM()
		VBROADCASTF64X4(Mem{Base: rp, Index: j, Scale: 1, Disp: 32 * r}, av[r])
	}
	for c := range C {
		bv := ZMM()
		VMOVUPD(Mem{Base: cpp, Index: j, Scale: 1, Disp: 64 * c}, bv)
		for r := range R {
			VFMADD231PD(bv, av[r], acc[r][c])
		}
	}
	ADDQ(stride, j)
	JNZ(LabelRef(loop))
	for r := range R {
		for c := range C {
			VMOVUPD(acc[r][c], pm(r, c))
		}
	}
}

// ---------------------------------------------------------------------------------------------
// Floor.

// genFMALoop512 generates fmaLoopAVX512(iters): fmaLoopAVX2 on zmm registers, 12 chains of 8
// lanes: the loop runs iters/2 times 12 FMAs (96 f64 FMAs), after one of 6 when iters is odd,
// so that iters·48 FMAs are performed with enough chains for two 512-bit FMA pipes.
func genFMALoop512() {
	TEXT("fmaLoopAVX512", NOSPLIT, "func(iters int) float64")
	Doc("fmaLoopAVX512 runs iters x 48 f64 fused multiply-adds on zmm registers and returns a value that depends on all of them.")
	n := Load(Param("iters"), GP64())
	a, b := ZMM(), ZMM()
	for _, c := range []struct {
		z VecVirtual
		f float64
	}{{a, 1.0000001}, {b, 0.9999999}} {
		r := GP64()
		MOVQ(U64(math.Float64bits(c.f)), r)
		VPBROADCASTQ(r, c.z)
	}
	acc := make([]VecVirtual, 12)
	for k := range acc {
		acc[k] = ZMM()
		VXORPD(acc[k], acc[k], acc[k])
	}
	TESTQ(U32(1), n)
	JZ(LabelRef("pairs"))
	for k := range 6 {
		VFMADD231PD(a, b, acc[k])
	}
	Label("pairs")
	SHRQ(U8(1), n)
	JZ(LabelRef("done"))
	Label("loop")
	for k := range acc {
		VFMADD231PD(a, b, acc[k])
	}
	DECQ(n)
	JNZ(LabelRef("loop"))
	Label("done")
	for k := 1; k < len(acc); k++ {
		VADDPD(acc[k], acc[0], acc[0])
	}
	y := YMM()
	VEXTRACTF64X4(U8(1), acc[0], y)
	VADDPD(y, acc[0].AsY(), y)
	x := XMM()
	VEXTRACTF128(U8(1), y, x)
	VADDPD(x, y.AsX(), x)
	VHADDPD(x, x, x)
	Store(x, ReturnIndex(0))
	VZEROUPPER()
	RET()
}

// distRun must equal DistRun in kernels/robust.go: the elements of one f32 run of the
// squared distances, 32 groups of 16.
const distRun = 512

// distTiny and distMax bound the lanes of the f64 run sums that SqDistNormF32Runs keeps: a
// positive norm lane under distTiny (squares lost to underflow) or any lane not at most
// distMax (a NaN or Inf) sends the input to the f64 partials (kernels.runsUsable).
const (
	distTiny = 0x1p-64
	distMax  = math.MaxFloat64
)

// genSqDistRuns4 generates sqDistRunsF32x4AVX512(pd, pn, x, z, xt, zt, tail): SqDistNormF32Runs
// for the inputs x[0..3] at once over the whole groups of z (len(z) a multiple of 16), then,
// when tail > 0, over one more run, the group of x[k]'s last elements at xt[16k:] and z's at
// zt (zero-padded: padding adds exact zeros). Per group each input takes a subtraction and two
// f32 FMAs on one zmm register (the point loaded once for the four); after every run the 8
// run sums are widened and added to 16 f64 partials, all held in registers. At the end each
// input's partials are checked (runsUsable) and added to pd[16k:16k+16] and pn[16k:16k+16],
// or, where they fail, left out, bit k of the result set. Per lane the operations and their
// order are those of the reference.
func genSqDistRuns4() {
	TEXT("sqDistRunsF32x4AVX512", NOSPLIT, "func(pd, pn *[64]float64, x [][]byte, z []float32, xt *[64]float32, zt *[16]float32, tail int) int")
	Pragma("noescape")
	Doc("sqDistRunsF32x4AVX512 is sqDistRunsGeneric for x[0..3] (len(z) a multiple of 16, then the padded tail at xt and zt when tail > 0): it adds the usable inputs' sums to pd[16k:] and pn[16k:] and returns the others as bits.")
	xh := Load(Param("x").Base(), GP64())
	z := Load(Param("z").Base(), GP64())
	n := Load(Param("z").Len(), GP64())
	var xs [4]Register
	for k := range xs {
		xs[k] = GP64()
		MOVQ(Mem{Base: xh, Disp: 24 * k}, xs[k])
	}
	var d64, n64 [4][2]VecVirtual
	for k := range 4 {
		for h := range 2 {
			d64[k][h], n64[k][h] = ZMM(), ZMM()
			VXORPD(d64[k][h], d64[k][h], d64[k][h])
			VXORPD(n64[k][h], n64[k][h], n64[k][h])
		}
	}
	var d32, n32 [4]VecVirtual
	for k := range 4 {
		d32[k], n32[k] = ZMM(), ZMM()
	}
	zero := func() {
		for k := range 4 {
			VXORPS(d32[k], d32[k], d32[k])
			VXORPS(n32[k], n32[k], n32[k])
		}
	}
	group := func(zm Mem, xm func(k int) Mem) {
		zv := ZMM()
		VMOVUPS(zm, zv)
		for k := range 4 {
			v, d := ZMM(), ZMM()
			VMOVUPS(xm(k), v)
			VSUBPS(zv, v, d)
			VFMADD231PS(d, d, d32[k])
			VFMADD231PS(v, v, n32[k])
		}
	}
	fold := func() {
		for k := range 4 {
			for q, acc := range []VecVirtual{d32[k], n32[k]} {
				dst := d64[k]
				if q == 1 {
					dst = n64[k]
				}
				lo, hi, y := ZMM(), ZMM(), YMM()
				VCVTPS2PD(acc.AsY(), lo)
				VADDPD(lo, dst[0], dst[0])
				VEXTRACTF32X8(U8(1), acc, y)
				VCVTPS2PD(y, hi)
				VADDPD(hi, dst[1], dst[1])
			}
		}
	}
	j, end := GP64(), GP64()
	XORQ(j, j)
	Label("sqr4_run")
	CMPQ(j, n)
	JAE(LabelRef("sqr4_tail"))
	LEAQ(Mem{Base: j, Disp: distRun}, end) // end = min(j + distRun, n)
	CMPQ(end, n)
	CMOVQHI(n, end)
	zero()
	Label("sqr4_loop")
	group(Mem{Base: z, Index: j, Scale: 4}, func(k int) Mem { return Mem{Base: xs[k], Index: j, Scale: 4} })
	ADDQ(U8(16), j)
	CMPQ(j, end)
	JB(LabelRef("sqr4_loop"))
	fold()
	JMP(LabelRef("sqr4_run"))

	Label("sqr4_tail")
	tail := Load(Param("tail"), GP64())
	TESTQ(tail, tail)
	JZ(LabelRef("sqr4_check"))
	xt := Load(Param("xt"), GP64())
	zt := Load(Param("zt"), GP64())
	zero()
	group(Mem{Base: zt}, func(k int) Mem { return Mem{Base: xt, Disp: 64 * k} })
	fold()

	Label("sqr4_check")
	pd := Load(Param("pd"), GP64())
	pn := Load(Param("pn"), GP64())
	bad := GP64()
	XORQ(bad, bad)
	maxv, tiny, zz := broadcastZ(distMax), broadcastZ(distTiny), ZMM()
	VXORPD(zz, zz, zz)
	for k := range 4 {
		// K1: a lane not at most distMax; K2: a norm lane under distTiny, K3: and not zero.
		KXORW(K1, K1, K1)
		for _, v := range []VecVirtual{d64[k][0], d64[k][1], n64[k][0], n64[k][1]} {
			VCMPPD(U8(0x06), maxv, v, K2) // NLE_US
			KORW(K2, K1, K1)
		}
		for _, v := range n64[k] {
			VCMPPD(U8(0x01), tiny, v, K2)   // LT_OS
			VCMPPD(U8(0x04), zz, v, K2, K3) // NEQ_UQ, under K2
			KORW(K3, K1, K1)
		}
		skip := fmt.Sprintf("sqr4_bad%d", k)
		next := fmt.Sprintf("sqr4_next%d", k)
		KORTESTW(K1, K1)
		JNZ(LabelRef(skip))
		for h := range 2 {
			VADDPD(Mem{Base: pd, Disp: 128*k + 64*h}, d64[k][h], d64[k][h])
			VMOVUPD(d64[k][h], Mem{Base: pd, Disp: 128*k + 64*h})
			VADDPD(Mem{Base: pn, Disp: 128*k + 64*h}, n64[k][h], n64[k][h])
			VMOVUPD(n64[k][h], Mem{Base: pn, Disp: 128*k + 64*h})
		}
		JMP(LabelRef(next))
		Label(skip)
		ORQ(U8(1<<k), bad)
		Label(next)
	}
	Store(bad, ReturnIndex(0))
	VZEROUPPER()
	RET()
}

// broadcastZ returns f in every lane of a new zmm register.
func broadcastZ(f float64) VecVirtual {
	r := GP64()
	MOVQ(U64(math.Float64bits(f)), r)
	z := ZMM()
	VPBROADCASTQ(r, z)
	return z
}

// ---------------------------------------------------------------------------------------------
// Merging sorted runs of keys (order statistics of more than 512 inputs).

// mergeSizes are the run lengths L of mergeKeysAVX512_L: sorted runs of 512 wires (the padded
// sort on keys) merged pairwise into 1024, 2048, 4096 and 8192, so up to 8192 inputs.
var mergeSizes = []int{512, 1024, 2048, 4096}

// genMergeKeys generates mergeKeysAVX512_L(dst, a, b, floats): the bitonic merge (Batcher 1968)
// of two ascending runs a and b of L wires of one group (16 keys a wire) into the ascending run
// dst of 2L wires. a followed by b reversed is bitonic, and the half-cleaners of distances L,
// L/2, ..., 1, every comparator ascending, sort it. The stages go in passes of up to four, each
// pass over sets of 16 (or fewer) wires base + j·D that its distances connect, loaded into
// registers once, its comparators run there, stored once: log2(2L)/4 passes over dst rather
// than one a stage. The first pass reads a and b (b at 2L-1-w), the others dst in place. With
// floats, the last pass stores floats (the keys turned back, regFile.toKey).
func genMergeKeys(L int) {
	name := fmt.Sprintf("mergeKeysAVX512_%d", L)
	TEXT(name, NOSPLIT, "func(dst, a, b []float32, floats bool)")
	Pragma("noescape")
	Doc(fmt.Sprintf("%s merges the ascending key runs a and b of %d wires (16 keys each) into the ascending run dst of %d wires, stored as floats if floats is set.", name, L, 2*L))
	N := 2 * L
	S := bits.TrailingZeros(uint(N)) // stages: distances N/2 down to 1
	type chunk struct{ s, k int }    // the stages of distances 2^(s+k-1) down to 2^s
	var chunks []chunk
	for s := 0; s < S; s += 4 {
		chunks = append(chunks, chunk{s, min(4, S-s)})
	}
	mag := Z31
	{
		r := GP32()
		MOVL(U32(0x7fffffff), r)
		VPBROADCASTD(r, mag)
	}
	dp := Load(Param("dst").Base(), GP64())
	ap := Load(Param("a").Base(), GP64())
	bp := Load(Param("b").Base(), GP64())
	fl := Load(Param("floats"), GP8())
	for ci := len(chunks) - 1; ci >= 0; ci-- {
		c := chunks[ci]
		first, last := ci == len(chunks)-1, ci == 0
		if !last {
			mergePass(name, ci, c.s, c.k, N, first, false, dp, ap, bp, mag)
			continue
		}
		TESTB(fl, fl)
		JNZ(LabelRef(fmt.Sprintf("%s_floats", name)))
		mergePass(name, ci, c.s, c.k, N, first, false, dp, ap, bp, mag)
		VZEROUPPER()
		RET()
		Label(fmt.Sprintf("%s_floats", name))
		mergePass(name+"f", ci, c.s, c.k, N, first, true, dp, ap, bp, mag)
		VZEROUPPER()
		RET()
	}
}

// mergePass emits one pass of genMergeKeys: the stages of distances 2^(s+k-1) .. 2^s on every
// set of 2^k wires base + j·2^s (base with bits s..s+k-1 clear), N wires in all.
func mergePass(name string, ci, s, k, N int, first, floats bool, dp, ap, bp Register, mag VecPhysical) {
	D, setW := 1<<s, 1<<k
	q := GP64()
	XORQ(q, q)
	loop := fmt.Sprintf("%s_pass%d", name, ci)
	Label(loop)
	// base = (q >> s) << (s+k) | q & (D-1), in bytes (·64)
	base := GP64()
	MOVQ(q, base)
	SHRQ(U8(s), base)
	SHLQ(U8(s+k), base)
	if s > 0 {
		lo := GP64()
		MOVQ(q, lo)
		ANDQ(U32(D-1), lo)
		ORQ(lo, base)
	}
	SHLQ(U8(6), base)
	out := GP64()
	MOVQ(dp, out)
	ADDQ(base, out)
	reg := make([]VecPhysical, setW) // wire j of the set -> register
	free := slices.Clone(zmm[setW:31])
	for j := range setW {
		reg[j] = zmm[j]
		switch {
		case !first:
			VMOVDQU32(Mem{Base: out, Disp: 64 * j * D}, reg[j])
		case j < setW/2:
			VMOVDQU32(Mem{Base: ap, Index: base, Scale: 1, Disp: 64 * j * D}, reg[j])
		default:
			// wire w = base + j·D >= L comes from b[N-1-w]
			VMOVDQU32(Mem{Base: bp, Disp: 64 * (N - 1 - j*D)}, reg[j])
		}
		if first && j == setW/2-1 {
			// from here b is addressed downwards from bp - base
			NEGQ(base)
			ADDQ(base, bp)
		}
	}
	if first {
		SUBQ(base, bp) // base is negated: restore bp
	}
	for t := k - 1; t >= 0; t-- {
		for j := range setW {
			if j&(1<<t) != 0 {
				continue
			}
			h := j | 1<<t
			lo := free[0]
			free = free[1:]
			VPMINSD(reg[h], reg[j], lo)
			VPMAXSD(reg[h], reg[j], reg[h])
			free = append(free, reg[j])
			reg[j] = lo
		}
	}
	for j := range setW {
		if floats {
			VPMOVD2M(reg[j], K1)
			VPXORD(mag, reg[j], K1, reg[j])
		}
		VMOVDQU32(reg[j], Mem{Base: out, Disp: 64 * j * D})
	}
	INCQ(q)
	CMPQ(q, U32(N/setW))
	JB(LabelRef(loop))
}
