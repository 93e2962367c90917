package kernels

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/big"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
	"unsafe"
)

// counts are the client counts the order-statistic kernels are tested with: every straight-line
// network (1..32), counts run by the padded networks of 64 to 512 wires (each end of their
// ranges), and the table-driven network beyond.
func counts() []int {
	var ns []int
	for n := 1; n <= 33; n++ {
		ns = append(ns, n)
	}
	return append(ns, 47, 64, 65, 100, 128, 129, 200, 256, 257, 300, 512, 513, 1025)
}

func TestSortNetworkSorts(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for n := 1; n <= 70; n++ {
		net := sortNetwork(n)
		for _, c := range net {
			if c.lo < 0 || c.lo >= c.hi || c.hi >= n {
				t.Fatalf("n=%d: comparator %v", n, c)
			}
		}
		v := make([]float32, n)
		check := func() {
			w := slices.Clone(v)
			sortValues(w, net)
			want := slices.Clone(v)
			slices.Sort(want)
			if !slices.Equal(w, want) {
				t.Fatalf("n=%d: network sorts %v to %v", n, v, w)
			}
		}
		if n <= 14 { // the 0-1 principle: every 0/1 input sorted means every input is
			for bits := range 1 << n {
				for i := range v {
					v[i] = float32(bits >> i & 1)
				}
				check()
			}
			continue
		}
		for range 300 {
			for i := range v {
				v[i] = float32(r.IntN(5))
			}
			check()
		}
	}
	if got := len(sortNetwork(32)); got != 191 {
		t.Errorf("Batcher's network for 32 has %d comparators, want 191", got)
	}
}

// orderCase is one order-statistic kernel with its reference and parameters.
type orderCase struct {
	name string
	// param returns the kernel's parameter (k or beta) for n inputs, or -1 if none fits.
	param func(n, i int) int
	run   func(k *Impl, dst []float32, x [][]byte, p int, tmp []float32)
	ref   func(v []float32, p int) float32
}

var orderCases = []orderCase{
	{"Median", func(n, i int) int { return 0 },
		func(k *Impl, dst []float32, x [][]byte, _ int, tmp []float32) { k.MedianF32(dst, x, tmp) },
		func(v []float32, _ int) float32 { return medianOf(v) }},
	{"TrimmedMean", func(n, i int) int { return i % ((n + 1) / 2) },
		(*Impl).TrimmedMeanF32, trimmedOf},
	{"ClosestMean", func(n, i int) int { return 1 + i%n },
		(*Impl).ClosestMeanF32, closestOf},
}

// orderValues draws the inputs of an order statistic: random floats (NaN and Inf unless
// finite), and often values from a small pool so that ties, equal windows and signed zeros occur.
func orderValues(r *rand.Rand, n, length int, finite bool) [][]byte {
	pool := []float32{0, float32(math.Copysign(0, -1)), 1, -1, 0.5, 2, 1e30, -1e30}
	tied := r.IntN(3) == 0
	x := make([][]byte, n)
	for i := range x {
		b := make([]byte, 4*length)
		for j := range length {
			var bits uint32
			if tied {
				bits = math.Float32bits(pool[r.IntN(len(pool))])
			} else {
				bits = randF32Bits(r, finite)
			}
			binary.LittleEndian.PutUint32(b[4*j:], bits)
		}
		x[i] = placed(r, b, r.IntN(8))
	}
	return x
}

// orderReference runs the reference per coordinate.
func orderReference(x [][]byte, length int, p int, ref func([]float32, int) float32) []float32 {
	net := sortNetwork(len(x))
	out := make([]float32, length)
	v := make([]float32, len(x))
	for j := range out {
		for i := range x {
			v[i] = ldF32(x[i], j)
		}
		sortValues(v, net)
		out[j] = ref(v, p)
	}
	return out
}

func TestOrderStats(t *testing.T) {
	// Every length for a few counts (each path of the batches and tails), a few lengths for
	// every count (each network), large odd lengths for some.
	many := map[int]bool{1: true, 2: true, 3: true, 17: true, 32: true, 33: true, 65: true}
	for _, c := range orderCases {
		t.Run(c.name, func(t *testing.T) {
			forImpls(t, func(t *testing.T, k *Impl) {
				r := rand.New(rand.NewPCG(3, uint64(len(c.name))))
				for _, n := range counts() {
					ls := []int{0, 1, 7, 8, 9, 16, 24, 133}
					if many[n] {
						ls = nil
						for l := range 71 {
							ls = append(ls, l)
						}
					}
					if n == 9 || n == 33 || n == 100 {
						ls = append(ls, 1001)
					}
					for i, l := range ls {
						checkOrder(t, k, c, r, n, l, c.param(n, i), i%3 != 0)
					}
				}
			})
		})
	}
}

func checkOrder(t *testing.T, k *Impl, c orderCase, r *rand.Rand, n, length, p int, finite bool) {
	t.Helper()
	x := orderValues(r, n, length, finite)
	saved := make([][]byte, n)
	for i := range x {
		saved[i] = slices.Clone(x[i])
	}
	want := orderReference(x, length, p, c.ref)
	dst, checkDst := guardedF32(length, length%8)
	tmp, checkTmp := guardedF32(SortScratch(n), 0)
	c.run(k, dst, x, p, tmp)
	checkDst(t)
	checkTmp(t)
	for j := range want {
		if !sameF32(dst[j], want[j]) {
			t.Fatalf("%s n=%d len=%d p=%d: element %d = %v (%#x), reference %v (%#x)",
				c.name, n, length, p, j, dst[j], math.Float32bits(dst[j]), want[j], math.Float32bits(want[j]))
		}
	}
	for i := range x {
		if !slices.Equal(x[i], saved[i]) {
			t.Fatalf("%s n=%d len=%d: input %d modified", c.name, n, length, i)
		}
	}
}

