package kernels

import "sync"

// comparator orders two wires of a sorting network, lo < hi: afterwards wire lo holds
// min(lo, hi) and wire hi holds max(lo, hi), with the choices of VMINPS and VMAXPS (see minPS).
type comparator struct{ lo, hi int }

// sortNetwork is Batcher's odd-even merge sort for n wires, built for the next power of two and
// pruned of the comparators that touch a wire >= n (such wires would hold +Inf, which no
// comparator moves, so every comparator that touches one is a no-op). n(log n)^2/4 comparators,
// log n (log n + 1)/2 layers. kernels/_gen/robust/gen.go holds the same function: the
// straight-line assembly for small counts is generated from it, and the differential tests
// compare that assembly with the reference built from this one.
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

// SortNetwork returns the comparators of the sorting network the order-statistic kernels apply
// to n values (n >= 1), in order, as (lo, hi) wire pairs: Batcher's odd-even merge sort as
// sortNetwork builds it. Another device's kernels apply the same comparators in the same order
// to compute the same bits (device.Robust); cgo/cuda hands them to the GPU as a table. The slice
// is the caller's.
func SortNetwork(n int) [][2]int {
	comps := networkFor(n).comps
	net := make([][2]int, len(comps))
	for q, c := range comps {
		net[q] = [2]int{c.lo, c.hi}
	}
	return net
}

// selectNetwork returns the comparators of net that the values of wires out depend on, in
// order: a selection network. The comparators it drops only move values that never reach those
// wires, so the wires end with the bits the whole network gives them.
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

// network is a sorting network with its tables for the table-driven assembly.
type network struct {
	comps []comparator
	// offsets holds, per comparator, the wire indices of its wires: lo, hi, lo, hi, ... (the
	// assembly scales them by its slot size).
	offsets []uint32
	// median is the same for the selection network of the middle wires.
	median []uint32
}

var networks sync.Map // n -> *network

// networkFor returns the sorting network of n wires, built once.
func networkFor(n int) *network {
	if v, ok := networks.Load(n); ok {
		return v.(*network)
	}
	nw := &network{comps: sortNetwork(n)}
	nw.offsets = wireTable(nw.comps)
	nw.median = wireTable(selectNetwork(nw.comps, middleWires(n)...))
	v, _ := networks.LoadOrStore(n, nw)
	return v.(*network)
}

func wireTable(net []comparator) []uint32 {
	t := make([]uint32, 0, 2*len(net))
	for _, c := range net {
		t = append(t, uint32(c.lo), uint32(c.hi))
	}
	return t
}
