package devicetest

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/big"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/kernels"
	"github.com/wattagg/wattagg/tensor"
)

// Exact runs the conformance tests of exact sums (fields with Acc I64): the sums against a
// big-integer reference, the same bits whatever the order of the inputs and whether they are
// summed in one job, added one at a time or in partial accumulators merged in any grouping, and
// the same bits as the CPU device.
func Exact(t *testing.T, dev device.Device) {
	t.Run("ExactSum", func(t *testing.T) { ExactSum(t, dev) })
	t.Run("ExactOrderIndependent", func(t *testing.T) { ExactOrderIndependent(t, dev) })
	t.Run("ExactRejectsBadJobs", func(t *testing.T) { ExactRejectsBadJobs(t, dev) })
	t.Run("ExactOutOfRange", func(t *testing.T) { ExactOutOfRange(t, dev) })
}

// exactGrid is the grid of the exact tests' fields: values within their bound 8 = 2^3, weights
// below 2^10, terms below 2^(3+10-(-80)) = 2^93 grid units.
const exactGrid = -80

// exactJob builds a job of exact fields (odd lengths, every output dtype) over inputs cycling
// through the exact input dtypes, with weights that are integers, arbitrary floats, negative.
func exactJob(r *rand.Rand, inputs int, scale float64, chunkBytes int) (*device.SumJob, *Output) {
	outs := []tensor.DType{tensor.F32, tensor.BF16, tensor.F16, tensor.F32}
	var fields []device.AccField
	for i, n := range lengths() {
		fields = append(fields, device.AccField{Name: fmt.Sprintf("t%d", i), Len: n, Acc: tensor.I64, Out: outs[i%len(outs)], Grid: exactGrid, Bound: 8})
	}
	ins := []tensor.DType{tensor.F32, tensor.BF16, tensor.F16, tensor.I8, tensor.F32}
	job := &device.SumJob{Fields: fields, Scale: scale}
	for i := range inputs {
		var spans []device.Span
		for _, f := range fields {
			spans = append(spans, RandSpan(r, ins[(i+f.Len)%len(ins)], f.Len, 1))
		}
		job.Inputs = append(job.Inputs, spans)
		var w float64
		switch i % 3 {
		case 0:
			w = float64(1 + r.IntN(1000))
		case 1:
			w = r.Float64() * 3
		default:
			w = -r.Float64()
		}
		job.Weights = append(job.Weights, w)
	}
	chunks, err := device.CutChunks(fields, Packed(fields), chunkBytes)
	if err != nil {
		panic(err)
	}
	out := NewOutput(fields, chunks)
	job.Chunks, job.Output = chunks, out
	return job, out
}

// exactReference is field t of an exact job as the contract defines it: every term
// ExactTerm(ExactWeight(w, x, Grid), x) summed as a big integer, then written as
// float64(hi)·2^52 + float64(lo) (the normalised limbs), times 2^Grid·scale, rounded to f32 and
// to the output dtype.
func exactReference(job *device.SumJob, t int) []byte {
	f := job.Fields[t]
	sums := make([]*big.Int, f.Len)
	for j := range sums {
		sums[j] = new(big.Int)
	}
	for i, in := range job.Inputs {
		sp := in[t]
		w := device.ExactWeight(job.Weights[i], sp, f.Grid)
		raw := sp
		raw.Scale = 1 // the scale is in the weight
		for j, v := range Values(raw) {
			h, l := kernels.ExactTerm(w, v)
			sums[j].Add(sums[j], new(big.Int).Add(new(big.Int).Lsh(big.NewInt(h), 52), big.NewInt(l)))
		}
	}
	out, _ := tensor.New("", f.Out, f.Len)
	two52 := new(big.Int).Lsh(big.NewInt(1), 52)
	sc := math.Ldexp(job.Scale, f.Grid)
	for j, s := range sums {
		lo := new(big.Int).Mod(new(big.Int).Add(s, new(big.Int).Rsh(two52, 1)), two52)
		lo.Sub(lo, new(big.Int).Rsh(two52, 1))
		hi := new(big.Int).Rsh(new(big.Int).Sub(s, lo), 52)
		v := float64(float64(hi.Int64())*0x1p52) + float64(lo.Int64())
		y := float32(float64(v * sc))
		b := out.Bytes()
		switch f.Out {
		case tensor.F32:
			putU32(b[4*j:], math.Float32bits(y))
		case tensor.BF16:
			putU16(b[2*j:], tensor.F32ToBF16(y))
		case tensor.F16:
			putU16(b[2*j:], tensor.F32ToF16(y))
		}
	}
	return out.Bytes()
}

