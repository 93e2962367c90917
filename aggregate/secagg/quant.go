package secagg

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/tensor"
)

// Metadata keys a client's quantised file carries, so that the server can check it decodes with
// the client's parameters and knows whose masks it holds.
const (
	BitsKey   = "wattagg.secagg.bits"
	RangeKey  = "wattagg.secagg.range"
	ClientKey = "wattagg.secagg.client"
)

// Quantizer maps reals in [-c, c] to the integers 0..2^bits-1 by stochastic rounding:
// x is clipped to [-c, c], scaled to y = (x + c)·L/(2c) with L = 2^bits - 1, and rounded up with
// probability y - ⌊y⌋, down otherwise. The rounding is unbiased: the expected dequantised value
// is the clipped input, E[q·2c/L - c] = clip(x). A sum of n clients' values fits the 32-bit
// field when n·L < 2^32: bits + log2(n) ≤ 32.
type Quantizer struct {
	bits int
	c    float64
}

// NewQuantizer returns the quantiser of bits bits (1 to 32) over [-clipRange, clipRange]
// (clipRange > 0).
func NewQuantizer(bits int, clipRange float64) (*Quantizer, error) {
	if bits < 1 || bits > 32 {
		return nil, fmt.Errorf("%w: secure-sum bit width %d: want 1 to 32", aggregate.ErrOption, bits)
	}
	if !(clipRange > 0) || math.IsInf(clipRange, 0) {
		return nil, fmt.Errorf("%w: secure-sum range %v: want a finite value > 0", aggregate.ErrOption, clipRange)
	}
	return &Quantizer{bits: bits, c: clipRange}, nil
}

// Bits is the bit width; Range the clipping range c.
func (q *Quantizer) Bits() int       { return q.bits }
func (q *Quantizer) Range() float64  { return q.c }
func (q *Quantizer) levels() float64 { return float64(uint64(1)<<q.bits - 1) }

// MaxClients is the largest number of clients whose sum fits the 32-bit field.
func (q *Quantizer) MaxClients() int {
	return int(uint64(math.MaxUint32) / (uint64(1)<<q.bits - 1))
}

// Quantize writes the stochastic rounding of x to dst (len(dst) >= len(x)), drawing one 53-bit
// uniform per element from r. x should be finite (QuantizeSet checks): ±Inf clips to ±c and NaN
// is taken as 0, since the server cannot see a bad value through the masks.
func (q *Quantizer) Quantize(dst []uint32, x []float32, r *rand.ChaCha8) {
	l := q.levels()
	scale := l / (2 * q.c)
	for j, v := range x {
		f := float64(v)
		if f != f {
			f = 0
		}
		y := (math.Max(-q.c, math.Min(q.c, f)) + q.c) * scale
		y = math.Min(math.Max(y, 0), l)
		lo := math.Floor(y)
		u := float64(r.Uint64()>>11) * 0x1p-53
		if u < y-lo {
			lo++
		}
		dst[j] = uint32(lo)
	}
}

// Dequantize writes to dst the mean of the clients whose quantised values sum (modulo 2^32,
// without wrapping: clients ≤ MaxClients) to sum: (sum·2c/L - clients·c) / clients. dst may be
// the memory of sum itself (element j is read before it is written).
func (q *Quantizer) Dequantize(dst []float32, sum []uint32, clients int) {
	inv := 2 * q.c / q.levels()
	n := float64(clients)
	for j, s := range sum {
		dst[j] = float32((float64(s)*inv - n*q.c) / n)
	}
}

// QuantizeSet quantises every real tensor of u into a u32 tensor of the same name and shape,
// in u's order, with the quantiser's bits and range in the metadata.
func (q *Quantizer) QuantizeSet(u *tensor.Set, r *rand.ChaCha8) (*tensor.Set, error) {
	out := &tensor.Set{Source: u.Source, Metadata: map[string]string{
		BitsKey:  strconv.Itoa(q.bits),
		RangeKey: strconv.FormatFloat(q.c, 'g', -1, 64),
	}}
	if err := u.CheckFinite(); err != nil {
		return nil, err
	}
	buf := make([]float32, 0, 4096)
	for _, t := range u.Tensors() {
		if !t.DType.Real() {
			return nil, fmt.Errorf("%s: %w: tensor %q is %s: only real tensors are quantised", source(u), tensor.ErrDType, t.Name, t.DType)
		}
		qt, err := tensor.New(t.Name, tensor.U32, t.Shape...)
		if err != nil {
			return nil, err
		}
		dst, _ := qt.U32()
		for lo := 0; lo < t.Len(); lo += cap(buf) {
			hi := min(lo+cap(buf), t.Len())
			buf = buf[:hi-lo]
			for j := range buf {
				buf[j] = float32(t.Value(lo + j))
			}
			q.Quantize(dst[lo:hi], buf, r)
		}
		if err := out.Add(qt); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// quantizerOf reads the bits and range a client file says it was quantised with; ok is false
// when it says nothing.
func quantizerOf(md map[string]string) (bits int, c float64, ok bool, err error) {
	b, hasB := md[BitsKey]
	r, hasR := md[RangeKey]
	if !hasB && !hasR {
		return 0, 0, false, nil
	}
	if bits, err = strconv.Atoi(b); err != nil {
		return 0, 0, true, fmt.Errorf("%w: %s %q", aggregate.ErrOption, BitsKey, b)
	}
	if c, err = strconv.ParseFloat(r, 64); err != nil {
		return 0, 0, true, fmt.Errorf("%w: %s %q", aggregate.ErrOption, RangeKey, r)
	}
	return bits, c, true, nil
}

// sortedByName returns the tensors of s in name order: the order of the flat coordinate space
// the masks cover, so that clients and server agree whatever order their files list tensors in.
func sortedByName(s *tensor.Set) []*tensor.Tensor {
	ts := slices.Clone(s.Tensors())
	slices.SortFunc(ts, func(a, b *tensor.Tensor) int { return strings.Compare(a.Name, b.Name) })
	return ts
}

// source names an update in messages.
func source(u *tensor.Set) string {
	if u.Source != "" {
		return u.Source
	}
	return "update"
}
