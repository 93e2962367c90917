package device

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/wattagg/wattagg/kernels"
	"github.com/wattagg/wattagg/tensor"
)

// randSpan makes n random elements of dt around 0 (scale sets the spread).
func randSpan(r *rand.Rand, dt tensor.DType, n int, scale float64) Span {
	t, err := tensor.New("x", dt, n)
	if err != nil {
		panic(err)
	}
	b := t.Bytes()
	sp := Span{DType: dt, Data: b, Scale: 1}
	for j := range n {
		v := r.NormFloat64() * scale
		switch dt {
		case tensor.F32:
			putU32(b[4*j:], math.Float32bits(float32(v)))
		case tensor.F64:
			putU64(b[8*j:], math.Float64bits(v))
		case tensor.BF16:
			putU16(b[2*j:], tensor.F32ToBF16(float32(v)))
		case tensor.F16:
			putU16(b[2*j:], tensor.F32ToF16(float32(v)))
		case tensor.I8:
			b[j] = byte(int8(r.IntN(255) - 127))
			sp.Scale = float32(scale / 64)
		}
	}
	return sp
}

func putU16(b []byte, v uint16) { b[0], b[1] = byte(v), byte(v>>8) }
func putU32(b []byte, v uint32) { putU16(b, uint16(v)); putU16(b[2:], uint16(v>>16)) }
func putU64(b []byte, v uint64) { putU32(b, uint32(v)); putU32(b[4:], uint32(v>>32)) }

// testOutput collects a job's output in one buffer per field, poisoned with 0xA5 so that an
// element the device forgets to write shows up.
type testOutput struct {
	fields []AccField
	chunks []Chunk
	dst    [][]byte
	done   []int
}

func newTestOutput(fields []AccField, chunks []Chunk) *testOutput {
	o := &testOutput{fields: fields, chunks: chunks, done: make([]int, len(chunks))}
	for _, f := range fields {
		o.dst = append(o.dst, bytes.Repeat([]byte{0xA5}, f.Len*f.Out.Size()))
	}
	return o
}

func (o *testOutput) Dest(c, p int) ([]byte, error) {
	pc := o.chunks[c].Pieces[p]
	es := o.fields[pc.Field].Out.Size()
	return o.dst[pc.Field][pc.Lo*es : pc.Hi*es], nil
}

func (o *testOutput) Done(c int) error { o.done[c]++; return nil }

// packed returns the offsets of fields placed one after another, widest element first.
func packed(fields []AccField) []int64 {
	order := make([]int, len(fields))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return fields[b].Out.Size() - fields[a].Out.Size() })
	offs := make([]int64, len(fields))
	var off int64
	for _, t := range order {
		offs[t] = off
		off += int64(fields[t].Len * fields[t].Out.Size())
	}
	return offs
}

// reference is the weighted sum computed plainly in float64.
func reference(job *SumJob, t int) []float64 {
	out := make([]float64, job.Fields[t].Len)
	for i, in := range job.Inputs {
		for j := range out {
			out[j] += job.Weights[i] * job.Scale * in[t].Value(j)
		}
	}
	return out
}

// tolerance is the error allowed against the float64 reference: the output rounding (relative,
// or absolute among f16 subnormals) plus the accumulation error (about one rounding per input)
// relative to the magnitudes summed.
func tolerance(f AccField, inputs int, want, mag float64) float64 {
	eps := map[tensor.DType]float64{tensor.F32: 0x1p-24, tensor.F64: 0x1p-53, tensor.BF16: 0x1p-8, tensor.F16: 0x1p-11}
	tiny := map[tensor.DType]float64{tensor.F16: 0x1p-25} // half the spacing of f16 subnormals
	return eps[f.Out]*math.Abs(want) + tiny[f.Out] + 4*float64(inputs)*eps[f.Acc]*mag + 1e-30
}

