package device

import (
	"context"
	"fmt"
	"time"
	"unsafe"

	"github.com/wattagg/wattagg/tensor"
)

// The CPU implements Optimizer and ModSummer with the kernels of the optimizer family.
var (
	_ Optimizer = (*CPU)(nil)
	_ ModSummer = (*CPU)(nil)
)

// Optimize implements Optimizer: blocks of the device's block size run on its workers; a job no
// longer than two blocks runs on the calling goroutine, since rules call Optimize on cache-sized
// pieces from inside their own parallel loops.
func (c *CPU) Optimize(ctx context.Context, s *OptimJob) (Stats, error) {
	if err := s.Validate(); err != nil {
		return Stats{}, err
	}
	start := time.Now()
	n := len(s.X)
	read, written := int64(12), 8 // bytes per element
	if s.Rule.SecondMoment() {
		read, written = 16, 12
	}
	p := s.OptimParams
	run := func(lo, hi int) {
		switch s.Rule {
		case OptimFedAvgM:
			c.kern.FedAvgMStepF32(s.XOut[lo:hi], s.MOut[lo:hi], s.X[lo:hi], s.D[lo:hi], s.M[lo:hi], p)
		case OptimFedAdagrad:
			c.kern.FedAdagradStepF32(s.XOut[lo:hi], s.MOut[lo:hi], s.VOut[lo:hi], s.X[lo:hi], s.D[lo:hi], s.M[lo:hi], s.V[lo:hi], p)
		case OptimFedAdam:
			c.kern.FedAdamStepF32(s.XOut[lo:hi], s.MOut[lo:hi], s.VOut[lo:hi], s.X[lo:hi], s.D[lo:hi], s.M[lo:hi], s.V[lo:hi], p)
		case OptimFedYogi:
			c.kern.FedYogiStepF32(s.XOut[lo:hi], s.MOut[lo:hi], s.VOut[lo:hi], s.X[lo:hi], s.D[lo:hi], s.M[lo:hi], s.V[lo:hi], p)
		}
	}
	var stats chunkStats
	if n <= 2*c.block {
		if err := ctx.Err(); err != nil {
			return Stats{}, err
		}
		run(0, n)
		stats.add(int64(n), read*int64(n), written*n)
		return stats.total(c.Name(), start), nil
	}
	blocks := (n + c.block - 1) / c.block
	err := c.parallelChunks(ctx, blocks, func(_ *cpuScratch, b int) error {
		lo, hi := b*c.block, min((b+1)*c.block, n)
		run(lo, hi)
		stats.add(int64(hi-lo), read*int64(hi-lo), written*(hi-lo))
		return nil
	}, 0)
	return stats.total(c.Name(), start), err
}

// allInputs is the input indices 0..n-1, for readBlock.
func allInputs(n int) []int {
	ins := make([]int, n)
	for k := range ins {
		ins[k] = k
	}
	return ins
}

// ModSum implements ModSummer. Each piece is summed in blocks of the device's block size
// (128 KiB of u32, L2-resident) straight in its destination: the block is zeroed and every
// input added to it, eight per pass of the assembly, so each input byte is read once and the
// block never leaves the cache.
func (c *CPU) ModSum(ctx context.Context, fields []AccField, inputs [][]Span, chunks []Chunk, out Output) (Stats, error) {
	if err := CheckModSum(fields, inputs, chunks); err != nil {
		return Stats{}, err
	}
	start := time.Now()
	files := lookupFiles(inputs) // inputs read from their files (fileread.go)
	all := allInputs(len(inputs))
	var stats chunkStats
	err := c.parallelChunks(ctx, len(chunks), func(s *cpuScratch, ci int) error {
		var elems, read int64
		for p, pc := range chunks[ci].Pieces {
			dst, err := out.Dest(ci, p)
			if err != nil {
				return err
			}
			n := pc.Hi - pc.Lo
			if len(dst) != 4*n || uintptr(unsafe.Pointer(unsafe.SliceData(dst)))%4 != 0 {
				return fmt.Errorf("%w: mod-sum destination of %d bytes at an odd address for %d u32 elements", ErrJob, len(dst), n)
			}
			acc := unsafe.Slice((*uint32)(unsafe.Pointer(unsafe.SliceData(dst))), n)
			xs := s.xs[:len(inputs)]
			for lo := 0; lo < n; lo += c.block {
				hi := min(lo+c.block, n)
				clear(acc[lo:hi])
				per := inputsPerCall(files, 4*(hi-lo))
				for i := 0; i < len(inputs); i += per {
					e := min(i+per, len(inputs))
					if err := readBlock(&s.rd, xs[i:e], all[i:e], tensor.U32, inputs, files, pc.Field, pc.Lo+lo, pc.Lo+hi); err != nil {
						clear(xs)
						return err
					}
					c.kern.ModSumU32(acc[lo:hi], xs[i:e])
				}
			}
			clear(xs) // do not keep inputs (mapped files) reachable from the pool
			elems += int64(n)
			read += int64(len(inputs)) * 4 * int64(n)
		}
		if err := out.Done(ci); err != nil {
			return err
		}
		stats.add(elems, read, chunks[ci].Len)
		return nil
	}, len(inputs))
	return stats.total(c.Name(), start), err
}
