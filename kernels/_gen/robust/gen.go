// Command robust generates the AVX2+FMA and AVX-512 assembly of the robust-aggregation kernels
// of package kernels (robust.go, robust_gram.go) with avo: order statistics over the client axis
// (sorting and selection networks vectorised across coordinates), the Gram matrix of the
// updates centred on their mean in f64 accumulation (Krum, Bulyan), squared distances to a
// point (geometric median, centered clipping, diagnostics) and an FMA loop that measures the
// arithmetic floor. This file holds the AVX2 functions and what both sets share; avx512.go the
// AVX-512 ones.
//
// It lives beside kernels/_gen/gen.go in the same module but is its own program, so that kernel
// families are generated and reviewed independently. As there, every function performs exactly
// the operations of its reference loop in robust.go, in the same order per element, so the
// results are bitwise those of the generic variant.
package main

//go:generate go run . -out ../../robust_amd64.s -stubs ../../robust_stubs_amd64.go -pkg kernels

import (
	"cmp"
	"fmt"
	"math"
	"slices"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

func main() {
	ConstraintExpr("amd64,!purego,!noasm,gc")

	genSortSmall()
	genSortNet()
	for _, p := range paddedSizes {
		genSortPadded(p, false, 8)
		genSortPadded(p, true, 8)
	}
	genMedianSorted()
	genTrimmedSorted()
	genClosestSorted()

	genGramCentre()
	genGramDirect(false)
	genGramDirect(true)
	genPrefetchBlocks()
	genSqDist()
	genSqDistRuns()
	genFMALoop()

	genAVX512()

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
// comparator moves). It has the comparators of sortNetwork in kernels/robust_network.go, and
// every wire meets its comparators in the same order there (the differential tests compare
// the assembly made from this one with the reference made from that one, for every n; and
// TestSortNetworkOrder checks the order), but the merges come in the order of the recursion —
// a block's two halves sorted, then merged, before the next block — instead of level by level
// across all wires: the emitted code then finishes each register-sized block before it moves
// on, and the wires it spills are those of fewer blocks at a time.
func sortNetwork(n int) []comparator {
	net := batcherMerges(n)
	// Post-order of the merge tree: by the end of the block, then the smaller block first.
	slices.SortStableFunc(net, func(x, y merge) int {
		return cmp.Or(cmp.Compare(x.end, y.end), cmp.Compare(x.size, y.size))
	})
	out := make([]comparator, len(net))
	for i, m := range net {
		out[i] = m.c
	}
	return out
}

// merge is a comparator of Batcher's network with the block [end-size, end) whose merge it
// belongs to.
type merge struct {
	c         comparator
	end, size int
}

// batcherMerges is Batcher's odd-even merge sort for n wires level by level, in the order of
// sortNetwork in kernels/robust_network.go.
func batcherMerges(n int) []merge {
	var net []merge
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
						net = append(net, merge{comparator{a, b}, (a/(2*p) + 1) * 2 * p, 2 * p})
					}
				}
			}
		}
	}
	return net
}

// selectNetwork returns the comparators of net that the values of wires out depend on, in
// order (selectNetwork in kernels/robust_network.go).
func selectNetwork(net []comparator, out ...int) []comparator {
	need := make(map[int]bool)
	for _, w := range out {
		need[w] = true
	}
	var keep []comparator
	for i := len(net) - 1; i >= 0; i-- {
		c := net[i]
		if need[c.lo] || need[c.hi] {
			keep = append(keep, c)
			need[c.lo], need[c.hi] = true, true
		}
	}
	for i, j := 0, len(keep)-1; i < j; i, j = i+1, j-1 {
		keep[i], keep[j] = keep[j], keep[i]
	}
	return keep
}

// middleWires are the wires the median of n sorted values is taken from.
func middleWires(n int) []int {
	if n%2 == 1 {
		return []int{n / 2}
	}
	return []int{n/2 - 1, n / 2}
}

