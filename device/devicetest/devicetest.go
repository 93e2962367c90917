// Package devicetest holds the conformance tests of device.Device and of the capabilities
// device.Robust, device.Optimizer and device.ModSummer: what every device (the CPU, a GPU, any
// later one) must do, checked against plain float64 references and against the CPU device bit
// for bit where the interfaces promise bits. A device's own tests call All (or the single
// tests) with the device under test:
//
//	func TestConformance(t *testing.T) {
//		dev, _ := device.NewCPU()
//		devicetest.All(t, dev)
//	}
//
// Outputs are poisoned (0xA5 bytes, with guard bytes around every buffer) so that an element a
// device forgets to write fails the value checks, and a write out of bounds the guard check. Under -short the sizes are
// small enough for slow instrumented runs (compute-sanitizer, simulators); the capability suites
// keep to those sizes under the race detector too.
package devicetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
)

// All runs every conformance test as a subtest: those of device.Device, and those of each
// capability (device.Robust, device.Optimizer, device.ModSummer) the device implements (the
// rules fall back to the host for the others, which the test log says).
func All(t *testing.T, dev device.Device) {
	t.Run("WeightedSum", func(t *testing.T) { WeightedSum(t, dev) })
	t.Run("WeightedSumMatchesCPU", func(t *testing.T) { WeightedSumMatchesCPU(t, dev) })
	t.Run("WeightedSumNonFinite", func(t *testing.T) { WeightedSumNonFinite(t, dev) })
	t.Run("WeightedSumRejectsBadJobs", func(t *testing.T) { WeightedSumRejectsBadJobs(t, dev) })
	t.Run("WeightedSumCancel", func(t *testing.T) { WeightedSumCancel(t, dev) })
	t.Run("Accumulator", func(t *testing.T) { Accumulator(t, dev) })
	t.Run("AccumulatorNonFinite", func(t *testing.T) { AccumulatorNonFinite(t, dev) })
	t.Run("Exact", func(t *testing.T) { Exact(t, dev) })
	if _, ok := dev.(device.Robust); ok {
		t.Run("Robust", func(t *testing.T) { Robust(t, dev) })
	} else {
		t.Logf("%s does not implement device.Robust", dev.Name())
	}
	if _, ok := dev.(device.Optimizer); ok {
		t.Run("Optimizer", func(t *testing.T) { Optimizer(t, dev) })
	} else {
		t.Logf("%s does not implement device.Optimizer", dev.Name())
	}
	if _, ok := dev.(device.ModSummer); ok {
		t.Run("ModSummer", func(t *testing.T) { ModSummer(t, dev) })
	} else {
		t.Logf("%s does not implement device.ModSummer", dev.Name())
	}
}

// RandSpan returns n random elements of dt around 0 (scale sets the spread; I8 spans get a scale
// of scale/64).
func RandSpan(r *rand.Rand, dt tensor.DType, n int, scale float64) device.Span {
	t, err := tensor.New("x", dt, n)
	if err != nil {
		panic(err)
	}
	b := t.Bytes()
	sp := device.Span{DType: dt, Data: b, Scale: 1}
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
		case tensor.U32:
			putU32(b[4*j:], r.Uint32())
		}
	}
	return sp
}

func putU16(b []byte, v uint16) { b[0], b[1] = byte(v), byte(v>>8) }
func putU32(b []byte, v uint32) { putU16(b, uint16(v)); putU16(b[2:], uint16(v>>16)) }
func putU64(b []byte, v uint64) { putU32(b, uint32(v)); putU32(b[4:], uint32(v>>32)) }

// Poison fills output buffers; Guard surrounds them.
const (
	Poison = 0xA5
	Guard  = 0x5A
	guardN = 64
)

// Output collects a job's output in one poisoned buffer per field, with guard bytes before and
// after each, and counts the Done calls per chunk. It is safe for one goroutine per chunk.
type Output struct {
	fields []device.AccField
	chunks []device.Chunk
	buf    [][]byte // per field: guard | data | guard
	done   []atomic.Int32
}

