package kernels

import (
	"bytes"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// accCase is one accumulation kernel, as the method of an Impl; the generic Impl's is the
// reference.
type accCase[T float32 | float64] struct {
	name string
	in   dtype
	fn   func(k *Impl, acc, w []T, x [][]byte)
}

var (
	accF32Cases = []accCase[float32]{
		{"AccF32FromF32", dtF32, (*Impl).AccF32FromF32},
		{"AccF32FromBF16", dtBF16, (*Impl).AccF32FromBF16},
		{"AccF32FromF16", dtF16, (*Impl).AccF32FromF16},
		{"AccF32FromI8", dtI8, (*Impl).AccF32FromI8},
	}
	accF64Cases = []accCase[float64]{
		{"AccF64FromF32", dtF32, (*Impl).AccF64FromF32},
		{"AccF64FromBF16", dtBF16, (*Impl).AccF64FromBF16},
		{"AccF64FromF16", dtF16, (*Impl).AccF64FromF16},
		{"AccF64FromI8", dtI8, (*Impl).AccF64FromI8},
		{"AccF64FromF64", dtF64, (*Impl).AccF64FromF64},
	}
)

func guarded[T float32 | float64](n, off int) ([]T, func(*testing.T)) {
	var z T
	if _, ok := any(z).(float32); ok {
		s, check := guardedF32(n, off)
		return any(s).([]T), check
	}
	s, check := guardedF64(n, off)
	return any(s).([]T), check
}

func randAcc[T float32 | float64](r *rand.Rand, finite bool) T {
	var z T
	if _, ok := any(z).(float32); ok {
		return T(math.Float32frombits(randF32Bits(r, finite)))
	}
	return T(math.Float64frombits(randF64Bits(r, finite)))
}

func same[T float32 | float64](a, b T) bool { return sameF64(float64(a), float64(b)) }

func TestAcc(t *testing.T) {
	for _, c := range accF32Cases {
		t.Run(c.name, func(t *testing.T) { testAcc(t, c) })
	}
	for _, c := range accF64Cases {
		t.Run(c.name, func(t *testing.T) { testAcc(t, c) })
	}
}

// testAcc compares each Impl with the reference for every length, input counts 0..17
// (every group size of the assembly and combinations of them), accumulator offsets 0..7
// elements, input offsets 0..7 elements plus 0..3 bytes, and inputs longer than needed.
func testAcc[T float32 | float64](t *testing.T, c accCase[T]) {
	forImpls(t, func(t *testing.T, k *Impl) {
		r := rand.New(rand.NewPCG(1, uint64(len(c.name))))
		for _, n := range lengths() {
			// Every group size of the assembly (1..8), one and two full groups plus remainders.
			counts := []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 15, 16, 17}
			if n > 127 {
				counts = []int{1, 4, 7, 9}
			}
			if n > 4099 {
				counts = []int{1, 5}
			}
			for _, cnt := range counts {
				w, x := randAccInputs[T](r, c.in, n, cnt, false)
				checkAcc(t, k, c, r, n, (n+cnt)%8, w, x)
			}
		}
	})
}

// randAccInputs draws cnt weights and cnt inputs of n elements at offsets ((n+i)%8 elements
// plus (cnt+i)%4 bytes); odd inputs are 3 bytes longer than needed.
func randAccInputs[T float32 | float64](r *rand.Rand, in dtype, n, cnt int, finite bool) ([]T, [][]byte) {
	w := make([]T, cnt)
	x := make([][]byte, cnt)
	for i := range cnt {
		w[i] = T(randWeight(r))
		b := randBytes(r, in, n, finite)
		if i%2 == 1 {
			b = append(b, 0xff, 0xff, 0xff)
		}
		x[i] = placed(r, b, ((n+i)%8)*in.size+(cnt+i)%4)
	}
	return w, x
}

// checkAcc runs the kernel on a guarded accumulator of n random elements at offset accOff and
// compares it with the reference; the inputs and weights must be unchanged.
func checkAcc[T float32 | float64](t *testing.T, k *Impl, c accCase[T], r *rand.Rand, n, accOff int, w []T, x [][]byte) {
	t.Helper()
	acc, check := guarded[T](n, accOff)
	for j := range acc {
		acc[j] = randAcc[T](r, false)
	}
	want := slices.Clone(acc)
	c.fn(refImpl(), want, w, x)
	w0 := slices.Clone(w)
	x0 := make([][]byte, len(x))
	for i := range x {
		x0[i] = bytes.Clone(x[i])
	}

	c.fn(k, acc, w, x)

	check(t)
	for j := range acc {
		if !same(acc[j], want[j]) {
			t.Fatalf("n=%d inputs=%d accOff=%d: acc[%d] = %v (%#x), want %v (%#x)", n, len(x), accOff, j,
				acc[j], bitsOf(acc[j]), want[j], bitsOf(want[j]))
		}
	}
	for i := range x {
		if !bytes.Equal(x[i], x0[i]) || math.Float64bits(float64(w[i])) != math.Float64bits(float64(w0[i])) {
			t.Fatalf("n=%d inputs=%d: input %d or its weight changed", n, len(x), i)
		}
	}
}

func bitsOf[T float32 | float64](v T) uint64 {
	if f, ok := any(v).(float32); ok {
		return uint64(math.Float32bits(f))
	}
	return math.Float64bits(float64(v))
}