// ExactSum checks WeightedSum of exact fields against the big-integer reference, bit for bit,
// for 1 to 9 inputs of every exact dtype and every output dtype.
func ExactSum(t *testing.T, dev device.Device) {
	r := rand.New(rand.NewPCG(21, 22))
	for _, inputs := range []int{1, 2, 5, 9} {
		t.Run(fmt.Sprintf("inputs=%d", inputs), func(t *testing.T) {
			job, out := exactJob(r, inputs, 1/7.0, 8192)
			if _, err := dev.WeightedSum(context.Background(), job); err != nil {
				t.Fatal(err)
			}
			out.Check(t)
			for ti, f := range job.Fields {
				want := exactReference(job, ti)
				if i := firstDiff(out.Data(ti), want, f.Out.Size()); i >= 0 {
					wt, _ := tensor.FromBytes("", f.Out, []int{f.Len}, want)
					t.Fatal(out.mismatch(ti, i, wt.Value(i)))
				}
			}
		})
	}
}

// ExactOrderIndependent checks the reason exact sums exist: the inputs in a random order, one
// job or one Add at a time, or split into partial accumulators whose sums are read out and
// added into another in a random tree, give the same bits, which are the CPU device's.
func ExactOrderIndependent(t *testing.T, dev device.Device) {
	r := rand.New(rand.NewPCG(23, 24))
	const inputs = 12
	job, out := exactJob(r, inputs, 0.125, 4096)
	if _, err := dev.WeightedSum(context.Background(), job); err != nil {
		t.Fatal(err)
	}
	cpu, err := device.NewCPU(device.WithWorkers(1))
	if err != nil {
		t.Fatal(err)
	}
	c := &exactOrderCase{dev: dev, cpu: cpu, job: job, want: outputBytes(out)}
	defer c.close()
	for trial := range 3 {
		perm := r.Perm(inputs)
		c.checkPermutedJob(t, trial, perm)
		c.checkMerged(t, r, trial, perm)
	}
}

// outputBytes returns a copy of the bytes of every field of out.
func outputBytes(out *Output) [][]byte {
	b := make([][]byte, len(out.fields))
	for ti := range out.fields {
		b[ti] = slices.Clone(out.Data(ti))
	}
	return b
}

// exactOrderCase is the state ExactOrderIndependent's steps share: the device and the CPU
// device, the job, the bits of its sum per field (want) and every partial accumulator opened.
type exactOrderCase struct {
	dev, cpu device.Device
	job      *device.SumJob
	want     [][]byte
	opened   []device.Accumulator
}

// close closes every partial accumulator opened.
func (c *exactOrderCase) close() { closeAll(c.opened) }

// same fails t, saying what was summed, unless got holds the bits of want.
func (c *exactOrderCase) same(t *testing.T, what string, got *Output) {
	t.Helper()
	got.Check(t)
	for ti, f := range c.job.Fields {
		if i := firstDiff(got.Data(ti), c.want[ti], f.Out.Size()); i >= 0 {
			wt, _ := tensor.FromBytes("", f.Out, []int{f.Len}, c.want[ti])
			t.Fatalf("%s: %s", what, got.mismatch(ti, i, wt.Value(i)))
		}
	}
}

// permuted returns a copy of the job with its inputs and weights in the order perm.
func (c *exactOrderCase) permuted(perm []int) device.SumJob {
	pj := *c.job
	pj.Inputs, pj.Weights = nil, nil
	for _, p := range perm {
		pj.Inputs = append(pj.Inputs, c.job.Inputs[p])
		pj.Weights = append(pj.Weights, c.job.Weights[p])
	}
	return pj
}

// checkPermutedJob sums the inputs in the order perm in one job on the device and on the CPU
// device, and checks the bits of both.
func (c *exactOrderCase) checkPermutedJob(t *testing.T, trial int, perm []int) {
	t.Helper()
	pj := c.permuted(perm)
	for _, d := range []device.Device{c.dev, c.cpu} {
		o := NewOutput(c.job.Fields, c.job.Chunks)
		pj.Output = o
		if _, err := d.WeightedSum(context.Background(), &pj); err != nil {
			t.Fatal(err)
		}
		c.same(t, fmt.Sprintf("trial %d: %s, permuted job", trial, d.Name()), o)
	}
}