// NewOutput returns an Output for the chunks of fields.
func NewOutput(fields []device.AccField, chunks []device.Chunk) *Output {
	o := &Output{fields: fields, chunks: chunks, done: make([]atomic.Int32, len(chunks))}
	for _, f := range fields {
		b := bytes.Repeat([]byte{Guard}, guardN+f.Len*f.Out.Size()+guardN)
		for i := guardN; i < len(b)-guardN; i++ {
			b[i] = Poison
		}
		o.buf = append(o.buf, b)
	}
	return o
}

// Dest implements device.Output.
func (o *Output) Dest(c, p int) ([]byte, error) {
	pc := o.chunks[c].Pieces[p]
	es := o.fields[pc.Field].Out.Size()
	d := o.Data(pc.Field)
	return d[pc.Lo*es : pc.Hi*es : pc.Hi*es], nil
}

// Done implements device.Output.
func (o *Output) Done(c int) error { o.done[c].Add(1); return nil }

// Data returns field t's output bytes.
func (o *Output) Data(t int) []byte {
	b := o.buf[t]
	return b[guardN : len(b)-guardN : len(b)-guardN]
}

// Tensor returns field t's output as a tensor (for Value).
func (o *Output) Tensor(t int) *tensor.Tensor {
	f := o.fields[t]
	tt, err := tensor.FromBytes(f.Name, f.Out, []int{f.Len}, o.Data(t))
	if err != nil {
		panic(err)
	}
	return tt
}

// Check fails t unless every chunk was Done exactly once and the guards around every buffer are
// intact. Whether every element was written is for the value checks to say (see Poisoned): a
// poisoned element fails them unless the poison happens to be the right value.
func (o *Output) Check(t testing.TB) {
	t.Helper()
	for c := range o.done {
		if n := o.done[c].Load(); n != 1 {
			t.Fatalf("chunk %d: Done called %d times, want 1", c, n)
		}
	}
	for k, f := range o.fields {
		b := o.buf[k]
		if slices.ContainsFunc(b[:guardN], func(x byte) bool { return x != Guard }) ||
			slices.ContainsFunc(b[len(b)-guardN:], func(x byte) bool { return x != Guard }) {
			t.Fatalf("field %s: a guard byte around the output was overwritten", f.Name)
		}
	}
}

// Poisoned reports whether element j of field t still holds the poison bytes.
func (o *Output) Poisoned(t, j int) bool {
	es := o.fields[t].Out.Size()
	return !slices.ContainsFunc(o.Data(t)[j*es:(j+1)*es], func(x byte) bool { return x != Poison })
}

// mismatch describes a wrong element, saying when it was never written.
func (o *Output) mismatch(t, j int, want any) string {
	f := o.fields[t]
	if o.Poisoned(t, j) {
		return fmt.Sprintf("%s[%d] was not written (still poisoned), want %v", f.Name, j, want)
	}
	return fmt.Sprintf("%s[%d] = %v, want %v", f.Name, j, o.Tensor(t).Value(j), want)
}