func TestWeightedSumMatchesFloat64Reference(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	cases := []struct {
		in       []tensor.DType
		acc, out tensor.DType
	}{
		{[]tensor.DType{tensor.F32}, tensor.F32, tensor.F32},
		{[]tensor.DType{tensor.F32}, tensor.F64, tensor.F32},
		{[]tensor.DType{tensor.BF16}, tensor.F64, tensor.BF16},
		{[]tensor.DType{tensor.BF16}, tensor.F32, tensor.F32},
		{[]tensor.DType{tensor.F16}, tensor.F64, tensor.F16},
		{[]tensor.DType{tensor.I8}, tensor.F64, tensor.F32},
		{[]tensor.DType{tensor.F64}, tensor.F64, tensor.F64},
		{[]tensor.DType{tensor.F32, tensor.BF16, tensor.F16, tensor.I8}, tensor.F64, tensor.F32},
		{[]tensor.DType{tensor.BF16, tensor.F32}, tensor.F32, tensor.BF16},
	}
	lens := []int{0, 1, 7, 8, 33, 1000, 4099, 70001}
	for _, tc := range cases {
		for _, inputs := range []int{1, 3, 9} {
			name := fmt.Sprintf("in=%v/acc=%s/out=%s/inputs=%d", tc.in, tc.acc, tc.out, inputs)
			t.Run(name, func(t *testing.T) {
				var fields []AccField
				for i, n := range lens {
					fields = append(fields, AccField{Name: fmt.Sprintf("t%d", i), Len: n, Acc: tc.acc, Out: tc.out})
				}
				job := &SumJob{Fields: fields, Scale: 0.5}
				for i := range inputs {
					var spans []Span
					for _, f := range fields {
						spans = append(spans, randSpan(r, tc.in[i%len(tc.in)], f.Len, 1))
					}
					job.Inputs = append(job.Inputs, spans)
					job.Weights = append(job.Weights, 0.1+r.Float64())
				}
				chunks, err := CutChunks(fields, packed(fields), 4096)
				if err != nil {
					t.Fatal(err)
				}
				job.Chunks = chunks
				out := newTestOutput(fields, chunks)
				job.Output = out
				dev, err := NewCPU(WithWorkers(3), WithBlockElems(128))
				if err != nil {
					t.Fatal(err)
				}
				stats, err := dev.WeightedSum(context.Background(), job)
				if err != nil {
					t.Fatal(err)
				}
				for c, n := range out.done {
					if n != 1 {
						t.Fatalf("chunk %d done %d times", c, n)
					}
				}
				var elems int64
				for ti, f := range fields {
					elems += int64(f.Len)
					want := reference(job, ti)
					got := must(tensor.FromBytes(f.Name, f.Out, []int{f.Len}, out.dst[ti]))(t)
					for j := range want {
						var mag float64
						for i, in := range job.Inputs {
							mag += math.Abs(job.Weights[i] * job.Scale * in[ti].Value(j))
						}
						if d := math.Abs(got.Value(j) - want[j]); d > tolerance(f, inputs, want[j], mag) || math.IsNaN(got.Value(j)) {
							t.Fatalf("%s[%d] = %v, want %v (diff %g)", f.Name, j, got.Value(j), want[j], d)
						}
					}
				}
				if stats.Elements != elems {
					t.Errorf("stats: %d elements, want %d", stats.Elements, elems)
				}
			})
		}
	}
}

// The result must not depend on how many workers run or how the space is blocked.
func TestWeightedSumIsDeterministic(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	fields := []AccField{{Name: "a", Len: 100003, Acc: tensor.F32, Out: tensor.F32}, {Name: "b", Len: 5001, Acc: tensor.F64, Out: tensor.BF16}}
	job := &SumJob{Fields: fields, Scale: 1}
	for range 11 {
		job.Inputs = append(job.Inputs, []Span{randSpan(r, tensor.F32, fields[0].Len, 1), randSpan(r, tensor.BF16, fields[1].Len, 1)})
		job.Weights = append(job.Weights, r.Float64())
	}
	var first [][]byte
	for _, cfg := range []struct{ workers, block, chunk int }{{1, 32 << 10, 256 << 10}, {2, 256, 8192}, {7, 1024, 4096}} {
		dev, err := NewCPU(WithWorkers(cfg.workers), WithBlockElems(cfg.block))
		if err != nil {
			t.Fatal(err)
		}
		chunks, err := CutChunks(fields, packed(fields), cfg.chunk)
		if err != nil {
			t.Fatal(err)
		}
		out := newTestOutput(fields, chunks)
		job.Chunks, job.Output = chunks, out
		if _, err := dev.WeightedSum(context.Background(), job); err != nil {
			t.Fatal(err)
		}
		if first == nil {
			first = out.dst
			continue
		}
		for i := range first {
			if !bytes.Equal(first[i], out.dst[i]) {
				t.Fatalf("%+v: field %s differs from the 1-worker result", cfg, fields[i].Name)
			}
		}
	}
}