// checkMerged adds the inputs in the order perm into partial accumulators on the device, merges
// them into one and checks the bits it emits.
func (c *exactOrderCase) checkMerged(t *testing.T, r *rand.Rand, trial int, perm []int) {
	t.Helper()
	// Partial accumulators of random parts of the permutation, merged in a random tree.
	parts := 1 + r.IntN(4)
	acc := c.mergeTree(t, r, c.addParts(t, r, perm, parts))
	o := NewOutput(c.job.Fields, c.job.Chunks)
	if _, err := acc.Emit(context.Background(), c.job.Scale, c.job.Chunks, o); err != nil {
		t.Fatal(err)
	}
	c.same(t, fmt.Sprintf("trial %d: %d partial accumulators merged", trial, parts), o)
}

// addParts opens parts accumulators on the device and adds each input, in the order perm, to a
// random one of them.
func (c *exactOrderCase) addParts(t *testing.T, r *rand.Rand, perm []int, parts int) []device.Accumulator {
	t.Helper()
	accs := make([]device.Accumulator, parts)
	for k := range accs {
		acc, err := c.dev.NewAccumulator(c.job.Fields)
		if err != nil {
			t.Fatal(err)
		}
		c.opened = append(c.opened, acc)
		accs[k] = acc
	}
	for _, p := range perm {
		if err := accs[r.IntN(parts)].Add(context.Background(), c.job.Inputs[p], c.job.Weights[p]); err != nil {
			t.Fatal(err)
		}
	}
	return accs
}

// mergeTree merges accs, a random pair at a time, into one, which it returns.
func (c *exactOrderCase) mergeTree(t *testing.T, r *rand.Rand, accs []device.Accumulator) device.Accumulator {
	t.Helper()
	for len(accs) > 1 {
		a, b := r.IntN(len(accs)), r.IntN(len(accs)-1)
		if b >= a {
			b++
		}
		if err := mergeExact(context.Background(), accs[a], accs[b], c.job.Fields); err != nil {
			t.Fatal(err)
		}
		accs = slices.Delete(accs, b, b+1)
	}
	return accs[0]
}

// mergeExact adds the sums of src into dst, field by field.
func mergeExact(ctx context.Context, dst, src device.Accumulator, fields []device.AccField) error {
	d, ok1 := dst.(device.ExactAccumulator)
	s, ok2 := src.(device.ExactAccumulator)
	if !ok1 || !ok2 {
		return fmt.Errorf("an accumulator of exact fields is not a device.ExactAccumulator")
	}
	for t, f := range fields {
		buf := make([]int64, 2*f.Len)
		if err := s.ReadSums(ctx, t, buf); err != nil {
			return err
		}
		if err := d.AddSums(ctx, t, buf); err != nil {
			return err
		}
	}
	return nil
}

// ExactRejectsBadJobs checks that exact fields refuse what they cannot sum: f64 inputs, f64 or i8
// output, a mix of exact and other fields, and merged sums beyond the limbs (leaving the
// accumulator as it was).
func ExactRejectsBadJobs(t *testing.T, dev device.Device) {
	ctx := context.Background()
	r := rand.New(rand.NewPCG(25, 26))
	f := device.AccField{Name: "x", Len: 10, Acc: tensor.I64, Out: tensor.F32, Grid: -40, Bound: 8}
	f64in := &device.SumJob{Fields: []device.AccField{f}, Inputs: [][]device.Span{{RandSpan(r, tensor.F64, 10, 1)}}, Weights: []float64{1}, Scale: 1}
	if _, err := dev.WeightedSum(ctx, f64in); !errors.Is(err, device.ErrUnsupported) {
		t.Errorf("f64 input: err = %v, want ErrUnsupported", err)
	}
	for _, out := range []tensor.DType{tensor.F64, tensor.I8} {
		g := f
		g.Out = out
		if _, err := dev.NewAccumulator([]device.AccField{g}); !errors.Is(err, device.ErrUnsupported) {
			t.Errorf("%s output: err = %v, want ErrUnsupported", out, err)
		}
	}
	mixed := []device.AccField{f, {Name: "y", Len: 3, Acc: tensor.F32, Out: tensor.F32}}
	if _, err := dev.NewAccumulator(mixed); !errors.Is(err, device.ErrUnsupported) {
		t.Errorf("exact and f32 fields: err = %v, want ErrUnsupported", err)
	}
	acc, err := dev.NewAccumulator([]device.AccField{f})
	if err != nil {
		t.Fatal(err)
	}
	defer acc.Close()
	if err := acc.Add(ctx, []device.Span{RandSpan(r, tensor.F64, 10, 1)}, 1); !errors.Is(err, device.ErrUnsupported) {
		t.Errorf("Add of f64: err = %v, want ErrUnsupported", err)
	}
	if err := acc.Add(ctx, []device.Span{RandSpan(r, tensor.F32, 10, 1)}, 3); err != nil {
		t.Fatal(err)
	}
	ea := acc.(device.ExactAccumulator)
	before := make([]int64, 20)
	if err := ea.ReadSums(ctx, 0, before); err != nil {
		t.Fatal(err)
	}
	huge := make([]int64, 20)
	huge[2*7+1] = 1 << 62 // element 7: 2^126 grid units
	if err := ea.AddSums(ctx, 0, huge); !errors.Is(err, device.ErrOutOfRange) {
		t.Errorf("AddSums beyond the limbs: err = %v, want ErrOutOfRange", err)
	}
	after := make([]int64, 20)
	if err := ea.ReadSums(ctx, 0, after); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(before, after) {
		t.Errorf("a refused AddSums changed the sums")
	}
	if err := ea.ReadSums(ctx, 0, make([]int64, 19)); !errors.Is(err, device.ErrJob) {
		t.Errorf("ReadSums into a short buffer: err = %v, want ErrJob", err)
	}
}

