package device_test

import (
	"context"
	"encoding/binary"
	"math"
	"math/bits"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/device/devicetest"
	"github.com/wattagg/wattagg/kernels"
	"github.com/wattagg/wattagg/tensor"
)

// int128 is a plain 128-bit two's complement integer for the reference sums.
type int128 struct {
	lo uint64
	hi int64
}

func (a int128) add(h, l int64) int128 {
	// h·2^52 + l as 128 bits, added.
	tl, th := uint64(h)<<kernels.ExactLimbShift, h>>(64-kernels.ExactLimbShift)
	s, c := bits.Add64(a.lo, tl, 0)
	a.hi += th + int64(c)
	s, c = bits.Add64(s, uint64(l), 0)
	a.hi += l>>63 + int64(c)
	a.lo = s
	return a
}

// elem is element j of a span as a float64 (i8 as q: its scale is in the weight).
func elem(sp device.Span, j int) float64 {
	switch sp.DType {
	case tensor.F32:
		return float64(math.Float32frombits(binary.LittleEndian.Uint32(sp.Data[4*j:])))
	case tensor.BF16:
		return float64(tensor.BF16ToF32(binary.LittleEndian.Uint16(sp.Data[2*j:])))
	case tensor.F16:
		return float64(tensor.F16ToF32(binary.LittleEndian.Uint16(sp.Data[2*j:])))
	default:
		return float64(int8(sp.Data[j]))
	}
}

// limbRef is the reference of a running exact sum: per element, the sum of ExactTerm's terms.
type limbRef struct {
	fields []device.AccField
	sums   [][]int128
}

func newLimbRef(fields []device.AccField) *limbRef {
	r := &limbRef{fields: fields}
	for _, f := range fields {
		r.sums = append(r.sums, make([]int128, f.Len))
	}
	return r
}

// add adds w·x to elements [lo, lo+n) of field t.
func (r *limbRef) add(t, lo int, x device.Span, w float64) {
	wg := device.ExactWeight(w, x, r.fields[t].Grid)
	n := len(x.Data) / x.DType.Size()
	for j := range n {
		h, l := kernels.ExactTerm(wg, elem(x, j))
		r.sums[t][lo+j] = r.sums[t][lo+j].add(h, l)
	}
}

// newLimbAcc is a CPU exact accumulator of fields (closed with the test) beside its reference.
func newLimbAcc(t testing.TB, cpu *device.CPU, fields []device.AccField) (device.PieceAccumulator, *limbRef) {
	t.Helper()
	acc, err := cpu.NewAccumulator(fields)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { acc.Close() })
	return acc.(device.PieceAccumulator), newLimbRef(fields)
}

// check fails t unless every field's sums in pa are the reference's, naming the first element
// that differs.
func (r *limbRef) check(t testing.TB, pa device.PieceAccumulator, what string) {
	t.Helper()
	for ti, f := range r.fields {
		got := make([]int64, 2*f.Len)
		if err := pa.ReadSums(context.Background(), ti, got); err != nil {
			t.Fatal(err)
		}
		want := r.words(ti)
		if slices.Equal(got, want) {
			continue
		}
		j := 0
		for got[2*j] == want[2*j] && got[2*j+1] == want[2*j+1] {
			j++
		}
		t.Fatalf("%s: field %q element %d: sum (%#x, %#x), want (%#x, %#x)", what, f.Name, j, got[2*j], got[2*j+1], want[2*j], want[2*j+1])
	}
}

// words is field t's sums in ReadSums' form.
func (r *limbRef) words(t int) []int64 {
	out := make([]int64, 0, 2*len(r.sums[t]))
	for _, s := range r.sums[t] {
		out = append(out, int64(s.lo), s.hi)
	}
	return out
}