// schedule reorders a network for register reuse without changing what it computes: every
// comparator keeps its place among the comparators that share a wire with it (a topological
// order of the same dependency graph), and among the ready ones the schedule prefers those
// whose wires are already in registers.
func schedule(net []comparator, n int, inReg func(w int) bool) func() (comparator, bool) {
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

// regFile tracks which wire (value of one input at a group of coordinates) each vector register
// holds while straight-line code is generated, and spills to the group's slab in tmp when
// registers run out.
type regFile struct {
	regs   []VecPhysical
	slot   int    // bytes of one wire: a register
	wire   []int  // register -> wire, -1 if free
	reg    []int  // wire -> register, -1 if not in a register
	dirty  []bool // the register holds a value tmp does not
	loaded []bool // the wire was read from its input
	xp, j  Register
	tp     Register
	uses   [][]int // per wire: positions (in the canonical order) of its remaining uses
	// keep, if not nil, marks the wires whose final values are wanted: a wire not marked whose
	// uses are over is dead, and leaving its register stores nothing.
	keep []bool
	// count, if not nil, holds the number of inputs: a wire from count on is first loaded as
	// inf (a register) instead of from its input, and every value loaded from an input is
	// added to sum (whose NaN tells that one was NaN).
	count    Register
	inf, sum VecPhysical
	loads    int
	stores   int
	// prefetch, if not nil, holds how many bytes ahead of the group each input is prefetched
	// into L2 at its first load.
	prefetch Register
	// key, when set (AVX-512 only), runs the network on integer keys: each value read from an
	// input becomes its IEEE totalOrder key (the low 31 bits flipped when the sign is set:
	// VPMOVD2M and a VPXORD of mag under that mask), the comparators are VPMINSD/VPMAXSD (two
	// a cycle on Zen 4 against one VMINPS), the kept wires are turned back into floats as they
	// are stored, and maxu collects the keys' unsigned maximum: 0xFFFFFFFF, the key of −0 and
	// of nothing else, says an input held a −0. Without −0 and NaN (which the float sum flags)
	// the keys order the values as VMINPS/VMAXPS do and equal keys are equal bits, so every wire
	// ends with the float network's bits; with either the kernel reports it and the caller
	// takes the float network.
	key       bool
	mag, maxu VecPhysical
	// keysOut, with key, stores the kept wires as keys (for a merge of sorted runs on keys,
	// mergeKeysAVX512), not turned back into floats.
	keysOut bool
}

func newRegFile(regs []VecPhysical, slot, n int, xp, j, tp Register) *regFile {
	r := &regFile{regs: regs, slot: slot, wire: make([]int, len(regs)), reg: make([]int, n),
		dirty: make([]bool, n), loaded: make([]bool, n), xp: xp, j: j, tp: tp}
	for i := range r.wire {
		r.wire[i] = -1
	}
	for w := range r.reg {
		r.reg[w] = -1
	}
	return r
}

func (r *regFile) tmp(w int) Mem { return Mem{Base: r.tp, Disp: r.slot * w} }

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
	dead := r.keep != nil && !r.keep[w] && len(r.uses[w]) == 0
	if r.dirty[w] && !dead {
		VMOVUPS(r.regs[i], r.tmp(w))
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
		VMOVUPS(r.tmp(w), r.regs[i])
		r.dirty[w] = false
	} else {
		pad, done := fmt.Sprintf("w%d_pad", w), fmt.Sprintf("w%d_loaded", w)
		if r.count != nil {
			CMPQ(r.count, U32(w))
			JBE(LabelRef(pad))
		}
		p := GP64()
		MOVQ(Mem{Base: r.xp, Disp: 24 * w}, p)
		VMOVUPS(Mem{Base: p, Index: r.j, Scale: 1}, r.regs[i])
		if r.prefetch != nil {
			q := GP64()
			LEAQ(Mem{Base: p, Index: r.prefetch, Scale: 1}, q)
			PREFETCHT1(Mem{Base: q, Index: r.j, Scale: 1})
		}
		if r.count != nil {
			VADDPS(r.regs[i], r.sum, r.sum)
			if r.key {
				r.toKey(r.regs[i])
				VPMAXUD(r.regs[i], r.maxu, r.maxu)
			}
			JMP(LabelRef(done))
			Label(pad)
			VMOVAPS(r.inf, r.regs[i])
			Label(done)
		}
		r.loaded[w] = true
		r.dirty[w] = true
	}
	r.loads++
	r.reg[w], r.wire[i] = i, w
	return i
}

// storeAll leaves every wanted wire of the network in the slab (tmp): a wire no comparator
// touched is first read from its input, and each register still holding a wire is evicted.
func (r *regFile) storeAll() {
	if r.key {
		r.storeKeys()
		return
	}
	for w := range r.reg {
		if !r.loaded[w] && (r.keep == nil || r.keep[w]) {
			r.ensure(w)
		}
		if i := r.reg[w]; i >= 0 {
			r.evict(i)
		}
	}
}

// storeKeys is storeAll for a network on keys: each kept wire, wherever it is, is turned back
// into its float (the transform is its own inverse) and stored; the other wires are dropped.
func (r *regFile) storeKeys() {
	for w := range r.reg {
		if r.keep != nil && !r.keep[w] {
			if i := r.reg[w]; i >= 0 {
				r.drop(i)
			}
			continue
		}
		i := r.ensure(w)
		if !r.keysOut {
			r.toKey(r.regs[i])
		}
		VMOVUPS(r.regs[i], r.tmp(w))
		r.stores++
		r.dirty[w] = false
		r.reg[w], r.wire[i] = -1, -1
	}
}

// toKey turns v's f32 lanes into their totalOrder keys, or keys back into floats.
func (r *regFile) toKey(v VecPhysical) {
	VPMOVD2M(v, K1)
	VPXORD(r.mag, v, K1, v)
}