// ExactOutOfRange checks that a job whose input holds a value beyond its field's bound, or a NaN
// or an infinity, fails with a *device.RangeError or a *tensor.NonFiniteError naming the tensor
// and element, for every input dtype, in the middle of a field or in its tail.
func ExactOutOfRange(t *testing.T, dev device.Device) {
	r := rand.New(rand.NewPCG(27, 28))
	for _, dt := range []tensor.DType{tensor.F32, tensor.BF16, tensor.F16, tensor.I8} {
		for _, j := range []int{5, 64, 999} {
			for _, v := range []float64{9.5, -12, math.NaN(), math.Inf(1)} {
				if dt == tensor.I8 && (math.IsNaN(v) || math.IsInf(v, 0)) {
					continue
				}
				f := device.AccField{Name: "w", Len: 1000, Acc: tensor.I64, Out: tensor.F32, Grid: exactGrid, Bound: 8}
				var inputs [][]device.Span
				for range 3 {
					inputs = append(inputs, []device.Span{RandSpan(r, dt, f.Len, 1)})
				}
				bad := inputs[1][0]
				tt, _ := tensor.FromBytes("", dt, []int{f.Len}, bad.Data)
				switch dt {
				case tensor.F32:
					x, _ := tt.F32()
					x[j] = float32(v)
				case tensor.BF16:
					h := tensor.F32ToBF16(float32(v))
					bad.Data[2*j], bad.Data[2*j+1] = byte(h), byte(h>>8)
				case tensor.F16:
					h := tensor.F32ToF16(float32(v))
					bad.Data[2*j], bad.Data[2*j+1] = byte(h), byte(h>>8)
				case tensor.I8:
					inputs[1][0].Scale = 1 // values q, within ±8 but at j
					for k, q := range bad.Data {
						bad.Data[k] = byte(int8(q) % 8)
					}
					bad.Data[j] = byte(int8(v))
				}
				chunks, _ := device.CutChunks([]device.AccField{f}, []int64{0}, 4096)
				out := NewOutput([]device.AccField{f}, chunks)
				job := &device.SumJob{Fields: []device.AccField{f}, Inputs: inputs, Weights: []float64{1, 2, 3}, Scale: 1, Chunks: chunks, Output: out}
				_, err := dev.WeightedSum(context.Background(), job)
				var re *device.RangeError
				var nf *tensor.NonFiniteError
				switch {
				case math.IsNaN(v) || math.IsInf(v, 0):
					if !errors.As(err, &nf) || nf.Tensor != "w" || nf.Index != j {
						t.Fatalf("%s: %v at %d: err = %v, want a NonFiniteError at w[%d]", dt, v, j, err, j)
					}
				default:
					if !errors.As(err, &re) || re.Tensor != "w" || re.Index != j || !errors.Is(err, device.ErrOutOfRange) {
						t.Fatalf("%s: %v at %d: err = %v, want a RangeError at w[%d]", dt, v, j, err, j)
					}
				}
			}
		}
	}
}