// TestOrderStatsOracle checks the reference itself against order statistics computed by
// sorting float64 copies: the median and trimmed mean of finite values as numpy and scipy
// define them, and Bulyan's window as the beta values nearest the median.
func TestOrderStatsOracle(t *testing.T) {
	r := rand.New(rand.NewPCG(4, 5))
	for _, n := range counts() {
		const coords = 20
		x := orderValues(r, n, coords, true)
		v := make([]float64, n)
		tmp := make([]float32, SortScratch(n))
		med := make([]float32, coords)
		MedianF32(med, x, tmp)
		for j := range coords {
			sv := sortedF32(x, j)
			for i := range x {
				v[i] = float64(ldF32(x[i], j))
			}
			slices.Sort(v)
			want := float32(v[n/2])
			if n%2 == 0 {
				// numpy averages the two middle f32 values in f32: (lo+hi)·0.5, which equals
				// lo·0.5 + hi·0.5 except where lo+hi overflows (numpy gives Inf) or the
				// halves are subnormal (one ulp).
				want = float32(float32(v[n/2-1])+float32(v[n/2])) * 0.5
				if math.IsInf(float64(want), 0) {
					continue
				}
			}
			ulp := float64(math.Nextafter32(abs32(want), float32(math.Inf(1))) - abs32(want))
			tiny := n%2 == 0 && min(math.Abs(v[n/2-1]), math.Abs(v[n/2])) < 0x1p-125
			if d := math.Abs(float64(med[j]) - float64(want)); d > 0 && !(tiny && d <= ulp) {
				t.Fatalf("n=%d: median %v, numpy's %v", n, med[j], want)
			}
			for k := 0; 2*k < n; k++ {
				var s float64
				for _, y := range v[k : n-k] {
					s += y
				}
				want := s / float64(n-2*k)
				got := trimmedOf(sv, k)
				if absSum(v[k:n-k]) > math.MaxFloat32 {
					continue // the f32 sum may overflow where scipy's f64 one does not
				}
				if d := math.Abs(float64(got) - want); d > 1e-6*(math.Abs(want)+absSum(v[k:n-k])/float64(n-2*k))+1e-44 {
					t.Fatalf("n=%d k=%d: trimmed mean %v, scipy's %v", n, k, got, want)
				}
			}
			for beta := 1; beta <= n; beta++ {
				m := float64(medianOf(sv))
				dist := make([]float64, n)
				for i, y := range v {
					dist[i] = math.Abs(y - m)
				}
				slices.Sort(dist)
				var best float64 // the sum of the beta smallest distances
				for _, d := range dist[:beta] {
					best += d
				}
				got := closestOf(sv, beta)
				// Every tied window the kernel considers has the smallest sum of distances...
				lo, hi := closestWindows(sv, beta, medianOf(sv))
				mean := func(s int) float64 {
					var sum, mean float64
					for _, y := range sv[s : s+beta] {
						sum += math.Abs(float64(y) - m)
						mean += float64(y)
					}
					if sum > best*(1+1e-6)+1e-30 {
						t.Fatalf("n=%d beta=%d: window at %d of [%d, %d] has distance sum %v, best %v", n, beta, s, lo, hi, sum, best)
					}
					return mean / float64(beta)
				}
				for s := lo; s <= hi; s++ {
					mean(s)
				}
				// ...and the result is the middle one's mean, or the mean of the middle two.
				want := (mean((lo+hi)/2) + mean((lo+hi+1)/2)) / 2
				if absSum(v) > math.MaxFloat32 {
					continue // the f32 window sums may overflow
				}
				if d := math.Abs(float64(got) - want); d > 1e-5*math.Abs(want)+1e-6*absSum(v)/float64(n)+1e-44 {
					t.Fatalf("n=%d beta=%d: closest mean %v, mean of the middle windows %v", n, beta, got, want)
				}
			}
		}
	}
}

// TestClosestMeanTiesUnbiased measures the mean signed error of Bulyan's coordinate step over
// coordinates where windows tie (issue 9.11): bf16 values drawn symmetrically around a point of
// the bf16 grid (1.5, spread 0.1, where the grid is uniform), so that a value as far below the
// median as another is above it at the cut-off is frequent. Taking the middle of the tied
// windows leaves no bias beyond the sampling noise; the first window (the rule before) is
// checked too, so that the test can fail: it errs low by several standard errors.
func TestClosestMeanTiesUnbiased(t *testing.T) {
	const mu, spread = 1.5, 0.1
	r := rand.New(rand.NewPCG(16, 17))
	type stat struct{ sum, sq float64 }
	var sym, first stat
	ties := 0
	for _, nb := range [][2]int{{7, 3}, {9, 5}, {11, 3}, {15, 7}, {19, 11}} {
		n, beta := nb[0], nb[1]
		v := make([]float32, n)
		for range 40000 {
			for i := range v {
				v[i] = bf16Round(float32(mu + spread*r.NormFloat64()))
			}
			sortValues(v, sortNetwork(n))
			lo, hi := closestWindows(v, beta, medianOf(v))
			if lo == hi {
				continue
			}
			ties++
			e := float64(closestOf(v, beta)) - mu
			sym.sum += e
			sym.sq += e * e
			e = float64(windowMean(v[lo:lo+beta])) - mu
			first.sum += e
			first.sq += e * e
		}
	}
	if ties < 5000 {
		t.Fatalf("only %d coordinates with tied windows", ties)
	}
	k := float64(ties)
	for _, c := range []struct {
		name   string
		s      stat
		biased bool
	}{{"middle of the tied windows", sym, false}, {"first tied window", first, true}} {
		mean := c.s.sum / k
		se := math.Sqrt((c.s.sq/k - mean*mean) / k)
		t.Logf("%s: mean signed error %.3g ± %.2g (standard error) over %d ties", c.name, mean, se, ties)
		if c.biased != (math.Abs(mean) > 4*se) {
			t.Errorf("%s: mean signed error %.3g, %.1f standard errors", c.name, mean, math.Abs(mean)/se)
		}
	}
}

// bf16Round rounds f to the nearest bfloat16 (ties to even), as a client sending bf16 would.
func bf16Round(f float32) float32 {
	b := math.Float32bits(f)
	b += 0x7fff + (b >> 16 & 1)
	return math.Float32frombits(b &^ 0xffff)
}

// TestSelectNetwork checks that the selection network of the middle wires gives them the bits
// the whole network gives, on values full of ties, zeros of both signs, NaNs and infinities.
func TestSelectNetwork(t *testing.T) {
	r := rand.New(rand.NewPCG(18, 19))
	pool := []float32{0, float32(math.Copysign(0, -1)), 1, -1, float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1)), 2}
	for n := 1; n <= 130; n++ {
		full := sortNetwork(n)
		sel := selectNetwork(full, middleWires(n)...)
		if len(sel) > len(full) || n >= 16 && len(sel) == len(full) {
			t.Fatalf("n=%d: selection network of %d comparators, full %d", n, len(sel), len(full))
		}
		v, w := make([]float32, n), make([]float32, n)
		for range 200 {
			for i := range v {
				v[i] = pool[r.IntN(len(pool))]
				if r.IntN(2) == 0 {
					v[i] = float32(r.NormFloat64())
				}
			}
			copy(w, v)
			sortValues(v, full)
			sortValues(w, sel)
			for _, m := range middleWires(n) {
				if math.Float32bits(v[m]) != math.Float32bits(w[m]) {
					t.Fatalf("n=%d: wire %d = %v, full network %v", n, m, w[m], v[m])
				}
			}
		}
	}
}