func containsInt(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// emitNetwork emits the comparators of net (on the wires of r) in an order that reuses
// registers, and returns how many it emitted.
func emitNetwork(net []comparator, r *regFile) int {
	n := len(r.reg)
	next := schedule(net, n, func(w int) bool { return r.reg[w] >= 0 })
	// The order is decided greedily, so the future uses that eviction looks at are those of the
	// canonical order: a good estimate, since the schedule stays close to it.
	r.uses = make([][]int, n)
	for i, c := range net {
		r.uses[c.lo] = append(r.uses[c.lo], i)
		r.uses[c.hi] = append(r.uses[c.hi], i)
	}
	pos := make(map[comparator][]int)
	for i, c := range net {
		pos[c] = append(pos[c], i)
	}
	count := 0
	for {
		c, ok := next()
		if !ok {
			break
		}
		count++
		// Consume this comparator's canonical position from the use lists.
		p := pos[c][0]
		pos[c] = pos[c][1:]
		r.uses[c.lo] = removeInt(r.uses[c.lo], p)
		r.uses[c.hi] = removeInt(r.uses[c.hi], p)

		ra := r.ensure(c.lo)
		rb := r.ensure(c.hi, ra)
		// min(lo, hi) with VMINPS's choice: lo < hi ? lo : hi (hi when either is NaN or both
		// are zeros); max likewise: lo > hi ? lo : hi. An output no later comparator reads and
		// the caller does not keep is not computed (a selection network's last comparators
		// often need one side only).
		vmin, vmax := VMINPS, VMAXPS
		if r.key {
			vmin, vmax = VPMINSD, VPMAXSD
		}
		switch minLive, maxLive := r.live(c.lo), r.live(c.hi); {
		case minLive && maxLive:
			rt := r.free(ra, rb)
			vmin(r.regs[rb], r.regs[ra], r.regs[rt])
			vmax(r.regs[rb], r.regs[ra], r.regs[rb])
			r.wire[ra] = -1
			r.reg[c.lo], r.wire[rt] = rt, c.lo
			r.dirty[c.lo], r.dirty[c.hi] = true, true
		case minLive:
			vmin(r.regs[rb], r.regs[ra], r.regs[ra])
			r.dirty[c.lo] = true
			r.drop(rb)
		default: // the max only (a kept comparator has one live output at least)
			vmax(r.regs[rb], r.regs[ra], r.regs[rb])
			r.dirty[c.hi] = true
			r.drop(ra)
		}
	}
	return count
}

// live reports whether wire w's value is read after the comparators emitted so far: by a later
// comparator, or by the caller (every wire unless keep says which).
func (r *regFile) live(w int) bool {
	return len(r.uses[w]) > 0 || r.keep == nil || r.keep[w]
}

// drop frees register i, whose wire's value is dead: nothing is stored.
func (r *regFile) drop(i int) {
	w := r.wire[i]
	r.dirty[w] = false
	r.reg[w] = -1
	r.wire[i] = -1
}

// emitSmallSort emits the straight-line sort of one group of n inputs into the slab at tp:
// the network, then every wire stored (a wire no comparator touched is copied from its input).
func emitSmallSort(regs []VecPhysical, slot, n int, xp, j, tp Register) (loads, stores, comps int) {
	r := newRegFile(regs, slot, n, xp, j, tp)
	comps = emitNetwork(sortNetwork(n), r)
	r.storeAll()
	return r.loads, r.stores, comps
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
		loads, stores, comps := emitSmallSort(ymm, slot, k, xp, j, tp)
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
// count, driven by a table of comparators given as wire indices (lo, hi).
func genSortNet() {
	TEXT("sortNetF32AVX2", NOSPLIT, "func(tmp []float32, x [][]byte, off, groups int, net []uint32)")
	Pragma("noescape")
	Doc("sortNetF32AVX2 is sortGroupsGeneric for len(x) >= 1, groups > 0, net the wires of sortNetwork(len(x)).")
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
	tableNetwork("net", tp, 5, Y0, Y1, Y2)
	ADDQ(U8(slot), j)
	MOVQ(d, tp)
	DECQ(g)
	JNZ(LabelRef("group"))
	VZEROUPPER()
	RET()
}

// tableNetwork emits the loop that applies the comparators of the table param (wire indices
// lo, hi, ...) to the slab at tp, whose wires are 1<<shift bytes apart; a, b and t are
// scratch vector registers.
func tableNetwork(param string, tp Register, shift uint8, a, b, t Register) {
	q := Load(Param(param).Base(), GP64())
	e := Load(Param(param).Len(), GP64())
	LEAQ(Mem{Base: q, Index: e, Scale: 4}, e)
	done := param + "_done"
	CMPQ(q, e)
	JAE(LabelRef(done))
	Label(param + "_cmp")
	lo, hi := GP64(), GP64()
	MOVL(Mem{Base: q}, lo.As32())
	MOVL(Mem{Base: q, Disp: 4}, hi.As32())
	SHLQ(U8(shift), lo)
	SHLQ(U8(shift), hi)
	VMOVUPS(Mem{Base: tp, Index: lo, Scale: 1}, a)
	VMOVUPS(Mem{Base: tp, Index: hi, Scale: 1}, b)
	VMINPS(b, a, t)
	VMAXPS(b, a, b)
	VMOVUPS(t, Mem{Base: tp, Index: lo, Scale: 1})
	VMOVUPS(b, Mem{Base: tp, Index: hi, Scale: 1})
	ADDQ(U8(8), q)
	CMPQ(q, e)
	JB(LabelRef(param + "_cmp"))
	Label(done)
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
	stride = Load(Param("wires"), GP64())
	SHLQ(U8(5), stride)
	mid = GP64()
	MOVQ(n, mid)
	SHRQ(U8(1), mid)
	SHLQ(U8(5), mid)
	return
}

// genSortPadded generates sortPaddedF32<ISA>_P(tmp, x, off, groups, pf) (clean bool), ISA
// AVX512 for width 16 (zmm registers) and AVX2 for width 8 (ymm): for each group of width
// coordinates, the len(x) (smallMax < len(x) <= P) inputs sorted by the straight-line network of
// P wires with the wires from len(x) on +Inf, into the group's slab (P wires of 4·width bytes,
// tmp[(g*P+i)*width+lane]), registers allocated at generation time. Each wire comes from its
// input at its first use, straight into a register (+Inf from len(x) on, by a branch every
// group takes the same way), rather than every input copied into the slab first: on the Zen 5
// VM of 2026-12-02 that took the AVX-512 median of 64 and 128 clients × 4M from 12.7 and 10.6
// to 19.0 and 15.5 GB/s. clean is false when an input value read was NaN (the sum of every
// value read, in f32, is NaN then; it may also be for an Inf beside a -Inf, which costs only
// the exact sort).
//
// With median, medianPaddedF32<ISA>_P runs only the comparators that the middle wires of every
// count it serves depend on (selectNetwork: P/2+1 to P inputs, or smallMax+1 to 64 for P = 64;
// 1293 of 1471 comparators at 128, 477 of 543 at 64) and stores only those wires, so that the
// slab holds the median's wires sorted as the full network leaves them (the same bits) and the
// other wires unspecified.
func genSortPadded(P int, median bool, width int) { genPadded(P, median, false, width) }

// genSortPaddedKeys generates sortPaddedKeysF32AVX512_P: sortPaddedF32AVX512_P on integer keys
// (regFile.key), the slab left in keys for mergeKeysAVX512, for 1 <= len(x) <= P inputs (a run
// of a larger count; the +Inf wires are keys too: +Inf's bits); it returns false if a value
// read was NaN or −0.
func genSortPaddedKeys(P int) { genPadded(P, false, true, 16) }

func genPadded(P int, median, keysOut bool, width int) {
	isa, regs := "AVX512", zmm
	if width == 8 {
		isa, regs = "AVX2", ymm
	}
	slotBytes := 4 * width
	name := fmt.Sprintf("sortPaddedF32%s_%d", isa, P)
	doc := fmt.Sprintf("%s sorts groups of %d coordinates of %d <= len(x) <= %d inputs by the network of %d wires, the wires from len(x) on +Inf, into slabs of %d wires, prefetching pf bytes ahead; it returns false if a value read was NaN.", name, width, paddedFrom(P), P, P, P)
	if keysOut {
		name = fmt.Sprintf("sortPaddedKeysF32%s_%d", isa, P)
		doc = fmt.Sprintf("%s is sortPaddedF32%s_%d on integer keys for 1 <= len(x) <= %d, the slab left in keys; it also returns false if a value read was -0.", name, isa, P, P)
	}
	if median {
		name = fmt.Sprintf("medianPaddedF32%s_%d", isa, P)
		doc = fmt.Sprintf("%s is sortPaddedF32%s_%d with the slab's middle wires only: those medianSortedF32%s reads for %d <= len(x) <= %d.", name, isa, P, isa, paddedFrom(P), P)
		if width == 16 {
			doc += " It sorts integer keys, and also returns false if a value read was -0."
		}
	}
	TEXT(name, NOSPLIT, "func(tmp []float32, x [][]byte, off, groups, pf int) bool")
	Pragma("noescape")
	Doc(doc)
	tp := Load(Param("tmp").Base(), GP64())
	j := Load(Param("off"), GP64())
	SHLQ(U8(2), j)
	g := Load(Param("groups"), GP64())
	pf := Load(Param("pf"), GP64())
	n := Load(Param("x").Len(), GP64())
	inf, sum := regs[0], regs[1] // the network's registers are the others
	// The AVX-512 median runs on integer keys (regFile.key), two more registers held.
	key := (median || keysOut) && width == 16
	netRegs := regs[2:]
	if key {
		netRegs = regs[4:]
		r := GP32()
		MOVL(U32(0x7fffffff), r)
		VPBROADCASTD(r, regs[2])
		VPXORD(regs[3], regs[3], regs[3])
	}
	{
		r := GP32()
		MOVL(U32(0x7f800000), r)
		if width == 8 {
			VMOVD(r, inf.AsX())
			VPBROADCASTD(inf.AsX(), inf)
		} else {
			VPBROADCASTD(r, inf)
		}
	}
	VXORPS(sum, sum, sum)
	xp := Load(Param("x").Base(), GP64())
	Label("group")
	r := newRegFile(netRegs, slotBytes, P, xp, j, tp)
	r.prefetch, r.count, r.inf, r.sum = pf, n, inf, sum
	if key {
		r.key, r.mag, r.maxu, r.keysOut = true, regs[2], regs[3], keysOut
	}
	net := sortNetwork(P)
	if median {
		var outs []int
		for n := paddedFrom(P); n <= P; n++ {
			outs = append(outs, middleWires(n)...)
		}
		net = selectNetwork(net, outs...)
		r.keep = make([]bool, P)
		for _, w := range outs {
			r.keep[w] = true
		}
	}
	comps := emitNetwork(net, r)
	r.storeAll()
	Commentf("%d wires: %d comparators, %d loads, %d stores per group", P, comps, r.loads, r.stores)
	ADDQ(U8(slotBytes), j)
	ADDQ(U32(slotBytes*P), tp)
	DECQ(g)
	JNZ(LabelRef("group"))
	ok := GP8()
	if width == 8 {
		VCMPPS(U8(3), sum, sum, sum) // unordered: NaN
		m := GP32()
		VMOVMSKPS(sum, m)
		TESTL(m, m)
	} else {
		k := K()
		VCMPPS(U8(3), sum, sum, k)
		if key {
			// A −0 read: some key's unsigned maximum is 0xFFFFFFFF.
			ones, k2 := inf, K() // inf is no longer needed
			VPTERNLOGD(U8(0xff), ones, ones, ones)
			VPCMPEQD(ones, regs[3], k2)
			KORW(k2, k, k)
		}
		KORTESTW(k, k)
	}
	SETEQ(ok)
	Store(ok, ReturnIndex(0))
	VZEROUPPER()
	RET()
}

// genMedianSorted generates medianSortedF32AVX2(dst, tmp, n, wires).
func genMedianSorted() {
	TEXT("medianSortedF32AVX2", NOSPLIT, "func(dst []float32, tmp []float32, n, wires int)")
	Pragma("noescape")
	Doc("medianSortedF32AVX2 is medianSortedGeneric for len(dst) a positive multiple of 8, the groups wires apart.")
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

// genTrimmedSorted generates trimmedSortedF32AVX2(dst, tmp, n, wires, k, c): the sum of values k..n-k-1
// of each sorted group, from +0 in ascending order, divided by c = n-2k.
func genTrimmedSorted() {
	TEXT("trimmedSortedF32AVX2", NOSPLIT, "func(dst []float32, tmp []float32, n, wires, k int, c float32)")
	Pragma("noescape")
	Doc("trimmedSortedF32AVX2 is trimmedSortedGeneric for len(dst) a positive multiple of 8, the groups wires apart, 2k < n, c = n-2k.")
	dst := Load(Param("dst").Base(), GP64())
	tp := Load(Param("tmp").Base(), GP64())
	g := Load(Param("dst").Len(), GP64())
	SHRQ(U8(3), g)
	n := Load(Param("n"), GP64())
	k := Load(Param("k"), GP64())
	stride := Load(Param("wires"), GP64())
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

// genClosestSorted generates closestSortedF32AVX2(dst, tmp, n, wires, beta, c): per sorted group, the
// mean of the beta values closest to the median (Bulyan's coordinate step). The first and last
// starts of the closest windows are lo = 1 + the last t in [0, n-beta) with |v[t+beta]-m| <
// |v[t]-m| (or 0) and hi, which such a t resets to lo and a t = hi with equal distances moves
// to t+1 (closestWindows); the windows at a = floor((lo+hi)/2) and b = lo+hi-a
// are summed from +0 in ascending order (lanes outside a window add +0, which changes nothing:
// the sums start at +0, so they are never -0) and divided by c = beta, and the result is a's
// mean where a = b, else a's mean·0.5 + b's mean·0.5. Window starts are counted in f32 lanes
// (exact small integers).
func genClosestSorted() {
	TEXT("closestSortedF32AVX2", NOSPLIT, "func(dst []float32, tmp []float32, n, wires, beta int, c float32)")
	Pragma("noescape")
	Doc("closestSortedF32AVX2 is closestSortedGeneric for len(dst) a positive multiple of 8, the groups wires apart, 1 <= beta <= n, c = beta.")
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
		lo, hi, sv := YMM(), YMM(), YMM() // sv = t+1
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
		d0, d1, lt, at := YMM(), YMM(), YMM(), YMM()
		VMOVUPS(Mem{Base: s}, d0)
		VSUBPS(m, d0, d0)
		VANDPS(abs, d0, d0)
		VMOVUPS(Mem{Base: s, Index: bo, Scale: 1}, d1)
		VSUBPS(m, d1, d1)
		VANDPS(abs, d1, d1)
		VCMPPS(U8(1), d0, d1, lt) // dh < dl
		VCMPPS(U8(0), d0, d1, d1) // dh == dl
		VADDPS(one, hi, at)
		VCMPPS(U8(0), sv, at, at) // hi == t
		VANDPS(at, d1, d1)
		VORPS(lt, d1, d1) // hi moves
		VBLENDVPS(lt, sv, lo, lo)
		VBLENDVPS(d1, sv, hi, hi)
		VADDPS(one, sv, sv)
		ADDQ(U8(slot), s)
		DECQ(cnt)
		JNZ(LabelRef(lbl + "_start"))
		Label(lbl + "_window")
		// a = floor((lo+hi)/2), b = lo+hi-a, and the ends of their windows.
		a, b := YMM(), YMM()
		VADDPS(hi, lo, b)
		VMULPS(half, b, a)
		VROUNDPS(U8(9), a, a) // floor, no precision exception
		VSUBPS(a, b, b)
		ae, be := YMM(), YMM()
		VADDPS(bv, a, ae)
		VADDPS(bv, b, be)
		accA, accB := YMM(), YMM()
		VXORPS(accA, accA, accA)
		VXORPS(accB, accB, accB)
		iv := windowSpan(a, be, tp, s, cnt, 8)
		Label(lbl + "_sum")
		for _, w := range []struct{ start, end, acc VecVirtual }{{a, ae, accA}, {b, be, accB}} {
			in, lt, t := YMM(), YMM(), YMM()
			VCMPPS(U8(13), w.start, iv, in) // iv >= start
			VCMPPS(U8(1), w.end, iv, lt)    // iv < start+beta
			VANDPS(lt, in, in)
			VANDPS(Mem{Base: s}, in, t)
			VADDPS(t, w.acc, w.acc)
		}
		VADDPS(one, iv, iv)
		ADDQ(U8(slot), s)
		DECQ(cnt)
		JNZ(LabelRef(lbl + "_sum"))
		VDIVPS(c, accA, accA)
		VDIVPS(c, accB, accB)
		eq, t := YMM(), YMM()
		VCMPPS(U8(0), b, a, eq) // a == b
		VMULPS(half, accA, t)
		VMULPS(half, accB, accB)
		VADDPS(accB, t, t)
		VBLENDVPS(eq, accA, t, t)
		VMOVUPS(t, Mem{Base: dst})
		ADDQ(U8(32), dst)
		ADDQ(stride, tp)
		DECQ(g)
		JNZ(LabelRef(lbl + "_loop"))
		VZEROUPPER()
		RET()
	}
}

// windowSpan emits the walk of the closest-mean sums over the values that some lane's window
// holds, instead of all n: from the least window start of the lanes, first (a, lanes of f32
// integers), to the greatest window end, end (exclusive). It sets s to the first value's slot
// in the group at tp (slots of 4·width bytes), cnt to the values to walk (at least beta, at
// least 1) and returns the index of the first one in every lane (f32). The values outside every
// window would add +0 to both sums, which changes nothing, so the bits are those of the walk
// over all n: at n = 32, beta = 4, a window's span is 4-8 values against 32.
func windowSpan(first, end VecVirtual, tp, s, cnt Register, width int) VecVirtual {
	lo := hReduce(first, width, VMINPS)
	hi := hReduce(end, width, VMAXPS)
	MOVQ(hi, cnt)
	SUBQ(lo, cnt)
	MOVQ(lo, s)
	SHLQ(U8(map[int]uint8{8: 5, 16: 6}[width]), s)
	ADDQ(tp, s)
	iv := YMM()
	if width == 16 {
		iv = ZMM()
	}
	VCVTSI2SSQ(lo, iv.AsX(), iv.AsX())
	VBROADCASTSS(iv.AsX(), iv)
	return iv
}

// hReduce returns in a general register the least (op VMINPS) or greatest (VMAXPS) of the
// width f32 lanes of v, which hold integers.
func hReduce(v VecVirtual, width int, op func(...Op)) Register {
	cur := v
	if width == 16 {
		cur = YMM()
		VEXTRACTF32X8(U8(1), v, cur)
		op(v.AsY(), cur, cur)
	}
	x, t := XMM(), XMM()
	VEXTRACTF128(U8(1), cur, x)
	op(cur.AsX(), x, x)
	VPERMILPS(U8(0x4e), x, t)
	op(t, x, x)
	VPERMILPS(U8(0xb1), x, t)
	op(t, x, x)
	r := GP64()
	VCVTTSS2SIQ(x, r)
	return r
}

// ---------------------------------------------------------------------------------------------
// Gram matrix.

// emitCentre emits the centre pass: at centre (f64), for each coordinate below end (bytes of
// f32) of the n inputs, their f32 sum in input order divided by nf (n in f32 lanes), 0 where
// not finite; zero is a zero register.
func emitCentre(centre, n, end Register, nf, zero VecVirtual) {
	// The centre, the f32 sum of the inputs in input order divided by n in f32, 64
	// coordinates per step (8 sums in flight: each is a chain of n additions), then 8 per step
	// for the rest; stored in f64 for pass 2.
	{
		cp, j := GP64(), GP64()
		MOVQ(centre, cp)
		XORQ(j, j)
		for _, w := range []int{8, 1} { // ymm registers of 8 coordinates per step
			lbl := fmt.Sprintf("centre%d", w)
			lim := GP64()
			MOVQ(end, lim)
			SUBQ(U32(32*w-32), lim) // steps start below end-32w+32 (signed: may be negative)
			Label(lbl)
			CMPQ(j, lim)
			JGE(LabelRef(lbl + "_done"))
			t := make([]VecVirtual, w)
			for k := range t {
				t[k] = YMM()
				VXORPS(t[k], t[k], t[k])
			}
			h := Load(Param("x").Base(), GP64())
			cnt := GP64()
			MOVQ(n, cnt)
			Label(lbl + "_in")
			p := GP64()
			MOVQ(Mem{Base: h}, p)
			for k := range t {
				VADDPS(Mem{Base: p, Index: j, Scale: 1, Disp: 32 * k}, t[k], t[k])
			}
			ADDQ(U8(24), h)
			DECQ(cnt)
			JNZ(LabelRef(lbl + "_in"))
			for k := range t {
				d := YMM()
				VDIVPS(nf, t[k], t[k])
				VSUBPS(t[k], t[k], d)
				VCMPPS(U8(0), zero, d, d) // t-t == 0: t is finite
				VANDPS(d, t[k], t[k])
				for h := range 2 {
					c := YMM()
					if h == 0 {
						VCVTPS2PD(t[k].AsX(), c)
					} else {
						hi := XMM()
						VEXTRACTF128(U8(1), t[k], hi)
						VCVTPS2PD(hi, c)
					}
					VMOVUPD(c, Mem{Base: cp, Disp: 64*k + 32*h})
				}
			}
			ADDQ(U32(64*w), cp)
			ADDQ(U32(32*w), j)
			JMP(LabelRef(lbl))
			Label(lbl + "_done")
		}
	}

}

// genGramCentre generates gramCentreF32AVX2(c, x, elems): the centre pass of gramPackF32AVX2
// alone, for gramDirectF32AVX2, elems a positive multiple of 8.
func genGramCentre() {
	TEXT("gramCentreF32AVX2", NOSPLIT, "func(c []float64, x [][]byte, elems int)")
	Pragma("noescape")
	Doc("gramCentreF32AVX2 writes gramGeneric's centre of each of the elems coordinates to c, for elems a positive multiple of 8.")
	n := Load(Param("x").Len(), GP64())
	centre := Load(Param("c").Base(), GP64())
	end := Load(Param("elems"), GP64())
	SHLQ(U8(2), end)
	nf := YMM()
	VCVTSI2SSQ(n, nf.AsX(), nf.AsX())
	VBROADCASTSS(nf.AsX(), nf)
	zero := YMM()
	VXORPD(zero, zero, zero)
	emitCentre(centre, n, end, nf, zero)
	VZEROUPPER()
	RET()
}

// inputPtr returns the address of element 0 of input i (x[i]'s data pointer).
func inputPtr(i Register) Register {
	h := Load(Param("x").Base(), GP64())
	hi := GP64()
	LEAQ(Mem{Base: i, Index: i, Scale: 2}, hi)
	p := GP64()
	MOVQ(Mem{Base: h, Index: hi, Scale: 8}, p)
	return p
}

// genGramDirect generates gramDirectF32AVX2(p, c, x, pf, elems, r0, r1): for the rows a in
// [r0, r1) (r0 a multiple of 3) and every b >= a, p[(a*s+b)*4 + j%4] = FMA(y_a[j], y_b[j],
// p[...]) with y_i[j] = float64(x[i][j]) - c[j], s = n rounded up to even, j in [0, elems),
// elems a multiple of 8: the tiles of the packed kernels' AVX2 shape taken straight from the f32
// inputs, each loaded vector converted (in the load) and centred (one subtraction, the centre a
// memory operand). Conversions and subtractions run on the two pipes the FMAs do not use, so
// this costs no packing pass: on Zen 4 it beat packing for every count measured. With raw, it
// generates gramRawF32AVX2(p, x, pf, elems, r0, r1), the same with y_i = float64(x[i][j]) (no
// centre, no subtraction: the raw Gram matrix, whose diagonal holds the squared norms).
//
// Rows are taken 3 at a time (i0, i0+1, i0+2). Each row group starts with a diagonal tile: the
// pairs among its rows and with the next 2 columns (5+4+3 = 12 pairs, the rows' own vectors
// reused as columns), then covers the columns to its right with rectangular tiles of 3 rows by
// 4 columns: 12 accumulators, 3 row vectors held in registers and one column vector streamed,
// so each 4-element step loads 7 vectors for 12 FMAs and the two FMA pipes stay busy (12
// independent chains cover the 4-cycle latency). Only the last tile of a row group may be
// narrower, and no pair a > b is computed. The f32 values are converted to f64 in the loads
// (VCVTPS2PD m128), which run beside the FMAs. The diagonal tiles prefetch their rows' next
// block (the elems values after pf[i]'s block) one line per row per step, so that over a block
// every input's next block is asked for once, spread over the block's work.
func genGramDirect(raw bool) {
	if raw {
		TEXT("gramRawF32AVX2", NOSPLIT, "func(p []float64, x [][]byte, pf [][]byte, elems, r0, r1 int)")
		Pragma("noescape")
		Doc("gramRawF32AVX2 adds the pairs of rows [r0, r1) of gramRawGeneric's inputs to p, for elems a positive multiple of 8 and r0 a multiple of 3, and prefetches the elems values after pf[i][:elems] for those rows.")
	} else {
		TEXT("gramDirectF32AVX2", NOSPLIT, "func(p []float64, c []float64, x [][]byte, pf [][]byte, elems, r0, r1 int)")
		Pragma("noescape")
		Doc("gramDirectF32AVX2 adds the pairs of rows [r0, r1) of gramGeneric's centred inputs to p, c the block's centre in f64, for elems a positive multiple of 8 and r0 a multiple of 3, and prefetches the elems values after pf[i][:elems] for those rows.")
	}
	n := Load(Param("x").Len(), GP64())
	ns := GP64() // row stride of p in bytes: s*32
	MOVQ(n, ns)
	INCQ(ns)
	ANDQ(I8(-2), ns)
	SHLQ(U8(5), ns)
	c0, left := GP64(), GP64()
	i0 := Load(Param("r0"), GP64())
	CMPQ(i0, Load(Param("r1"), GP64()))
	JAE(LabelRef("done"))

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
		gramDirectTile(d.r, d.e, true, raw, i0, i0, ns)
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
		gramDirectTile(3, c, false, raw, i0, c0, ns)
		ADDQ(U8(4), c0)
		JMP(LabelRef("cols"))
	}
	Label("nextrow")
	ADDQ(U8(3), i0)
	CMPQ(i0, Load(Param("r1"), GP64()))
	JB(LabelRef("rows"))

	Label("done")
	VZEROUPPER()
	RET()
}

// gramDirectTile emits one tile over all elements: R rows from i0 and, for a rectangular tile, C
// columns from c0; for a diagonal tile (c0 = i0), the pairs r <= c of the R rows and C more
// columns after them. Pointers run from the end of the data with a negative index (the centre's
// at twice the inputs' scale), so the loop needs no bound register.
func gramDirectTile(R, C int, diagonal, raw bool, i0, c0, ns Register) {
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
	// A diagonal tile prefetches its rows' next block from pf (the same inputs where they
	// are not staged): the end of pf[i]'s block plus elems bytes, with the loop's index.
	var pfp []Register
	if diagonal {
		pfb := Load(Param("pf").Base(), GP64())
		for r := range R {
			h := GP64()
			LEAQ(Mem{Base: i0, Index: i0, Scale: 2}, h)
			q := GP64()
			MOVQ(Mem{Base: pfb, Index: h, Scale: 8, Disp: 24 * r}, q)
			LEAQ(Mem{Base: q, Index: elems, Scale: 2}, q)
			pfp = append(pfp, q)
		}
	}
	// pt = &p[(i0*n + c0)*4]; pair (row r, column c) at pt + r*ns + c*32.
	pt := GP64()
	MOVQ(i0, pt)
	IMULQ(ns, pt)
	t := GP64()
	MOVQ(c0, t)
	SHLQ(U8(5), t)
	ADDQ(t, pt)
	pb := Load(Param("p").Base(), GP64())
	ADDQ(pb, pt)
	// The centre's end: c + elems·8; element j's centre at ce + 2·jx for the f32 byte index jx.
	var ce Register
	if !raw {
		ce = Load(Param("c").Base(), GP64())
		LEAQ(Mem{Base: ce, Index: elems, Scale: 2}, ce)
	}
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
	loop := fmt.Sprintf("d%dx%d_%v_%v_loop", R, C, diagonal, raw)
	Label(loop)
	// One prefetch per row per 32 bytes: half of them ask for a line already asked for,
	// which costs a load slot. Spread over the loop, they overlap the next block's DRAM
	// reads with the FMAs (a burst between calls fills the miss buffers and stalls the loads).
	for _, q := range pfp {
		PREFETCHT1(Mem{Base: q, Index: j, Scale: 1})
	}
	for u := range 2 {
		centre := func(v VecVirtual) {
			if !raw {
				VSUBPD(Mem{Base: ce, Index: j, Scale: 2, Disp: 32 * u}, v, v)
			}
		}
		av := make([]VecVirtual, R)
		for r := range R {
			av[r] = YMM()
			VCVTPS2PD(Mem{Base: rows[r], Index: j, Scale: 1, Disp: 16 * u}, av[r])
			centre(av[r])
		}
		for c := range cols {
			var bv VecVirtual
			if c < first {
				bv = av[c]
			} else {
				bv = YMM()
				VCVTPS2PD(Mem{Base: colp[c], Index: j, Scale: 1, Disp: 16 * u}, bv)
				centre(bv)
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
	name := "sqDistNormF32AVX2"
	TEXT(name, NOSPLIT, "func(pd, pn *[16]float64, x []byte, z []float32)")
	Pragma("noescape")
	Doc(name + " is sqDistNormGeneric(pd, pn, x, z, 0) for len(z) a multiple of 16.")
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
	JZ(LabelRef(name + "_done"))
	Label(name + "_loop")
	for k := range acc {
		xv, zv := YMM(), YMM()
		VCVTPS2PD(Mem{Base: x, Index: j, Scale: 4, Disp: 16 * k}, xv)
		VFMADD231PD(xv, xv, nacc[k])
		VCVTPS2PD(Mem{Base: z, Index: j, Scale: 4, Disp: 16 * k}, zv)
		VSUBPD(zv, xv, xv)
		VFMADD231PD(xv, xv, acc[k])
	}
	ADDQ(U8(16), j)
	CMPQ(j, n)
	JB(LabelRef(name + "_loop"))
	Label(name + "_done")
	for k := range acc {
		VMOVUPD(acc[k], Mem{Base: pd, Disp: 32 * k})
		VMOVUPD(nacc[k], Mem{Base: pn, Disp: 32 * k})
	}
	VZEROUPPER()
	RET()
}

// genSqDistRuns generates sqDistRunsF32AVX2(pd, pn, x, z, xt, zt, tail): SqDistNormF32Runs for
// one input over the whole groups of z (len(z) a multiple of 16), then, when tail > 0, over one
// more run, the zero-padded group of the last elements at xt and zt. A group is two ymm
// registers, each a subtraction and two f32 FMAs; after every run the four run sums are
// widened and added to the 16 f64 partials of each sum, held in 8 registers. At the end the
// partials are checked (runsUsable) and added to pd and pn, or left out and non-zero returned. Per
// lane the operations and their order are those of the reference.
func genSqDistRuns() {
	name := "sqDistRunsF32AVX2"
	TEXT(name, NOSPLIT, "func(pd, pn *[16]float64, x []byte, z []float32, xt, zt *[16]float32, tail int) int")
	Pragma("noescape")
	Doc(name + " is sqDistRunsGeneric for one input (len(z) a multiple of 16, then the padded tail at xt and zt when tail > 0): it adds the sums to pd and pn and returns 0, or returns non-zero where they are not usable.")
	x := Load(Param("x").Base(), GP64())
	z := Load(Param("z").Base(), GP64())
	n := Load(Param("z").Len(), GP64())
	d64, n64 := make([]VecVirtual, 4), make([]VecVirtual, 4)
	for q := range d64 {
		d64[q], n64[q] = YMM(), YMM()
		VXORPD(d64[q], d64[q], d64[q])
		VXORPD(n64[q], n64[q], n64[q])
	}
	d32, n32 := make([]VecVirtual, 2), make([]VecVirtual, 2)
	for h := range d32 {
		d32[h], n32[h] = YMM(), YMM()
	}
	zero := func() {
		for h := range d32 {
			VXORPS(d32[h], d32[h], d32[h])
			VXORPS(n32[h], n32[h], n32[h])
		}
	}
	group := func(xm, zm func(h int) Mem) {
		for h := range d32 {
			v, d := YMM(), YMM()
			VMOVUPS(xm(h), v)
			VSUBPS(zm(h), v, d)
			VFMADD231PS(d, d, d32[h])
			VFMADD231PS(v, v, n32[h])
		}
	}
	fold := func() {
		for q, accs := range [][]VecVirtual{d32, n32} {
			dst := d64
			if q == 1 {
				dst = n64
			}
			for h, acc := range accs {
				w, x4 := YMM(), XMM()
				VCVTPS2PD(acc.AsX(), w)
				VADDPD(w, dst[2*h], dst[2*h])
				VEXTRACTF128(U8(1), acc, x4)
				VCVTPS2PD(x4, w)
				VADDPD(w, dst[2*h+1], dst[2*h+1])
			}
		}
	}
	j, end := GP64(), GP64()
	XORQ(j, j)
	Label(name + "_run")
	CMPQ(j, n)
	JAE(LabelRef(name + "_tail"))
	LEAQ(Mem{Base: j, Disp: distRun}, end) // end = min(j + distRun, n)
	CMPQ(end, n)
	CMOVQHI(n, end)
	zero()
	Label(name + "_loop")
	group(func(h int) Mem { return Mem{Base: x, Index: j, Scale: 4, Disp: 32 * h} },
		func(h int) Mem { return Mem{Base: z, Index: j, Scale: 4, Disp: 32 * h} })
	ADDQ(U8(16), j)
	CMPQ(j, end)
	JB(LabelRef(name + "_loop"))
	fold()
	JMP(LabelRef(name + "_run"))

	Label(name + "_tail")
	tail := Load(Param("tail"), GP64())
	TESTQ(tail, tail)
	JZ(LabelRef(name + "_check"))
	xt := Load(Param("xt"), GP64())
	zt := Load(Param("zt"), GP64())
	zero()
	group(func(h int) Mem { return Mem{Base: xt, Disp: 32 * h} }, func(h int) Mem { return Mem{Base: zt, Disp: 32 * h} })
	fold()

	Label(name + "_check")
	// bad: a lane not at most distMax (NLE_US), or a norm lane under distTiny (LT_OS) and not
	// zero (NEQ_UQ).
	maxv, tiny := broadcastF64(distMax), broadcastF64(distTiny)
	zz, bad, c := YMM(), YMM(), YMM()
	VXORPD(zz, zz, zz)
	VXORPD(bad, bad, bad)
	for _, v := range append(append([]VecVirtual{}, d64...), n64...) {
		VCMPPD(U8(0x06), maxv, v, c)
		VORPD(c, bad, bad)
	}
	for _, v := range n64 {
		t := YMM()
		VCMPPD(U8(0x01), tiny, v, c)
		VCMPPD(U8(0x04), zz, v, t)
		VANDPD(t, c, c)
		VORPD(c, bad, bad)
	}
	r := GP64()
	XORQ(r, r)
	VMOVMSKPD(bad, r.As32())
	TESTQ(r, r)
	JNZ(LabelRef(name + "_bad"))
	pd := Load(Param("pd"), GP64())
	pn := Load(Param("pn"), GP64())
	for q := range d64 {
		VADDPD(Mem{Base: pd, Disp: 32 * q}, d64[q], d64[q])
		VMOVUPD(d64[q], Mem{Base: pd, Disp: 32 * q})
		VADDPD(Mem{Base: pn, Disp: 32 * q}, n64[q], n64[q])
		VMOVUPD(n64[q], Mem{Base: pn, Disp: 32 * q})
	}
	Label(name + "_bad")
	// r is 0 or the mask of the failing lanes: 0 or not 0 as the result.
	Store(r, ReturnIndex(0))
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
