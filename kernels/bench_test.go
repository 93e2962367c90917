package kernels

import (
	"bytes"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"testing"

	"github.com/wattagg/wattagg/internal/half"
)

// Benchmarks report bytes read + bytes written per second. Sizes go from L1 (4 KiB) through L2
// (256 KiB) to DRAM (64 MiB); BenchmarkXorFold at the same sizes is the read floor they are
// compared with. BenchmarkFedAvg is the shape of the real use: many inputs streaming from DRAM
// over an accumulator block that stays in cache.

var benchSizes = []int{4 << 10, 256 << 10, 64 << 20}

// benchImpls runs f once per implementation, as sub-benchmark n=<n>/impl=<name>, timed.
func benchImpls(b *testing.B, n int, f func(b *testing.B, k *Impl)) {
	for _, k := range Impls() {
		b.Run(fmt.Sprintf("n=%d/impl=%s", n, k), timed(func(b *testing.B) { f(b, k) }))
	}
}

// timed runs the benchmark body f (which loops with b.Loop) on a locked OS thread and reports,
// beside the wall-clock ns/op, the CPU time that thread spent per operation (cpu-ns/op, Linux
// only). On a machine shared with other work the wall clock counts the time slices others
// take; the thread's CPU time does not (it still includes waiting for memory, and what others
// do to the shared caches and memory bandwidth).
func timed(f func(b *testing.B)) func(b *testing.B) {
	return func(b *testing.B) {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		t0 := threadCPU()
		f(b)
		if d := threadCPU() - t0; t0 > 0 && b.N > 0 {
			b.ReportMetric(float64(d.Nanoseconds())/float64(b.N), "cpu-ns/op")
		}
	}
}

// benchData returns n bytes of dt values drawn from a normal distribution (no subnormals, NaNs or
// infinities, as in real model updates), shared between benchmarks and allocated and touched once.
func benchData(dt dtype, n int) []byte {
	key := fmt.Sprintf("%s/%d", dt.name, n)
	if b, ok := benchBuffers[key]; ok {
		return b
	}
	r := rand.New(rand.NewPCG(uint64(n), 1))
	b := make([]byte, n)
	for j := range n / dt.size {
		v := float32(r.NormFloat64() * 0.01)
		var bits uint64
		switch dt.name {
		case "F32":
			bits = uint64(math.Float32bits(v))
		case "F64":
			bits = math.Float64bits(float64(v))
		case "BF16":
			bits = uint64(half.F32ToBF16(v))
		case "F16":
			bits = uint64(half.F32ToF16(v))
		case "I8":
			bits = uint64(r.Uint32())
		}
		dt.putBits(b, j, bits)
	}
	benchBuffers[key] = b
	return b
}

var benchBuffers = map[string][]byte{}

func BenchmarkXorFold(b *testing.B) {
	for _, size := range benchSizes {
		x := benchData(dtF32, size)
		benchImpls(b, size, func(b *testing.B, k *Impl) {
			b.SetBytes(int64(size))
			for b.Loop() {
				k.XorFold(x)
			}
		})
	}
}

// BenchmarkAcc: 4 inputs of size/4 bytes each (one pass of the assembly's 4-input group) into an
// accumulator of as many elements, which is read and written once for the 4 inputs.
func BenchmarkAcc(b *testing.B) {
	for _, c := range accF32Cases {
		b.Run(c.name, func(b *testing.B) { benchAcc(b, c, 4) })
	}
	for _, c := range accF64Cases {
		b.Run(c.name, func(b *testing.B) { benchAcc(b, c, 8) })
	}
}

func benchAcc[T float32 | float64](b *testing.B, c accCase[T], accSize int) {
	for _, size := range benchSizes {
		n := size / 4 / c.in.size
		in := benchData(c.in, size)
		x := make([][]byte, 4)
		for i := range x {
			x[i] = in[i*size/4 : (i+1)*size/4]
		}
		w := []T{0.25, 0.5, 0.125, 0.125}
		acc := make([]T, n)
		benchImpls(b, size, func(b *testing.B, k *Impl) {
			b.SetBytes(int64(size + 2*n*accSize))
			for b.Loop() {
				c.fn(k, acc, w, x)
			}
		})
	}
}

func BenchmarkStore(b *testing.B) {
	for _, c := range storeF32Cases {
		b.Run(c.name, func(b *testing.B) {
			for _, size := range benchSizes {
				src := make([]float32, size/4)
				dst := make([]byte, len(src)*c.out.size)
				benchImpls(b, size, func(b *testing.B, k *Impl) {
					b.SetBytes(int64(size + len(dst)))
					for b.Loop() {
						c.fn(k, dst, src, 0.5)
					}
				})
			}
		})
	}
	for _, c := range storeF64Cases {
		b.Run(c.name, func(b *testing.B) {
			for _, size := range benchSizes {
				src := make([]float64, size/8)
				dst := make([]byte, len(src)*c.out.size)
				benchImpls(b, size, func(b *testing.B, k *Impl) {
					b.SetBytes(int64(size + len(dst)))
					for b.Loop() {
						c.fn(k, dst, src, 0.5)
					}
				})
			}
		})
	}
}

func BenchmarkReduce(b *testing.B) {
	for _, c := range reduceCases {
		b.Run(c.name, func(b *testing.B) {
			for _, size := range benchSizes {
				x := benchData(c.in, size)
				benchImpls(b, size, func(b *testing.B, k *Impl) {
					b.SetBytes(int64(size))
					for b.Loop() {
						c.public(k, x)
					}
				})
			}
		})
	}
}