// f32 is field t's sums times 2^Grid·scale rounded as the f32 store kernels round them: the
// normalised limbs to f64, times the scale, to f32.
func (r *limbRef) f32(t int, scale float64) []uint32 {
	out := make([]uint32, len(r.sums[t]))
	sc := math.Ldexp(scale, r.fields[t].Grid)
	for j, s := range r.sums[t] {
		lo := int64((s.lo+1<<51)&(1<<52-1)) - 1<<51
		rl, b := bits.Sub64(s.lo, uint64(lo), 0)
		rh := s.hi - lo>>63 - int64(b)
		hi := rh<<(64-kernels.ExactLimbShift) | int64(rl>>kernels.ExactLimbShift)
		v := float64(float64(hi)*0x1p52) + float64(lo)
		out[j] = math.Float32bits(float32(v * sc))
	}
	return out
}

// got32 is f32 output bytes as bits.
func got32(b []byte) []uint32 {
	out := make([]uint32, len(b)/4)
	for j := range out {
		out[j] = binary.LittleEndian.Uint32(b[4*j:])
	}
	return out
}

// TestLimbsOnDemand: a CPU exact accumulator of two-limb fields holds its sums in one limb until
// a block's sums could leave ±2^62 grid units, then gives that block (and only that block) its
// high limb; through every path — small sums that stay in one limb, sums whose bound drifts past
// 2^62 while they stay small (the add taken back, the block rescanned, kept in one limb), a large
// piece that gives one block its high limb, an arrival cancelled, merged 128-bit sums that take a
// block beyond 2^62 — the sums are those of a plain 128-bit reference, with every kernel set.
func TestLimbsOnDemand(t *testing.T) {
	ctx := context.Background()
	const block = 64 << 10
	fields := []device.AccField{
		{Name: "a", Len: 3*block + 17, Acc: tensor.I64, Out: tensor.F32, Grid: -50, Bound: 64},
		{Name: "b", Len: 5, Acc: tensor.I64, Out: tensor.F32, Grid: -50, Bound: 64},
	}
	for _, k := range kernels.Impls() {
		r := rand.New(rand.NewPCG(41, 42))
		cpu, err := device.NewCPU(device.WithKernels(k.Name()), device.WithWorkers(2))
		if err != nil {
			t.Fatal(err)
		}
		pa, ref := newLimbAcc(t, cpu, fields)
		acc := device.Accumulator(pa)
		update := func(dt tensor.DType, scale float64) []device.Span {
			var x []device.Span
			for _, f := range fields {
				x = append(x, devicetest.RandSpan(r, dt, f.Len, scale))
			}
			return x
		}
		addWhole := func(x []device.Span, w float64) {
			if err := acc.Add(ctx, x, w); err != nil {
				t.Fatal(err)
			}
			for ti, sp := range x {
				ref.add(ti, 0, sp, w)
			}
		}
		addPiece := func(ti, lo int, sp device.Span, w float64) {
			if err := pa.AddPiece(ctx, ti, lo, sp, w); err != nil {
				t.Fatal(err)
			}
			ref.add(ti, lo, sp, w)
		}
		check := func(what string) {
			t.Helper()
			ref.check(t, pa, k.Name()+", "+what)
		}
		// 1. Small sums: values ~N(0, 1) (|x| < 5 here), weights up to 8, on a grid of 2^-50:
		// 8 adds' bound below 8·8·5·2^50 ≈ 2^58.3 — one limb throughout, no rescan.
		for i := range 8 {
			dt := []tensor.DType{tensor.F32, tensor.BF16, tensor.F16, tensor.I8}[i%4]
			addWhole(update(dt, 1), float64(1+r.IntN(8)))
		}
		check("small sums")
		if e, s := device.HighLimbs(acc); e != 0 || s != 0 {
			t.Fatalf("%s: small sums: %d elements in two limbs, %d rescans; want none", k.Name(), e, s)
		}
		// 2. A drifting bound: the same update added with +w and −w in turn, 24 times: each add's
		// terms are bounded by 5·2^56 ≈ 2^58.3, so the bound passes 2^62 while the sums stay
		// within 2^59.3; the blocks are rescanned and stay in one limb.
		x := update(tensor.F32, 1)
		for i := range 24 {
			w := 0x1p6
			if i%2 == 1 {
				w = -w
			}
			addWhole(x, w)
		}
		check("a drifting bound")
		if e, s := device.HighLimbs(acc); e != 0 || s == 0 {
			t.Fatalf("%s: a drifting bound: %d elements in two limbs, %d rescans; want none and some", k.Name(), e, s)
		}
		// 3. A large piece inside block 1 of field a: terms of up to 2^50·2^16·6 > 2^62. Block 1
		// alone gets its high limb.
		big := update(tensor.F32, 1)[0]
		p := big
		p.Data = big.Data[4*(block+100) : 4*(block+9000)]
		addPiece(0, block+100, p, 0x1p16)
		check("a large piece")
		if e, _ := device.HighLimbs(acc); e != block {
			t.Fatalf("%s: a large piece in one block: %d elements in two limbs, want %d", k.Name(), e, block)
		}
		// 4. A piece across blocks 1 and 2, cancelled: block 2 gets its high limb, the sums come
		// back to what they were.
		p.Data = big.Data[4*(2*block-50) : 4*(2*block+50)]
		addPiece(0, 2*block-50, p, 0x1p40)
		addPiece(0, 2*block-50, p, -0x1p40)
		check("a cancelled arrival")
		if e, _ := device.HighLimbs(acc); e != 2*block {
			t.Fatalf("%s: after the cancelled arrival: %d elements in two limbs, want %d", k.Name(), e, 2*block)
		}
		// 5. Merged 128-bit sums of up to 2^39, and 2^70 at element 3 of block 0 (in one limb
		// until then): block 0 gets its high limb, block 3 and field b stay in one.
		for ti, f := range fields {
			src := make([]int64, 2*f.Len)
			for j := range f.Len {
				h, l := int64(0), int64(r.IntN(1<<40)-1<<39)
				if ti == 0 && j == 3 {
					h = 1 << 18 // 2^70
				}
				s := int128{}.add(h, l)
				src[2*j], src[2*j+1] = int64(s.lo), s.hi
				ref.sums[ti][j] = ref.sums[ti][j].add(h, l)
			}
			if err := pa.AddSums(ctx, ti, src); err != nil {
				t.Fatal(err)
			}
		}
		check("merged sums")
		if e, _ := device.HighLimbs(acc); e != 3*block {
			t.Fatalf("%s: after the merge: %d elements in two limbs, want %d (blocks 0, 1, 2)", k.Name(), e, 3*block)
		}
		// The emitted values are the reference's, rounded once.
		chunks, err := device.CutChunks(fields, devicetest.Packed(fields), 256<<10)
		if err != nil {
			t.Fatal(err)
		}
		out := devicetest.NewOutput(fields, chunks)
		if _, err := acc.Emit(ctx, 1.0/3, chunks, out); err != nil {
			t.Fatal(err)
		}
		for ti := range fields {
			got := out.Data(ti)
			want := ref.f32(ti, 1.0/3)
			if !slices.EqualFunc(want, got32(got), func(a, b uint32) bool { return a == b }) {
				t.Fatalf("%s: emitted field %q differs from the reference", k.Name(), fields[ti].Name)
			}
		}
		acc.Reset()
		if e, s := device.HighLimbs(acc); e != 0 || s != 0 {
			t.Fatalf("%s: after Reset: %d elements in two limbs, %d rescans", k.Name(), e, s)
		}
		acc.Close()
	}
}

