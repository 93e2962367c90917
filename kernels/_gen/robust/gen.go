// Command robust generates the AVX2+FMA assembly of the robust-aggregation kernels of package
// kernels (robust.go) with avo: order statistics over the client axis (sorting networks
// vectorised across coordinates), the Gram matrix of the updates in f64 accumulation (Krum,
// Bulyan), squared distances to a point (geometric median, centered clipping, diagnostics) and
// an FMA loop that measures the arithmetic floor.
//
// It lives beside kernels/_gen/gen.go in the same module but is its own program, so that kernel
// families are generated and reviewed independently. As there, every function performs exactly
// the operations of its reference loop in robust.go, in the same order per element, so the
// results are bitwise those of the generic variant.
package main

//go:generate go run . -out ../../robust_amd64.s -stubs ../../robust_stubs_amd64.go -pkg kernels

import (
	"fmt"
	"math"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

func main() {
	ConstraintExpr("amd64,!purego,!noasm,gc")

	genSortSmall()
	genSortNet()
	genMedianSorted()
	genTrimmedSorted()
	genClosestSorted()

	genGram()
	genSqDist()
	genFMALoop()

	Generate()
}

// smallMax is the largest client count sorted by straight-line code (registers allocated here,
// at generation time); larger counts run the table-driven network of sortNetF32AVX2. It must
// equal smallSortMax in kernels/robust.go.
const smallMax = 32

// slot is the byte size of one sorted value of a group: 8 f32 lanes, one coordinate each.
const slot = 32

// ---------------------------------------------------------------------------------------------
// Sorting networks.

// comparator orders wires lo < hi: afterwards lo holds the smaller value.
type comparator struct{ lo, hi int }

// sortNetwork is Batcher's odd-even merge sort for n wires, built for the next power of two
// and pruned of the comparators that touch a wire >= n (those wires would hold +Inf, which no
// comparator moves). It must be, comparator for comparator, sortNetwork in
// kernels/robust_network.go: the differential tests compare the assembly made from this one
// with the reference made from that one, for every n.
func sortNetwork(n int) []comparator {
	var net []comparator
	p2 := 1
	for p2 < n {
		p2 <<= 1
	}
	for p := 1; p < p2; p <<= 1 {
		for k := p; k >= 1; k >>= 1 {
			for j := k % p; j+k < p2; j += 2 * k {
				for i := 0; i < min(k, p2-j-k); i++ {
					a, b := i+j, i+j+k
					if a/(2*p) == b/(2*p) && b < n {
						net = append(net, comparator{a, b})
					}
				}
			}
		}
	}
	return net
}

// schedule reorders a network for register reuse without changing what it computes: every
// comparator keeps its place among the comparators that share a wire with it (a topological
// order of the same dependency graph), and among the ready ones the schedule prefers those
// whose wires are already in registers.
func schedule(net []comparator, inReg func(w int) bool) func() (comparator, bool) {
	n := 0
	for _, c := range net {
		n = max(n, c.hi+1)
	}
	// next[w] is the index in net of the first comparator on wire w not yet scheduled.
	pending := make([][]int, n)
	for i, c := range net {
		pending[c.lo] = append(pending[c.lo], i)
		pending[c.hi] = append(pending[c.hi], i)
	}
	done := make([]bool, len(net))
	return func() (comparator, bool) {
		best, bestScore := -1, -1
		for w := range pending {
			if len(pending[w]) == 0 {
				continue
			}
			i := pending[w][0]
			c := net[i]
			if pending[c.lo][0] != i || pending[c.hi][0] != i || done[i] {
				continue
			}
			score := 0
			if inReg(c.lo) {
				score++
			}
			if inReg(c.hi) {
				score++
			}
			// Prefer registers, then the earliest comparator: stable and close to Batcher's
			// order, which keeps the working set small.
			if score > bestScore || score == bestScore && i < best {
				best, bestScore = i, score
			}
		}
		if best < 0 {
			return comparator{}, false
		}
		done[best] = true
		c := net[best]
		pending[c.lo] = pending[c.lo][1:]
		pending[c.hi] = pending[c.hi][1:]
		return c, true
	}
}

var ymm = []VecPhysical{Y0, Y1, Y2, Y3, Y4, Y5, Y6, Y7, Y8, Y9, Y10, Y11, Y12, Y13, Y14, Y15}

// regFile tracks which wire (sorted value) each ymm register holds while straight-line code is
// generated, and spills to the group's slab in tmp when registers run out.
type regFile struct {
	n      int
	wire   [16]int // register -> wire, -1 if free
	reg    []int   // wire -> register, -1 if not in a register
	dirty  []bool  // the register holds a value tmp does not
	loaded []bool  // the wire was read from its input
	xp, j  Register
	tp     Register
	uses   [][]int // per wire: positions (in the generated order) of its remaining uses
	loads  int
	stores int
}

func newRegFile(n int, xp, j, tp Register) *regFile {
	r := &regFile{n: n, reg: make([]int, n), dirty: make([]bool, n), loaded: make([]bool, n), xp: xp, j: j, tp: tp}
	for i := range r.wire {
		r.wire[i] = -1
	}
	for w := range r.reg {
		r.reg[w] = -1
	}
	return r
}

func (r *regFile) tmp(w int) Mem { return Mem{Base: r.tp, Disp: slot * w} }

// free returns a free register, evicting the one whose wire is used furthest in the future
// (Belady's choice) when none is free; pinned registers are kept.
func (r *regFile) free(pinned ...int) int {
	for i, w := range r.wire {
		if w < 0 {
			return i
		}
	}
	victim, far := -1, -1
	for i, w := range r.wire {
		if containsInt(pinned, i) {
			continue
		}
		next := math.MaxInt
		if len(r.uses[w]) > 0 {
			next = r.uses[w][0]
		}
		if next > far {
			victim, far = i, next
		}
	}
	r.evict(victim)
	return victim
}

func (r *regFile) evict(i int) {
	w := r.wire[i]
	if r.dirty[w] {
		VMOVUPS(ymm[i], r.tmp(w))
		r.stores++
		r.dirty[w] = false
	}
	r.reg[w] = -1
	r.wire[i] = -1
}

// ensure brings wire w into a register: from tmp, or on its first use from its input.
func (r *regFile) ensure(w int, pinned ...int) int {
	if i := r.reg[w]; i >= 0 {
		return i
	}
	i := r.free(pinned...)
	if r.loaded[w] {
		VMOVUPS(r.tmp(w), ymm[i])
		r.dirty[w] = false
	} else {
		p := GP64()
		MOVQ(Mem{Base: r.xp, Disp: 24 * w}, p)
		VMOVUPS(Mem{Base: p, Index: r.j, Scale: 1}, ymm[i])
		r.loaded[w] = true
		r.dirty[w] = true
	}
	r.loads++
	r.reg[w], r.wire[i] = i, w
	return i
}

func containsInt(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// emitSmallSort emits the straight-line sort of one group of 8 coordinates of n inputs into the
// slab at tp, and returns the comparators in the order emitted.
func emitSmallSort(n int, xp, j, tp Register) (loads, stores, comps int) {
	net := sortNetwork(n)
	r := newRegFile(n, xp, j, tp)
	next := schedule(net, func(w int) bool { return r.reg[w] >= 0 })
	// The order is decided greedily, so the future uses that eviction looks at are those of the
	// canonical order: a good estimate, since the schedule stays close to it.
	var order []comparator
	r.uses = make([][]int, n)
	for i, c := range net {
		r.uses[c.lo] = append(r.uses[c.lo], i)
		r.uses[c.hi] = append(r.uses[c.hi], i)
	}
	pos := make(map[comparator][]int)
	for i, c := range net {
		pos[c] = append(pos[c], i)
	}
	for {
		c, ok := next()
		if !ok {
			break
		}
		order = append(order, c)
		// Consume this comparator's canonical position from the use lists.
		p := pos[c][0]
		pos[c] = pos[c][1:]
		r.uses[c.lo] = removeInt(r.uses[c.lo], p)
		r.uses[c.hi] = removeInt(r.uses[c.hi], p)

		ra := r.ensure(c.lo)
		rb := r.ensure(c.hi, ra)
		rt := r.free(ra, rb)
		// min(lo, hi) with VMINPS's choice: lo < hi ? lo : hi (hi when either is NaN or both
		// are zeros); max likewise: lo > hi ? lo : hi.
		VMINPS(ymm[rb], ymm[ra], ymm[rt])
		VMAXPS(ymm[rb], ymm[ra], ymm[rb])
		r.wire[ra] = -1
		r.reg[c.lo], r.wire[rt] = rt, c.lo
		r.dirty[c.lo], r.dirty[c.hi] = true, true
	}
	for w := range n {
		if r.reg[w] < 0 && !r.loaded[w] {
			r.ensure(w)
		}
		if i := r.reg[w]; i >= 0 {
			r.evict(i)
		}
	}
	return r.loads, r.stores, len(order)
}

func removeInt(s []int, v int) []int {
	for i, x := range s {
		if x == v {
			return append(s[:i], s[i+1:]...)
		}
	}
	return s
}

// genSortSmall generates sortSmallF32AVX2(tmp, x, off, groups): for each of groups groups of 8
// coordinates starting at element off of every input, the len(x) values of each coordinate
// sorted ascending into tmp, group after group, value after value (tmp[(g*n+i)*8+lane]).
func genSortSmall() {
	TEXT("sortSmallF32AVX2", NOSPLIT, "func(tmp []float32, x [][]byte, off, groups int)")
	Pragma("noescape")
	Doc(fmt.Sprintf("sortSmallF32AVX2 is sortGroupsGeneric for 1 <= len(x) <= %d, groups > 0.", smallMax))
	n := Load(Param("x").Len(), GP64())
	for k := 1; k <= smallMax; k++ {
		CMPQ(n, U8(k))
		JE(LabelRef(fmt.Sprintf("n%d", k)))
	}
	RET()
	for k := 1; k <= smallMax; k++ {
		Label(fmt.Sprintf("n%d", k))
		xp := Load(Param("x").Base(), GP64())
		tp := Load(Param("tmp").Base(), GP64())
		j := Load(Param("off"), GP64())
		SHLQ(U8(2), j)
		g := Load(Param("groups"), GP64())
		Label(fmt.Sprintf("n%d_loop", k))
		loads, stores, comps := emitSmallSort(k, xp, j, tp)
		Commentf("n=%d: %d comparators, %d loads, %d stores per group", k, comps, loads, stores)
		ADDQ(U8(slot), j)
		ADDQ(U32(slot*k), tp)
		DECQ(g)
		JNZ(LabelRef(fmt.Sprintf("n%d_loop", k)))
		VZEROUPPER()
		RET()
	}
}

// genSortNet generates sortNetF32AVX2(tmp, x, off, groups, net): sortSmallF32AVX2 for any
// count, driven by a table of comparators given as byte offsets (lo, hi) within a group's slab.
func genSortNet() {
	TEXT("sortNetF32AVX2", NOSPLIT, "func(tmp []float32, x [][]byte, off, groups int, net []uint32)")
	Pragma("noescape")
	Doc("sortNetF32AVX2 is sortGroupsGeneric for len(x) >= 1, groups > 0, net the byte offsets of sortNetwork(len(x)).")
	tp := Load(Param("tmp").Base(), GP64())
	j := Load(Param("off"), GP64())
	SHLQ(U8(2), j)
	g := Load(Param("groups"), GP64())
	Label("group")
	// Gather: value i of the group is input i's 8 elements.
	h := Load(Param("x").Base(), GP64())
	cnt := Load(Param("x").Len(), GP64())
	d := GP64()
	MOVQ(tp, d)
	Label("gather")
	p := GP64()
	MOVQ(Mem{Base: h}, p)
	VMOVUPS(Mem{Base: p, Index: j, Scale: 1}, Y0)
	VMOVUPS(Y0, Mem{Base: d})
	ADDQ(U8(24), h)
	ADDQ(U8(slot), d)
	DECQ(cnt)
	JNZ(LabelRef("gather"))
	// Network.
	q := Load(Param("net").Base(), GP64())
	e := Load(Param("net").Len(), GP64())
	LEAQ(Mem{Base: q, Index: e, Scale: 4}, e)
	CMPQ(q, e)
	JAE(LabelRef("next"))
	Label("cmp")
	a, b := GP64(), GP64()
	MOVL(Mem{Base: q}, a.As32())
	MOVL(Mem{Base: q, Disp: 4}, b.As32())
	VMOVUPS(Mem{Base: tp, Index: a, Scale: 1}, Y0)
	VMOVUPS(Mem{Base: tp, Index: b, Scale: 1}, Y1)
	VMINPS(Y1, Y0, Y2)
	VMAXPS(Y1, Y0, Y1)
	VMOVUPS(Y2, Mem{Base: tp, Index: a, Scale: 1})
	VMOVUPS(Y1, Mem{Base: tp, Index: b, Scale: 1})
	ADDQ(U8(8), q)
	CMPQ(q, e)
	JB(LabelRef("cmp"))
	Label("next")
	ADDQ(U8(slot), j)
	MOVQ(d, tp)
	DECQ(g)
	JNZ(LabelRef("group"))
	VZEROUPPER()
	RET()
}

// broadcastF32 returns a ymm register holding f in every lane.
func broadcastF32(f float32) VecVirtual {
	r := GP32()
	MOVL(U32(math.Float32bits(f)), r)
	y := YMM()
	VMOVD(r, y.AsX())
	VBROADCASTSS(y.AsX(), y)
	return y
}

// median emits the median of the sorted group at tp (n values, n odd: the middle one; n even:
// lo*0.5 + hi*0.5 of the two middle ones) into a new register. mid is the byte offset of value
// n/2; odd is a label-free choice made by the caller per n parity.
func median(tp, mid Register, odd bool, half VecVirtual) VecVirtual {
	m := YMM()
	if odd {
		VMOVUPS(Mem{Base: tp, Index: mid, Scale: 1}, m)
		return m
	}
	lo := YMM()
	VMULPS(Mem{Base: tp, Index: mid, Scale: 1, Disp: -slot}, half, lo)
	VMULPS(Mem{Base: tp, Index: mid, Scale: 1}, half, m)
	VADDPS(m, lo, m)
	return m
}

// sortedArgs loads the common arguments of the reductions over sorted groups: dst, tmp, the
// group count, the slab stride and the offset of value n/2.
func sortedArgs() (dst, tp, g, stride, mid, n Register) {
	dst = Load(Param("dst").Base(), GP64())
	tp = Load(Param("tmp").Base(), GP64())
	g = Load(Param("dst").Len(), GP64())
	SHRQ(U8(3), g)
	n = Load(Param("n"), GP64())
	stride = GP64()
	MOVQ(n, stride)
	SHLQ(U8(5), stride)
	mid = GP64()
	MOVQ(n, mid)
	SHRQ(U8(1), mid)
	SHLQ(U8(5), mid)
	return
}

// genMedianSorted generates medianSortedF32AVX2(dst, tmp, n).
func genMedianSorted() {
	TEXT("medianSortedF32AVX2", NOSPLIT, "func(dst []float32, tmp []float32, n int)")
	Pragma("noescape")
	Doc("medianSortedF32AVX2 is medianSortedGeneric for len(dst) a positive multiple of 8.")
	dst, tp, g, stride, mid, n := sortedArgs()
	half := broadcastF32(0.5)
	TESTQ(U32(1), n)
	JZ(LabelRef("even"))
	for _, odd := range []bool{true, false} {
		lbl := "odd"
		if !odd {
			lbl = "even"
			Label(lbl)
		}
		Label(lbl + "_loop")
		m := median(tp, mid, odd, half)
		VMOVUPS(m, Mem{Base: dst})
		ADDQ(U8(32), dst)
		ADDQ(stride, tp)
		DECQ(g)
		JNZ(LabelRef(lbl + "_loop"))
		VZEROUPPER()
		RET()
	}
}

// genTrimmedSorted generates trimmedSortedF32AVX2(dst, tmp, n, k, c): the sum of values k..n-k-1
// of each sorted group, from +0 in ascending order, divided by c = n-2k.
func genTrimmedSorted() {
	TEXT("trimmedSortedF32AVX2", NOSPLIT, "func(dst []float32, tmp []float32, n, k int, c float32)")
	Pragma("noescape")
	Doc("trimmedSortedF32AVX2 is trimmedSortedGeneric for len(dst) a positive multiple of 8, 2k < n, c = n-2k.")
	dst := Load(Param("dst").Base(), GP64())
	tp := Load(Param("tmp").Base(), GP64())
	g := Load(Param("dst").Len(), GP64())
	SHRQ(U8(3), g)
	n := Load(Param("n"), GP64())
	k := Load(Param("k"), GP64())
	stride := GP64()
	MOVQ(n, stride)
	SHLQ(U8(5), stride)
	// first..end: byte offsets of values k and n-k within a slab.
	first, end := GP64(), GP64()
	MOVQ(k, first)
	SHLQ(U8(5), first)
	MOVQ(n, end)
	SUBQ(k, end)
	SHLQ(U8(5), end)
	c := YMM()
	Load(Param("c"), c.AsX())
	VBROADCASTSS(c.AsX(), c)
	Label("loop")
	acc := YMM()
	VXORPS(acc, acc, acc)
	i := GP64()
	MOVQ(first, i)
	Label("sum")
	VADDPS(Mem{Base: tp, Index: i, Scale: 1}, acc, acc)
	ADDQ(U8(slot), i)
	CMPQ(i, end)
	JB(LabelRef("sum"))
	VDIVPS(c, acc, acc)
	VMOVUPS(acc, Mem{Base: dst})
	ADDQ(U8(32), dst)
	ADDQ(stride, tp)
	DECQ(g)
	JNZ(LabelRef("loop"))
	VZEROUPPER()
	RET()
}

// genClosestSorted generates closestSortedF32AVX2(dst, tmp, n, beta, c): per sorted group, the
// mean of the beta values closest to the median (Bulyan's coordinate step). The window start
// is 1 + the last s in [0, n-beta) with |v[s+beta]-m| < |v[s]-m|, or 0; the window is summed
// from +0 in ascending order (lanes outside it add +0, which changes nothing) and divided by
// c = beta.
func genClosestSorted() {
	TEXT("closestSortedF32AVX2", NOSPLIT, "func(dst []float32, tmp []float32, n, beta int, c float32)")
	Pragma("noescape")
	Doc("closestSortedF32AVX2 is closestSortedGeneric for len(dst) a positive multiple of 8, 1 <= beta <= n, c = beta.")
	dst, tp, g, stride, mid, n := sortedArgs()
	beta := Load(Param("beta"), GP64())
	// last = n-beta: the number of window starts to test; bo = beta's byte offset.
	last := GP64()
	MOVQ(n, last)
	SUBQ(beta, last)
	bo := GP64()
	MOVQ(beta, bo)
	SHLQ(U8(5), bo)
	half := broadcastF32(0.5)
	one := broadcastF32(1)
	abs := YMM()
	{
		r := GP32()
		MOVL(U32(0x7fffffff), r)
		VMOVD(r, abs.AsX())
		VPBROADCASTD(abs.AsX(), abs)
	}
	c := YMM()
	Load(Param("c"), c.AsX())
	VBROADCASTSS(c.AsX(), c)
	bv := YMM() // beta as f32 lanes
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
		m := median(tp, mid, odd, half)
		sel, sv := YMM(), YMM()
		VXORPS(sel, sel, sel)
		VMOVUPS(one, sv)
		s := GP64()
		MOVQ(tp, s)
		cnt := GP64()
		MOVQ(last, cnt)
		TESTQ(cnt, cnt)
		JZ(LabelRef(lbl + "_window"))
		Label(lbl + "_start")
		d0, d1 := YMM(), YMM()
		VMOVUPS(Mem{Base: s}, d0)
		VSUBPS(m, d0, d0)
		VANDPS(abs, d0, d0)
		VMOVUPS(Mem{Base: s, Index: bo, Scale: 1}, d1)
		VSUBPS(m, d1, d1)
		VANDPS(abs, d1, d1)
		VCMPPS(U8(1), d0, d1, d1) // d1 < d0
		VBLENDVPS(d1, sv, sel, sel)
		VADDPS(one, sv, sv)
		ADDQ(U8(slot), s)
		DECQ(cnt)
		JNZ(LabelRef(lbl + "_start"))
		Label(lbl + "_window")
		hi := YMM()
		VADDPS(bv, sel, hi)
		acc, iv := YMM(), YMM()
		VXORPS(acc, acc, acc)
		VXORPS(iv, iv, iv)
		MOVQ(tp, s)
		MOVQ(n, cnt)
		Label(lbl + "_sum")
		in, lt, t := YMM(), YMM(), YMM()
		VCMPPS(U8(13), sel, iv, in) // iv >= sel
		VCMPPS(U8(1), hi, iv, lt)   // iv < sel+beta
		VANDPS(lt, in, in)
		VANDPS(Mem{Base: s}, in, t)
		VADDPS(t, acc, acc)
		VADDPS(one, iv, iv)
		ADDQ(U8(slot), s)
		DECQ(cnt)
		JNZ(LabelRef(lbl + "_sum"))
		VDIVPS(c, acc, acc)
		VMOVUPS(acc, Mem{Base: dst})
		ADDQ(U8(32), dst)
		ADDQ(stride, tp)
		DECQ(g)
		JNZ(LabelRef(lbl + "_loop"))
		VZEROUPPER()
		RET()
	}
}

// ---------------------------------------------------------------------------------------------
// Gram matrix.

// genGram generates gramF32AVX2(p, x, elems): for every pair a <= b of inputs,
// p[(a*n+b)*4 + j%4] = FMA(x[a][j], x[b][j], p[...]) for j in [0, elems), elems a multiple of 8.
//
// Rows are taken 3 at a time (i0, i0+1, i0+2). Each row group starts with a diagonal tile: the
// pairs among its rows and with the next 2 columns (5+4+3 = 12 pairs, the rows' own vectors
// reused as columns), then covers the columns to its right with rectangular tiles of 3 rows by
// 4 columns: 12 accumulators, 3 row vectors held in registers and one column vector streamed,
// so each 4-element step loads 7 vectors for 12 FMAs and the two FMA pipes stay busy (12
// independent chains cover the 4-cycle latency). Only the last tile of a row group may be
// narrower, and no pair a > b is computed. The f32 values are converted to f64 in the loads
// (VCVTPS2PD m128), which run beside the FMAs.
func genGram() {
	TEXT("gramF32AVX2", NOSPLIT, "func(p []float64, x [][]byte, elems int)")
	Pragma("noescape")
	Doc("gramF32AVX2 is gramGeneric for elems a positive multiple of 8 and len(p) >= 4*len(x)*len(x).")
	n := Load(Param("x").Len(), GP64())
	ns := GP64() // row stride of p in bytes: n*32
	MOVQ(n, ns)
	SHLQ(U8(5), ns)
	i0, c0, left := GP64(), GP64(), GP64()
	XORQ(i0, i0)

	// Each row group's diagonal tile also prefetches the following 8 KiB of its rows into L2:
	// over a block, every input's next block is asked for once, spread over the block's work,
	// so that the next block's first row group (which touches every input first) finds it in
	// L2 instead of waiting for DRAM.
	Label("rows")
	// The diagonal tile: R = min(3, n-i0) rows, E = min(2, n-i0-R) more columns when R = 3.
	MOVQ(n, left)
	SUBQ(i0, left)
	diag := []struct{ r, e, left int }{{1, 0, 1}, {2, 0, 2}, {3, 0, 3}, {3, 1, 4}}
	for _, d := range diag {
		CMPQ(left, U8(d.left))
		JE(LabelRef(fmt.Sprintf("diag%d_%d", d.r, d.e)))
	}
	JMP(LabelRef("diag3_2"))
	for _, d := range append(diag, struct{ r, e, left int }{3, 2, 5}) {
		Label(fmt.Sprintf("diag%d_%d", d.r, d.e))
		gramTile(d.r, d.e, true, true, i0, i0, n, ns)
		if d.r < 3 {
			JMP(LabelRef("done")) // these were the last rows
		} else {
			JMP(LabelRef("rect")) // columns from i0+5 on, if any, then the next rows
		}
	}

	// Rectangular tiles from column i0+5 on.
	Label("rect")
	LEAQ(Mem{Base: i0, Disp: 5}, c0)
	Label("cols")
	CMPQ(c0, n)
	JAE(LabelRef("nextrow"))
	MOVQ(n, left)
	SUBQ(c0, left)
	for c := 1; c <= 3; c++ {
		CMPQ(left, U8(c))
		JE(LabelRef(fmt.Sprintf("tile3x%d", c)))
	}
	JMP(LabelRef("tile3x4"))
	for c := 1; c <= 4; c++ {
		Label(fmt.Sprintf("tile3x%d", c))
		gramTile(3, c, false, false, i0, c0, n, ns)
		ADDQ(U8(4), c0)
		JMP(LabelRef("cols"))
	}
	Label("nextrow")
	ADDQ(U8(3), i0)
	CMPQ(i0, n)
	JB(LabelRef("rows"))

	Label("done")
	VZEROUPPER()
	RET()
}

// gramPrefetch is how far ahead the diagonal tiles prefetch: one block of the CPU device (2Ki
// f32 elements). Half a block ahead measured 7% slower, two blocks ahead the same.
const gramPrefetch = 8192

// gramTile emits one tile over all elements: R rows from i0 and, for a rectangular tile, C
// columns from c0; for a diagonal tile (c0 = i0), the pairs r <= c of the R rows and C more
// columns after them. Pointers run from the end of the data with a negative index, so the loop
// needs no bound register.
func gramTile(R, C int, diagonal, prefetch bool, i0, c0, n, ns Register) {
	xp := Load(Param("x").Base(), GP64())
	elems := Load(Param("elems"), GP64())
	SHLQ(U8(2), elems) // bytes
	ptr := func(idx Register, k int) Register {
		h := GP64()
		LEAQ(Mem{Base: idx, Index: idx, Scale: 2}, h) // idx*3
		p := GP64()
		MOVQ(Mem{Base: xp, Index: h, Scale: 8, Disp: 24 * k}, p)
		ADDQ(elems, p)
		return p
	}
	rows := make([]Register, R)
	for r := range rows {
		rows[r] = ptr(i0, r)
	}
	// The tile's columns: for a diagonal tile, the R rows then C more.
	cols := R + C
	first := R // the first column that is not one of the rows
	if !diagonal {
		cols, first = C, 0
	}
	colp := make([]Register, cols)
	for c := first; c < cols; c++ {
		colp[c] = ptr(c0, c)
	}
	// pt = &p[(i0*n + c0)*4]; pair (row r, column c) at pt + r*ns + c*32.
	pt := GP64()
	MOVQ(i0, pt)
	IMULQ(n, pt)
	ADDQ(c0, pt)
	SHLQ(U8(5), pt)
	pb := Load(Param("p").Base(), GP64())
	ADDQ(pb, pt)
	pm := func(r, c int) Mem {
		m := Mem{Base: pt, Disp: 32 * c}
		if r > 0 {
			m.Index, m.Scale = ns, uint8(r)
		}
		return m
	}
	used := func(r, c int) bool { return !diagonal || r <= c }
	acc := make([][]VecVirtual, R)
	for r := range R {
		acc[r] = make([]VecVirtual, cols)
		for c := range cols {
			if used(r, c) {
				acc[r][c] = YMM()
				VMOVUPD(pm(r, c), acc[r][c])
			}
		}
	}
	j := GP64()
	MOVQ(elems, j)
	NEGQ(j)
	loop := fmt.Sprintf("t%dx%d_%v_%v_loop", R, C, diagonal, prefetch)
	Label(loop)
	if prefetch {
		// One prefetch per stream per 32 bytes: half of them hit a line already asked for,
		// which costs a load slot and nothing else.
		for r := range R {
			PREFETCHT1(Mem{Base: rows[r], Index: j, Scale: 1, Disp: gramPrefetch})
		}
		for c := first; c < cols; c++ {
			PREFETCHT1(Mem{Base: colp[c], Index: j, Scale: 1, Disp: gramPrefetch})
		}
	}
	for u := range 2 {
		av := make([]VecVirtual, R)
		for r := range R {
			av[r] = YMM()
			VCVTPS2PD(Mem{Base: rows[r], Index: j, Scale: 1, Disp: 16 * u}, av[r])
		}
		for c := range cols {
			var bv VecVirtual
			if c < first {
				bv = av[c]
			} else {
				bv = YMM()
				VCVTPS2PD(Mem{Base: colp[c], Index: j, Scale: 1, Disp: 16 * u}, bv)
			}
			for r := range R {
				if used(r, c) {
					VFMADD231PD(bv, av[r], acc[r][c])
				}
			}
		}
	}
	ADDQ(U8(32), j)
	JNZ(LabelRef(loop))
	for r := range R {
		for c := range cols {
			if used(r, c) {
				VMOVUPD(acc[r][c], pm(r, c))
			}
		}
	}
}

// ---------------------------------------------------------------------------------------------
// Squared distances.

// genSqDist generates sqDistNormF32AVX2(pd, pn, x, z): with v = float64(x[j]) and
// d = v - float64(z[j]) (exact), pd[j%16] = FMA(d, d, pd[j%16]) and pn[j%16] = FMA(v, v,
// pn[j%16]), for len(z) a multiple of 16.
func genSqDist() {
	TEXT("sqDistNormF32AVX2", NOSPLIT, "func(pd, pn *[16]float64, x []byte, z []float32)")
	Pragma("noescape")
	Doc("sqDistNormF32AVX2 is sqDistNormGeneric(pd, pn, x, z, 0) for len(z) a multiple of 16.")
	pd := Load(Param("pd"), GP64())
	pn := Load(Param("pn"), GP64())
	x := Load(Param("x").Base(), GP64())
	z := Load(Param("z").Base(), GP64())
	n := Load(Param("z").Len(), GP64())
	acc, nacc := make([]VecVirtual, 4), make([]VecVirtual, 4)
	for k := range acc {
		acc[k], nacc[k] = YMM(), YMM()
		VMOVUPD(Mem{Base: pd, Disp: 32 * k}, acc[k])
		VMOVUPD(Mem{Base: pn, Disp: 32 * k}, nacc[k])
	}
	j := GP64()
	XORQ(j, j)
	TESTQ(n, n)
	JZ(LabelRef("done"))
	Label("loop")
	for k := range acc {
		xv, zv := YMM(), YMM()
		VCVTPS2PD(Mem{Base: x, Index: j, Scale: 4, Disp: 16 * k}, xv)
		VCVTPS2PD(Mem{Base: z, Index: j, Scale: 4, Disp: 16 * k}, zv)
		VFMADD231PD(xv, xv, nacc[k])
		VSUBPD(zv, xv, xv)
		VFMADD231PD(xv, xv, acc[k])
	}
	ADDQ(U8(16), j)
	CMPQ(j, n)
	JB(LabelRef("loop"))
	Label("done")
	for k := range acc {
		VMOVUPD(acc[k], Mem{Base: pd, Disp: 32 * k})
		VMOVUPD(nacc[k], Mem{Base: pn, Disp: 32 * k})
	}
	VZEROUPPER()
	RET()
}

// ---------------------------------------------------------------------------------------------
// Floor.

// genFMALoop generates fmaLoopAVX2(iters): iters x 12 independent VFMADD231PD on ymm registers
// (48 f64 FMAs per iteration), enough chains to cover the FMA latency on two pipes. It measures
// the arithmetic floor the Gram kernel is compared with.
func genFMALoop() {
	TEXT("fmaLoopAVX2", NOSPLIT, "func(iters int) float64")
	Doc("fmaLoopAVX2 runs iters x 48 f64 fused multiply-adds and returns a value that depends on all of them.")
	n := Load(Param("iters"), GP64())
	a, b := broadcastF64(1.0000001), broadcastF64(0.9999999)
	acc := make([]VecVirtual, 12)
	for k := range acc {
		acc[k] = YMM()
		VXORPD(acc[k], acc[k], acc[k])
	}
	TESTQ(n, n)
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
	r := XMM()
	VEXTRACTF128(U8(1), acc[0], r)
	VADDPD(r, acc[0].AsX(), r)
	VHADDPD(r, r, r)
	Store(r, ReturnIndex(0))
	VZEROUPPER()
	RET()
}

func broadcastF64(f float64) VecVirtual {
	r := GP64()
	MOVQ(U64(math.Float64bits(f)), r)
	y := YMM()
	VMOVQ(r, y.AsX())
	VBROADCASTSD(y.AsX(), y)
	return y
}