func sortedF32(x [][]byte, j int) []float32 {
	v := make([]float32, len(x))
	for i := range x {
		v[i] = ldF32(x[i], j)
	}
	sortValues(v, sortNetwork(len(x)))
	return v
}

func absSum(v []float64) float64 {
	var s float64
	for _, y := range v {
		s += math.Abs(y)
	}
	return s
}

func TestGram(t *testing.T) {
	forImpls(t, func(t *testing.T, k *Impl) {
		r := rand.New(rand.NewPCG(7, 8))
		ns := []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 17, 24, 25, 33, 64}
		for _, n := range ns {
			ls := []int{0, 1, 3, 4, 7, 8, 9, 15, 16, 17, 31, 32, 33}
			switch {
			case n <= 7:
				ls = ls[:0]
				for l := range 71 {
					ls = append(ls, l)
				}
				ls = append(ls, 1001, 4099)
			case n <= 13:
				ls = append(ls, 1001)
			}
			for i, l := range ls {
				checkGram(t, k, r, n, l, i%4 != 0)
			}
		}
	})
}

// gramInputs returns n inputs of elems random f32 values (NaN and Inf unless finite), often
// close to a common point (full models that differ slightly), at random alignments.
func gramInputs(r *rand.Rand, n, elems int, finite bool) [][]byte {
	x := make([][]byte, n)
	near := r.IntN(2) == 0
	base := randBytes(r, dtF32, elems, true)
	for i := range x {
		b := randBytes(r, dtF32, elems, finite)
		if near {
			for j := range elems {
				v := ldF32(b, j)
				if v == v && !math.IsInf(float64(v), 0) {
					binary.LittleEndian.PutUint32(b[4*j:], math.Float32bits(ldF32(base, j)+1e-4*v))
				}
			}
		}
		x[i] = placed(r, b, r.IntN(8))
	}
	return x
}

// checkPairs fails unless the Gram partials p of n inputs equal want bit for bit (NaN payloads
// aside) for every pair a <= b and lane: the entries GramF32 and GramRawF32 specify.
func checkPairs(t *testing.T, what string, n int, p, want []float64) {
	t.Helper()
	s := GramStride(n)
	for a := range n {
		for b := a; b < n; b++ {
			for l := range GramLanes {
				if k := (a*s+b)*GramLanes + l; !sameF64(p[k], want[k]) {
					t.Fatalf("%s: pair (%d,%d) lane %d = %v, want %v", what, a, b, l, p[k], want[k])
				}
			}
		}
	}
}

// gramCase returns gramInputs, a copy of them (to check that the kernel leaves them alone) and
// nonzero starting partials (the kernels add to them).
func gramCase(r *rand.Rand, n, elems int, finite bool) (x, saved [][]byte, init []float64) {
	x = gramInputs(r, n, elems, finite)
	saved = make([][]byte, n)
	for i := range x {
		saved[i] = slices.Clone(x[i])
	}
	init = make([]float64, GramPartials(n))
	for k := range init {
		init[k] = float64(r.IntN(9) - 4)
	}
	return x, saved, init
}

func checkGram(t *testing.T, k *Impl, r *rand.Rand, n, elems int, finite bool) {
	t.Helper()
	x, saved, init := gramCase(r, n, elems, finite)
	initSq := make([]float64, Lanes*n)
	for k := range initSq {
		initSq[k] = float64(r.IntN(5))
	}
	want, wantSq := slices.Clone(init), slices.Clone(initSq)
	gramGeneric(want, wantSq, x, 0, elems)
	p, check := guardedF64(len(init), r.IntN(4))
	sq, checkSq := guardedF64(len(initSq), r.IntN(4))
	tmp, checkTmp := guardedF64(GramScratch(n, elems), r.IntN(4))
	copy(p, init)
	copy(sq, initSq)
	k.GramF32(p, sq, x, elems, tmp)
	check(t)
	checkSq(t)
	checkTmp(t)
	checkPairs(t, fmt.Sprintf("n=%d elems=%d", n, elems), n, p, want)
	for a := range n {
		for l := range Lanes {
			if q := a*Lanes + l; !sameF64(sq[q], wantSq[q]) {
				t.Fatalf("n=%d elems=%d: square of %d lane %d = %v, reference %v", n, elems, a, l, sq[q], wantSq[q])
			}
		}
	}
	for i := range x {
		if !slices.Equal(x[i], saved[i]) {
			t.Fatalf("n=%d elems=%d: input %d modified", n, elems, i)
		}
	}
	if !finite || n > 13 {
		return
	}
	// The reference against plain sums in f64: the products of the centred values, whose
	// centre is recomputed here from its definition, and the squares.
	g, norm := make([]float64, n*n), make([]float64, n)
	zero, zeroSq := make([]float64, len(init)), make([]float64, len(initSq))
	gramGeneric(zero, zeroSq, x, 0, elems)
	GramSums(g, norm, zero, zeroSq, n)
	for a := range n {
		for b := range n {
			var s, sa, q float64
			for j := range elems {
				var t float32
				for i := range x {
					t += ldF32(x[i], j)
				}
				c := float64(t / float32(n))
				va := float64(ldF32(x[a], j))
				v := (va - c) * (float64(ldF32(x[b], j)) - c)
				s += v
				sa += math.Abs(v)
				q += va * va
			}
			if d := math.Abs(g[a*n+b] - s); d > 1e-12*sa || math.IsNaN(d) != math.IsNaN(s) {
				t.Fatalf("n=%d elems=%d: G[%d][%d] = %v, dot product %v", n, elems, a, b, g[a*n+b], s)
			}
			if d := math.Abs(norm[a] - q); a == b && d > 1e-12*q {
				t.Fatalf("n=%d elems=%d: norm² of %d = %v, plain sum %v", n, elems, a, norm[a], q)
			}
		}
	}
}

