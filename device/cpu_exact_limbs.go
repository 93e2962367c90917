package device

import (
	"fmt"
	"math"
	"math/bits"
	"sync"

	"github.com/wattagg/wattagg/kernels"
	"github.com/wattagg/wattagg/tensor"
)

// The CPU's two-limb exact sums, held in one limb until they need two. A running exact sum of a
// field with two limbs (AccField.OneLimb false) keeps one int64 per element, S itself, as long as
// every |S| of a block of limbBlockElems elements provably stays within 2^62 grid units, and gives
// a block its high limb (S = hi·2^52 + lo, the two-limb kernels' form, lo kept in the same int64)
// the first time an add could take it beyond. The integers are the same either way (terms
// rounded by the same ExactTerm, added exactly), so the bits out of Emit, ReadSums and AddSums
// are those of two limbs throughout; what changes is the memory: 8 bytes per element instead of
// 16 for every block whose sums stay small, which at the default grid (2^-45) is any block where
// |mean| · total weight < 2^17.
//
// The proof is a bound kept per block. An add of w·x to a block in one limb returns the largest
// |x| it read (the kernels' maxAbs), so its terms are at most |w|·max|x| + 1 grid units (w scaled
// to the grid) and the bound grows by that. While the bound stays within 2^62 no sum can have
// left ±2^62, and int64 adds are exact. When an add takes the bound beyond, the add is taken
// back (the same terms with −w: ExactTerm is odd, and int64 adds wrap, so this restores the bits
// whatever happened on the way), the block's true max|S| replaces the bound, and the add is
// either made again in one limb (the bound had drifted: at least 2^61 of room left) or the
// block gets its high limb and the add is made in two. A block never goes back to one limb
// before Reset.

// limbBlockElems is the block a running exact sum gives a high limb to at once: 512 KiB of
// high limb, and the arrivals' 1 MiB pieces of f32 touch at most 5 blocks.
const limbBlockElems = 64 << 10

const (
	// limbOneMax bounds the sums a block keeps in one limb.
	limbOneMax = 0x1p62
	// limbRoomAfterScan is the room a block must have after a rescan to stay in one limb.
	limbRoomAfterScan = 0x1p61
)

// limbBlock is the state of one block of a two-limb field.
type limbBlock struct {
	mu      sync.Mutex
	bound   float64 // while hi is nil: every |S| of the block is at most bound grid units
	hi      []int64 // the high limb (the int64s then hold lo), or nil: one limb
	rescans int     // adds taken back and the block rescanned (tests count them)
}

// limbField is a two-limb field's sums: one int64 per element and its blocks' high limbs.
type limbField struct {
	one    []int64
	blocks []limbBlock
}

func newLimbField(n int) *limbField {
	return &limbField{one: asInt64(accF64(n)), blocks: make([]limbBlock, (n+limbBlockElems-1)/limbBlockElems)}
}

// span is block b's elements [lo, hi).
func (lf *limbField) span(b int) (int, int) {
	return b * limbBlockElems, min((b+1)*limbBlockElems, len(lf.one))
}

// segments calls fn for each block that [lo, hi) touches, the block locked, with its int64s
// (from its first element, base) and the part [s, e) of [lo, hi) in it.
func (lf *limbField) segments(lo, hi int, fn func(b *limbBlock, block []int64, base, s, e int)) {
	for s := lo; s < hi; {
		bi := s / limbBlockElems
		base, end := lf.span(bi)
		e := min(hi, end)
		b := &lf.blocks[bi]
		b.mu.Lock()
		fn(b, lf.one[base:end], base, s, e)
		b.mu.Unlock()
		s = e
	}
}

// add adds w·x (one input of dtype dt, the elements [lo, lo+len) of the field; w scaled to the
// grid) and returns the largest magnitude it read, as the kernels do.
func (lf *limbField) add(k *kernels.Impl, dt tensor.DType, lo int, w float64, x []byte) uint32 {
	es := dt.Size()
	n := len(x) / es
	var m uint32
	lf.segments(lo, lo+n, func(b *limbBlock, block []int64, base, s, e int) {
		m = max(m, b.add(k, dt, block, s-base, e-base, w, x[(s-lo)*es:(e-lo)*es]))
	})
	return m
}