func TestWeightedSumReportsNonFinite(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, tc := range []struct {
		name   string
		in     tensor.DType
		out    tensor.DType
		poison func(b []byte)
		value  float64
	}{
		{"nan", tensor.F32, tensor.F32, func(b []byte) { putU32(b[4*777:], 0x7fc00000) }, math.NaN()},
		{"inf", tensor.BF16, tensor.BF16, func(b []byte) { putU16(b[2*777:], 0xff80) }, math.Inf(-1)},
		{"f16 overflow", tensor.F32, tensor.F16, func(b []byte) { putU32(b[4*777:], math.Float32bits(1e6)) }, math.Inf(1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fields := []AccField{{Name: "w", Len: 2000, Acc: tensor.F64, Out: tc.out}}
			x := randSpan(r, tc.in, 2000, 1)
			tc.poison(x.Data)
			chunks := must(CutChunks(fields, []int64{0}, 4096))(t)
			job := &SumJob{Fields: fields, Inputs: [][]Span{{randSpan(r, tc.in, 2000, 1)}, {x}}, Weights: []float64{1, 1}, Scale: 1,
				Chunks: chunks, Output: newTestOutput(fields, chunks)}
			dev, err := NewCPU()
			if err != nil {
				t.Fatal(err)
			}
			_, err = dev.WeightedSum(context.Background(), job)
			var nf *tensor.NonFiniteError
			if !errors.As(err, &nf) || !errors.Is(err, tensor.ErrNonFinite) {
				t.Fatalf("err = %v, want a NonFiniteError", err)
			}
			if nf.Tensor != "w" || nf.Index != 777 || !(math.IsNaN(tc.value) && math.IsNaN(nf.Value) || nf.Value == tc.value) {
				t.Fatalf("err = %+v, want tensor w element 777 = %v", nf, tc.value)
			}
		})
	}
}

func TestWeightedSumRejectsBadJobs(t *testing.T) {
	dev, err := NewCPU()
	if err != nil {
		t.Fatal(err)
	}
	f := []AccField{{Name: "w", Len: 4, Acc: tensor.F32, Out: tensor.F32}}
	ok := Span{DType: tensor.F32, Data: make([]byte, 16)}
	chunks := must(CutChunks(f, []int64{0}, 4096))(t)
	for _, tc := range []struct {
		name string
		job  SumJob
		want error
		msg  string
	}{
		{"weights", SumJob{Fields: f, Inputs: [][]Span{{ok}}, Weights: nil}, ErrJob, "1 inputs, 0 weights"},
		{"short", SumJob{Fields: f, Inputs: [][]Span{{{DType: tensor.F32, Data: make([]byte, 12)}}}, Weights: []float64{1}}, ErrJob, `field "w": 12 bytes of f32 for 4 elements`},
		{"u32", SumJob{Fields: f, Inputs: [][]Span{{{DType: tensor.U32, Data: make([]byte, 16)}}}, Weights: []float64{1}}, ErrUnsupported, "u32 cannot be summed"},
		{"f64 into f32", SumJob{Fields: f, Inputs: [][]Span{{{DType: tensor.F64, Data: make([]byte, 32)}}}, Weights: []float64{1}, Chunks: chunks}, ErrUnsupported, "needs an f64 accumulator"},
		{"range", SumJob{Fields: f, Inputs: [][]Span{{ok}}, Weights: []float64{1}, Chunks: []Chunk{{Len: 16, Pieces: []Piece{{Field: 0, Lo: 0, Hi: 5}}}}}, ErrJob, "range [0,5)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := dev.WeightedSum(context.Background(), &tc.job)
			if !errors.Is(err, tc.want) || !bytes.Contains([]byte(err.Error()), []byte(tc.msg)) {
				t.Fatalf("err = %v, want %v containing %q", err, tc.want, tc.msg)
			}
		})
	}
}