// TestGramDistancesPrecise checks the purpose of the centring: for clients that send full
// models differing by 1e-6 (issue 9.6), the distances G[a][a] + G[b][b] - 2G[a][b] agree with
// plain f64 sums of squared differences to 1e-9, where the uncentred Gram matrix (checked here
// too, so that the test can fail) is off by more than 1e-4.
func TestGramDistancesPrecise(t *testing.T) {
	const n, elems = 6, 1 << 17
	r := rand.New(rand.NewPCG(12, 13))
	base := make([]float32, elems)
	for j := range base {
		base[j] = float32(r.NormFloat64())
	}
	x := make([][]byte, n)
	for i := range x {
		b := make([]byte, 4*elems)
		for j := range elems {
			binary.LittleEndian.PutUint32(b[4*j:], math.Float32bits(base[j]+float32(1e-6*r.NormFloat64())))
		}
		x[i] = b
	}
	exact := make([]float64, n*n) // Σ (x_a - x_b)², every difference exact in f64
	for a := range n {
		for b := range n {
			var s float64
			for j := range elems {
				d := float64(ldF32(x[a], j)) - float64(ldF32(x[b], j))
				s += d * d
			}
			exact[a*n+b] = s
		}
	}
	forImpls(t, func(t *testing.T, k *Impl) {
		p, sq := make([]float64, GramPartials(n)), make([]float64, Lanes*n)
		tmp := make([]float64, GramScratch(n, 4096))
		xs := make([][]byte, n)
		for lo := 0; lo < elems; lo += 4096 {
			for i := range x {
				xs[i] = x[i][4*lo : 4*(lo+4096)]
			}
			k.GramF32(p, sq, xs, 4096, tmp)
		}
		g, norm := make([]float64, n*n), make([]float64, n)
		GramSums(g, norm, p, sq, n)
		var worst float64
		for a := range n {
			for b := range n {
				if a == b {
					continue
				}
				d := g[a*n+a] + g[b*n+b] - 2*g[a*n+b]
				worst = max(worst, math.Abs(d-exact[a*n+b])/exact[a*n+b])
			}
		}
		if worst > 1e-9 {
			t.Errorf("centred: distances off by %.3g (relative), want < 1e-9", worst)
		}
	})
	// The uncentred route: the dot products of the values themselves, summed in the same lanes.
	dots := make([]float64, n*n)
	for a := range n {
		for b := range n {
			var q [GramLanes]float64
			for j := range elems {
				q[j%GramLanes] = math.FMA(float64(ldF32(x[a], j)), float64(ldF32(x[b], j)), q[j%GramLanes])
			}
			dots[a*n+b] = (q[0] + q[2]) + (q[1] + q[3])
		}
	}
	var worst float64
	for a := range n {
		for b := range n {
			if a != b {
				d := dots[a*n+a] + dots[b*n+b] - 2*dots[a*n+b]
				worst = max(worst, math.Abs(d-exact[a*n+b])/exact[a*n+b])
			}
		}
	}
	if worst < 1e-4 {
		t.Errorf("uncentred: distances off by only %.3g: the data does not show the cancellation", worst)
	}
}

// TestGramNonFinite checks that an input holding a NaN or Inf makes its own squared norm
// non-finite and leaves every other input's pairs and norm finite.
func TestGramNonFinite(t *testing.T) {
	r := rand.New(rand.NewPCG(14, 15))
	forImpls(t, func(t *testing.T, k *Impl) {
		for _, bad := range []float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1))} {
			const n, elems = 9, 1000
			x := gramInputs(r, n, elems, true)
			x[4] = slices.Clone(x[4])
			for _, j := range []int{3, 500, 999} {
				binary.LittleEndian.PutUint32(x[4][4*j:], math.Float32bits(bad))
			}
			p, sq := make([]float64, GramPartials(n)), make([]float64, Lanes*n)
			k.GramF32(p, sq, x, elems, make([]float64, GramScratch(n, elems)))
			g, norm := make([]float64, n*n), make([]float64, n)
			GramSums(g, norm, p, sq, n)
			finite := func(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }
			for a := range n {
				if finite(norm[a]) != (a != 4) {
					t.Fatalf("%v in input 4: norm² of %d = %v", bad, a, norm[a])
				}
				for b := range n {
					if a != 4 && b != 4 && !finite(g[a*n+b]) {
						t.Fatalf("%v in input 4: G[%d][%d] = %v", bad, a, b, g[a*n+b])
					}
				}
			}
		}
	})
}

// TestGramRaw checks GramRawF32 against its reference bit for bit (every implementation, the
// counts and lengths of TestGram, NaN and Inf included), and the reference against plain f64
// sums of the products.
func TestGramRaw(t *testing.T) {
	forImpls(t, func(t *testing.T, k *Impl) {
		r := rand.New(rand.NewPCG(7, 9))
		for _, n := range []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 13, 17, 25, 33, 64} {
			ls := []int{0, 1, 7, 8, 9, 16, 17, 33, 1001}
			if n <= 5 {
				ls = append(ls, 2, 3, 4, 5, 6, 15, 24, 31, 32, 4099)
			}
			for i, l := range ls {
				checkGramRaw(t, k, r, n, l, i%3 != 0)
			}
		}
	})
}

func checkGramRaw(t *testing.T, k *Impl, r *rand.Rand, n, elems int, finite bool) {
	t.Helper()
	x, saved, init := gramCase(r, n, elems, finite)
	want := slices.Clone(init)
	gramRawGeneric(want, x, 0, elems)
	p, check := guardedF64(len(init), r.IntN(4))
	copy(p, init)
	k.GramRawF32(p, x, elems, make([]float64, GramScratch(n, elems)))
	check(t)
	checkPairs(t, fmt.Sprintf("n=%d elems=%d", n, elems), n, p, want)
	for i := range x {
		if !slices.Equal(x[i], saved[i]) {
			t.Fatalf("n=%d elems=%d: input %d modified", n, elems, i)
		}
	}
	if !finite || n > 9 {
		return
	}
	g, norm := make([]float64, n*n), make([]float64, n)
	zero := make([]float64, len(init))
	gramRawGeneric(zero, x, 0, elems)
	GramRawSums(g, norm, zero, n)
	for a := range n {
		for b := range n {
			var s, sa float64
			for j := range elems {
				v := float64(ldF32(x[a], j)) * float64(ldF32(x[b], j))
				s += v
				sa += math.Abs(v)
			}
			if d := math.Abs(g[a*n+b] - s); d > 1e-12*sa {
				t.Fatalf("n=%d elems=%d: G[%d][%d] = %v, dot product %v", n, elems, a, b, g[a*n+b], s)
			}
		}
		if norm[a] != g[a*n+a] {
			t.Fatalf("n=%d elems=%d: norm² of %d = %v, diagonal %v", n, elems, a, norm[a], g[a*n+a])
		}
	}
}

