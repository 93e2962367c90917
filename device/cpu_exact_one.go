package device

import (
	"fmt"
	"sync"

	"github.com/wattagg/wattagg/kernels"
)

// One-limb exact sums (AccField.OneLimb): a running sum of one int64 per element, S itself, in
// place of the two limbs (hi·2^52 + lo). Terms are added by the one-limb kernels
// (kernels.ExactAcc1F32 and its dtypes): each term rounded as the two limbs' kernels round it,
// h·2^52 + l, added with wrapping int64 adds, so the limb holds the same integer as two limbs
// would, modulo 2^64, and the same bits come out at Emit, ReadSums and AddSums. int64 addition
// wraps, so the limb holds S exactly modulo 2^64 whatever the order of the terms: exact whenever
// the final S is below 2^63 in magnitude, which the caller's grid guarantees (a sum of updates
// within the bound, with weights within the cap, is below 2^62 grid units:
// aggregate.ExactSum.OneLimb), even if a transient sum of arrivals that are then cancelled went
// beyond it.

// oneLimbBlock is the elements a one-limb sum emits at a time: the two limbs it splits them
// into, 64 KiB, stay in L1 or L2 while the store kernel reads them.
const oneLimbBlock = 4096

var oneLimbScratch = sync.Pool{New: func() any { s := make([]int64, 2*oneLimbBlock); return &s }}

// oneLimbFields reports whether the exact fields keep one limb (all of them); a mix is an error.
func oneLimbFields(fields []AccField) (bool, error) {
	n := 0
	for _, f := range fields {
		if f.OneLimb {
			n++
		}
	}
	if n > 0 && n < len(fields) {
		return false, fmt.Errorf("%w: %d of %d exact fields keep one limb: all or none", ErrUnsupported, n, len(fields))
	}
	return n > 0, nil
}

// splitLimbs writes the sums of one as normalised limbs (lo in [-2^51, 2^51)), the form the
// store kernels read.
func splitLimbs(hi, lo, one []int64) {
	for j, v := range one {
		c := (v + 1<<51) >> kernels.ExactLimbShift
		hi[j], lo[j] = c, v-c<<kernels.ExactLimbShift
	}
}

// storeOne writes the sums of one times s into o through the store kernel, block by block.
func storeOne(store func(dst []byte, hi, lo []int64, s float64), o []byte, one []int64, s float64, os int) {
	sp := oneLimbScratch.Get().(*[]int64)
	defer oneLimbScratch.Put(sp)
	for b := 0; b < len(one); b += oneLimbBlock {
		e := min(b+oneLimbBlock, len(one))
		hi, lo := (*sp)[:e-b], (*sp)[oneLimbBlock:oneLimbBlock+e-b]
		splitLimbs(hi, lo, one[b:e])
		store(o[b*os:e*os], hi, lo, s)
	}
}

// oneToInt128 writes the sums of one as 128-bit integers into dst, low word first.
func oneToInt128(one, dst []int64) {
	for j, v := range one {
		dst[2*j], dst[2*j+1] = v, v>>63
	}
}

// addInt128One adds the 128-bit sums of src to one, as ExactAddInt128 does to two limbs: every
// element is checked first, and a total beyond 63 bits is an ErrOutOfRange error that changes
// nothing.
func addInt128One(one, src []int64, name string) error {
	if len(src) != 2*len(one) {
		return fmt.Errorf("%w: field %q: %d words of sums for %d elements", ErrJob, name, len(src), len(one))
	}
	for pass := range 2 {
		for j := range one {
			l, h := src[2*j], src[2*j+1]
			s, over := addInt64(one[j], l)
			if h != l>>63 || over {
				return fmt.Errorf("field %q: element %d: %w: the merged sum is beyond 2^63 grid units (one limb)", name, j, ErrOutOfRange)
			}
			if pass == 1 {
				one[j] = s
			}
		}
	}
	return nil
}