func TestWeightedSumStopsOnCancel(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	fields := []AccField{{Name: "w", Len: 1 << 16, Acc: tensor.F32, Out: tensor.F32}}
	chunks := must(CutChunks(fields, []int64{0}, 4096))(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	dev, err := NewCPU()
	if err != nil {
		t.Fatal(err)
	}
	_, err = dev.WeightedSum(ctx, &SumJob{Fields: fields, Inputs: [][]Span{{randSpan(r, tensor.F32, 1<<16, 1)}}, Weights: []float64{1}, Scale: 1,
		Chunks: chunks, Output: newTestOutput(fields, chunks)})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

func TestAccumulatorMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	fields := []AccField{
		{Name: "a", Len: 70001, Acc: tensor.F32, Out: tensor.F32},
		{Name: "b", Len: 333, Acc: tensor.F64, Out: tensor.BF16},
		{Name: "c", Len: 0, Acc: tensor.F64, Out: tensor.F16},
	}
	dev, err := NewCPU(WithWorkers(2))
	if err != nil {
		t.Fatal(err)
	}
	acc, err := dev.NewAccumulator(fields)
	if err != nil {
		t.Fatal(err)
	}
	defer acc.Close()
	job := &SumJob{Fields: fields, Scale: 1}
	for i := range 5 {
		x := []Span{randSpan(r, tensor.F32, 70001, 1), randSpan(r, []tensor.DType{tensor.BF16, tensor.I8, tensor.F16}[i%3], 333, 1), {DType: tensor.F16, Data: []byte{}}}
		w := 0.5 + r.Float64()
		if err := acc.Add(context.Background(), x, w); err != nil {
			t.Fatal(err)
		}
		job.Inputs = append(job.Inputs, x)
		job.Weights = append(job.Weights, w)
	}
	chunks := must(CutChunks(fields, packed(fields), 8192))(t)
	out := newTestOutput(fields, chunks)
	const scale = 0.25
	if _, err := acc.Emit(context.Background(), scale, chunks, out); err != nil {
		t.Fatal(err)
	}
	job.Scale = scale
	for ti, f := range fields {
		want := reference(job, ti)
		got := must(tensor.FromBytes(f.Name, f.Out, []int{f.Len}, out.dst[ti]))(t)
		for j := range want {
			if d := math.Abs(got.Value(j) - want[j]); d > tolerance(f, 5, want[j], 3) {
				t.Fatalf("%s[%d] = %v, want %v", f.Name, j, got.Value(j), want[j])
			}
		}
	}

	acc.Reset()
	out = newTestOutput(fields, chunks)
	if _, err := acc.Emit(context.Background(), 1, chunks, out); err != nil {
		t.Fatal(err)
	}
	for ti := range fields {
		if slices.ContainsFunc(out.dst[ti], func(b byte) bool { return b != 0 }) {
			t.Fatalf("field %s not zero after Reset", fields[ti].Name)
		}
	}
}

func TestCheckFiniteFindsFirst(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	fields := []AccField{{Name: "a", Len: 600000}, {Name: "b", Len: 1000}}
	x := []Span{randSpan(r, tensor.F32, 600000, 1), randSpan(r, tensor.F16, 1000, 1)}
	cpu, err := NewCPU(WithWorkers(3))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := cpu.CheckFinite(ctx, fields, x); err != nil {
		t.Fatal(err)
	}
	putU16(x[1].Data[2*10:], 0x7c00)         // +Inf in b
	putU32(x[0].Data[4*500000:], 0xffc00000) // NaN late in a
	putU32(x[0].Data[4*300000:], 0x7f800000) // +Inf earlier in a: the first
	err = cpu.CheckFinite(ctx, fields, x)
	var nf *tensor.NonFiniteError
	if !errors.As(err, &nf) || nf.Tensor != "a" || nf.Index != 300000 || !math.IsInf(nf.Value, 1) {
		t.Fatalf("err = %v, want +Inf in a at 300000", err)
	}
}

func TestCutChunksCoversEveryByteOnce(t *testing.T) {
	fields := []AccField{
		{Name: "a", Len: 3, Out: tensor.BF16}, {Name: "b", Len: 5000, Out: tensor.F32},
		{Name: "c", Len: 0, Out: tensor.F32}, {Name: "d", Len: 9999, Out: tensor.F64}, {Name: "e", Len: 7, Out: tensor.I8},
	}
	offs := packed(fields)
	for _, cb := range []int{8, 4096, 1 << 20} {
		chunks, err := CutChunks(fields, offs, cb)
		if err != nil {
			t.Fatal(err)
		}
		covered := make([][]int, len(fields))
		for i, f := range fields {
			covered[i] = make([]int, f.Len)
		}
		var off int64
		for _, ch := range chunks {
			if ch.Off != off || ch.Len > cb {
				t.Fatalf("chunk at %d len %d, want at %d len <= %d", ch.Off, ch.Len, off, cb)
			}
			off += int64(ch.Len)
			for _, p := range ch.Pieces {
				if want := offs[p.Field] + int64(p.Lo*fields[p.Field].Out.Size()) - ch.Off; int64(p.Off) != want {
					t.Fatalf("piece of %s at %d, want %d", fields[p.Field].Name, p.Off, want)
				}
				for j := p.Lo; j < p.Hi; j++ {
					covered[p.Field][j]++
				}
			}
		}
		for i := range covered {
			if k := slices.IndexFunc(covered[i], func(n int) bool { return n != 1 }); k >= 0 {
				t.Fatalf("chunk %d: field %s element %d covered %d times", cb, fields[i].Name, k, covered[i][k])
			}
		}
	}
	if _, err := CutChunks(fields[:2], []int64{0, 6}, 4096); !errors.Is(err, ErrJob) {
		t.Fatalf("misaligned offset: err = %v, want ErrJob", err)
	}
}

// Splitting many inputs into several kernel calls per block changes no bit: inputs are still
// applied in order.
func TestWeightedSumManyInputsMatchOneKernelCall(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 14))
	const n, inputs = 1000, 2*maxInputsPerCall + 3
	fields := []AccField{{Name: "w", Len: n, Acc: tensor.F32, Out: tensor.F32}}
	job := &SumJob{Fields: fields, Scale: 1}
	want := make([]float32, n)
	var ws []float32
	var xs [][]byte
	for range inputs {
		x := randSpan(r, tensor.F32, n, 1)
		w := r.Float64()
		job.Inputs = append(job.Inputs, []Span{x})
		job.Weights = append(job.Weights, w)
		ws, xs = append(ws, float32(w)), append(xs, x.Data)
	}
	kernels.AccF32FromF32(want, ws, xs)
	chunks := must(CutChunks(fields, []int64{0}, 4096))(t)
	out := newTestOutput(fields, chunks)
	job.Chunks, job.Output = chunks, out
	dev, err := NewCPU()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dev.WeightedSum(context.Background(), job); err != nil {
		t.Fatal(err)
	}
	got := must(tensor.FromBytes("w", tensor.F32, []int{n}, out.dst[0]))(t)
	for j := range n {
		if float32(got.Value(j)) != want[j] {
			t.Fatalf("element %d: %v, want %v", j, got.Value(j), want[j])
		}
	}
}