// TestAccOracle checks every Impl against a plain float64 loop written here, within the
// rounding error of the accumulator type, so that a bug shared by the reference and the assembly
// (the wrong weight, the wrong widening, a skipped input) shows.
func TestAccOracle(t *testing.T) {
	for _, c := range accF32Cases {
		t.Run(c.name, func(t *testing.T) { testAccOracle(t, c, 24, 149) })
	}
	for _, c := range accF64Cases {
		t.Run(c.name, func(t *testing.T) { testAccOracle(t, c, 53, 1074) })
	}
}

// testAccOracle: mant is the precision of T, sub the exponent of its smallest subnormal.
func testAccOracle[T float32 | float64](t *testing.T, c accCase[T], mant, sub int) {
	forImpls(t, func(t *testing.T, k *Impl) {
		r := rand.New(rand.NewPCG(2, uint64(len(c.name))))
		for _, n := range []int{0, 1, 7, 8, 9, 31, 32, 33, 63, 70, 1000} {
			for _, cnt := range []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 17} {
				w := make([]T, cnt)
				x := make([][]byte, cnt)
				for i := range x {
					w[i] = T(r.NormFloat64())
					x[i] = moderateBytes(r, c.in, n)
				}
				acc := make([]T, n)
				for j := range acc {
					acc[j] = T(r.NormFloat64() * 4)
				}
				acc0 := slices.Clone(acc)

				c.fn(k, acc, w, x)

				for j := range acc {
					want, mag := float64(acc0[j]), math.Abs(float64(acc0[j]))
					for i := range x {
						p := float64(w[i]) * c.in.get(x[i], j)
						want += p
						mag += math.Abs(p)
					}
					tol := float64(cnt+1)*math.Ldexp(mag, 1-mant) + float64(cnt)*math.Ldexp(1, -sub)
					if d := math.Abs(float64(acc[j]) - want); !(d <= tol) {
						t.Fatalf("n=%d inputs=%d: acc[%d] = %v, float64 loop gives %v (|diff| %g > %g)",
							n, cnt, j, acc[j], want, d, tol)
					}
				}
			}
		}
	})
}

// moderateBytes draws n finite elements of dt whose weighted sums cannot overflow.
func moderateBytes(r *rand.Rand, dt dtype, n int) []byte {
	b := make([]byte, n*dt.size)
	for j := range n {
		v := r.NormFloat64() * 100
		switch r.IntN(10) {
		case 0:
			v = 0
		case 1:
			v = math.Copysign(0, -1)
		case 2:
			v = math.Ldexp(r.Float64(), -140) // f32 subnormal; f16 and bf16 round it to ±0
		}
		var bits uint64
		switch dt.name {
		case "F32":
			bits = uint64(math.Float32bits(float32(v)))
		case "F64":
			bits = math.Float64bits(v)
		case "BF16":
			bits = uint64(dtBF16.bits(r, true))
			if bits&0x7f80 > 0x4700 { // keep |x| < 2^15
				bits &^= 0x7f80
			}
		case "F16":
			bits = dtF16.bits(r, true)
		case "I8":
			bits = dtI8.bits(r, true)
		}
		dt.putBits(b, j, bits)
	}
	return b
}

// TestAccEdges places inputs against inaccessible pages (where the OS lets the test map them):
// an assembly kernel that reads one byte before or after an input faults.
func TestAccEdges(t *testing.T) {
	for _, c := range accF32Cases {
		t.Run(c.name, func(t *testing.T) { testAccEdges(t, c) })
	}
	for _, c := range accF64Cases {
		t.Run(c.name, func(t *testing.T) { testAccEdges(t, c) })
	}
}

func testAccEdges[T float32 | float64](t *testing.T, c accCase[T]) {
	forImpls(t, func(t *testing.T, k *Impl) {
		r := rand.New(rand.NewPCG(3, uint64(len(c.name))))
		for n := 0; n <= 70; n++ {
			for _, atEnd := range []bool{true, false} {
				const cnt = 9
				w := make([]T, cnt)
				x := make([][]byte, cnt)
				for i := range x {
					w[i] = T(randWeight(r))
					x[i] = edgeBytes(t, n*c.in.size, atEnd)
					copy(x[i], randBytes(r, c.in, n, false))
				}
				checkAcc(t, k, c, r, n, 0, w, x)
			}
		}
	})
}

// TestAccPanics checks that a short input or weight slice panics (as the generic code does)
// instead of letting the assembly read out of bounds.
func TestAccPanics(t *testing.T) {
	forImpls(t, func(t *testing.T, k *Impl) {
		for _, n := range []int{7, 8, 64} {
			acc := make([]float32, n)
			short := [][]byte{make([]byte, 4*n), make([]byte, 4*n-1)}
			mustPanic(t, fmt.Sprintf("short input n=%d", n), func() { k.AccF32FromF32(acc, []float32{1, 1}, short) })
			full := [][]byte{make([]byte, 4*n), make([]byte, 4*n)}
			mustPanic(t, fmt.Sprintf("short weights n=%d", n), func() { k.AccF32FromF32(acc, []float32{1}, full) })
			acc64 := make([]float64, n)
			mustPanic(t, fmt.Sprintf("short f64 input n=%d", n), func() {
				k.AccF64FromF64(acc64, []float64{1, 1}, [][]byte{make([]byte, 8*n), make([]byte, 8*n-8)})
			})
		}
	})
}

func mustPanic(t *testing.T, what string, f func()) {
	t.Helper()
	defer func() {
		if recover() == nil {
			t.Errorf("%s: no panic", what)
		}
	}()
	f()
}