func BenchmarkAnyNonFinite(b *testing.B) {
	for _, c := range nonFiniteCases {
		b.Run(c.name, func(b *testing.B) {
			for _, size := range benchSizes {
				// 0x01 bytes: finite for every type, so the scan reads it all; written, so that
				// the pages are real memory (untouched pages all map the kernel's zero page,
				// which stays in the cache).
				x := bytes.Repeat([]byte{1}, size)
				benchImpls(b, size, func(b *testing.B, k *Impl) {
					b.SetBytes(int64(size))
					for b.Loop() {
						if c.fn(k, x) {
							b.Fatal("zeros reported non-finite")
						}
					}
				})
			}
		})
	}
}

// FedAvg-shaped benchmark: 32 inputs of 4M f32 elements (16 MiB each, 512 MiB in all, far past
// the caches) are averaged into a 4M-element f32 output, one accumulator block at a time: the
// block is cleared, every input's slice of it is accumulated (the assembly streams 8 inputs at
// a time over it), and the block is stored into the output. Bytes counted: every input byte once
// plus the output once (the accumulator traffic stays in cache). BenchmarkFedAvgFloor XORs the
// same 512 MiB: the read floor of the machine for one goroutine. The bf16 case reads 32 inputs of
// 4M bf16 (256 MiB).
const (
	fedInputs = 32
	fedElems  = 4 << 20
)

var fedData struct {
	f32, bf16 [][]byte
	out       []byte
}

func fedSetup(b *testing.B) {
	if fedData.f32 != nil {
		return
	}
	for i := range fedInputs {
		// Distinct buffers (a shared one would be read from cache): offset sizes defeat reuse.
		fedData.f32 = append(fedData.f32, bytes.Clone(benchData(dtF32, 4*fedElems+4*i))[:4*fedElems])
		fedData.bf16 = append(fedData.bf16, bytes.Clone(benchData(dtBF16, 2*fedElems+2*i))[:2*fedElems])
		delete(benchBuffers, fmt.Sprintf("F32/%d", 4*fedElems+4*i))
		delete(benchBuffers, fmt.Sprintf("BF16/%d", 2*fedElems+2*i))
	}
	fedData.out = make([]byte, 4*fedElems)
	b.ResetTimer()
}

func fedWeights[T float32 | float64]() []T {
	w := make([]T, fedInputs)
	for i := range w {
		w[i] = T(1) / fedInputs
	}
	return w
}

func BenchmarkFedAvg(b *testing.B) {
	fedSetup(b)
	blocks := []int{2048, 4096, 8192, 16384, 32768, 65536}
	b.Run("AccF32FromF32", func(b *testing.B) {
		for _, block := range blocks {
			benchFedAvg(b, block, 4, fedData.f32, (*Impl).AccF32FromF32, (*Impl).StoreF32FromF32)
		}
	})
	b.Run("AccF32FromBF16", func(b *testing.B) {
		for _, block := range blocks {
			benchFedAvg(b, block, 2, fedData.bf16, (*Impl).AccF32FromBF16, (*Impl).StoreF32FromF32)
		}
	})
	b.Run("AccF64FromF32", func(b *testing.B) {
		for _, block := range blocks {
			benchFedAvg(b, block, 4, fedData.f32, (*Impl).AccF64FromF32, (*Impl).StoreF32FromF64)
		}
	})
	b.Run("AccF64FromBF16", func(b *testing.B) {
		for _, block := range blocks {
			benchFedAvg(b, block, 2, fedData.bf16, (*Impl).AccF64FromBF16, (*Impl).StoreF32FromF64)
		}
	})
}

func benchFedAvg[T float32 | float64](b *testing.B, block, size int, inputs [][]byte,
	acc func(k *Impl, acc, w []T, x [][]byte), store func(k *Impl, dst []byte, src []T, s T)) {
	w := fedWeights[T]()
	a := make([]T, block)
	x := make([][]byte, len(inputs))
	for _, k := range Impls() {
		b.Run(fmt.Sprintf("block=%d/impl=%s", block, k), timed(func(b *testing.B) {
			b.SetBytes(int64(len(inputs)*fedElems*size + 4*fedElems))
			for b.Loop() {
				for off := 0; off < fedElems; off += block {
					clear(a)
					for i, in := range inputs {
						x[i] = in[off*size : (off+block)*size]
					}
					acc(k, a, w, x)
					store(k, fedData.out[4*off:], a, 1)
				}
			}
		}))
	}
}

func BenchmarkFedAvgFloor(b *testing.B) {
	fedSetup(b)
	// Each input whole, one after the other: one stream at a time.
	benchImpls(b, fedInputs*fedElems*4, func(b *testing.B, k *Impl) {
		b.SetBytes(int64(fedInputs * fedElems * 4))
		for b.Loop() {
			for _, x := range fedData.f32 {
				k.XorFold(x)
			}
		}
	})
	// The walk of BenchmarkFedAvg: block by block, every input's slice of it, so that 32 streams
	// are read at once as the accumulation reads them.
	for _, block := range []int{2048, 4096, 8192, 16384, 32768, 65536} {
		for _, k := range Impls() {
			b.Run(fmt.Sprintf("blocked/block=%d/impl=%s", block, k), timed(func(b *testing.B) {
				b.SetBytes(int64(fedInputs * fedElems * 4))
				for b.Loop() {
					for off := 0; off < fedElems; off += block {
						for _, x := range fedData.f32 {
							k.XorFold(x[4*off : 4*(off+block)])
						}
					}
				}
			}))
		}
	}
}
