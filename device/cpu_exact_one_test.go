package device_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/device/devicetest"
	"github.com/wattagg/wattagg/kernels"
	"github.com/wattagg/wattagg/tensor"
)

// A one-limb exact accumulator holds the same integers as the two limbs on the same grid: the
// same sums (whole updates and pieces, any order), the same emitted bits in every output dtype,
// the same 128-bit sums out and in; a merged total beyond 63 bits is refused and changes
// nothing; and a sum that went beyond 63 bits on the way (an arrival later cancelled) comes
// back exactly, since the limb wraps.
func TestOneLimbIsTwoLimbs(t *testing.T) {
	ctx := context.Background()
	r := rand.New(rand.NewPCG(31, 32))
	// Values within ±16, weights below 2^20, 12 updates: sums below 2^4·2^24 = 2^28, so a grid
	// of 2^-33 keeps them below 2^61 units.
	two := []device.AccField{
		{Name: "a", Len: 70001, Acc: tensor.I64, Out: tensor.F32, Grid: -33, Bound: 16},
		{Name: "b", Len: 4099, Acc: tensor.I64, Out: tensor.BF16, Grid: -33, Bound: 16},
		{Name: "c", Len: 33, Acc: tensor.I64, Out: tensor.F16, Grid: -33, Bound: 16},
	}
	one := slices.Clone(two)
	for i := range one {
		one[i].OneLimb = true
	}
	var inputs [][]device.Span
	var weights []float64
	for i := range 12 {
		dt := []tensor.DType{tensor.F32, tensor.BF16, tensor.F16, tensor.I8}[i%4]
		var x []device.Span
		for _, f := range two {
			x = append(x, devicetest.RandSpan(r, dt, f.Len, 1))
		}
		inputs, weights = append(inputs, x), append(weights, float64(1+r.IntN(1<<20)))
	}
	sums := func(a device.Accumulator) [][]int64 { return readSums(t, a, two) }
	chunks, err := device.CutChunks(two, devicetest.Packed(two), 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	emit := func(a device.Accumulator) *devicetest.Output {
		out := devicetest.NewOutput(two, chunks)
		if _, err := a.Emit(ctx, 1e-6, chunks, out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	for _, k := range kernels.Impls() {
		cpu, err := device.NewCPU(device.WithKernels(k.Name()), device.WithWorkers(3))
		if err != nil {
			t.Fatal(err)
		}
		want, _ := cpu.NewAccumulator(two)
		got, err := cpu.NewAccumulator(one)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range r.Perm(len(inputs)) {
			if err := want.Add(ctx, inputs[p], weights[p]); err != nil {
				t.Fatal(err)
			}
		}
		addPieces := func(a device.Accumulator, x []device.Span, w float64) {
			for ti, sp := range x {
				es := sp.DType.Size()
				for lo := 0; lo < two[ti].Len; {
					n := min(1+r.IntN(9000), two[ti].Len-lo)
					p := sp
					p.Data = sp.Data[lo*es : (lo+n)*es]
					if err := a.(device.PieceAccumulator).AddPiece(ctx, ti, lo, p, w); err != nil {
						t.Fatal(err)
					}
					lo += n
				}
			}
		}
		// A transient beyond 63 bits: an update of weight 2^40 (terms of 2^77 units), cancelled.
		addPieces(got, inputs[0], 0x1p40)
		for i, p := range r.Perm(len(inputs)) {
			if i%2 == 0 {
				addPieces(got, inputs[p], weights[p])
			} else if err := got.Add(ctx, inputs[p], weights[p]); err != nil {
				t.Fatal(err)
			}
		}
		addPieces(got, inputs[0], -0x1p40)
		if !slices.EqualFunc(sums(want), sums(got), slices.Equal) {
			t.Fatalf("%s: one limb's sums differ from two limbs'", k.Name())
		}
		wo, go1 := emit(want), emit(got)
		for ti, f := range two {
			if !slices.Equal(wo.Data(ti), go1.Data(ti)) {
				t.Fatalf("%s: field %s (%s) emitted differently", k.Name(), f.Name, f.Out)
			}
		}
		// Sums in: twice the sums, and a total beyond 63 bits refused whole.
		for ti := range two {
			s := sums(want)[ti]
			if err := got.(device.ExactAccumulator).AddSums(ctx, ti, s); err != nil {
				t.Fatal(err)
			}
			if err := want.(device.ExactAccumulator).AddSums(ctx, ti, s); err != nil {
				t.Fatal(err)
			}
		}
		if !slices.EqualFunc(sums(want), sums(got), slices.Equal) {
			t.Fatalf("%s: sums added in differ", k.Name())
		}
		before := sums(got)
		big := make([]int64, 2*two[2].Len)
		big[2*5], big[2*5+1] = 1<<62, 0
		big[2*7], big[2*7+1] = 0, 1 // 2^64
		if err := got.(device.ExactAccumulator).AddSums(ctx, 2, big); !errors.Is(err, device.ErrOutOfRange) {
			t.Fatalf("%s: a sum beyond 63 bits: %v", k.Name(), err)
		}
		if !slices.EqualFunc(before, sums(got), slices.Equal) {
			t.Fatalf("%s: a refused merge changed the sums", k.Name())
		}
		want.Close()
		got.Close()
	}
	mixed := slices.Clone(one)
	mixed[1].OneLimb = false
	cpu, _ := device.NewCPU()
	if _, err := cpu.NewAccumulator(mixed); !errors.Is(err, device.ErrUnsupported) {
		t.Fatalf("fields with one and two limbs: %v", err)
	}
}
