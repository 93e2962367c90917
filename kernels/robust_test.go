package kernels

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
	"unsafe"
)

// counts are the client counts the order-statistic kernels are tested with: every straight-line
// network (1..32), the first table-driven one and a power of two beyond.
func counts() []int {
	var ns []int
	for n := 1; n <= 33; n++ {
		ns = append(ns, n)
	}
	return append(ns, 64)
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
	many := map[int]bool{1: true, 2: true, 3: true, 17: true, 32: true, 33: true}
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
					if n == 9 || n == 33 {
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
				// The window the kernel picks has the smallest sum of distances...
				s := windowStart(sv, beta)
				var sum, mean float64
				for _, y := range sv[s : s+beta] {
					sum += math.Abs(float64(y) - m)
					mean += float64(y)
				}
				mean /= float64(beta)
				if sum > best*(1+1e-6)+1e-30 {
					t.Fatalf("n=%d beta=%d: window at %d has distance sum %v, best %v", n, beta, s, sum, best)
				}
				// ...and its mean is the result.
				if d := math.Abs(float64(got) - mean); d > 1e-5*math.Abs(mean)+1e-6*absSum(v)/float64(n)+1e-44 {
					t.Fatalf("n=%d beta=%d: closest mean %v, window mean %v", n, beta, got, mean)
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

func windowStart(v []float32, beta int) int {
	m := medianOf(v)
	s := 0
	for t := 0; t < len(v)-beta; t++ {
		if abs32(v[t+beta]-m) < abs32(v[t]-m) {
			s = t + 1
		}
	}
	return s
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
		ns := []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 33, 64}
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

func checkGram(t *testing.T, k *Impl, r *rand.Rand, n, elems int, finite bool) {
	t.Helper()
	x := make([][]byte, n)
	for i := range x {
		x[i] = placed(r, randBytes(r, dtF32, elems, finite), r.IntN(8))
	}
	// Start from nonzero partials: the kernel adds to them.
	init := make([]float64, GramLanes*n*n)
	for k := range init {
		init[k] = float64(r.IntN(9) - 4)
	}
	want := slices.Clone(init)
	gramGeneric(want, x, 0, elems)
	p, check := guardedF64(len(init), r.IntN(4))
	copy(p, init)
	k.GramF32(p, x, elems)
	check(t)
	for a := range n {
		for b := a; b < n; b++ {
			for l := range GramLanes {
				k := (a*n+b)*GramLanes + l
				if !sameF64(p[k], want[k]) {
					t.Fatalf("n=%d elems=%d: pair (%d,%d) lane %d = %v, reference %v", n, elems, a, b, l, p[k], want[k])
				}
			}
		}
	}
	if !finite || n > 13 {
		return
	}
	// The reference against plain dot products in f64.
	g := make([]float64, n*n)
	zero := make([]float64, len(init))
	gramGeneric(zero, x, 0, elems)
	GramSums(g, zero, n)
	for a := range n {
		for b := range n {
			var s, sa float64
			for j := range elems {
				v := float64(ldF32(x[a], j)) * float64(ldF32(x[b], j))
				s += v
				sa += math.Abs(v)
			}
			if d := math.Abs(g[a*n+b] - s); d > 1e-12*sa || math.IsNaN(d) != math.IsNaN(s) {
				t.Fatalf("n=%d elems=%d: G[%d][%d] = %v, dot product %v", n, elems, a, b, g[a*n+b], s)
			}
		}
	}
}

func TestGramBlocksCompose(t *testing.T) {
	// Calls on consecutive blocks of multiples of GramLanes give one call's partials.
	r := rand.New(rand.NewPCG(9, 9))
	forImpls(t, func(t *testing.T, k *Impl) {
		n, elems := 7, 1000
		x := make([][]byte, n)
		for i := range x {
			x[i] = randBytes(r, dtF32, elems, true)
		}
		whole := make([]float64, GramLanes*n*n)
		k.GramF32(whole, x, elems)
		parts := make([]float64, GramLanes*n*n)
		xs := make([][]byte, n)
		for lo := 0; lo < elems; lo += 36 {
			hi := min(lo+36, elems)
			for i := range x {
				xs[i] = x[i][4*lo : 4*hi]
			}
			k.GramF32(parts, xs, hi-lo)
		}
		for a := range n {
			for b := a; b < n; b++ {
				for l := range GramLanes {
					k := (a*n+b)*GramLanes + l
					if parts[k] != whole[k] {
						t.Fatalf("pair (%d,%d) lane %d: blocks %v, whole %v", a, b, l, parts[k], whole[k])
					}
				}
			}
		}
	})
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
				var s, q float64
				for j := range n {
					v := float64(ldF32(x, j))
					d := v - float64(z[j])
					s += d * d
					q += v * v
				}
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
	mustPanic(t, "p too short", func() { GramF32(make([]float64, 3), x, 16) })
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

// FuzzGram compares the Gram partials and squared distances of every variant with the
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
		want := make([]float64, GramLanes*n*n)
		gramGeneric(want, x, 0, elems)
		var wantD, wantN [Lanes]float64
		sqDistNormGeneric(&wantD, &wantN, x[0], z, 0)
		for _, v := range Impls() {
			p := make([]float64, len(want))
			v.GramF32(p, x, elems)
			for a := range n {
				for b := a; b < n; b++ {
					for l := range GramLanes {
						k := (a*n+b)*GramLanes + l
						if !sameF64(p[k], want[k]) {
							t.Fatalf("%s n=%d elems=%d: pair (%d,%d) lane %d = %v, reference %v", v, n, elems, a, b, l, p[k], want[k])
						}
					}
				}
			}
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
	for _, n := range []int{8, 32, 64} {
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

// BenchmarkGram measures the Gram partials of 32 inputs of 1Ki elements (the L2-resident block
// the CPU device hands the kernel) beside the FMA floor measured in the same run: the kernel
// performs n(n+1)/2 FMAs per element.
func BenchmarkGram(b *testing.B) {
	const n, elems = 32, 1024
	r := rand.New(rand.NewPCG(2, 2))
	x := make([][]byte, n)
	for i := range x {
		x[i] = randBytes(r, dtF32, elems, true)
	}
	p := make([]float64, GramLanes*n*n)
	fmas := float64(n*(n+1)/2) * elems
	for _, k := range Impls() {
		b.Run(fmt.Sprintf("n=%d/impl=%s", n, k), func(b *testing.B) {
			const iters = 1 << 16
			k.FMALoop(iters)
			floor := 0.0
			for range 3 {
				start := time.Now()
				k.FMALoop(iters)
				floor = max(floor, float64(iters*FMALoopFMAs)/time.Since(start).Seconds())
			}
			b.SetBytes(4 * n * elems)
			for b.Loop() {
				k.GramF32(p, x, elems)
			}
			rate := fmas * float64(b.N) / b.Elapsed().Seconds()
			b.ReportMetric(rate/1e9, "GFMA/s")
			b.ReportMetric(floor/1e9, "floor-GFMA/s")
			b.ReportMetric(rate/floor, "of-floor")
		})
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
