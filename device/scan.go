package device

import (
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/wattagg/wattagg/tensor"
)

// scanBlockElems is the unit of the parallel finiteness scan.
const scanBlockElems = 256 << 10

// CheckFinite scans host spans (one update, one span per field) for NaN and Inf on all cores
// and returns a *tensor.NonFiniteError for the first one (lowest field, then lowest element),
// with Source empty. Streaming rules call it before an update may touch a sum.
func CheckFinite(fields []AccField, x []Span) error {
	type block struct{ t, lo, hi int }
	var blocks []block
	for t, f := range fields {
		for lo := 0; lo < f.Len; lo += scanBlockElems {
			blocks = append(blocks, block{t, lo, min(lo+scanBlockElems, f.Len)})
		}
	}
	var next atomic.Int64
	var first atomic.Int64 // lowest bad block index + 1; 0 for none
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(blocks)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				k := int(next.Add(1) - 1)
				if k >= len(blocks) {
					return
				}
				if f := first.Load(); f != 0 && int(f-1) < k {
					return // a lower block is already bad
				}
				b := blocks[k]
				sp := x[b.t]
				es := sp.DType.Size()
				if anyNonFinite(sp.DType, sp.Data[b.lo*es:b.hi*es]) {
					for {
						f := first.Load()
						if f != 0 && int(f-1) <= k || first.CompareAndSwap(f, int64(k+1)) {
							break
						}
					}
				}
			}
		}()
	}
	wg.Wait()
	f := first.Load()
	if f == 0 {
		return nil
	}
	b := blocks[f-1]
	sp := x[b.t]
	es := sp.DType.Size()
	i := b.lo + tensor.FirstNonFinite(sp.DType, sp.Data[b.lo*es:b.hi*es])
	return &tensor.NonFiniteError{Tensor: fields[b.t].Name, Index: i, Value: sp.Value(i)}
}