// add is limbField.add within one block: x onto the block's elements [s, e).
func (b *limbBlock) add(k *kernels.Impl, dt tensor.DType, block []int64, s, e int, w float64, x []byte) uint32 {
	ws := [1]float64{w}
	xs := [1][]byte{x}
	if b.hi != nil {
		return exactAccKernel(k, dt)(b.hi[s:e], block[s:e], ws[:], xs[:])
	}
	acc1 := exactAcc1Kernel(k, dt)
	one := block[s:e]
	m := acc1(one, ws[:], xs[:])
	d := termBound(dt, m, w)
	if b.bound+d <= limbOneMax {
		b.bound += d
		return m
	}
	// Take the add back, and look at the block's sums as they are.
	ws[0] = -w
	acc1(one, ws[:], xs[:])
	ws[0] = w
	b.rescans++
	b.bound = maxAbsInt64(block)
	if b.bound+d <= limbRoomAfterScan {
		acc1(one, ws[:], xs[:])
		b.bound += d
		return m
	}
	b.promote(block)
	return exactAccKernel(k, dt)(b.hi[s:e], one, ws[:], xs[:])
}

// promote gives the block its high limb: each S becomes hi·2^52 + lo with lo in [-2^51, 2^51),
// lo kept in place.
func (b *limbBlock) promote(block []int64) {
	b.hi = asInt64(accF64(len(block)))
	splitLimbs(b.hi, block, block)
}

// termBound bounds the terms of an add of weight w (scaled to the grid) whose largest magnitude
// read was m (the kernels' maxAbs for dtype dt): |w|·|x| + 1 for the rounding, with room for
// the rounding of this product. A NaN's m gives +Inf.
func termBound(dt tensor.DType, m uint32, w float64) float64 {
	var x float64
	switch dt {
	case tensor.F32:
		x = float64(math.Float32frombits(m))
	case tensor.BF16:
		x = float64(math.Float32frombits(m << 16))
	case tensor.F16:
		x = float64(tensor.F16ToF32(uint16(m)))
	default: // I8: |q|, the scale is in w
		x = float64(m)
	}
	d := math.Abs(w)*x*(1+0x1p-50) + 1
	if math.IsNaN(d) {
		return math.Inf(1)
	}
	return d
}

// maxAbsInt64 is max |v| over v (as a float64, rounded up enough for the bounds above).
func maxAbsInt64(v []int64) float64 {
	var m uint64
	for _, x := range v {
		a := uint64(x)
		if x < 0 {
			a = -a
		}
		m = max(m, a)
	}
	return float64(m) * (1 + 0x1p-50)
}

// addSums adds 128-bit sums (2 words an element, low first) to the field, exactly: every total
// is checked first, and one beyond what two limbs hold (2^115) is an ErrOutOfRange error that
// changes nothing. A block in one limb whose totals leave ±2^62 gets its high limb.
func (lf *limbField) addSums(src []int64, name string) error {
	if len(src) != 2*len(lf.one) {
		return fmt.Errorf("%w: field %q: %d words of sums for %d elements", ErrJob, name, len(src), len(lf.one))
	}
	// Check every total first, under every block's lock (callers merge into an idle sum, but
	// the locks keep a concurrent piece from slipping in between).
	for bi := range lf.blocks {
		lf.blocks[bi].mu.Lock()
	}
	defer func() {
		for bi := range lf.blocks {
			lf.blocks[bi].mu.Unlock()
		}
	}()
	for bi := range lf.blocks {
		b := &lf.blocks[bi]
		base, end := lf.span(bi)
		for j := base; j < end; j++ {
			if _, _, ok := exactFromInt128(src[2*j], src[2*j+1]); !ok {
				return fmt.Errorf("field %q: element %d: %w: a partial sum beyond 2^115 grid units", name, j, ErrOutOfRange)
			}
			l, h := b.int128(lf.one, base, j)
			sl, c := bits.Add64(uint64(l), uint64(src[2*j]), 0)
			if _, _, ok := exactFromInt128(int64(sl), h+src[2*j+1]+int64(c)); !ok {
				return fmt.Errorf("field %q: element %d: %w: the merged sum is beyond 2^115 grid units", name, j, ErrOutOfRange)
			}
		}
	}
	for bi := range lf.blocks {
		b := &lf.blocks[bi]
		base, end := lf.span(bi)
		block, in := lf.one[base:end], src[2*base:2*end]
		if b.hi == nil && !b.addSumsOne(block, in) {
			b.promote(block)
		}
		if b.hi != nil {
			if err := ExactAddInt128(b.hi, block, in, name); err != nil {
				return fmt.Errorf("%w (after the check)", err) // cannot happen: checked above
			}
		}
	}
	return nil
}

