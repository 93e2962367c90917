package aggregate

import (
	"context"
	"math"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/wattagg/wattagg/kernels"
	"github.com/wattagg/wattagg/tensor"
)

// deltaNormBlock is the unit of work of deltaNorms: a block of one tensor of one client, whose
// difference with the global model (128 KiB of f32) stays in L2.
const deltaNormBlock = 32 << 10

// deltaNorms returns the L2 norm of each client's delta, ‖x_k - x_t‖ over all tensors, on all
// cores: each block of each client is differenced with the global model into a cache-resident
// f32 scratch block (the AVX2 accumulation kernels: x_k widened exactly, then minus x_t,
// rounded once) whose sum of squares is taken in f64. Aggregate.Norms gives norms of what
// clients send; the private means need the norms of what they changed, which full models do not
// give without the global model. Blocks are summed in a fixed order: the result does not depend
// on the core count.
func (r *modelRound) deltaNorms(ctx context.Context) ([]float64, error) {
	type block struct{ k, t, lo, hi int }
	var blocks []block
	for k := range r.b.inputs {
		for t, f := range r.b.plan.fields {
			for lo := 0; lo < f.Len; lo += deltaNormBlock {
				blocks = append(blocks, block{k, t, lo, min(lo+deltaNormBlock, f.Len)})
			}
		}
	}
	sums := make([]float64, len(blocks))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(blocks)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			acc := make([]float32, deltaNormBlock)
			var w [1]float32
			var x [1][]byte
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= len(blocks) {
					return
				}
				b := blocks[i]
				sp := r.b.inputs[b.k][b.t]
				g := r.gx[b.t][b.lo:b.hi]
				es := sp.DType.Size()
				data := sp.Data[b.lo*es : b.hi*es]
				if sp.DType == tensor.F64 {
					var s float64
					for j, gv := range g {
						d := math.Float64frombits(leU64(data[8*j:])) - float64(gv)
						s += d * d
					}
					sums[i] = s
					continue
				}
				a := acc[:b.hi-b.lo]
				clear(a)
				w[0], x[0] = 1, data
				switch sp.DType {
				case tensor.F32:
					kernels.AccF32FromF32(a, w[:], x[:])
				case tensor.BF16:
					kernels.AccF32FromBF16(a, w[:], x[:])
				case tensor.F16:
					kernels.AccF32FromF16(a, w[:], x[:])
				case tensor.I8:
					w[0] = sp.Scale
					kernels.AccF32FromI8(a, w[:], x[:])
				}
				w[0], x[0] = -1, f32Bytes(g)
				kernels.AccF32FromF32(a, w[:], x[:])
				sums[i] = kernels.SumSquaresF32(f32Bytes(a))
			}
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	norms := make([]float64, len(r.b.inputs))
	for i, b := range blocks {
		norms[b.k] += sums[i]
	}
	for k := range norms {
		norms[k] = math.Sqrt(norms[k])
	}
	return norms, nil
}

func leU64(b []byte) uint64 {
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
		uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
}
