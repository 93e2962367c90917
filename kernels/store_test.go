package kernels

import (
	"bytes"
	"math"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"sync"
	"testing"
)

type storeCase[T float32 | float64] struct {
	name string
	out  dtype
	fn   func(k *Impl, dst []byte, src []T, s T)
}

var (
	storeF32Cases = []storeCase[float32]{
		{"StoreF32FromF32", dtF32, (*Impl).StoreF32FromF32},
		{"StoreBF16FromF32", dtBF16, (*Impl).StoreBF16FromF32},
		{"StoreF16FromF32", dtF16, (*Impl).StoreF16FromF32},
	}
	storeF64Cases = []storeCase[float64]{
		{"StoreF64FromF64", dtF64, (*Impl).StoreF64FromF64},
		{"StoreF32FromF64", dtF32, (*Impl).StoreF32FromF64},
		{"StoreBF16FromF64", dtBF16, (*Impl).StoreBF16FromF64},
		{"StoreF16FromF64", dtF16, (*Impl).StoreF16FromF64},
	}
)

// scales are the factors the stores are tested with: exact ones keep the rounding ties of the
// sources, the others move values across binades and into the subnormals.
var scales = []float64{1, 0.5, -1, 3, 1.0 / 3, 0x1p-20, 0x1p20, 0.7071067811865476}

// randStoreSrc draws a source value: the general mix, NaNs with payloads, or a value whose
// conversion to the output type is a rounding tie (or one bit from it), or at the edge of the
// output range.
func randStoreSrc[T float32 | float64](r *rand.Rand) T {
	var z T
	_, isF32 := any(z).(float32)
	if r.IntN(2) == 0 {
		return randAcc[T](r, false)
	}
	var f float32
	near := []uint32{0, 1, 0xffffffff}[r.IntN(3)] // a tie, one above, one below
	sign := r.Uint32() & 0x80000000
	switch r.IntN(5) {
	case 0: // bfloat16 tie
		f = math.Float32frombits(sign | r.Uint32()&0x7fff0000 | 0x8000 + near)
	case 1: // binary16 normal tie
		f = math.Float32frombits(sign | uint32(113+r.IntN(30))<<23 | r.Uint32()&0x7fe000 | 0x1000 + near)
	case 2: // binary16 subnormal tie: (k + 1/2) 2^-24
		f = float32(float64(r.IntN(1024))+0.5) * 0x1p-24
		f = math.Float32frombits(math.Float32bits(f) + near)
	case 3: // the edge of the binary16 range
		f = []float32{65504, 65519, 65519.996, 65520, 65535, 65536, 0x1p-14, 0x1p-24, 0x1p-25}[r.IntN(9)]
	case 4: // the edge of the float32 range and float32 subnormals
		f = math.Float32frombits(uint32(r.IntN(2))*0x7f7fffff + near*uint32(r.IntN(2)))
	}
	if isF32 {
		return T(f)
	}
	// A float64 one unit (of 2^-29 relative) or so from the float32 value, to round to it, or
	// exactly half-way between it and its neighbour (a float32 tie).
	d := float64(f)
	switch r.IntN(4) {
	case 0:
		return T(d)
	case 1:
		return T(math.Float64frombits(math.Float64bits(d) + 1<<28)) // f32 tie
	case 2:
		return T(math.Float64frombits(math.Float64bits(d) + 1))
	default:
		return T(math.Float64frombits(math.Float64bits(d) - 1))
	}
}

func TestStore(t *testing.T) {
	for _, c := range storeF32Cases {
		t.Run(c.name, func(t *testing.T) { testStore(t, c) })
	}
	for _, c := range storeF64Cases {
		t.Run(c.name, func(t *testing.T) { testStore(t, c) })
	}
}

// testStore compares every Impl with the reference bit for bit (the scale is never NaN, so a
// NaN result carries its source's payload, quieted, on every path) for every length, source
// offsets 0..7 elements and destination offsets 0..7 elements plus 0..3 bytes, with guards
// around the destination.
func testStore[T float32 | float64](t *testing.T, c storeCase[T]) {
	forImpls(t, func(t *testing.T, k *Impl) {
		r := rand.New(rand.NewPCG(4, uint64(len(c.name))))
		for i, n := range lengths() {
			srcBuf := make([]T, n+8)
			for j := range srcBuf {
				srcBuf[j] = randStoreSrc[T](r)
			}
			src := srcBuf[i%8 : i%8+n]
			src0 := slices.Clone(src)
			s := T(scales[i%len(scales)])
			dstOff := (i%8)*c.out.size + i/8%4
			dst, check := guardedBytes(n*c.out.size, dstOff)
			want := make([]byte, len(dst))
			c.fn(refImpl(), want, src, s)

			c.fn(k, dst, src, s)

			check(t)
			if !bytes.Equal(dst, want) {
				for j := range n {
					if !bytes.Equal(dst[j*c.out.size:(j+1)*c.out.size], want[j*c.out.size:(j+1)*c.out.size]) {
						t.Fatalf("n=%d s=%v: element %d of %v: got % x, want % x", n, s, j, src[j],
							dst[j*c.out.size:(j+1)*c.out.size], want[j*c.out.size:(j+1)*c.out.size])
					}
				}
			}
			for j := range src {
				if bitsOf(src[j]) != bitsOf(src0[j]) {
					t.Fatalf("n=%d: source element %d changed", n, j)
				}
			}
		}
	})
}

// TestStoreExhaustive converts every float32 bit pattern with the 16-bit stores of every Impl
// (s = 1, so only NaNs change on the way: they are quieted) and compares them with the reference.
// It takes tens of seconds: run it with WATTAGG_EXHAUSTIVE=1.
func TestStoreExhaustive(t *testing.T) {
	if os.Getenv("WATTAGG_EXHAUSTIVE") == "" {
		t.Skip("set WATTAGG_EXHAUSTIVE=1 to convert all 2^32 float32 values")
	}
	for _, c := range storeF32Cases[1:] {
		t.Run(c.name, func(t *testing.T) {
			forImpls(t, func(t *testing.T, k *Impl) {
				const block = 1 << 16
				var wg sync.WaitGroup
				var mu sync.Mutex
				workers := runtime.GOMAXPROCS(0)
				for w := range workers {
					wg.Go(func() {
						src := make([]float32, block)
						dst, want := make([]byte, 2*block), make([]byte, 2*block)
						for hi := uint32(w); hi < 1<<16; hi += uint32(workers) {
							for j := range src {
								src[j] = math.Float32frombits(hi<<16 | uint32(j))
							}
							c.fn(k, dst, src, 1)
							c.fn(refImpl(), want, src, 1)
							if !bytes.Equal(dst, want) {
								mu.Lock()
								defer mu.Unlock()
								for j := range src {
									if dst[2*j] != want[2*j] || dst[2*j+1] != want[2*j+1] {
										t.Errorf("%#x: got %#02x%02x, want %#02x%02x", math.Float32bits(src[j]),
											dst[2*j+1], dst[2*j], want[2*j+1], want[2*j])
										return
									}
								}
							}
						}
					})
				}
				wg.Wait()
			})
		})
	}
}