// groupFields are the fields of the running-sum group tests: an f32 sum, and f64 sums of 16-bit
// and of i8 and f32 inputs, with odd lengths.
var groupFields = []AccField{
	{Name: "a", Len: 300001, Acc: tensor.F32, Out: tensor.F32},
	{Name: "b", Len: 1000, Acc: tensor.F64, Out: tensor.F64},
	{Name: "c", Len: 70000, Acc: tensor.F64, Out: tensor.F32},
}

// groupUpdate draws update i of groupFields: f32 a, f16 or bf16 b, i8 or f32 c by i.
func groupUpdate(r *rand.Rand, i int) []Span {
	return []Span{randSpan(r, tensor.F32, 300001, 1), randSpan(r, []tensor.DType{tensor.F16, tensor.BF16, tensor.F16}[i%3], 1000, 1),
		randSpan(r, []tensor.DType{tensor.I8, tensor.F32, tensor.F32}[i%3], 70000, 1)}
}

// AddGroup adds exactly what Add adds for each update in order (same bits, mixed dtypes, every
// kernel implementation, checked or not), and with check names the first update with a NaN or
// Inf and its first one, whichever block a worker met first.
func TestAddGroupIsAddInOrder(t *testing.T) {
	ctx := context.Background()
	fields, update := groupFields, groupUpdate
	chunks := must(CutChunks(fields, packed(fields), 8192))(t)
	for _, k := range kernels.Impls() {
		dev := must(NewCPU(WithKernels(k.Name()), WithWorkers(3)))(t)
		r := rand.New(rand.NewPCG(13, 14))
		var xs [][]Span
		var ws []float64
		for i := range 7 {
			xs, ws = append(xs, update(r, i)), append(ws, 0.5+r.Float64())
		}
		one := must(dev.NewAccumulator(fields))(t)
		for i := range xs {
			if err := one.Add(ctx, xs[i], ws[i]); err != nil {
				t.Fatal(err)
			}
		}
		want := newTestOutput(fields, chunks)
		must(one.Emit(ctx, 1, chunks, want))(t)
		one.Close()
		for _, check := range []bool{false, true} {
			acc := must(dev.NewAccumulator(fields))(t)
			ga, ok := acc.(GroupAccumulator)
			if !ok {
				t.Fatal("the CPU accumulator is not a GroupAccumulator")
			}
			for lo := 0; lo < len(xs); lo += 3 { // groups of 3, 3 and 1
				hi := min(lo+3, len(xs))
				if err := ga.AddGroup(ctx, xs[lo:hi], ws[lo:hi], check); err != nil {
					t.Fatalf("%s: %v", k.Name(), err)
				}
			}
			got := newTestOutput(fields, chunks)
			must(acc.Emit(ctx, 1, chunks, got))(t)
			for ti := range fields {
				if !slices.Equal(want.dst[ti], got.dst[ti]) {
					t.Fatalf("%s, check %v: field %s: the groups' sum differs from Add's", k.Name(), check, fields[ti].Name)
				}
			}
			acc.Close()
		}
		bad := update(r, 1)
		putU32(bad[2].Data[4*5:], 0x7f800000)      // +Inf in c
		putU16(bad[1].Data[2*999:], 0x7e00)        // NaN in b
		putU32(bad[0].Data[4*290000:], 0xff800000) // -Inf late in a
		putU32(bad[0].Data[4*70000:], 0xffc00000)  // NaN earlier in a: the first
		acc := must(dev.NewAccumulator(fields))(t)
		err := acc.(GroupAccumulator).AddGroup(ctx, [][]Span{xs[0], bad, xs[1]}, []float64{1, 1, 1}, true)
		var ie *InputError
		var nf *tensor.NonFiniteError
		if !errors.As(err, &ie) || ie.Input != 1 || !errors.As(err, &nf) || nf.Tensor != "a" || nf.Index != 70000 || !math.IsNaN(nf.Value) {
			t.Fatalf("%s: err = %v, want input 1's NaN in a at 70000", k.Name(), err)
		}
		acc.Close()
	}
}