func TestGramRawBlocksCompose(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	forImpls(t, func(t *testing.T, k *Impl) {
		n, elems := 8, 1000
		x := gramInputs(r, n, elems, true)
		whole := make([]float64, GramPartials(n))
		k.GramRawF32(whole, x, elems, make([]float64, GramScratch(n, elems)))
		parts := make([]float64, GramPartials(n))
		xs := make([][]byte, n)
		for lo := 0; lo < elems; lo += 48 {
			hi := min(lo+48, elems)
			for i := range x {
				xs[i] = x[i][4*lo : 4*hi]
			}
			k.GramRawF32(parts, xs, hi-lo, make([]float64, GramScratch(n, 48)))
		}
		checkPairs(t, "blocks against one call", n, parts, whole)
	})
}

func TestGramBlocksCompose(t *testing.T) {
	// Calls on consecutive blocks of multiples of Lanes give one call's partials.
	r := rand.New(rand.NewPCG(9, 9))
	forImpls(t, func(t *testing.T, k *Impl) {
		n, elems := 7, 1000
		x := gramInputs(r, n, elems, true)
		whole, wholeSq := make([]float64, GramPartials(n)), make([]float64, Lanes*n)
		k.GramF32(whole, wholeSq, x, elems, make([]float64, GramScratch(n, elems)))
		parts, partsSq := make([]float64, GramPartials(n)), make([]float64, Lanes*n)
		xs := make([][]byte, n)
		tmp := make([]float64, GramScratch(n, 48))
		for lo := 0; lo < elems; lo += 48 {
			hi := min(lo+48, elems)
			for i := range x {
				xs[i] = x[i][4*lo : 4*hi]
			}
			k.GramF32(parts, partsSq, xs, hi-lo, tmp)
		}
		checkPairs(t, "blocks against one call", n, parts, whole)
		if !slices.Equal(partsSq, wholeSq) {
			t.Fatalf("squares: blocks %v, whole %v", partsSq, wholeSq)
		}
	})
}

func putF32(b []byte, j int, v float32) { binary.LittleEndian.PutUint32(b[4*j:], math.Float32bits(v)) }

// moderateF32 draws normals at scales 2^-20..2^20, sometimes ±0, and unless finite sometimes a
// NaN or Inf: values whose squares and sums of squares f32 holds.
func moderateF32(r *rand.Rand, finite bool) float32 {
	switch k := r.IntN(64); {
	case k == 0:
		return float32(math.Copysign(0, r.NormFloat64()))
	case k == 1 && !finite:
		return float32(math.NaN())
	case k == 2 && !finite:
		return float32(math.Inf(1 - 2*r.IntN(2)))
	}
	return float32(math.Ldexp(r.NormFloat64(), r.IntN(41)-20))
}

// distRunsReference is SqDistNormF32Runs as its documentation writes it, for one input.
func distRunsReference(pd, pn *[Lanes]float64, x []byte, z []float32) {
	var ld, ln [Lanes]float64
	m := len(z) &^ (Lanes - 1)
	runs := [][2]int{}
	for a := 0; a < m; a += DistRun {
		runs = append(runs, [2]int{a, min(a+DistRun, m)})
	}
	if m < len(z) {
		runs = append(runs, [2]int{m, len(z)})
	}
	for _, r := range runs {
		var d32, n32 [Lanes]float32
		for j := r[0]; j < r[1]; j++ {
			v := ldF32(x, j)
			d := v - z[j]
			d32[j%Lanes] = fma32(d, d, d32[j%Lanes])
			n32[j%Lanes] = fma32(v, v, n32[j%Lanes])
		}
		for l := range Lanes {
			ld[l] += float64(d32[l])
			ln[l] += float64(n32[l])
		}
	}
	bad := func(v float64) bool { return math.IsNaN(v) || math.IsInf(v, 0) }
	for l := range Lanes {
		if bad(ld[l]) || bad(ln[l]) || ln[l] > 0 && ln[l] < 0x1p-64 {
			sqDistNormGeneric(pd, pn, x, z, 0)
			return
		}
	}
	for l := range Lanes {
		pd[l] += ld[l]
		pn[l] += ln[l]
	}
}

// SqDistNormF32Runs gives every input the bits of the reference loop of its documentation, for
// counts that do and do not fill the avx512 kernel's groups of four, lengths around the runs
// and groups, NaN and Inf, values whose squares overflow or underflow f32 (the f64 partials
// then), and stays within its rounding bound of f64 sums where the inputs are finite.
func TestSqDistNormRuns(t *testing.T) {
	forImpls(t, func(t *testing.T, k *Impl) {
		r := rand.New(rand.NewPCG(12, 13))
		for _, cnt := range []int{0, 1, 3, 4, 5, 8, 9, 32} {
			for i, n := range []int{0, 1, 15, 16, 17, 511, 512, 513, 1001, 4096 + 24} {
				finite := (i+cnt)%3 != 0
				// Values whose squares f32 holds, but for the inputs after the eighth: the
				// mix of randF32Bits (huge, tiny, subnormal, non-finite unless finite).
				x := make([][]byte, cnt)
				for q := range x {
					x[q] = randBytes(r, dtF32, n, finite)
					if q < 8 {
						for j := range n {
							putF32(x[q], j, moderateF32(r, finite))
						}
					}
				}
				if n > 0 && cnt > 2 {
					// One input with a value whose square overflows f32, one with every value
					// tiny, one of zeros.
					putF32(x[0], r.IntN(n), 3e19)
					for j := range n {
						putF32(x[1], j, float32(r.NormFloat64()*1e-22))
					}
					clear(x[2])
				}
				z := make([]float32, n)
				for j := range z {
					z[j] = moderateF32(r, true)
				}
				pd, pn := make([][Lanes]float64, cnt), make([][Lanes]float64, cnt)
				want, wantN := make([][Lanes]float64, cnt), make([][Lanes]float64, cnt)
				for q := range pd {
					for l := range Lanes {
						pd[q][l], pn[q][l] = float64(q+l), float64(-l)
					}
					want[q], wantN[q] = pd[q], pn[q]
					distRunsReference(&want[q], &wantN[q], x[q], z)
				}
				k.SqDistNormF32Runs(pd, pn, x, z)
				for q := range pd {
					for l := range Lanes {
						if !sameF64(pd[q][l], want[q][l]) || !sameF64(pn[q][l], wantN[q][l]) {
							t.Fatalf("%d inputs, len %d: input %d lane %d = %v, %v; reference %v, %v",
								cnt, n, q, l, pd[q][l], pn[q][l], want[q][l], wantN[q][l])
						}
					}
					if finite {
						checkRunsBound(t, k, x[q], z)
					}
				}
			}
		}
	})
}