// Packed returns offsets placing fields one after another, widest output element first (as the
// aggregate package lays out a data section).
func Packed(fields []device.AccField) []int64 {
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

// Values decodes every element of sp as a float64 (I8 elements scaled), as Span.Value does one
// at a time.
func Values(sp device.Span) []float64 {
	if sp.DType.Size() == 0 {
		return nil
	}
	t, err := tensor.FromBytes("", sp.DType, []int{len(sp.Data) / sp.DType.Size()}, sp.Data)
	if err != nil {
		panic(err)
	}
	t.Scale = sp.Scale
	return t.Float64s()
}

// Reference is field t of the job's weighted sum computed plainly in float64, and for each
// element the sum of the magnitudes of its terms (for Tolerance).
func Reference(job *device.SumJob, t int) (sum, mag []float64) {
	sum, mag = make([]float64, job.Fields[t].Len), make([]float64, job.Fields[t].Len)
	for i, in := range job.Inputs {
		w := job.Weights[i] * job.Scale
		for j, v := range Values(in[t]) {
			sum[j] += w * v
			mag[j] += math.Abs(w * v)
		}
	}
	return sum, mag
}

// Tolerance is the error allowed against the float64 reference: the output rounding (relative,
// or absolute among f16 subnormals) plus about one accumulator rounding per input relative to the
// magnitudes summed (mag).
func Tolerance(f device.AccField, inputs int, want, mag float64) float64 {
	var tiny float64
	if f.Out == tensor.F16 {
		tiny = 0x1p-25 // half the spacing of f16 subnormals
	}
	return epsilon(f.Out)*math.Abs(want) + tiny + 4*float64(inputs)*epsilon(f.Acc)*mag + 1e-30
}

// epsilon is half the spacing of dt's values at 1 (the relative rounding error).
func epsilon(dt tensor.DType) float64 {
	switch dt {
	case tensor.F32:
		return 0x1p-24
	case tensor.F64:
		return 0x1p-53
	case tensor.BF16:
		return 0x1p-8
	case tensor.F16:
		return 0x1p-11
	}
	return 0
}

func lengths() []int {
	if testing.Short() {
		return []int{0, 1, 7, 8, 33, 1000, 4099}
	}
	return []int{0, 1, 7, 8, 33, 1000, 4099, 70001}
}

type sumCase struct {
	in       []tensor.DType
	acc, out tensor.DType
}

var sumCases = []sumCase{
	{[]tensor.DType{tensor.F32}, tensor.F32, tensor.F32},
	{[]tensor.DType{tensor.F32}, tensor.F64, tensor.F32},
	{[]tensor.DType{tensor.BF16}, tensor.F64, tensor.BF16},
	{[]tensor.DType{tensor.BF16}, tensor.F32, tensor.F32},
	{[]tensor.DType{tensor.F16}, tensor.F64, tensor.F16},
	{[]tensor.DType{tensor.F16}, tensor.F32, tensor.F16},
	{[]tensor.DType{tensor.I8}, tensor.F64, tensor.F32},
	{[]tensor.DType{tensor.I8}, tensor.F32, tensor.BF16},
	{[]tensor.DType{tensor.F64}, tensor.F64, tensor.F64},
	{[]tensor.DType{tensor.F32}, tensor.F64, tensor.F64},
	{[]tensor.DType{tensor.F32, tensor.BF16, tensor.F16, tensor.I8}, tensor.F64, tensor.F32},
	{[]tensor.DType{tensor.BF16, tensor.F32}, tensor.F32, tensor.BF16},
}

// sumJob builds a random job: one field per length, inputs cycling through dtypes.
func sumJob(r *rand.Rand, c sumCase, inputs, chunkBytes int) (*device.SumJob, *Output) {
	var fields []device.AccField
	for i, n := range lengths() {
		fields = append(fields, device.AccField{Name: fmt.Sprintf("t%d", i), Len: n, Acc: c.acc, Out: c.out})
	}
	job := &device.SumJob{Fields: fields, Scale: 0.5}
	for i := range inputs {
		var spans []device.Span
		for _, f := range fields {
			spans = append(spans, RandSpan(r, c.in[i%len(c.in)], f.Len, 1))
		}
		job.Inputs = append(job.Inputs, spans)
		job.Weights = append(job.Weights, 0.1+r.Float64())
	}
	chunks, err := device.CutChunks(fields, Packed(fields), chunkBytes)
	if err != nil {
		panic(err)
	}
	out := NewOutput(fields, chunks)
	job.Chunks, job.Output = chunks, out
	return job, out
}

// WeightedSum checks WeightedSum against the float64 reference for every dtype combination, odd
// lengths, 1 to 9 inputs: values, coverage of every element, one Done per chunk, statistics and
// progress.
func WeightedSum(t *testing.T, dev device.Device) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, c := range sumCases {
		for _, inputs := range []int{1, 3, 9} {
			t.Run(fmt.Sprintf("in=%v/acc=%s/out=%s/inputs=%d", c.in, c.acc, c.out, inputs), func(t *testing.T) {
				job, out := sumJob(r, c, inputs, 4096)
				var progress, total atomic.Int64
				job.Progress = func(n int64) { progress.Add(n) }
				stats, err := dev.WeightedSum(context.Background(), job)
				if err != nil {
					t.Fatal(err)
				}
				out.Check(t)
				var elems int64
				for ti, f := range job.Fields {
					elems += int64(f.Len)
					for _, in := range job.Inputs {
						total.Add(int64(len(in[ti].Data)))
					}
					want, mag := Reference(job, ti)
					got := out.Tensor(ti)
					for j := range want {
						if d := math.Abs(got.Value(j) - want[j]); d > Tolerance(f, inputs, want[j], mag[j]) || math.IsNaN(got.Value(j)) {
							t.Fatal(out.mismatch(ti, j, want[j]))
						}
					}
				}
				if stats.Elements != elems || stats.Chunks != len(job.Chunks) {
					t.Errorf("stats: %d elements in %d chunks, want %d in %d", stats.Elements, stats.Chunks, elems, len(job.Chunks))
				}
				if progress.Load() != total.Load() {
					t.Errorf("progress reported %d input bytes, want %d", progress.Load(), total.Load())
				}
			})
		}
	}
}