// TestLimbsConcurrentPieces: pieces of 8 updates added at once from 8 goroutines into the same
// blocks, some weights large enough to give blocks their high limb while other pieces are being
// added to them: the sums are the reference's (run with -race).
func TestLimbsConcurrentPieces(t *testing.T) {
	ctx := context.Background()
	fields := []device.AccField{{Name: "a", Len: 200003, Acc: tensor.I64, Out: tensor.F32, Grid: -50, Bound: 64}}
	r := rand.New(rand.NewPCG(5, 6))
	cpu, err := device.NewCPU(device.WithWorkers(2))
	if err != nil {
		t.Fatal(err)
	}
	pa, ref := newLimbAcc(t, cpu, fields)
	type piece struct{ lo, hi int }
	var xs []device.Span
	var ws []float64
	for i := range 8 {
		xs = append(xs, devicetest.RandSpan(r, tensor.F32, fields[0].Len, 1))
		ws = append(ws, []float64{3, 0x1p14, -7, 0x1p12}[i%4])
		ref.add(0, 0, xs[i], ws[i])
	}
	pieces := make([][]piece, 8)
	for lo, k := 0, 0; lo < fields[0].Len; k++ {
		hi := min(lo+1+r.IntN(9000), fields[0].Len)
		pieces[k%8] = append(pieces[k%8], piece{lo, hi})
		lo = hi
	}
	// 8 goroutines, each with its own pieces of the field (disjoint elements, as a caller's
	// locks make them, but sharing blocks), add all 8 updates to them in its own order.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		order := r.Perm(len(xs))
		wg.Go(func() {
			for _, p := range pieces[g] {
				for _, i := range order {
					sp := xs[i]
					sp.Data = sp.Data[4*p.lo : 4*p.hi]
					if err := pa.AddPiece(ctx, 0, p.lo, sp, ws[i]); err != nil {
						errs <- err
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	ref.check(t, pa, "concurrent pieces")
	if e, _ := device.HighLimbs(pa); e == 0 {
		t.Fatal("concurrent pieces of weight 2^14: no block got its high limb")
	}
}

// FuzzLimbs: any sequence of pieces — values within the bound, weights from 2^-3 to 2^40 of
// either sign, pieces across block boundaries, merged 128-bit sums — leaves the accumulator with
// the sums of a plain 128-bit reference, whichever blocks took their high limb on the way.
func FuzzLimbs(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9})
	f.Add([]byte{255, 0, 200, 7, 7, 7, 9, 1, 0, 0, 3, 250, 250, 1, 2})
	f.Add([]byte("weights of both signs across blocks, then a merge"))
	const block = 64 << 10
	fields := []device.AccField{{Name: "a", Len: 2*block + 10, Acc: tensor.I64, Out: tensor.F32, Grid: -50, Bound: 64}}
	cpu, err := device.NewCPU(device.WithWorkers(1))
	if err != nil {
		f.Fatal(err)
	}
	weights := []float64{1, -1, 0x1p-3, 0x1p10, -0x1p12, 0x1p20, -0x1p30, 0x1p40}
	f.Fuzz(func(t *testing.T, data []byte) {
		pa, ref := newLimbAcc(t, cpu, fields)
		ctx := context.Background()
		for len(data) >= 5 && len(data) < 4096 {
			op, a, b, c, d := data[0], data[1], data[2], data[3], data[4]
			data = data[5:]
			// A piece of 1..2049 elements starting near a block boundary or anywhere.
			lo := (int(a)<<8 | int(b)) * 3 % fields[0].Len
			if op&1 == 0 {
				lo = (int(a)%3)*block + int(int8(b)) // around a boundary
				lo = max(0, min(lo, fields[0].Len-1))
			}
			n := min(1+int(c)*8+int(d)%8, fields[0].Len-lo)
			if op%7 == 6 { // merged sums: ±(d·2^(8·(c%9))) at element lo
				src := make([]int64, 2*fields[0].Len)
				s := int128{}.add(0, int64(d)<<(8*(c%8)))
				if c&1 == 1 {
					s = int128{}.add(-int64(d)<<(8*(c%5)+12), 0)
				}
				src[2*lo], src[2*lo+1] = int64(s.lo), s.hi
				if err := pa.AddSums(ctx, 0, src); err != nil {
					t.Fatal(err)
				}
				r := ref.sums[0][lo]
				sl, carry := bits.Add64(r.lo, s.lo, 0)
				ref.sums[0][lo] = int128{sl, r.hi + s.hi + int64(carry)}
				continue
			}
			x := make([]float32, n)
			for j := range x {
				x[j] = float32(int8(byte(j)*a+b+d)) / 2 // within ±64
			}
			b32 := make([]byte, 4*n)
			for j, v := range x {
				binary.LittleEndian.PutUint32(b32[4*j:], math.Float32bits(v))
			}
			sp := device.Span{DType: tensor.F32, Data: b32, Scale: 1}
			w := weights[int(op>>1)%len(weights)]
			if err := pa.AddPiece(ctx, 0, lo, sp, w); err != nil {
				t.Fatal(err)
			}
			ref.add(0, lo, sp, w)
		}
		ref.check(t, pa, "after the pieces")
	})
}