// Mix gives each output the bits of a WeightedSum over the inputs its row weighs (every kernel
// implementation, mixed input dtypes, f32 and f64 accumulators, several block sizes), and
// refuses rows that do not match the inputs.
func TestMixIsWeightedSumPerOutput(t *testing.T) {
	ctx := context.Background()
	fields := []AccField{
		{Name: "a", Len: 100003, Acc: tensor.F32, Out: tensor.F32},
		{Name: "b", Len: 5000, Acc: tensor.F64, Out: tensor.F32},
		{Name: "c", Len: 0, Acc: tensor.F32, Out: tensor.F32},
	}
	chunks := must(CutChunks(fields, packed(fields), 64<<10))(t)
	for _, k := range kernels.Impls() {
		dev := must(NewCPU(WithKernels(k.Name()), WithWorkers(3)))(t)
		r := rand.New(rand.NewPCG(41, 42))
		const n = 9
		inputs := make([][]Span, n)
		for i := range inputs {
			dt := []tensor.DType{tensor.F32, tensor.BF16, tensor.F16}[i%3]
			inputs[i] = []Span{randSpan(r, dt, 100003, 1), randSpan(r, dt, 5000, 1), {DType: dt, Data: []byte{}}}
		}
		weights := make([][]float64, n)
		outs := make([]*testOutput, n)
		job := &MixJob{Fields: fields, Inputs: inputs, Weights: weights, Chunks: chunks}
		for o := range weights {
			weights[o] = make([]float64, n)
			for i := range n {
				if (i+o)%3 != 0 {
					weights[o][i] = r.Float64() - 0.3
				}
			}
			outs[o] = newTestOutput(fields, chunks)
			job.Outputs = append(job.Outputs, outs[o])
		}
		if _, err := dev.Mix(ctx, job); err != nil {
			t.Fatalf("%s: %v", k.Name(), err)
		}
		for o := range weights {
			sj := &SumJob{Fields: fields, Scale: 1, Chunks: chunks}
			for i, w := range weights[o] {
				if w != 0 {
					sj.Inputs, sj.Weights = append(sj.Inputs, inputs[i]), append(sj.Weights, w)
				}
			}
			want := newTestOutput(fields, chunks)
			sj.Output = want
			must(dev.WeightedSum(ctx, sj))(t)
			for ti := range fields {
				if !slices.Equal(want.dst[ti], outs[o].dst[ti]) {
					t.Fatalf("%s: output %d, field %s: Mix differs from WeightedSum", k.Name(), o, fields[ti].Name)
				}
			}
		}
		job.Weights = weights[1:]
		if _, err := dev.Mix(ctx, job); !errors.Is(err, ErrJob) {
			t.Fatalf("%d weight rows for %d outputs: %v, want ErrJob", len(job.Weights), len(job.Outputs), err)
		}
		job.Weights = append([][]float64{make([]float64, n)}, weights[1:]...)
		if _, err := dev.Mix(ctx, job); !errors.Is(err, ErrJob) {
			t.Fatalf("an output weighing no input: %v, want ErrJob", err)
		}
	}
}