// WeightedSumMatchesCPU checks that the device computes the CPU device's results bit for bit:
// the kernels' contract fixes every operation and its order, whatever the hardware.
func WeightedSumMatchesCPU(t *testing.T, dev device.Device) {
	cpu, err := device.NewCPU(device.WithWorkers(3), device.WithBlockElems(256))
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(3, 4))
	for _, c := range sumCases {
		t.Run(fmt.Sprintf("in=%v/acc=%s/out=%s", c.in, c.acc, c.out), func(t *testing.T) {
			job, out := sumJob(r, c, 5, 8192)
			if _, err := dev.WeightedSum(context.Background(), job); err != nil {
				t.Fatal(err)
			}
			ref := NewOutput(job.Fields, job.Chunks)
			job.Output = ref
			if _, err := cpu.WeightedSum(context.Background(), job); err != nil {
				t.Fatal(err)
			}
			out.Check(t)
			for ti, f := range job.Fields {
				if i := firstDiff(out.Data(ti), ref.Data(ti), f.Out.Size()); i >= 0 {
					t.Fatal(out.mismatch(ti, i, fmt.Sprintf("%v (the CPU device's)", ref.Tensor(ti).Value(i))))
				}
			}
		})
	}
}

func firstDiff(a, b []byte, size int) int {
	for j := 0; j+size <= len(a); j += size {
		if !bytes.Equal(a[j:j+size], b[j:j+size]) {
			return j / size
		}
	}
	return -1
}

// WeightedSumNonFinite checks that a NaN or Inf in a sum, or an overflow of the output dtype,
// stops the job with a *tensor.NonFiniteError naming the tensor, element and value.
func WeightedSumNonFinite(t *testing.T, dev device.Device) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, tc := range []struct {
		name    string
		in, out tensor.DType
		poison  func(b []byte)
		value   float64
	}{
		{"nan", tensor.F32, tensor.F32, func(b []byte) { putU32(b[4*777:], 0x7fc00000) }, math.NaN()},
		{"inf", tensor.BF16, tensor.BF16, func(b []byte) { putU16(b[2*777:], 0xff80) }, math.Inf(-1)},
		{"f16 overflow", tensor.F32, tensor.F16, func(b []byte) { putU32(b[4*777:], math.Float32bits(1e6)) }, math.Inf(1)},
		{"f64 inf", tensor.F64, tensor.F64, func(b []byte) { putU64(b[8*777:], 0x7ff0000000000000) }, math.Inf(1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fields := []device.AccField{{Name: "w", Len: 2000, Acc: tensor.F64, Out: tc.out}}
			x := RandSpan(r, tc.in, 2000, 1)
			tc.poison(x.Data)
			chunks, _ := device.CutChunks(fields, []int64{0}, 4096)
			job := &device.SumJob{Fields: fields, Inputs: [][]device.Span{{RandSpan(r, tc.in, 2000, 1)}, {x}}, Weights: []float64{1, 1}, Scale: 1,
				Chunks: chunks, Output: NewOutput(fields, chunks)}
			_, err := dev.WeightedSum(context.Background(), job)
			var nf *tensor.NonFiniteError
			if !errors.As(err, &nf) || !errors.Is(err, tensor.ErrNonFinite) {
				t.Fatalf("err = %v, want a NonFiniteError", err)
			}
			if nf.Tensor != "w" || nf.Index != 777 || nf.Source != "" || !(math.IsNaN(tc.value) && math.IsNaN(nf.Value) || nf.Value == tc.value) {
				t.Fatalf("err = %+v, want tensor w element 777 = %v", nf, tc.value)
			}
		})
	}
}

