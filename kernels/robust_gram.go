package kernels

import "math"

// Krum's pairwise distances come from a Gram matrix. ‖a−b‖² = ‖a‖² + ‖b‖² − 2a·b cancels
// catastrophically when clients send full models that differ slightly: with ‖x‖² ≈ 10⁶ and
// ‖a−b‖² ≈ 10⁻⁶ the rounding of the dot products (about √P·2⁻⁵³·‖x‖² over P coordinates) is a
// percent of the distance, enough to pick the wrong client. So the Gram matrix is taken of the
// inputs centred on their mean at each coordinate, y_a = x_a − r: distances do not change
// (y_a − y_b = x_a − x_b), the rounding is then relative to ‖x − r‖², and with r an f32 value
// the subtraction of two f32 values is exact in f64 (unless their exponents differ by more than
// 29). The mean is taken in f32: any point close to the inputs serves, and an f32 mean is
// within n·2⁻²⁴ of them relatively, far closer than the spread that matters. The squared norms, which the rules need too (the reported norm, and finiteness: for f32
// values a sum of squares in f64 is finite exactly when every value is), are summed from the
// uncentred values in the same pass.
//
// The assembly first packs each block: the centre r, then y for every input as f64, laid out
// for the register tiles (inputs in pairs, groups of 4 coordinates: see robust_amd64.go), then
// runs the tiles over the packed block, which stays in L2 while every tile streams over it.

// GramLanes is the number of partial sums per pair of inputs in GramF32: element j of a call
// goes to partial j%GramLanes. The squared norms have Lanes partials per input (element j to
// j%Lanes): four chains of FMAs per input keep the packing from waiting on one.
const GramLanes = 4

// GramStride is the row stride of GramF32's partials for n inputs: n rounded up to even, so
// that a register tile can add the pairs of two adjacent columns with one 64-byte store.
func GramStride(n int) int { return (n + 1) &^ 1 }

// GramPartials is the length of the partials GramF32 adds to for n inputs.
func GramPartials(n int) int { return GramLanes * n * GramStride(n) }

// GramScratch is the length of the scratch GramF32 needs for n inputs of elems elements: the
// packed, centred block (with room for a cache line of padding per 4 coordinates) and its
// centre, in f64.
func GramScratch(n, elems int) int { return (GramStride(n) + 3) * elems }

// GramF32 adds the dot products of every pair of the f32 inputs, centred on their mean at each
// coordinate, to the partials p, and the squares of the inputs to the partials sq, accumulated
// in f64 with fused multiply-adds. For n = len(x), s = GramStride(n) and every a <= b it is
//
//	for j := range elems {
//		var t float32
//		for i := range n {
//			t += x[i][j]
//		}
//		r := t / float32(n) // the centre of coordinate j, f32 arithmetic
//		if r-r != 0 {       // ±Inf or NaN: an input is not finite (or the sum overflowed)
//			r = 0
//		}
//		y := func(i int) float64 { return float64(x[i][j]) - float64(r) }
//		l := j % GramLanes
//		p[(a*s+b)*GramLanes+l] = math.FMA(y(a), y(b), p[(a*s+b)*GramLanes+l])
//		v := float64(x[a][j])
//		sq[a*Lanes+j%Lanes] = math.FMA(v, v, sq[a*Lanes+j%Lanes])
//	}
//
// len(p) >= GramPartials(n), len(sq) >= Lanes·n, len(tmp) >= GramScratch(n, elems); the
// entries of p for a > b, and for b = n when n is odd, are unspecified (the register tiles
// compute some of them). A caller that calls GramF32 on consecutive blocks whose lengths are
// multiples of Lanes gets the same partials as one call over their concatenation (the centre is
// a function of the coordinate); GramSums combines them. A non-finite input makes its
// own squared norm non-finite and leaves every other input's row finite: the centre of a
// coordinate where some input is not finite is 0.
func GramF32(p, sq []float64, x [][]byte, elems int, tmp []float64) {
	def.GramF32(p, sq, x, elems, tmp)
}

// GramF32 is the package-level GramF32 run by k.
func (k *Impl) GramF32(p, sq []float64, x [][]byte, elems int, tmp []float64) {
	n := len(x)
	if n == 0 || elems <= 0 {
		return
	}
	_ = p[GramPartials(n)-1]
	_ = sq[Lanes*n-1]
	_ = tmp[GramScratch(n, elems)-1]
	for _, xi := range x {
		_ = xi[4*elems-1]
	}
	k.robust.gram(p, sq, x, elems, tmp)
}

// GramRawF32 adds the dot products of every pair of the f32 inputs, as they are (no centre),
// to the partials p, accumulated in f64 with fused multiply-adds: for n = len(x),
// s = GramStride(n) and every a <= b (a = b included: the squared norms),
//
//	for j := range elems {
//		l := j % GramLanes
//		p[(a*s+b)*GramLanes+l] = math.FMA(float64(x[a][j]), float64(x[b][j]), p[(a*s+b)*GramLanes+l])
//	}
//
// len(p) >= GramPartials(n), len(tmp) >= GramScratch(n, elems); the entries for a > b, and
// for b = n when n is odd, are unspecified. Calls on consecutive blocks whose lengths are multiples of 8 give the same
// partials as one call over their concatenation; GramRawSums combines them. Products of f32 values are exact in f64, so
// every pair's error is that of an f64 sum of its products; ‖a−b‖² taken from the raw matrix
// cancels when the inputs are close relative to their norms, which the caller checks
// (device.CPU.Gram falls back to GramF32, centred).
//
// The assembly reads each block once, where it is; its diagonal tiles prefetch the next block
// (the elems values after each input's block), which a caller walking the inputs block by block
// passes next.
func GramRawF32(p []float64, x [][]byte, elems int, tmp []float64) {
	def.GramRawF32(p, x, elems, tmp)
}