// TestSumBlockKeepsRunsLong checks the block of a weighted sum: the device's for inputs of 4
// bytes or more, twice the default where every input is narrower, and whatever WithBlockElems
// chose as is.
func TestSumBlockKeepsRunsLong(t *testing.T) {
	c, err := NewCPU()
	if err != nil {
		t.Fatal(err)
	}
	set, err := NewCPU(WithBlockElems(256))
	if err != nil {
		t.Fatal(err)
	}
	bf16, f32, i8 := group{dtype: tensor.BF16}, group{dtype: tensor.F32}, group{dtype: tensor.I8}
	for _, tc := range []struct {
		c      *CPU
		groups []group
		want   int
	}{
		{c, []group{f32}, DefaultBlockElems},
		{c, []group{bf16}, 2 * DefaultBlockElems},
		{c, []group{bf16, i8}, 2 * DefaultBlockElems},
		{c, []group{bf16, f32}, DefaultBlockElems},
		{set, []group{bf16}, 256},
	} {
		if got := tc.c.sumBlock(tc.groups); got != tc.want {
			t.Errorf("%v: block %d, want %d", tc.groups, got, tc.want)
		}
	}
}

// An exact running sum's limbs come from tensor.SharedPool (pre-faulted, and the next round's
// are the last one's pages) and go back at Close.
func TestExactAccumulatorPooled(t *testing.T) {
	fields := []AccField{{Name: "a", Len: 1 << 20, Acc: tensor.I64, Out: tensor.F32, Grid: -40, Bound: 1 << 16}}
	c := mustCPU(t, 2, 4096)
	before := tensor.SharedPool.Stats().LiveBytes
	acc := must(c.NewAccumulator(fields))(t)
	live := func() int64 { return tensor.SharedPool.Stats().LiveBytes - before }
	if got := live(); got < 8<<20 || got >= 9<<20 {
		t.Fatalf("%d bytes of the pool live with an exact sum of 1Mi elements open, want its 8 MiB of one limb", got)
	}
	// Terms of 2^70 grid units: every block gets its high limb, from the pool too.
	x := make([]float32, 1<<20)
	for i := range x {
		x[i] = 1
	}
	if err := acc.Add(context.Background(), []Span{{DType: tensor.F32, Data: f32Bytes(x), Scale: 1}}, 0x1p30); err != nil {
		t.Fatal(err)
	}
	if got := live(); got < 16<<20 || got >= 17<<20 {
		t.Fatalf("%d bytes of the pool live with every block in two limbs, want 16 MiB", got)
	}
	acc.Reset()
	if got := live(); got < 8<<20 || got >= 9<<20 {
		t.Fatalf("%d bytes of the pool live after Reset, want 8 MiB", got)
	}
	if err := acc.Close(); err != nil {
		t.Fatal(err)
	}
	if got := tensor.SharedPool.Stats().LiveBytes; got != before {
		t.Fatalf("%d bytes of the pool live after Close, want %d", got, before)
	}
}