// plainSqSums is ‖x−z‖² and ‖x‖² summed plainly in f64.
func plainSqSums(x []byte, z []float32) (s, q float64) {
	for j := range z {
		v := float64(ldF32(x, j))
		d := v - float64(z[j])
		s += d * d
		q += v * v
	}
	return s, q
}

// checkRunsBound checks SqDistNormF32Runs' sums of one input against f64 sums of the same
// squares: relatively within (DistRun/Lanes+3)·2^-24, or 2^-149 per element absolutely.
func checkRunsBound(t *testing.T, k *Impl, x []byte, z []float32) {
	t.Helper()
	dd, qn := [][Lanes]float64{{}}, [][Lanes]float64{{}}
	k.SqDistNormF32Runs(dd, qn, [][]byte{x}, z)
	s, q := plainSqSums(x, z)
	tol := float64(DistRun/Lanes+3) * 0x1p-24
	abs := 0x1p-149 * float64(len(z)+1)
	if got := SumLanes(&dd[0]); math.Abs(got-s) > tol*s+abs {
		t.Fatalf("len %d: ‖x−z‖² %v, f64 sum %v (relative %.3g)", len(z), got, s, math.Abs(got-s)/s)
	}
	if got := SumLanes(&qn[0]); math.Abs(got-q) > tol*q+abs {
		t.Fatalf("len %d: ‖x‖² %v, f64 sum %v (relative %.3g)", len(z), got, q, math.Abs(got-q)/q)
	}
}

// fma32 rounds once: against the exact a·b+c of math/big rounded to f32, on random operands,
// products on an f32 midpoint with a tiny addend (where rounding twice goes wrong), and
// subnormal, overflowing and non-finite values.
func TestFMA32(t *testing.T) {
	r := rand.New(rand.NewPCG(14, 15))
	exact := func(a, b, c float32) float32 {
		for _, v := range []float32{a, b, c} {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return float32(float64(a)*float64(b) + float64(c))
			}
		}
		const prec = 2000
		p := new(big.Float).SetPrec(prec).Mul(new(big.Float).SetPrec(prec).SetFloat64(float64(a)), new(big.Float).SetPrec(prec).SetFloat64(float64(b)))
		p.Add(p, new(big.Float).SetPrec(prec).SetFloat64(float64(c)))
		f, _ := p.Float32()
		return f
	}
	check := func(a, b, c float32) {
		got, want := fma32(a, b, c), exact(a, b, c)
		if math.Float32bits(got) != math.Float32bits(want) && !(got != got && want != want) {
			t.Fatalf("fma32(%g, %g, %g) = %g (%#x), want %g (%#x)", a, b, c, got, math.Float32bits(got), want, math.Float32bits(want))
		}
	}
	f := func() float32 { return math.Float32frombits(randF32Bits(r, true)) }
	for range 100000 {
		a, b, c := f(), f(), f()
		check(a, b, c)
		check(a, a, c)
		check(a, b, float32(r.NormFloat64()))
	}
	// (1 + 2^-12)² = 1 + 2^-11 + 2^-24, halfway between two f32 neighbours; a tiny addend of
	// either sign decides the rounding.
	a := float32(1 + 0x1p-12)
	for _, c := range []float32{0x1p-100, -0x1p-100, 0, 0x1p-149, -0x1p-149} {
		check(a, a, c)
		check(-a, a, c)
	}
	for _, c := range []float32{0x1p-126, 0x1p-140, math.MaxFloat32, float32(math.Inf(1)), float32(math.NaN())} {
		check(0x1p-70, 0x1p-70, c)
		check(3e19, 3e19, c)
		check(math.MaxFloat32, 2, -c)
	}
}

func TestSqDistNorm(t *testing.T) {
	forImpls(t, func(t *testing.T, k *Impl) {
		r := rand.New(rand.NewPCG(10, 11))
		for i, n := range lengths() {
			finite := i%3 != 0
			x := placed(r, randBytes(r, dtF32, n, finite), i%8)
			z, checkZ := guardedF32(n, i%5)
			for j := range z {
				z[j] = math.Float32frombits(randF32Bits(r, finite))
			}
			var pd, pn, wantD, wantN [Lanes]float64
			for l := range pd {
				pd[l], pn[l] = float64(l), float64(-l)
				wantD[l], wantN[l] = float64(l), float64(-l)
			}
			sqDistNormGeneric(&wantD, &wantN, x, z, 0)
			k.SqDistNormF32(&pd, &pn, x, z)
			checkZ(t)
			for l := range pd {
				if !sameF64(pd[l], wantD[l]) || !sameF64(pn[l], wantN[l]) {
					t.Fatalf("len %d: lane %d = %v, %v; reference %v, %v", n, l, pd[l], pn[l], wantD[l], wantN[l])
				}
			}
			if finite {
				s, q := plainSqSums(x, z)
				var d, nn [Lanes]float64
				k.SqDistNormF32(&d, &nn, x, z)
				if got := SumLanes(&d); math.Abs(got-s) > 1e-12*s || math.IsInf(s, 0) != math.IsInf(got, 0) {
					t.Fatalf("len %d: %v, plain sum %v", n, got, s)
				}
				if got := SumLanes(&nn); math.Abs(got-q) > 1e-12*q {
					t.Fatalf("len %d: norm² %v, plain sum %v", n, got, q)
				}
			}
		}
	})
}

func TestFMALoop(t *testing.T) {
	forImpls(t, func(t *testing.T, k *Impl) {
		got := k.FMALoop(1000)
		want := float64(FMALoopFMAs) * 1000 * 1.0000001 * 0.9999999
		if math.Abs(got-want) > 1e-9*want {
			t.Fatalf("FMALoop(1000) = %v, want %v", got, want)
		}
		if k.FMALoop(0) != 0 {
			t.Fatal("FMALoop(0) != 0")
		}
	})
}

