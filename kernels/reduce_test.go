package kernels

import (
	"bytes"
	"encoding/binary"
	"math"
	"math/bits"
	"math/rand/v2"
	"testing"
)

// reduceCase is a reduction as the core tables hold it: the 16 partial sums, which the tests
// compare before reducePartials can hide a difference.
type reduceCase struct {
	name string
	in   dtype
	fn   func(c *coreKernels) func(p *[Lanes]float64, x []byte)
	// public is the Impl's method, compared as well.
	public func(k *Impl, x []byte) float64
}

var reduceCases = []reduceCase{
	{"SumSquaresF32", dtF32, func(c *coreKernels) func(*[Lanes]float64, []byte) { return c.sumSquaresF32 }, (*Impl).SumSquaresF32},
	{"SumSquaresBF16", dtBF16, func(c *coreKernels) func(*[Lanes]float64, []byte) { return c.sumSquaresBF16 }, (*Impl).SumSquaresBF16},
	{"SumSquaresF16", dtF16, func(c *coreKernels) func(*[Lanes]float64, []byte) { return c.sumSquaresF16 }, (*Impl).SumSquaresF16},
}

func TestReduce(t *testing.T) {
	for _, c := range reduceCases {
		t.Run(c.name, func(t *testing.T) {
			forImpls(t, func(t *testing.T, k *Impl) {
				r := rand.New(rand.NewPCG(6, uint64(len(c.name))))
				for i, n := range lengths() {
					// Odd trailing bytes must be ignored.
					b := append(randBytes(r, c.in, n, i%3 == 0), make([]byte, i%c.in.size)...)
					x := placed(r, b, (i%8)*c.in.size+i/8%4)
					checkReduce(t, k, c, x)
				}
			})
		})
	}
}

func checkReduce(t *testing.T, k *Impl, c reduceCase, x []byte) {
	t.Helper()
	x0 := bytes.Clone(x)
	var got, want [Lanes]float64
	for k := range got {
		got[k], want[k] = float64(k), float64(k) // partials carry over between calls
	}
	c.fn(refImpl().core)(&want, x)
	c.fn(k.core)(&got, x)
	for k := range got {
		if !sameF64(got[k], want[k]) {
			t.Fatalf("len(x)=%d: partial %d = %v, want %v", len(x), k, got[k], want[k])
		}
	}
	g := c.public(k, x)
	w := c.public(refImpl(), x)
	if !sameF64(g, w) {
		t.Fatalf("len(x)=%d: %s = %v, want %v", len(x), c.name, g, w)
	}
	if !bytes.Equal(x, x0) {
		t.Fatalf("len(x)=%d: input changed", len(x))
	}
}

// TestReduceOracle checks the reductions against a float64 loop written here.
func TestReduceOracle(t *testing.T) {
	forImpls(t, func(t *testing.T, k *Impl) {
		r := rand.New(rand.NewPCG(7, 0))
		for _, c := range reduceCases {
			for _, n := range []int{0, 1, 15, 16, 17, 100, 1000, 4099} {
				x := moderateBytes(r, c.in, n)
				var want, mag float64
				for j := range n {
					p := c.in.get(x, j) * c.in.get(x, j)
					want += p
					mag += math.Abs(p)
				}
				got := c.public(k, x)
				if d := math.Abs(got - want); !(d <= float64(n+1)*mag*0x1p-52) {
					t.Fatalf("%s n=%d: got %v, float64 loop gives %v", c.name, n, got, want)
				}
			}
		}
	})
}

func TestReduceEdges(t *testing.T) {
	for _, c := range reduceCases {
		t.Run(c.name, func(t *testing.T) {
			forImpls(t, func(t *testing.T, k *Impl) {
				r := rand.New(rand.NewPCG(8, 0))
				for n := 0; n <= 70; n++ {
					for _, atEnd := range []bool{true, false} {
						x := edgeBytes(t, n*c.in.size, atEnd)
						copy(x, randBytes(r, c.in, n, false))
						checkReduce(t, k, c, x)
					}
				}
			})
		})
	}
}

type nonFiniteCase struct {
	name string
	size int
	exp  uint64 // exponent mask
	fn   func(k *Impl, x []byte) bool
}

var nonFiniteCases = []nonFiniteCase{
	{"AnyNonFiniteF32", 4, 0x7f800000, (*Impl).AnyNonFiniteF32},
	{"AnyNonFiniteF64", 8, 0x7ff0000000000000, (*Impl).AnyNonFiniteF64},
	{"AnyNonFiniteF16", 2, 0x7c00, (*Impl).AnyNonFiniteF16},
	{"AnyNonFiniteBF16", 2, 0x7f80, (*Impl).AnyNonFiniteBF16},
}

func putElem(b []byte, size, j int, v uint64) {
	switch size {
	case 2:
		binary.LittleEndian.PutUint16(b[2*j:], uint16(v))
	case 4:
		binary.LittleEndian.PutUint32(b[4*j:], uint32(v))
	case 8:
		binary.LittleEndian.PutUint64(b[8*j:], v)
	}
}

// finiteFill fills b with elements of random bits whose exponents are not all ones, many of
// them one bit short of it.
func finiteFill(r *rand.Rand, b []byte, size int, exp uint64) {
	for j := range len(b) / size {
		v := r.Uint64()
		if r.IntN(2) == 0 {
			v |= exp
		}
		for v&exp == exp {
			v &^= exp & -exp << r.IntN(bits.OnesCount64(exp)) // clear an exponent bit
		}
		putElem(b, size, j, v)
	}
	for j := len(b) / size * size; j < len(b); j++ {
		b[j] = 0xff // a trailing partial element looks non-finite but must be ignored
	}
}