// WeightedSumRejectsBadJobs checks the validation errors and their sentinels.
func WeightedSumRejectsBadJobs(t *testing.T, dev device.Device) {
	f := []device.AccField{{Name: "w", Len: 4, Acc: tensor.F32, Out: tensor.F32}}
	ok := device.Span{DType: tensor.F32, Data: make([]byte, 16)}
	chunks, _ := device.CutChunks(f, []int64{0}, 4096)
	out := NewOutput(f, chunks)
	for _, tc := range []struct {
		name string
		job  device.SumJob
		want error
		msg  string
	}{
		{"weights", device.SumJob{Fields: f, Inputs: [][]device.Span{{ok}}, Weights: nil}, device.ErrJob, "1 inputs, 0 weights"},
		{"short", device.SumJob{Fields: f, Inputs: [][]device.Span{{{DType: tensor.F32, Data: make([]byte, 12)}}}, Weights: []float64{1}}, device.ErrJob, `field "w": 12 bytes of f32 for 4 elements`},
		{"u32", device.SumJob{Fields: f, Inputs: [][]device.Span{{{DType: tensor.U32, Data: make([]byte, 16)}}}, Weights: []float64{1}}, device.ErrUnsupported, "u32 cannot be summed"},
		{"f64 into f32", device.SumJob{Fields: f, Inputs: [][]device.Span{{{DType: tensor.F64, Data: make([]byte, 32)}}}, Weights: []float64{1}, Chunks: chunks, Output: out}, device.ErrUnsupported, "needs an f64 accumulator"},
		{"f64 out of f32", device.SumJob{Fields: []device.AccField{{Name: "w", Len: 4, Acc: tensor.F32, Out: tensor.F64}}, Inputs: [][]device.Span{{ok}}, Weights: []float64{1}}, device.ErrUnsupported, "f64 output needs an f64 accumulator"},
		{"range", device.SumJob{Fields: f, Inputs: [][]device.Span{{ok}}, Weights: []float64{1}, Chunks: []device.Chunk{{Len: 16, Pieces: []device.Piece{{Field: 0, Lo: 0, Hi: 5}}}}}, device.ErrJob, "range [0,5)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := dev.WeightedSum(context.Background(), &tc.job)
			if !errors.Is(err, tc.want) || !bytes.Contains([]byte(err.Error()), []byte(tc.msg)) {
				t.Fatalf("err = %v, want %v containing %q", err, tc.want, tc.msg)
			}
		})
	}
}