func TestOrderStatsPanics(t *testing.T) {
	x := [][]byte{make([]byte, 64), make([]byte, 64)}
	tmp := make([]float32, SortScratch(2))
	dst := make([]float32, 16)
	mustPanic(t, "input too short", func() { MedianF32(dst, [][]byte{make([]byte, 60), make([]byte, 64)}, tmp) })
	mustPanic(t, "scratch too short", func() { MedianF32(dst, x, make([]float32, 10)) })
	mustPanic(t, "p too short", func() {
		GramF32(make([]float64, 3), make([]float64, 2*Lanes), x, 16, make([]float64, GramScratch(2, 16)))
	})
	mustPanic(t, "sq too short", func() {
		GramF32(make([]float64, GramPartials(2)), make([]float64, 2*Lanes-1), x, 16, make([]float64, GramScratch(2, 16)))
	})
	mustPanic(t, "gram scratch too short", func() {
		GramF32(make([]float64, GramPartials(2)), make([]float64, 2*Lanes), x, 16, make([]float64, GramScratch(2, 16)-1))
	})
	mustPanic(t, "trim too large", func() { TrimmedMeanF32(dst, x, 1, tmp) })
	mustPanic(t, "beta too large", func() { ClosestMeanF32(dst, x, 3, tmp) })
}

// ---------------------------------------------------------------------------------------------
// Fuzzing.

// FuzzOrderStats decodes a client count, a length, a parameter and raw f32 values, and compares
// every variant with the reference.
func FuzzOrderStats(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		fb := &fuzzBytes{data}
		n := 1 + fb.byte()%70
		length := fb.length()
		p := fb.byte()
		x := make([][]byte, n)
		for i := range x {
			x[i] = placed(rand.New(rand.NewPCG(uint64(i), 1)), fb.next(4*length), i%8)
		}
		for _, c := range orderCases {
			param := c.param(n, p)
			want := orderReference(x, length, param, c.ref)
			for _, v := range Impls() {
				dst := make([]float32, length)
				c.run(v, dst, x, param, make([]float32, SortScratch(n)))
				for j := range want {
					if !sameF32(dst[j], want[j]) {
						t.Fatalf("%s/%s n=%d len=%d p=%d: element %d = %#x, reference %#x",
							c.name, v, n, length, param, j, math.Float32bits(dst[j]), math.Float32bits(want[j]))
					}
				}
			}
		}
	})
}

// FuzzGram compares the Gram partials (centred and raw) and squared distances of every variant with the
// reference on raw f32 values.
func FuzzGram(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		fb := &fuzzBytes{data}
		n := 1 + fb.byte()%20
		elems := fb.length()
		x := make([][]byte, n)
		for i := range x {
			x[i] = fb.next(4 * elems)
		}
		z := make([]float32, elems)
		for j := range z {
			z[j] = fb.f32()
		}
		want, wantSq := make([]float64, GramPartials(n)), make([]float64, Lanes*n)
		gramGeneric(want, wantSq, x, 0, elems)
		wantRaw := make([]float64, GramPartials(n))
		gramRawGeneric(wantRaw, x, 0, elems)
		var wantD, wantN [Lanes]float64
		sqDistNormGeneric(&wantD, &wantN, x[0], z, 0)
		for _, v := range Impls() {
			p, sq := make([]float64, len(want)), make([]float64, len(wantSq))
			v.GramF32(p, sq, x, elems, make([]float64, GramScratch(n, elems)))
			checkPairs(t, fmt.Sprintf("%s n=%d elems=%d", v, n, elems), n, p, want)
			for q := range sq {
				if !sameF64(sq[q], wantSq[q]) {
					t.Fatalf("%s n=%d elems=%d: square partial %d = %v, reference %v", v, n, elems, q, sq[q], wantSq[q])
				}
			}
			raw := make([]float64, len(wantRaw))
			v.GramRawF32(raw, x, elems, make([]float64, GramScratch(n, elems)))
			checkPairs(t, fmt.Sprintf("%s raw n=%d elems=%d", v, n, elems), n, raw, wantRaw)
			var d, nn [Lanes]float64
			v.SqDistNormF32(&d, &nn, x[0], z)
			for l := range d {
				if !sameF64(d[l], wantD[l]) || !sameF64(nn[l], wantN[l]) {
					t.Fatalf("%s elems=%d: distance lane %d = %v, reference %v", v, elems, l, d[l], wantD[l])
				}
			}
		}
	})
}

// ---------------------------------------------------------------------------------------------
// Benchmarks.

// readRate is the floor of a pass over bufs: the bytes per second XorFold reads them at, best of
// 3, measured in the same run as the figure it is put beside.
func readRate(bufs [][]byte) float64 {
	var total int
	for _, x := range bufs {
		total += len(x)
	}
	best := 0.0
	for range 3 {
		start := time.Now()
		for _, x := range bufs {
			XorFold(x)
		}
		best = max(best, float64(total)/time.Since(start).Seconds())
	}
	return best
}

// BenchmarkOrderStats measures the order statistics on n inputs of 64Ki elements (8 MiB for 32:
// the inputs come from the L3 cache and DRAM, as in a real round's blocks), input bytes per
// second, beside the rate one core reads them at. The network makes them compute-bound: n = 32
// takes 191 comparators (382 VMINPS/VMAXPS) per 8 coordinates, 1.5 per input byte.
func BenchmarkOrderStats(b *testing.B) {
	for _, n := range []int{8, 32, 64, 128} {
		const elems = 64 << 10
		r := rand.New(rand.NewPCG(1, 1))
		x := make([][]byte, n)
		for i := range x {
			x[i] = randBytes(r, dtF32, elems, true)
		}
		dst := make([]float32, elems)
		tmp := make([]float32, SortScratch(n))
		for _, c := range orderCases {
			p := c.param(n, n/8)
			benchImpls(b, n, func(b *testing.B, k *Impl) {
				b.Run(c.name, func(b *testing.B) {
					b.SetBytes(int64(4 * elems * n))
					for b.Loop() {
						c.run(k, dst, x, p, tmp)
					}
					floor := readRate(x)
					b.ReportMetric(floor/1e9, "floor-GB/s")
					b.ReportMetric(float64(4*elems*n)*float64(b.N)/b.Elapsed().Seconds()/floor, "of-floor")
				})
			})
		}
	}
}