func TestAnyNonFinite(t *testing.T) {
	for _, c := range nonFiniteCases {
		t.Run(c.name, func(t *testing.T) {
			forImpls(t, func(t *testing.T, k *Impl) {
				r := rand.New(rand.NewPCG(9, c.exp))
				for i, n := range append(lengths(), 1<<18+5) {
					x := placed(r, make([]byte, n*c.size+i%c.size), i%8*c.size+i/8%4)
					finiteFill(r, x, c.size, c.exp)
					if got, want := c.fn(k, x), c.fn(refImpl(), x); got || want {
						t.Fatalf("n=%d, finite data: got %v, reference %v", n, got, want)
					}
					check := func(where int) {
						t.Helper()
						if got := c.fn(k, x); !got || n <= 300 && !c.fn(refImpl(), x) {
							t.Fatalf("n=%d, non-finite at %d: got %v, want true", n, where, got)
						}
					}
					// Plant one non-finite element (Inf, NaN) at each position (for large n, the
					// first and last 70 and some in between) and take it away again.
					for j := 0; j < n; j++ {
						if n > 300 && j >= 70 && j < n-70 && j%(n/16) != 0 {
							continue
						}
						old := make([]byte, c.size)
						copy(old, x[j*c.size:])
						v := r.Uint64() | c.exp // NaN, or Inf if the mantissa is 0
						if r.IntN(3) == 0 {
							v = c.exp // +Inf
						}
						putElem(x, c.size, j, v)
						check(j)
						copy(x[j*c.size:], old)
					}
				}
			})
		})
	}
}

func TestAnyNonFiniteEdges(t *testing.T) {
	for _, c := range nonFiniteCases {
		t.Run(c.name, func(t *testing.T) {
			forImpls(t, func(t *testing.T, k *Impl) {
				r := rand.New(rand.NewPCG(10, 0))
				for n := 0; n <= 70; n++ {
					for _, atEnd := range []bool{true, false} {
						x := edgeBytes(t, n*c.size, atEnd)
						finiteFill(r, x, c.size, c.exp)
						if got := c.fn(k, x); got {
							t.Fatalf("n=%d: finite data reported non-finite", n)
						}
						if n > 0 {
							putElem(x, c.size, n-1, c.exp)
							if got := c.fn(k, x); !got {
								t.Fatalf("n=%d: Inf in the last element not found", n)
							}
						}
					}
				}
			})
		})
	}
}

func TestXorFold(t *testing.T) {
	forImpls(t, func(t *testing.T, k *Impl) {
		r := rand.New(rand.NewPCG(11, 0))
		for n := 0; n <= 300; n++ {
			b := make([]byte, n)
			for j := range b {
				b[j] = byte(r.Uint32())
			}
			x := placed(r, b, n%8)
			var want uint64
			for j := 0; j+8 <= n; j += 8 {
				want ^= binary.LittleEndian.Uint64(x[j:])
			}
			if got := k.XorFold(x); got != want || xorFoldGeneric(x) != want {
				t.Fatalf("n=%d: XorFold = %#x, want %#x", n, got, want)
			}
			e := edgeBytes(t, n, n%2 == 0)
			copy(e, x)
			if got := k.XorFold(e); got != want {
				t.Fatalf("n=%d at a page edge: XorFold = %#x, want %#x", n, got, want)
			}
		}
		for _, n := range []int{4099, 1<<20 + 13, 3<<20 + 101} {
			x := make([]byte, n)
			for j := range x {
				x[j] = byte(r.Uint32())
			}
			if got, want := k.XorFold(x), xorFoldGeneric(x); got != want {
				t.Fatalf("n=%d: XorFold = %#x, want %#x", n, got, want)
			}
		}
	})
}

// TestWidenExhaustive accumulates every 16-bit float with weight 1 into -0 (which leaves any x
// unchanged), so that every bf16 and f16 value is widened by every path once.
func TestWidenExhaustive(t *testing.T) {
	forImpls(t, func(t *testing.T, k *Impl) {
		x := make([]byte, 2<<16)
		for j := range 1 << 16 {
			binary.LittleEndian.PutUint16(x[2*j:], uint16(j))
		}
		for _, c := range []accCase[float32]{accF32Cases[1], accF32Cases[2]} {
			acc := make([]float32, 1<<16)
			for j := range acc {
				acc[j] = float32(math.Copysign(0, -1))
			}
			want := make([]float32, len(acc))
			copy(want, acc)
			c.fn(k, acc, []float32{1}, [][]byte{x})
			c.fn(refImpl(), want, []float32{1}, [][]byte{x})
			for j := range acc {
				if math.Float32bits(acc[j]) != math.Float32bits(want[j]) {
					t.Fatalf("%s: %#04x widened to %#x, want %#x", c.name, j, math.Float32bits(acc[j]), math.Float32bits(want[j]))
				}
			}
		}
		for _, c := range []accCase[float64]{accF64Cases[1], accF64Cases[2]} {
			acc := make([]float64, 1<<16)
			for j := range acc {
				acc[j] = math.Copysign(0, -1)
			}
			want := make([]float64, len(acc))
			copy(want, acc)
			c.fn(k, acc, []float64{1}, [][]byte{x})
			c.fn(refImpl(), want, []float64{1}, [][]byte{x})
			for j := range acc {
				if math.Float64bits(acc[j]) != math.Float64bits(want[j]) {
					t.Fatalf("%s: %#04x widened to %#x, want %#x", c.name, j, math.Float64bits(acc[j]), math.Float64bits(want[j]))
				}
			}
		}
	})
}