// WeightedSumCancel checks that a cancelled context stops a job with ctx.Err().
func WeightedSumCancel(t *testing.T, dev device.Device) {
	r := rand.New(rand.NewPCG(7, 8))
	fields := []device.AccField{{Name: "w", Len: 1 << 16, Acc: tensor.F32, Out: tensor.F32}}
	chunks, _ := device.CutChunks(fields, []int64{0}, 4096)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := dev.WeightedSum(ctx, &device.SumJob{Fields: fields, Inputs: [][]device.Span{{RandSpan(r, tensor.F32, 1<<16, 1)}}, Weights: []float64{1}, Scale: 1,
		Chunks: chunks, Output: NewOutput(fields, chunks)})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

// Accumulator checks a streaming sum: Add, a rejected Add that must change nothing, Emit with a
// scale against the reference and bit for bit against the CPU device, Reset.
func Accumulator(t *testing.T, dev device.Device) {
	r := rand.New(rand.NewPCG(9, 10))
	n := 70001
	if testing.Short() {
		n = 5001
	}
	c := newAccumulatorCase(accumulatorFields(n))
	defer c.close()
	c.open(t, dev)
	for i := range 5 {
		x := accumulatorInput(r, n, i)
		w := 0.5 + r.Float64()
		c.add(t, x, w)
		if i == 2 {
			c.checkRejectedAdd(t, x)
		}
	}
	c.checkEmit(t)
	c.checkReset(t)
}

// accumulatorFields are Accumulator's fields: n elements in the first, an empty one, and every
// accumulator and output dtype.
func accumulatorFields(n int) []device.AccField {
	return []device.AccField{
		{Name: "a", Len: n, Acc: tensor.F32, Out: tensor.F32},
		{Name: "b", Len: 333, Acc: tensor.F64, Out: tensor.BF16},
		{Name: "c", Len: 0, Acc: tensor.F64, Out: tensor.F16},
		{Name: "d", Len: 1001, Acc: tensor.F64, Out: tensor.F64},
		{Name: "e", Len: 517, Acc: tensor.F32, Out: tensor.F16},
	}
}

// accumulatorInput is input i of Accumulator: a random span for each of its fields, the dtypes
// cycling with i.
func accumulatorInput(r *rand.Rand, n, i int) []device.Span {
	return []device.Span{
		RandSpan(r, tensor.F32, n, 1),
		RandSpan(r, []tensor.DType{tensor.BF16, tensor.I8, tensor.F16}[i%3], 333, 1),
		{DType: tensor.F16, Data: []byte{}},
		RandSpan(r, []tensor.DType{tensor.F64, tensor.F32}[i%2], 1001, 1),
		RandSpan(r, []tensor.DType{tensor.I8, tensor.F16}[i%2], 517, 1),
	}
}

// accumulatorCase is the state Accumulator's steps share: the fields and the chunks they are
// emitted in, the accumulators (the device's, then the CPU device's) and the job holding what
// was added, for Reference.
type accumulatorCase struct {
	fields []device.AccField
	chunks []device.Chunk
	accs   []device.Accumulator
	job    *device.SumJob
}

// newAccumulatorCase returns an accumulatorCase of fields with no accumulators open yet.
func newAccumulatorCase(fields []device.AccField) *accumulatorCase {
	chunks, _ := device.CutChunks(fields, Packed(fields), 8192)
	return &accumulatorCase{fields: fields, chunks: chunks, job: &device.SumJob{Fields: fields, Scale: 1}}
}

// open opens an accumulator of the fields on dev and one on the CPU device.
func (c *accumulatorCase) open(t *testing.T, dev device.Device) {
	t.Helper()
	cpu, _ := device.NewCPU(device.WithWorkers(2))
	for _, d := range []device.Device{dev, cpu} {
		acc, err := d.NewAccumulator(c.fields)
		if err != nil {
			t.Fatal(err)
		}
		c.accs = append(c.accs, acc)
	}
}

// close closes the accumulators opened.
func (c *accumulatorCase) close() { closeAll(c.accs) }

// closeAll closes accs in reverse order, as deferred Closes would.
func closeAll(accs []device.Accumulator) {
	for _, acc := range slices.Backward(accs) {
		acc.Close()
	}
}

// add adds x with weight w to every accumulator and to the job.
func (c *accumulatorCase) add(t *testing.T, x []device.Span, w float64) {
	t.Helper()
	for _, acc := range c.accs {
		if err := acc.Add(context.Background(), x, w); err != nil {
			t.Fatal(err)
		}
	}
	c.job.Inputs = append(c.job.Inputs, x)
	c.job.Weights = append(c.job.Weights, w)
}

// checkRejectedAdd checks that the device's accumulator refuses x with a short span in field d.
func (c *accumulatorCase) checkRejectedAdd(t *testing.T, x []device.Span) {
	t.Helper()
	bad := slices.Clone(x)
	bad[3] = device.Span{DType: tensor.F32, Data: make([]byte, 4*1000)}
	if err := c.accs[0].Add(context.Background(), bad, 1); !errors.Is(err, device.ErrJob) {
		t.Fatalf("Add of a short span: err = %v, want ErrJob", err)
	}
}

// checkEmit emits every accumulator with a scale and checks the device's output: the chunks and
// guards, then field by field against the reference and the CPU device's bits.
func (c *accumulatorCase) checkEmit(t *testing.T) {
	t.Helper()
	const scale = 0.25
	outs := make([]*Output, 2)
	for k, acc := range c.accs {
		outs[k] = c.emit(t, acc, scale)
	}
	out := outs[0]
	out.Check(t)
	c.job.Scale = scale
	for ti := range c.fields {
		c.checkField(t, ti, out, outs[1])
	}
}

// emit emits acc's sums times scale into a new Output.
func (c *accumulatorCase) emit(t *testing.T, acc device.Accumulator, scale float64) *Output {
	t.Helper()
	out := NewOutput(c.fields, c.chunks)
	if _, err := acc.Emit(context.Background(), scale, c.chunks, out); err != nil {
		t.Fatal(err)
	}
	return out
}

// checkField checks field ti of out against the reference within Tolerance, and bit for bit
// against cpu, the CPU device's output.
func (c *accumulatorCase) checkField(t *testing.T, ti int, out, cpu *Output) {
	t.Helper()
	f := c.fields[ti]
	want, mag := Reference(c.job, ti)
	got := out.Tensor(ti)
	for j := range want {
		if d := math.Abs(got.Value(j) - want[j]); d > Tolerance(f, len(c.job.Inputs), want[j], mag[j]) {
			t.Fatal(out.mismatch(ti, j, want[j]))
		}
	}
	if i := firstDiff(out.Data(ti), cpu.Data(ti), f.Out.Size()); i >= 0 {
		t.Fatal(out.mismatch(ti, i, fmt.Sprintf("%v (the CPU device's)", cpu.Tensor(ti).Value(i))))
	}
}

// checkReset checks that the device's accumulator emits zeros after Reset.
func (c *accumulatorCase) checkReset(t *testing.T) {
	t.Helper()
	c.accs[0].Reset()
	out := c.emit(t, c.accs[0], 1)
	for ti, f := range c.fields {
		if slices.ContainsFunc(out.Data(ti), func(b byte) bool { return b != 0 }) {
			t.Fatalf("field %s not zero after Reset", f.Name)
		}
	}
}

// AccumulatorNonFinite checks that Emit reports a result its output dtype cannot hold.
func AccumulatorNonFinite(t *testing.T, dev device.Device) {
	fields := []device.AccField{{Name: "h", Len: 1000, Acc: tensor.F64, Out: tensor.F16}}
	acc, err := dev.NewAccumulator(fields)
	if err != nil {
		t.Fatal(err)
	}
	defer acc.Close()
	x := RandSpan(rand.New(rand.NewPCG(11, 12)), tensor.F32, 1000, 1)
	putU32(x.Data[4*321:], math.Float32bits(7e4))
	if err := acc.Add(context.Background(), []device.Span{x}, 1); err != nil {
		t.Fatal(err)
	}
	chunks, _ := device.CutChunks(fields, []int64{0}, 512)
	_, err = acc.Emit(context.Background(), 1, chunks, NewOutput(fields, chunks))
	var nf *tensor.NonFiniteError
	if !errors.As(err, &nf) || nf.Tensor != "h" || nf.Index != 321 || !math.IsInf(nf.Value, 1) {
		t.Fatalf("err = %v, want +Inf in h at 321", err)
	}
}