// BenchmarkOrderStatsCached measures the median and trimmed mean of n inputs whose 256 KiB
// stay in L2 (one block of the CPU device's order statistics), normal values: the kernels'
// compute rate, without DRAM. "aligned" inputs start on page boundaries (as large allocations
// do: a group's line of every input then falls in one L1 set of 8 ways), "coloured" ones 64·i
// bytes into their page (input i).
func BenchmarkOrderStatsCached(b *testing.B) {
	for _, n := range []int{12, 16, 24, 28, 32} {
		elems := (64 << 10) / n &^ 15
		for _, layout := range []string{"aligned", "coloured"} {
			r := rand.New(rand.NewPCG(1, 2))
			x := make([][]byte, n)
			for i := range x {
				off := 0
				if layout == "coloured" {
					off = 64 * i
				}
				x[i] = pageAligned(4*elems + 4096)[off : off+4*elems]
				for j := range elems {
					putF32(x[i], j, float32(r.NormFloat64()))
				}
			}
			dst := make([]float32, elems)
			tmp := make([]float32, SortScratch(n))
			benchImpls(b, n, func(b *testing.B, k *Impl) {
				b.Run(layout+"/median", func(b *testing.B) {
					b.SetBytes(int64(4 * elems * n))
					for b.Loop() {
						k.MedianF32(dst, x, tmp)
					}
				})
				b.Run(layout+"/trimmed", func(b *testing.B) {
					b.SetBytes(int64(4 * elems * n))
					for b.Loop() {
						k.TrimmedMeanF32(dst, x, n/10, tmp)
					}
				})
			})
		}
	}
}

// pageAligned returns n zeroed bytes starting on a 4 KiB boundary.
func pageAligned(n int) []byte {
	b := make([]byte, n+4096)
	off := -int(uintptr(unsafe.Pointer(unsafe.SliceData(b)))) & 4095
	return b[off : off+n]
}

// fmaFloor is the f64 FMAs per second one core performs in k's FMA loop, best of 3.
func fmaFloor(k *Impl) float64 {
	const iters = 1 << 16
	k.FMALoop(iters)
	floor := 0.0
	for range 3 {
		start := time.Now()
		k.FMALoop(iters)
		floor = max(floor, float64(iters*FMALoopFMAs)/time.Since(start).Seconds())
	}
	return floor
}

// BenchmarkGram measures the centred Gram partials of n inputs over one block of the size the
// CPU device hands the kernel (its packed f64 copy stays in L2), beside the FMA floor measured
// in the same run, the best of every implementation's FMA loop: the kernel performs n(n+1)/2
// FMAs per element, plus the packing.
func BenchmarkGram(b *testing.B) {
	for _, n := range []int{8, 32, 128} {
		elems := max(256, min(2048, (64<<10)/GramStride(n))&^15)
		r := rand.New(rand.NewPCG(2, 2))
		x := make([][]byte, n)
		for i := range x {
			x[i] = randBytes(r, dtF32, elems, true)
		}
		p, sq := make([]float64, GramPartials(n)), make([]float64, Lanes*n)
		tmp := make([]float64, GramScratch(n, elems))
		fmas := float64(n*(n+1)/2) * float64(elems)
		for _, k := range Impls() {
			for _, raw := range []bool{false, true} {
				kind := map[bool]string{false: "centred", true: "raw"}[raw]
				b.Run(fmt.Sprintf("n=%d/elems=%d/%s/impl=%s", n, elems, kind, k), func(b *testing.B) {
					floor := 0.0
					for _, f := range Impls() {
						floor = max(floor, fmaFloor(f))
					}
					b.SetBytes(int64(4 * n * elems))
					for b.Loop() {
						if raw {
							k.GramRawF32(p, x, elems, tmp)
						} else {
							k.GramF32(p, sq, x, elems, tmp)
						}
					}
					rate := fmas * float64(b.N) / b.Elapsed().Seconds()
					b.ReportMetric(rate/1e9, "GFMA/s")
					b.ReportMetric(floor/1e9, "floor-GFMA/s")
					b.ReportMetric(rate/floor, "of-floor")
				})
			}
		}
	}
}

func BenchmarkSqDistNorm(b *testing.B) {
	const elems = 64 << 10
	r := rand.New(rand.NewPCG(3, 3))
	x := randBytes(r, dtF32, elems, true)
	z := make([]float32, elems)
	zb := unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(z))), 4*elems)
	benchImpls(b, elems, func(b *testing.B, k *Impl) {
		b.SetBytes(8 * elems)
		var pd, pn [Lanes]float64
		for b.Loop() {
			k.SqDistNormF32(&pd, &pn, x, z)
		}
		floor := readRate([][]byte{x, zb})
		b.ReportMetric(floor/1e9, "floor-GB/s")
		b.ReportMetric(8*elems*float64(b.N)/b.Elapsed().Seconds()/floor, "of-floor")
	})
}

// positiveZeroValues draws n inputs of length finite f32 values without −0 (a −0 drawn becomes
// +0): from pool if it is not nil (ties), else random bits.
func positiveZeroValues(r *rand.Rand, n, length int, pool []float32) [][]byte {
	x := make([][]byte, n)
	for i := range x {
		x[i] = make([]byte, 4*length)
		for j := range length {
			v := math.Float32frombits(randF32Bits(r, true))
			if pool != nil {
				v = pool[r.IntN(len(pool))]
			}
			if v == 0 {
				v = 0 // +0
			}
			putF32(x[i], j, v)
		}
	}
	return x
}

// The AVX-512 median of more than smallSortMax inputs runs on integer keys when no value read
// is −0 or NaN, and on floats otherwise: both paths, and every order statistic, against the
// reference, with inputs that have neither (ties, +0, infinities, subnormals: what orderValues
// nearly always breaks with a −0), then the same inputs with one −0, or one NaN, anywhere.
func TestOrderStatsWithoutNegativeZero(t *testing.T) {
	forImpls(t, func(t *testing.T, k *Impl) {
		r := rand.New(rand.NewPCG(21, 22))
		pool := []float32{0, 1, -1, 0.5, 2, 1e30, -1e30, float32(math.Inf(1)), float32(math.Inf(-1)), 0x1p-149, -0x1p-149}
		for _, n := range counts() {
			if n <= smallSortMax {
				continue
			}
			for trial, length := range []int{16, 133, 1001} {
				var tied []float32
				if trial == 1 {
					tied = pool
				}
				x := positiveZeroValues(r, n, length, tied)
				for _, spoil := range []uint32{0, 0x80000000, 0x7fc00001, 0xff800001} {
					if spoil != 0 {
						putF32(x[r.IntN(n)], r.IntN(length), math.Float32frombits(spoil))
					}
					for _, c := range orderCases {
						p := c.param(n, trial)
						want := orderReference(x, length, p, c.ref)
						dst := make([]float32, length)
						c.run(k, dst, x, p, make([]float32, SortScratch(n)))
						for j := range want {
							if !sameF32(dst[j], want[j]) {
								t.Fatalf("%s n=%d len=%d spoiled by %#x: element %d = %v (%#x), reference %v (%#x)",
									c.name, n, length, spoil, j, dst[j], math.Float32bits(dst[j]), want[j], math.Float32bits(want[j]))
							}
						}
					}
				}
			}
		}
	})
}
