package device_test

import (
	"context"
	"encoding/binary"
	"errors"
	"math"
	"math/big"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/device/devicetest"
	"github.com/wattagg/wattagg/kernels"
	"github.com/wattagg/wattagg/tensor"
)

// TestExactWorkersBlocksImpls checks that an exact sum's bits do not depend on the CPU's
// workers, block size or kernels, and that the batch and the accumulator agree.
func TestExactWorkersBlocksImpls(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	fields := []device.AccField{
		{Name: "a", Len: 100003, Acc: tensor.I64, Out: tensor.F32, Grid: -70, Bound: 16},
		{Name: "b", Len: 77, Acc: tensor.I64, Out: tensor.BF16, Grid: -60, Bound: 16},
	}
	var inputs [][]device.Span
	var weights []float64
	for i := range 19 {
		dt := []tensor.DType{tensor.F32, tensor.BF16, tensor.F16, tensor.I8}[i%4]
		inputs = append(inputs, []device.Span{devicetest.RandSpan(r, dt, fields[0].Len, 1), devicetest.RandSpan(r, tensor.F32, fields[1].Len, 2)})
		weights = append(weights, float64(1+r.IntN(1<<20)))
	}
	chunks, err := device.CutChunks(fields, devicetest.Packed(fields), 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	run := func(dev device.Device, perm []int) *devicetest.Output {
		out := devicetest.NewOutput(fields, chunks)
		job := &device.SumJob{Fields: fields, Scale: 1e-6, Chunks: chunks, Output: out}
		for _, p := range perm {
			job.Inputs = append(job.Inputs, inputs[p])
			job.Weights = append(job.Weights, weights[p])
		}
		if _, err := dev.WeightedSum(context.Background(), job); err != nil {
			t.Fatal(err)
		}
		out.Check(t)
		return out
	}
	ident := make([]int, len(inputs))
	for i := range ident {
		ident[i] = i
	}
	def, err := device.NewCPU()
	if err != nil {
		t.Fatal(err)
	}
	want := run(def, ident)
	for _, k := range kernels.Impls() {
		for _, workers := range []int{1, 2, 5} {
			for _, block := range []int{64, 4096, device.DefaultBlockElems} {
				dev, err := device.NewCPU(device.WithKernels(k.Name()), device.WithWorkers(workers), device.WithBlockElems(block))
				if err != nil {
					t.Fatal(err)
				}
				got := run(dev, r.Perm(len(inputs)))
				for ti := range fields {
					if !slices.Equal(got.Data(ti), want.Data(ti)) {
						t.Fatalf("%s, %d workers, block %d: field %s differs", k.Name(), workers, block, fields[ti].Name)
					}
				}
			}
		}
	}
	acc, err := def.NewAccumulator(fields)
	if err != nil {
		t.Fatal(err)
	}
	defer acc.Close()
	for _, p := range r.Perm(len(inputs)) {
		if err := acc.Add(context.Background(), inputs[p], weights[p]); err != nil {
			t.Fatal(err)
		}
	}
	out := devicetest.NewOutput(fields, chunks)
	if _, err := acc.Emit(context.Background(), 1e-6, chunks, out); err != nil {
		t.Fatal(err)
	}
	for ti := range fields {
		if !slices.Equal(out.Data(ti), want.Data(ti)) {
			t.Fatalf("accumulator: field %s differs from the batch", fields[ti].Name)
		}
	}
}

// TestExactInt128 checks the sums' 128-bit form against big integers, and that adding sums is
// exact and refuses (changing nothing) what the limbs cannot hold.
func TestExactInt128(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	const n = 1000
	hi, lo := make([]int64, n), make([]int64, n)
	for j := range hi {
		hi[j] = r.Int64() >> (r.IntN(64))
		if r.IntN(2) == 0 {
			hi[j] >>= 13 // leave room for the sums below
		}
		lo[j] = r.Int64N(1<<52) - 1<<51
	}
	words := make([]int64, 2*n)
	device.ExactToInt128(hi, lo, words)
	val := func(h, l int64) *big.Int {
		v := new(big.Int).Lsh(big.NewInt(h), 52)
		return v.Add(v, big.NewInt(l))
	}
	word := func(j int) *big.Int {
		v := new(big.Int).Lsh(big.NewInt(words[2*j+1]), 64)
		return v.Add(v, new(big.Int).SetUint64(uint64(words[2*j])))
	}
	for j := range hi {
		if val(hi[j], lo[j]).Cmp(word(j)) != 0 {
			t.Fatalf("element %d: (%d, %d) written as %v", j, hi[j], lo[j], word(j))
		}
	}
	// Adding a sum to zero limbs gives it back, normalised; adding it again doubles it.
	h2, l2 := make([]int64, n), make([]int64, n)
	for j := range hi {
		if hi[j] > 1<<61 || hi[j] < -1<<61 {
			words[2*j], words[2*j+1] = 0, 0 // would overflow once doubled
			hi[j], lo[j] = 0, 0
		}
	}
	for range 2 {
		if err := device.ExactAddInt128(h2, l2, words, "x"); err != nil {
			t.Fatal(err)
		}
	}
	for j := range hi {
		want := new(big.Int).Lsh(val(hi[j], lo[j]), 1)
		if val(h2[j], l2[j]).Cmp(want) != 0 || l2[j] < -1<<51 || l2[j] >= 1<<51 {
			t.Fatalf("element %d: twice (%d, %d) is (%d, %d)", j, hi[j], lo[j], h2[j], l2[j])
		}
	}
	before := slices.Clone(h2)
	big := make([]int64, 2*n)
	big[2*n-1] = 1 << 62
	if err := device.ExactAddInt128(h2, l2, big, "x"); !errors.Is(err, device.ErrOutOfRange) {
		t.Fatalf("a sum of 2^126: err = %v, want ErrOutOfRange", err)
	}
	if !slices.Equal(before, h2) {
		t.Fatal("a refused addition changed the limbs")
	}
	if err := device.ExactAddInt128(h2, l2, big[:3], "x"); !errors.Is(err, device.ErrJob) {
		t.Fatalf("short sums: err = %v, want ErrJob", err)
	}
}

// TestCheckRange checks the exact sums' scan: nil within the bounds, a *RangeError naming the
// first element beyond (lowest field, then element) with its value and bound, a
// *tensor.NonFiniteError for NaN and Inf, for every dtype, i8 scale included.
func TestCheckRange(t *testing.T) {
	ctx := context.Background()
	for _, k := range kernels.Impls() {
		dev, err := device.NewCPU(device.WithKernels(k.Name()), device.WithWorkers(3))
		if err != nil {
			t.Fatal(err)
		}
		for _, dt := range []tensor.DType{tensor.F32, tensor.BF16, tensor.F16, tensor.I8} {
			r := rand.New(rand.NewPCG(5, uint64(dt)))
			fields := []device.AccField{{Name: "a", Len: 300001, Bound: 8}, {Name: "b", Len: 1000, Bound: 8}}
			x := []device.Span{devicetest.RandSpan(r, dt, 300001, 1), devicetest.RandSpan(r, dt, 1000, 1)}
			if dt == tensor.I8 { // values q/64 within ±1
				for _, sp := range x {
					for j, q := range sp.Data {
						sp.Data[j] = byte(int8(q) / 2)
					}
				}
			}
			if err := dev.CheckRange(ctx, fields, x); err != nil {
				t.Fatalf("%s %s: in range: %v", k.Name(), dt, err)
			}
			set := func(sp device.Span, j int, v float64) {
				tt, _ := tensor.FromBytes("", dt, []int{len(sp.Data) / dt.Size()}, sp.Data)
				switch dt {
				case tensor.F32:
					f, _ := tt.F32()
					f[j] = float32(v)
				case tensor.I8:
					sp.Data[j] = byte(int8(v / float64(sp.Scale)))
				default:
					b := tt.Bytes()
					h := tensor.F32ToBF16(float32(v))
					if dt == tensor.F16 {
						h = tensor.F32ToF16(float32(v))
					}
					b[2*j], b[2*j+1] = byte(h), byte(h>>8)
				}
			}
			// Beyond in both fields: the first field's is reported.
			x2 := []device.Span{clone(x[0]), clone(x[1])}
			bad := 9.5
			if dt == tensor.I8 {
				fields[0].Bound, fields[1].Bound = 1.2, 1.2
				bad = 1.5
			}
			set(x2[1], 3, bad)
			set(x2[0], 250000, -bad)
			set(x2[0], 290000, bad)
			var re *device.RangeError
			err := dev.CheckRange(ctx, fields, x2)
			if dt != tensor.I8 && (!errors.As(err, &re) || re.Tensor != "a" || re.Index != 250000 || re.Value != -bad || re.Bound != 8) {
				t.Fatalf("%s %s: err = %v, want a RangeError at a[250000]", k.Name(), dt, err)
			}
			if dt == tensor.I8 {
				if !errors.As(err, &re) || re.Tensor != "a" || re.Index != 250000 {
					t.Fatalf("%s i8: err = %v, want a RangeError at a[250000]", k.Name(), err)
				}
			}
			if !errors.Is(err, device.ErrOutOfRange) {
				t.Fatalf("%s %s: %v does not wrap ErrOutOfRange", k.Name(), dt, err)
			}
			if dt != tensor.I8 {
				set(x2[0], 100, math.NaN())
				var nf *tensor.NonFiniteError
				if err := dev.CheckRange(ctx, fields, x2); !errors.As(err, &nf) || nf.Index != 100 || nf.Tensor != "a" {
					t.Fatalf("%s %s: NaN: err = %v, want a NonFiniteError at a[100]", k.Name(), dt, err)
				}
			}
		}
	}
	dev, err := device.NewCPU()
	if err != nil {
		t.Fatal(err)
	}
	fields := []device.AccField{{Name: "a", Len: 4, Bound: 1}}
	x := []device.Span{{DType: tensor.F64, Data: make([]byte, 32)}}
	if err := dev.CheckRange(ctx, fields, x); !errors.Is(err, device.ErrUnsupported) {
		t.Fatalf("f64: err = %v, want ErrUnsupported", err)
	}
	x = []device.Span{{DType: tensor.F32, Data: make([]byte, 16)}}
	for _, b := range []float64{0, -1, math.Inf(1), math.NaN()} {
		fields[0].Bound = b
		if err := dev.CheckRange(ctx, fields, x); !errors.Is(err, device.ErrJob) {
			t.Fatalf("bound %v: err = %v, want ErrJob", b, err)
		}
	}
}

func clone(sp device.Span) device.Span {
	sp.Data = slices.Clone(sp.Data)
	return sp
}

// TestAddPieceIsAdd: an update added in pieces of any length, in any order, with every kernel
// implementation, has the bits of the update added whole; a piece with an element beyond the
// bound or non-finite is refused, naming the element from the field's start, and adds nothing;
// adding the pieces again with the opposite weight leaves zero sums.
// readSums reads the 128-bit sums of every field of an exact accumulator.
func readSums(t *testing.T, a device.Accumulator, fields []device.AccField) [][]int64 {
	t.Helper()
	var out [][]int64
	for ti, f := range fields {
		s := make([]int64, 2*f.Len)
		if err := a.(device.ExactAccumulator).ReadSums(context.Background(), ti, s); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	return out
}

func TestAddPieceIsAdd(t *testing.T) {
	ctx := context.Background()
	r := rand.New(rand.NewPCG(8, 9))
	fields := []device.AccField{
		{Name: "a", Len: 70001, Acc: tensor.I64, Out: tensor.F32, Grid: -70, Bound: 16},
		{Name: "b", Len: 33, Acc: tensor.I64, Out: tensor.F32, Grid: -60, Bound: 16},
	}
	sums := func(a device.Accumulator) [][]int64 { return readSums(t, a, fields) }
	for _, k := range kernels.Impls() {
		cpu, err := device.NewCPU(device.WithKernels(k.Name()))
		if err != nil {
			t.Fatal(err)
		}
		for _, dt := range []tensor.DType{tensor.F32, tensor.BF16, tensor.F16, tensor.I8} {
			x := []device.Span{devicetest.RandSpan(r, dt, fields[0].Len, 1), devicetest.RandSpan(r, dt, fields[1].Len, 2)}
			whole, _ := cpu.NewAccumulator(fields)
			if err := whole.Add(ctx, x, 3.5); err != nil {
				t.Fatal(err)
			}
			acc, _ := cpu.NewAccumulator(fields)
			pa := acc.(device.PieceAccumulator)
			addAll := func(w float64) {
				for t2, sp := range x {
					es := dt.Size()
					for lo := 0; lo < fields[t2].Len; {
						n := 1 + r.IntN(5000)
						if r.IntN(4) == 0 {
							n = 1 + r.IntN(fields[t2].Len) // beyond the CPU's block too
						}
						n = min(n, fields[t2].Len-lo)
						p := sp
						p.Data = sp.Data[lo*es : (lo+n)*es]
						if err := pa.AddPiece(ctx, t2, lo, p, w); err != nil {
							t.Fatal(err)
						}
						lo += n
					}
				}
			}
			addAll(3.5)
			if !slices.EqualFunc(sums(whole), sums(acc), slices.Equal) {
				t.Fatalf("%s %s: pieces differ from the whole update", k.Name(), dt)
			}
			if dt == tensor.F32 {
				bad := clone(x[0])
				binary.LittleEndian.PutUint32(bad.Data[4*10:], math.Float32bits(100))
				bad.Data = bad.Data[4*7 : 4*20]
				var re *device.RangeError
				if err := pa.AddPiece(ctx, 0, 7, bad, 1); !errors.As(err, &re) || re.Index != 10 {
					t.Fatalf("a piece with 100 beyond ±16 at element 10: %v", err)
				}
				binary.LittleEndian.PutUint32(bad.Data[4*3:], math.Float32bits(float32(math.NaN())))
				var ne *tensor.NonFiniteError
				if err := pa.AddPiece(ctx, 0, 7, bad, 1); !errors.As(err, &ne) || ne.Index != 10 {
					t.Fatalf("a piece with NaN at element 10: %v", err)
				}
				if !slices.EqualFunc(sums(whole), sums(acc), slices.Equal) {
					t.Fatalf("%s: a refused piece changed the sums", k.Name())
				}
			}
			addAll(-3.5)
			for t2, s := range sums(acc) {
				if slices.ContainsFunc(s, func(v int64) bool { return v != 0 }) {
					t.Fatalf("%s %s: field %d not zero after adding the pieces with the opposite weight", k.Name(), dt, t2)
				}
			}
			whole.Close()
			acc.Close()
		}
	}
}