// A weighted sum's chunk with more input bytes than partBytes runs as parts on several
// workers: every element has the bits of the chunk run whole (f32, f64 and exact accumulators,
// inputs of four dtypes), each piece is requested once and each chunk done once.
func TestSumPartsOfChunks(t *testing.T) {
	r := rand.New(rand.NewPCG(43, 44))
	fields := []AccField{
		{Name: "a", Len: 50003, Acc: tensor.F32, Out: tensor.F32},
		{Name: "b", Len: 77, Acc: tensor.F64, Out: tensor.BF16},
		{Name: "c", Len: 30011, Acc: tensor.I64, Out: tensor.F32, Grid: -70, Bound: 16},
	}
	var inputs [][]Span
	var weights []float64
	for i := range 9 {
		dt := []tensor.DType{tensor.F32, tensor.BF16, tensor.F16, tensor.I8}[i%4]
		inputs = append(inputs, []Span{randSpan(r, dt, fields[0].Len, 1), randSpan(r, tensor.F32, fields[1].Len, 2), randSpan(r, dt, fields[2].Len, 1)})
		weights = append(weights, float64(1+r.IntN(1<<20)))
	}
	chunks, err := CutChunks(fields, packed(fields), 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	saved := partBytes
	defer func() { partBytes = saved }()
	run := func(workers int, limit int64) [][]byte {
		partBytes = limit
		o := &countingOutput{testOutput: newTestOutput(fields, chunks), dests: map[[2]int]int{}}
		job := &SumJob{Fields: fields, Inputs: inputs, Weights: weights, Scale: 1e-6, Chunks: chunks, Output: o}
		stats, err := mustCPU(t, workers, 4096).WeightedSum(context.Background(), job)
		if err != nil {
			t.Fatal(err)
		}
		o.check(t, limit, stats, 50003+77+30011)
		return o.dst
	}
	whole := run(1, 1<<40)
	partBytes = 16 << 10
	if n := len(cutParts(chunks, []int64{9 * 4, 9 * 4, 9 * 4}, sumPartAlign)); n <= 2*len(chunks) {
		t.Fatalf("parts of 16 KiB: %d for %d chunks", n, len(chunks))
	}
	for _, w := range []int{1, 2, 5} {
		got := run(w, 16<<10)
		for f := range fields {
			if !bytes.Equal(got[f], whole[f]) {
				t.Fatalf("%d workers, parts: field %s differs from the whole chunks'", w, fields[f].Name)
			}
		}
	}
}
