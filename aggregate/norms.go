package aggregate

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/wattagg/wattagg/kernels"
	"github.com/wattagg/wattagg/tensor"
)

// normBlockBytes is the unit of work of Norms: large enough to amortise a claim, small enough
// to keep both cores busy on a handful of updates.
const normBlockBytes = 1 << 20

// Norms returns the L2 norm of each update over all its tensors (sums of squares accumulated
// in f64, I8 scaled), computed on all cores. Integer (u32) tensors are an error.
func Norms(ctx context.Context, updates []*tensor.Set) ([]float64, error) {
	type block struct {
		k    int
		data []byte
		dt   tensor.DType
		sc   float64
	}
	var blocks []block
	for k, u := range updates {
		for _, t := range u.Tensors() {
			if !t.DType.Real() {
				return nil, fmt.Errorf("%s: %w: tensor %q is %s: it has no norm", sourceName(u, k), tensor.ErrDType, t.Name, t.DType)
			}
			b, es := t.Bytes(), t.DType.Size()
			step := normBlockBytes / es * es
			for lo := 0; lo < len(b); lo += step {
				blocks = append(blocks, block{k, b[lo:min(lo+step, len(b))], t.DType, float64(t.Scale)})
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
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= len(blocks) {
					return
				}
				sums[i] = sumSquares(blocks[i].dt, blocks[i].data, blocks[i].sc)
			}
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// Blocks are summed in a fixed order, so norms do not depend on the core count.
	norms := make([]float64, len(updates))
	for i, b := range blocks {
		norms[b.k] += sums[i]
	}
	for k := range norms {
		norms[k] = math.Sqrt(norms[k])
	}
	return norms, nil
}

func sumSquares(dt tensor.DType, b []byte, scale float64) float64 {
	switch dt {
	case tensor.F32:
		return kernels.SumSquaresF32(b)
	case tensor.BF16:
		return kernels.SumSquaresBF16(b)
	case tensor.F16:
		return kernels.SumSquaresF16(b)
	case tensor.F64:
		var s float64
		for i := 0; i+8 <= len(b); i += 8 {
			v := math.Float64frombits(uint64(b[i]) | uint64(b[i+1])<<8 | uint64(b[i+2])<<16 | uint64(b[i+3])<<24 |
				uint64(b[i+4])<<32 | uint64(b[i+5])<<40 | uint64(b[i+6])<<48 | uint64(b[i+7])<<56)
			s += v * v
		}
		return s
	case tensor.I8:
		var s float64
		for _, q := range b {
			v := float64(int8(q))
			s += v * v
		}
		return s * scale * scale
	}
	return 0
}