// GramRawF32 is the package-level GramRawF32 run by k.
func (k *Impl) GramRawF32(p []float64, x [][]byte, elems int, tmp []float64) {
	n := len(x)
	if n == 0 || elems <= 0 {
		return
	}
	_ = p[GramPartials(n)-1]
	for _, xi := range x {
		_ = xi[4*elems-1]
	}
	_ = tmp[GramScratch(n, elems)-1]
	k.robust.gramRaw(p, x, elems, tmp)
}

func gramRawGeneric(p []float64, x [][]byte, from, elems int) {
	n := len(x)
	s := GramStride(n)
	y := make([]float64, n)
	for j := from; j < elems; j++ {
		l := j % GramLanes
		for a, xa := range x {
			y[a] = float64(ldF32(xa, j))
		}
		addPairs(p[l:], y, s)
	}
}

// GramSums writes the Gram matrix g (n·n, symmetric) and the squared norms norm (n) from the
// partials of GramF32: for a <= b, g[a*n+b] = g[b*n+a] = (q0+q2)+(q1+q3) where q is the pair's
// partials, and norm[a] = SumLanes of input a's partials in sq.
func GramSums(g, norm, p, sq []float64, n int) {
	gramMatrix(g, p, n)
	for a := range n {
		norm[a] = SumLanes((*[Lanes]float64)(sq[a*Lanes:]))
	}
}

// GramRawSums is GramSums for the partials of GramRawF32: the Gram matrix g (n·n, symmetric)
// and the squared norms norm (n), the matrix's diagonal.
func GramRawSums(g, norm, p []float64, n int) {
	gramMatrix(g, p, n)
	for a := range n {
		norm[a] = g[a*n+a]
	}
}

// gramMatrix writes g[a*n+b] = g[b*n+a] = (q0+q2)+(q1+q3) for the partials q of every pair
// a <= b in p.
func gramMatrix(g, p []float64, n int) {
	s := GramStride(n)
	for a := range n {
		for b := a; b < n; b++ {
			q := p[(a*s+b)*GramLanes:]
			v := (q[0] + q[2]) + (q[1] + q[3])
			g[a*n+b], g[b*n+a] = v, v
		}
	}
}

// gramCentre is the centre of coordinate j: the mean of the inputs' values in f32 (any point
// near them serves: it is summed in f32, in input order, because the packing then adds 16
// coordinates per instruction instead of converting each value to f64 first), or 0 where it is
// not finite.
func gramCentre(x [][]byte, j int) float32 {
	var t float32
	for _, xi := range x {
		t += ldF32(xi, j)
	}
	r := t / float32(len(x))
	if r-r != 0 {
		return 0
	}
	return r
}

func gramGeneric(p, sq []float64, x [][]byte, from, elems int) {
	n := len(x)
	s := GramStride(n)
	y := make([]float64, n)
	for j := from; j < elems; j++ {
		r := float64(gramCentre(x, j))
		l := j % GramLanes
		for a, xa := range x {
			v := float64(ldF32(xa, j))
			y[a] = v - r
			sq[a*Lanes+j%Lanes] = math.FMA(v, v, sq[a*Lanes+j%Lanes])
		}
		addPairs(p[l:], y, s)
	}
}

// addPairs adds y_a·y_b to p[(a*s+b)*GramLanes] for every a <= b < len(y), with one FMA each.
func addPairs(p, y []float64, s int) {
	for a := range y {
		for b := a; b < len(y); b++ {
			q := &p[(a*s+b)*GramLanes]
			*q = math.FMA(y[a], y[b], *q)
		}
	}
}

// ---------------------------------------------------------------------------------------------
// Floor.

// FMALoopFMAs is the number of f64 fused multiply-adds FMALoop performs per iteration.
const FMALoopFMAs = 48

// FMALoop performs iters·FMALoopFMAs independent f64 fused multiply-adds (12 chains of 4-lane
// vectors, or 6 of 8 lanes: as many as two FMA pipes with a 4-cycle latency need) and returns a
// value that depends on all of them. Benchmarks run it on every core to measure the arithmetic
// floor of the Gram kernel.
func FMALoop(iters int) float64 { return def.FMALoop(iters) }

// FMALoop is the package-level FMALoop run by k.
func (k *Impl) FMALoop(iters int) float64 { return k.robust.fmaLoop(iters) }

func fmaLoopGeneric(iters int) float64 {
	var acc [FMALoopFMAs]float64
	for range iters {
		for k := range acc {
			acc[k] = math.FMA(1.0000001, 0.9999999, acc[k])
		}
	}
	var s float64
	for _, v := range acc {
		s += v
	}
	return s
}
