package kernels

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// Benchmarks of the optimizer family, each beside its memory floor measured in the same run:
// "floor" sub-benchmarks XorFold the very bytes the kernel reads (XorFold is the cheapest kernel
// that reads every byte), so the ratio of the two rows is how close the kernel runs to reading
// its inputs once. SetBytes counts bytes read + bytes written for kernels and bytes read for
// floors; compare times per element (ns/op at the same n) for the cost of the writes.

// realisticOperands are the values of a real step, normals at the scales of a model, its delta
// and its moments: no subnormals or infinities, whose microcode assists would measure the CPU's
// slow paths instead of the kernel.
func realisticOperands(n int) (x, d, m, v []float32) {
	r := rand.New(rand.NewPCG(uint64(n), 2))
	x, d, m, v = make([]float32, n), make([]float32, n), make([]float32, n), make([]float32, n)
	for j := range n {
		x[j] = float32(r.NormFloat64() * 0.05)
		d[j] = float32(r.NormFloat64() * 1e-3)
		m[j] = float32(r.NormFloat64() * 1e-3)
		v[j] = float32(r.NormFloat64()*r.NormFloat64()*1e-6 + 1e-6)
	}
	return x, d, m, v
}

// BenchmarkOptimStep: one in-place step (xo = x, mo = m, vo = v) over n elements: reads x, d, m,
// v (16 bytes per element; 12 for FedAvgM) and writes x, m, v (12; 8 for FedAvgM).
func BenchmarkOptimStep(b *testing.B) {
	p := OptimParams{LR: 0.01, Beta1: 0.9, Beta2: 0.99, Tau: 1e-3}
	for _, c := range stepCases {
		b.Run(c.name, func(b *testing.B) {
			for _, size := range benchSizes { // bytes per operand
				n := size / 4
				x, d, m, v := realisticOperands(n)
				read := [][]byte{f32Bytes(x), f32Bytes(d), f32Bytes(m), f32Bytes(v)}
				rw := int64(28 * n)
				if !c.second {
					read, rw = read[:3], int64(20*n)
				}
				b.Run(fmt.Sprintf("n=%d/impl=floor", n), timed(func(b *testing.B) {
					b.SetBytes(int64(len(read) * 4 * n))
					for b.Loop() {
						for _, in := range read {
							XorFold(in)
						}
					}
				}))
				benchImpls(b, n, func(b *testing.B, k *Impl) {
					b.SetBytes(rw)
					fn := c.public(k)
					for b.Loop() {
						fn(x, m, v, x, d, m, v, p)
					}
				})
			}
		})
	}
}

// BenchmarkModSum is the server side of a secure sum: 32 masked u32 inputs of 4M elements
// (512 MiB, past the caches) summed into a 4M-element accumulator one L2-sized block at a time,
// as device.CPU runs it; "floor" XorFolds the same 512 MiB. Bytes: every input byte once plus
// the accumulator written once (its block traffic stays in cache).
func BenchmarkModSum(b *testing.B) {
	fedSetup(b) // 32 distinct 16 MiB buffers, read as u32
	acc := make([]uint32, fedElems)
	const block = 32 << 10
	x := make([][]byte, fedInputs)
	b.Run(fmt.Sprintf("n=%d/impl=floor", fedElems), timed(func(b *testing.B) {
		b.SetBytes(int64(fedInputs * fedElems * 4))
		for b.Loop() {
			for _, in := range fedData.f32 {
				XorFold(in)
			}
		}
	}))
	benchImpls(b, fedElems, func(b *testing.B, k *Impl) {
		b.SetBytes(int64(fedInputs*fedElems*4 + 4*fedElems))
		for b.Loop() {
			for off := 0; off < fedElems; off += block {
				for i, in := range fedData.f32 {
					x[i] = in[4*off : 4*(off+block)]
				}
				k.ModSumU32(acc[off:off+block], x)
			}
		}
	})
}