// addSumsOne adds the 128-bit sums in to a block in one limb if every total stays within
// ±2^62 (the block's new bound is then its true max), and reports whether it did; it changes
// nothing otherwise.
func (b *limbBlock) addSumsOne(block, in []int64) bool {
	var m uint64
	for j, v := range block {
		l, h := in[2*j], in[2*j+1]
		s, over := addInt64(v, l)
		if h != l>>63 || over {
			return false
		}
		a := uint64(s)
		if s < 0 {
			a = -a
		}
		if a > 1<<62 {
			return false
		}
		m = max(m, a)
	}
	for j := range block {
		block[j] += in[2*j]
	}
	b.bound = float64(m) * (1 + 0x1p-50)
	return true
}

// int128 is element j's sum (block b starts at base) as a 128-bit integer, low word first.
func (b *limbBlock) int128(one []int64, base, j int) (int64, int64) {
	if b.hi == nil {
		return one[j], one[j] >> 63
	}
	var d [2]int64
	ExactToInt128(b.hi[j-base:j-base+1], one[j:j+1], d[:])
	return d[0], d[1]
}

// readSums writes the field's sums as 128-bit integers into dst.
func (lf *limbField) readSums(dst []int64) {
	lf.segments(0, len(lf.one), func(b *limbBlock, block []int64, base, s, e int) {
		if b.hi == nil {
			oneToInt128(lf.one[s:e], dst[2*s:2*e])
		} else {
			ExactToInt128(b.hi[s-base:e-base], lf.one[s:e], dst[2*s:2*e])
		}
	})
}

// store writes elements [lo, hi) of the sums times s through the store kernel into o, and
// returns the bytes of sums it read.
func (lf *limbField) store(store func(dst []byte, hi, lo []int64, s float64), o []byte, lo, hi int, s float64, os int) int64 {
	var read int64
	lf.segments(lo, hi, func(b *limbBlock, _ []int64, base, s0, e int) {
		out := o[(s0-lo)*os : (e-lo)*os]
		if b.hi == nil {
			storeOne(store, out, lf.one[s0:e], s, os)
			read += 8 * int64(e-s0)
		} else {
			store(out, b.hi[s0-base:e-base], lf.one[s0:e], s)
			read += 16 * int64(e-s0)
		}
	})
	return read
}

// promoted is the number of elements that have a high limb, and the rescans so far.
func (lf *limbField) promoted() (elems, rescans int) {
	for bi := range lf.blocks {
		b := &lf.blocks[bi]
		b.mu.Lock()
		elems += len(b.hi)
		rescans += b.rescans
		b.mu.Unlock()
	}
	return elems, rescans
}

// reset zeroes the sums and gives the high limbs back.
func (lf *limbField) reset() {
	clear(lf.one)
	for bi := range lf.blocks {
		b := &lf.blocks[bi]
		freeAcc(b.hi)
		b.hi, b.bound, b.rescans = nil, 0, 0
	}
}

// free gives every buffer back.
func (lf *limbField) free() {
	lf.reset()
	freeAcc(lf.one)
	lf.one = nil
}
