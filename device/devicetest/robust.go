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
	"github.com/wattagg/wattagg/internal/race"
	"github.com/wattagg/wattagg/tensor"
)

// The conformance tests of device.Robust. Order statistics are checked against a float64
// reference that spells out the interface's semantics (the even-count median, the trim counts,
// Bulyan's window) and, bit for bit, against the CPU device, whose sorting network fixes where
// zeros of either sign land. The f64 sums (Gram matrix, distances, norms) may be added in any
// order, so they are checked against float64 references within the bound that f64 rounding
// allows any order of summation (SumTolerance).

// Robust runs every conformance test of device.Robust as a subtest; dev must implement it.
func Robust(t *testing.T, dev device.Device) {
	if _, ok := dev.(device.Robust); !ok {
		t.Fatalf("%s does not implement device.Robust", dev.Name())
	}
	t.Run("Select", func(t *testing.T) { Select(t, dev) })
	t.Run("SelectMatchesCPU", func(t *testing.T) { SelectMatchesCPU(t, dev) })
	t.Run("SelectNonFinite", func(t *testing.T) { SelectNonFinite(t, dev) })
	t.Run("SelectRejectsBadJobs", func(t *testing.T) { SelectRejectsBadJobs(t, dev) })
	t.Run("SelectCancel", func(t *testing.T) { SelectCancel(t, dev) })
	t.Run("Gram", func(t *testing.T) { Gram(t, dev) })
	t.Run("GramDistancesPrecise", func(t *testing.T) { GramDistancesPrecise(t, dev) })
	t.Run("SqDistances", func(t *testing.T) { SqDistances(t, dev) })
	t.Run("RobustRejectsBadInputs", func(t *testing.T) { RobustRejectsBadInputs(t, dev) })
}

// RobustValues returns the elements of sp (f32, f16, bf16 or i8) as the robust operations see
// them: widened to f32 as +0 + float32(w·x), w = 1 or the I8 scale (an f32 span as it is). So an
// I8 value is float32(Scale·q), and a negative zero of a 16-bit or i8 span is +0.
func RobustValues(sp device.Span) []float32 {
	n := len(sp.Data) / max(sp.DType.Size(), 1)
	v := make([]float32, n)
	for j := range v {
		var x float32
		switch sp.DType {
		case tensor.F32:
			v[j] = math.Float32frombits(getU32(sp.Data[4*j:]))
			continue
		case tensor.F16:
			x = tensor.F16ToF32(getU16(sp.Data[2*j:]))
		case tensor.BF16:
			x = tensor.BF16ToF32(getU16(sp.Data[2*j:]))
		case tensor.I8:
			x = float32(sp.Scale * float32(int8(sp.Data[j])))
		default:
			panic(fmt.Sprintf("devicetest: robust values of %s", sp.DType))
		}
		v[j] = x + 0
	}
	return v
}

func getU16(b []byte) uint16 { return uint16(b[0]) | uint16(b[1])<<8 }
func getU32(b []byte) uint32 { return uint32(getU16(b)) | uint32(getU16(b[2:]))<<16 }

// robustSpan returns n random elements of dt. With ties, three in four come from a handful of
// values (zeros of both signs among them) so that equal values meet in the sorting network.
func robustSpan(r *rand.Rand, dt tensor.DType, n int, scale float64, ties bool) device.Span {
	sp := RandSpan(r, dt, n, scale)
	if !ties {
		return sp
	}
	few := []float64{-1, math.Copysign(0, -1), 0, 0.5, 1, 2}
	b := sp.Data
	for j := range n {
		if r.IntN(4) == 0 {
			continue
		}
		v := float32(few[r.IntN(len(few))] * scale)
		switch dt {
		case tensor.F32:
			putU32(b[4*j:], math.Float32bits(v))
		case tensor.BF16:
			putU16(b[2*j:], tensor.F32ToBF16(v))
		case tensor.F16:
			putU16(b[2*j:], tensor.F32ToF16(v))
		case tensor.I8:
			b[j] = byte(int8(r.IntN(5) - 2))
		}
	}
	return sp
}

// robustJob returns n inputs over fields of uneven lengths (the dtypes cycling through dts) and
// their chunks of chunkBytes.
func robustJob(r *rand.Rand, n int, dts []tensor.DType, out tensor.DType, ties bool, chunkBytes int) ([]device.AccField, [][]device.Span, []device.Chunk) {
	lens := []int{1, 0, 7, 300, 4099}
	if large() {
		lens = append(lens, 20001)
	}
	var fields []device.AccField
	for i, l := range lens {
		fields = append(fields, device.AccField{Name: fmt.Sprintf("t%d", i), Len: l, Acc: tensor.F32, Out: out})
	}
	inputs := make([][]device.Span, n)
	for i := range inputs {
		for _, f := range fields {
			inputs[i] = append(inputs[i], robustSpan(r, dts[i%len(dts)], f.Len, 1+float64(i%3), ties))
		}
	}
	chunks, err := device.CutChunks(fields, Packed(fields), chunkBytes)
	if err != nil {
		panic(err)
	}
	return fields, inputs, chunks
}

// large reports whether the tests run at full size: not under -short (slow instrumented runs:
// compute-sanitizer, simulators) nor under the race detector, which looks for races in the
// devices' concurrency, not for more coverage of the arithmetic the plain run checks.
func large() bool { return !testing.Short() && !race.Enabled }

// r32 rounds to f32: applied to the float64 result of one operation on f32 values it gives the
// f32 operation's result (f64 carries more than twice f32's precision, so rounding twice is
// harmless).
func r32(x float64) float64 { return float64(float32(x)) }

// SelectReference is the order statistic of one coordinate's values v (as RobustValues gives
// them; finite) per device.Robust, in float64 with every operation rounded to f32: v sorted,
// the median its middle value or lo·0.5 + hi·0.5 of the two middle ones, the trimmed mean the
// sum from +0 in ascending order of all but the k smallest and k largest divided by n-2k, the
// closest mean the same over windows of k values: lo is 1 + the last t < n-k with
// |v[t+k] - m| < |v[t] - m| (or 0), the tied windows run from lo to the end hi of the slides from
// lo with equal distances, and the result is the mean of the window at (lo+hi)/2, or for an
// even number of tied windows the means of the middle two halved and added. v is sorted in
// place.
func SelectReference(v []float64, op device.SelectOp, k int) float32 {
	slices.Sort(v)
	n := len(v)
	m := v[n/2]
	if n%2 == 0 {
		m = r32(r32(v[n/2-1]*0.5) + r32(v[n/2]*0.5))
	}
	mean := func(lo, cnt int) float64 {
		var acc float64
		for _, x := range v[lo : lo+cnt] {
			acc = r32(acc + x)
		}
		return r32(acc / float64(cnt))
	}
	switch op {
	case device.Median:
		return float32(m)
	case device.TrimmedMean:
		return float32(mean(k, n-2*k))
	}
	lo, hi := 0, 0
	for t := 0; t < n-k; t++ {
		dh, dl := math.Abs(r32(v[t+k]-m)), math.Abs(r32(v[t]-m))
		if dh < dl {
			lo, hi = t+1, t+1
		} else if dh == dl && hi == t {
			hi = t + 1
		}
	}
	a, b := (lo+hi)/2, (lo+hi+1)/2
	if a == b {
		return float32(mean(a, k))
	}
	return float32(r32(r32(mean(a, k)*0.5) + r32(mean(b, k)*0.5)))
}

// SumTolerance is how far two sums of the same terms, each added in any order of f64
// additions (or fused multiply-adds of exact products), may lie apart: each is within
// γ_k·Σ|terms| of the exact sum, γ_k = k·u/(1-k·u), u = 2⁻⁵³, k one more than the terms.
func SumTolerance(terms int, mag float64) float64 {
	k := float64(terms + 1)
	u := 0x1p-53
	return 2*k*u/(1-k*u)*mag + 1e-300
}

// decodeF32 is the value of r once stored in dt as the devices store an f32 result (f64
// widened, f16 and bf16 rounded to nearest even).
func decodeF32(dt tensor.DType, r float32) float64 {
	switch dt {
	case tensor.F16:
		return float64(tensor.F16ToF32(tensor.F32ToF16(r)))
	case tensor.BF16:
		return float64(tensor.BF16ToF32(tensor.F32ToBF16(r)))
	}
	return float64(r)
}

// poisonF64 fills v with NaN, so that a device that does not write a result fails the checks.
func poisonF64(v []float64) {
	for i := range v {
		v[i] = math.NaN()
	}
}

type selectCase struct {
	op         device.SelectOp
	n, k       int
	dts        []tensor.DType
	out        tensor.DType
	ties, dist bool
}

func (c selectCase) String() string {
	return fmt.Sprintf("%s/n=%d/k=%d/in=%v/out=%s/ties=%v/dist=%v", c.op, c.n, c.k, c.dts, c.out, c.ties, c.dist)
}

func selectCases() []selectCase {
	dtSets := [][]tensor.DType{{tensor.F32}, {tensor.F32, tensor.BF16, tensor.F16, tensor.I8}, {tensor.BF16}, {tensor.I8, tensor.F16}}
	outs := []tensor.DType{tensor.F32, tensor.F64, tensor.F16, tensor.BF16}
	var cases []selectCase
	i := 0
	for _, n := range []int{1, 2, 3, 4, 5, 8, 9, 16, 17, 32, 33, 40} {
		for _, op := range []device.SelectOp{device.Median, device.TrimmedMean, device.ClosestMean} {
			k := 0
			switch op {
			case device.TrimmedMean:
				k = []int{n / 4, (n - 1) / 2, 0}[i%3]
			case device.ClosestMean:
				k = []int{(n + 1) / 2, n, 1}[i%3]
			}
			cases = append(cases, selectCase{op: op, n: n, k: k, dts: dtSets[i%len(dtSets)], out: outs[i%len(outs)], ties: i%2 == 0, dist: i%5 < 2})
			i++
		}
	}
	return cases
}

// Select checks every order statistic against SelectReference for 1 to 40 inputs of every
// dtype, every output dtype, with and without ties: values (zeros of either sign count as
// equal here; SelectMatchesCPU compares bits), coverage of every element, one Done per chunk,
// the distances and norms, statistics and progress.
func Select(t *testing.T, dev device.Device) {
	rd := dev.(device.Robust)
	r := rand.New(rand.NewPCG(101, 102))
	for i, c := range selectCases() {
		t.Run(c.String(), func(t *testing.T) {
			fields, inputs, chunks := robustJob(r, c.n, c.dts, c.out, c.ties, []int{4096, 64 << 10}[i%2])
			out := NewOutput(fields, chunks)
			job := c.job(fields, inputs, chunks, out)
			var progress atomic.Int64
			job.Progress = func(n int64) { progress.Add(n) }
			stats, err := rd.Select(context.Background(), job)
			if err != nil {
				t.Fatal(err)
			}
			out.Check(t)
			sc := checkSelected(t, c, fields, inputs, out)
			if c.dist {
				sc.checkDistances(t, job)
			}
			sc.checkStats(t, stats, chunks, &progress)
		})
	}
}

// job returns the job of c over inputs, writing to out; with c.dist it asks for the distances
// and norms, in slices poisoned with NaN.
func (c selectCase) job(fields []device.AccField, inputs [][]device.Span, chunks []device.Chunk, out *Output) *device.SelectJob {
	job := &device.SelectJob{Fields: fields, Inputs: inputs, Op: c.op, K: c.k, Chunks: chunks, Output: out}
	if c.dist {
		job.SqDist, job.SqNorm = make([]float64, c.n), make([]float64, c.n)
		poisonF64(job.SqDist)
		poisonF64(job.SqNorm)
	}
	return job
}

// selectCheck is what Select checks a job's distances, norms and statistics against: each
// input's squared distance from the reference results and squared norm, the elements, and the
// bytes read.
type selectCheck struct {
	c           selectCase
	dist, norm  []float64
	elems, read int64
}

// checkSelected checks every element of out against SelectReference of the inputs' values
// there, field by field, and returns the selectCheck gathered on the way.
func checkSelected(t *testing.T, c selectCase, fields []device.AccField, inputs [][]device.Span, out *Output) *selectCheck {
	t.Helper()
	sc := &selectCheck{c: c, dist: make([]float64, c.n), norm: make([]float64, c.n)}
	col := make([]float64, c.n)
	for ti, f := range fields {
		vals := make([][]float32, c.n)
		for i := range inputs {
			vals[i] = RobustValues(inputs[i][ti])
			sc.read += int64(len(inputs[i][ti].Data))
		}
		sc.checkField(t, out, ti, f, vals, col)
		sc.elems += int64(f.Len)
	}
	return sc
}

// checkField checks field ti of out element by element against SelectReference of the inputs'
// values vals (col is scratch of one value per input), and adds each input's squared distance
// from the reference and squared norm.
func (sc *selectCheck) checkField(t *testing.T, out *Output, ti int, f device.AccField, vals [][]float32, col []float64) {
	t.Helper()
	got := out.Tensor(ti)
	for j := range f.Len {
		for i := range col {
			col[i] = float64(vals[i][j])
		}
		want := SelectReference(col, sc.c.op, sc.c.k)
		w := decodeF32(f.Out, want)
		if g := got.Value(j); g != w || math.IsNaN(g) {
			t.Fatal(out.mismatch(ti, j, w))
		}
		for i := range sc.c.n {
			v := float64(vals[i][j])
			d := v - float64(want)
			sc.dist[i] += d * d
			sc.norm[i] += v * v
		}
	}
}

// checkDistances checks the job's squared distances and norms against the references within
// the device's error bound and SumTolerance.
func (sc *selectCheck) checkDistances(t *testing.T, job *device.SelectJob) {
	t.Helper()
	for i := range sc.c.n {
		tol := func(v float64) float64 { return device.SelectSumError*v + SumTolerance(2*int(sc.elems), v) }
		if math.Abs(job.SqDist[i]-sc.dist[i]) > tol(sc.dist[i]) || math.Abs(job.SqNorm[i]-sc.norm[i]) > tol(sc.norm[i]) {
			t.Fatalf("input %d: ‖x−r‖² = %v, ‖x‖² = %v; want %v, %v", i, job.SqDist[i], job.SqNorm[i], sc.dist[i], sc.norm[i])
		}
	}
}

// checkStats checks the statistics Select returned for the job of chunks, and the input bytes
// it reported as progress.
func (sc *selectCheck) checkStats(t *testing.T, stats device.Stats, chunks []device.Chunk, progress *atomic.Int64) {
	t.Helper()
	var written int64
	for _, ch := range chunks {
		written += int64(ch.Len)
	}
	if stats.Elements != sc.elems || stats.Chunks != len(chunks) || stats.BytesRead != sc.read || stats.BytesWritten != written {
		t.Errorf("stats %+v: want %d elements in %d chunks, %d bytes read, %d written", stats, sc.elems, len(chunks), sc.read, written)
	}
	if progress.Load() != sc.read {
		t.Errorf("progress reported %d input bytes, want %d", progress.Load(), sc.read)
	}
}

// SelectMatchesCPU checks that the device's order statistics are the CPU device's bit for bit,
// on inputs full of ties and zeros of both signs: the comparators of the sorting network choose
// as VMINPS and VMAXPS do, so only the same network gives the same bits.
func SelectMatchesCPU(t *testing.T, dev device.Device) {
	rd := dev.(device.Robust)
	cpu, err := device.NewCPU(device.WithWorkers(3), device.WithBlockElems(256))
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(103, 104))
	i := 0
	for _, n := range []int{2, 3, 4, 6, 8, 16, 31, 32, 33, 48, 64} {
		for _, op := range []device.SelectOp{device.Median, device.TrimmedMean, device.ClosestMean} {
			k := map[device.SelectOp]int{device.TrimmedMean: n / 3, device.ClosestMean: (n + 2) / 3}[op]
			dts := [][]tensor.DType{{tensor.F32}, {tensor.F32, tensor.BF16}}[i%2]
			outDT := []tensor.DType{tensor.F32, tensor.BF16, tensor.F64}[i%3]
			i++
			t.Run(fmt.Sprintf("%s/n=%d/k=%d/in=%v/out=%s", op, n, k, dts, outDT), func(t *testing.T) {
				fields, inputs, chunks := robustJob(r, n, dts, outDT, true, 8192)
				outs := []*Output{NewOutput(fields, chunks), NewOutput(fields, chunks)}
				for d, sel := range []device.Robust{rd, cpu} {
					job := &device.SelectJob{Fields: fields, Inputs: inputs, Op: op, K: k, Chunks: chunks, Output: outs[d]}
					if _, err := sel.Select(context.Background(), job); err != nil {
						t.Fatal(err)
					}
				}
				outs[0].Check(t)
				for ti, f := range fields {
					if j := firstDiff(outs[0].Data(ti), outs[1].Data(ti), f.Out.Size()); j >= 0 {
						t.Fatal(outs[0].mismatch(ti, j, fmt.Sprintf("% x (the CPU device's)", outs[1].Data(ti)[j*f.Out.Size():(j+1)*f.Out.Size()])))
					}
				}
			})
		}
	}
}

// SelectNonFinite checks that a result beyond the output dtype's range (a trimmed mean whose sum
// overflows f32, a median too large for f16) stops the job with a *tensor.NonFiniteError
// naming the field, element and value, and that an input holding an Inf the statistic does not
// select leaves the result finite and shows in that input's norm and distance.
func SelectNonFinite(t *testing.T, dev device.Device) {
	rd := dev.(device.Robust)
	r := rand.New(rand.NewPCG(105, 106))
	for _, tc := range []struct {
		name  string
		op    device.SelectOp
		out   tensor.DType
		at    int
		value float32
	}{
		{"trimmed mean overflows f32", device.TrimmedMean, tensor.F32, 777, 3e38},
		{"median overflows f16", device.Median, tensor.F16, 321, 1e5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fields := []device.AccField{{Name: "w", Len: 2000, Acc: tensor.F32, Out: tc.out}}
			var inputs [][]device.Span
			for range 3 {
				x := RandSpan(r, tensor.F32, 2000, 1)
				putU32(x.Data[4*tc.at:], math.Float32bits(tc.value))
				inputs = append(inputs, []device.Span{x})
			}
			chunks, _ := device.CutChunks(fields, []int64{0}, 1024)
			_, err := rd.Select(context.Background(), &device.SelectJob{Fields: fields, Inputs: inputs, Op: tc.op, Chunks: chunks, Output: NewOutput(fields, chunks)})
			var nf *tensor.NonFiniteError
			if !errors.As(err, &nf) || nf.Tensor != "w" || nf.Index != tc.at || !math.IsInf(nf.Value, 1) {
				t.Fatalf("err = %v, want +Inf in w at %d", err, tc.at)
			}
		})
	}
	t.Run("inf input not selected", func(t *testing.T) {
		fields := []device.AccField{{Name: "w", Len: 3000, Acc: tensor.F32, Out: tensor.F32}}
		var inputs [][]device.Span
		for range 5 {
			inputs = append(inputs, []device.Span{RandSpan(r, tensor.F32, 3000, 1)})
		}
		putU32(inputs[2][0].Data[4*1234:], math.Float32bits(float32(math.Inf(1))))
		chunks, _ := device.CutChunks(fields, []int64{0}, 4096)
		out := NewOutput(fields, chunks)
		job := &device.SelectJob{Fields: fields, Inputs: inputs, Op: device.Median, Chunks: chunks, Output: out,
			SqDist: make([]float64, 5), SqNorm: make([]float64, 5)}
		if _, err := rd.Select(context.Background(), job); err != nil {
			t.Fatal(err)
		}
		out.Check(t)
		for i := range 5 {
			inf := math.IsInf(job.SqNorm[i], 1) && math.IsInf(job.SqDist[i], 1)
			finite := !math.IsInf(job.SqNorm[i], 0) && !math.IsNaN(job.SqNorm[i]) && !math.IsInf(job.SqDist[i], 0) && !math.IsNaN(job.SqDist[i])
			if i == 2 && !inf || i != 2 && !finite {
				t.Fatalf("input %d: ‖x−r‖² = %v, ‖x‖² = %v", i, job.SqDist[i], job.SqNorm[i])
			}
		}
	})
}

// SelectRejectsBadJobs checks the validation errors and their sentinels.
func SelectRejectsBadJobs(t *testing.T, dev device.Device) {
	rd := dev.(device.Robust)
	f := []device.AccField{{Name: "w", Len: 4, Acc: tensor.F32, Out: tensor.F32}}
	ok := device.Span{DType: tensor.F32, Data: make([]byte, 16)}
	two := [][]device.Span{{ok}, {ok}}
	chunks, _ := device.CutChunks(f, []int64{0}, 4096)
	out := NewOutput(f, chunks)
	for _, tc := range []struct {
		name string
		job  device.SelectJob
		want error
		msg  string
	}{
		{"no inputs", device.SelectJob{Fields: f, Op: device.Median}, device.ErrJob, "median of no inputs"},
		{"trim", device.SelectJob{Fields: f, Inputs: two, Op: device.TrimmedMean, K: 1}, device.ErrJob, "cutting 1 of 2 values"},
		{"closest", device.SelectJob{Fields: f, Inputs: two, Op: device.ClosestMean, K: 3}, device.ErrJob, "closest mean of 3 of 2 values"},
		{"op", device.SelectJob{Fields: f, Inputs: two, Op: 9}, device.ErrJob, "select op 9"},
		{"f64", device.SelectJob{Fields: f, Inputs: [][]device.Span{{{DType: tensor.F64, Data: make([]byte, 32)}}}, Op: device.Median}, device.ErrUnsupported, "not f64"},
		{"short", device.SelectJob{Fields: f, Inputs: [][]device.Span{{{DType: tensor.F32, Data: make([]byte, 12)}}}, Op: device.Median}, device.ErrJob, "12 bytes of f32 for 4 elements"},
		{"out", device.SelectJob{Fields: []device.AccField{{Name: "w", Len: 4, Out: tensor.U32}}, Inputs: two, Op: device.Median}, device.ErrUnsupported, "output dtype u32"},
		{"distances", device.SelectJob{Fields: f, Inputs: two, Op: device.Median, SqDist: make([]float64, 3)}, device.ErrJob, "3 distances"},
		{"range", device.SelectJob{Fields: f, Inputs: two, Op: device.Median, Chunks: []device.Chunk{{Len: 16, Pieces: []device.Piece{{Field: 0, Lo: 0, Hi: 5}}}}, Output: out}, device.ErrJob, "range [0,5)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := rd.Select(context.Background(), &tc.job)
			if !errors.Is(err, tc.want) || !bytes.Contains([]byte(err.Error()), []byte(tc.msg)) {
				t.Fatalf("err = %v, want %v containing %q", err, tc.want, tc.msg)
			}
		})
	}
}

// SelectCancel checks that a cancelled context stops Select, Gram and SqDistances with
// ctx.Err().
func SelectCancel(t *testing.T, dev device.Device) {
	rd := dev.(device.Robust)
	r := rand.New(rand.NewPCG(107, 108))
	fields := []device.AccField{{Name: "w", Len: 1 << 16, Acc: tensor.F32, Out: tensor.F32}}
	inputs := [][]device.Span{{RandSpan(r, tensor.F32, 1<<16, 1)}, {RandSpan(r, tensor.F32, 1<<16, 1)}}
	chunks, _ := device.CutChunks(fields, []int64{0}, 4096)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := rd.Select(ctx, &device.SelectJob{Fields: fields, Inputs: inputs, Op: device.Median, Chunks: chunks, Output: NewOutput(fields, chunks)})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Select: err = %v, want context.Canceled", err)
	}
	if _, _, err := rd.Gram(ctx, fields, inputs); !errors.Is(err, context.Canceled) {
		t.Fatalf("Gram: err = %v, want context.Canceled", err)
	}
	if _, _, _, err := rd.SqDistances(ctx, fields, inputs, inputs[0]); !errors.Is(err, context.Canceled) {
		t.Fatalf("SqDistances: err = %v, want context.Canceled", err)
	}
}

// GramCentre is the centre device.Robust gives coordinate j of the Gram matrix, from the
// inputs' values there (as RobustValues gives them): their sum from +0 in input order divided by
// n, every operation rounded to f32, or 0 where that is not finite.
func GramCentre(col []float64) float64 {
	var t float64
	for _, v := range col {
		t = r32(t + v)
	}
	r := r32(t / float64(len(col)))
	if math.IsNaN(r) || math.IsInf(r, 0) {
		return 0
	}
	return r
}

// Gram checks the Gram matrix (centred, or raw where the device says so) and the squared norms
// against float64 references (the centred f32 values are exact in f64 and so are their
// products; only the order of the additions is free): every entry within SumTolerance of the reference, the matrix symmetric
// bit for bit, and the statistics.
func Gram(t *testing.T, dev device.Device) {
	rd := dev.(device.Robust)
	r := rand.New(rand.NewPCG(109, 110))
	for _, n := range []int{1, 4, 9, 70} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			fields, inputs := gramJob(r, n)
			g, stats, err := rd.Gram(context.Background(), fields, inputs)
			if err != nil {
				t.Fatal(err)
			}
			c := newGramCheck(g, inputs)
			c.checkMatrix(t)
			c.checkStats(t, stats)
		})
	}
}

// gramJob returns Gram's n random inputs (with ties where n is odd) and their fields.
func gramJob(r *rand.Rand, n int) ([]device.AccField, [][]device.Span) {
	dts := []tensor.DType{tensor.F32, tensor.BF16, tensor.F16, tensor.I8}
	fields, inputs, _ := robustJob(r, n, dts, tensor.F32, n%2 == 1, 4096)
	if n > 64 {
		// More than one 64-row tile of a GPU kernel; the reference costs n²
		// multiply-adds per element: the short fields only.
		fields = fields[:3]
		for i := range inputs {
			inputs[i] = inputs[i][:3]
		}
	}
	return fields, inputs
}

// gramCheck is a Gram matrix and what Gram checks it against: the inputs' values (as
// RobustValues gives them, field after field), their count per input, the bytes they take and
// the centred values.
type gramCheck struct {
	g        device.GramMatrix
	vals, ys [][]float64
	elems    int
	read     int64
}

// newGramCheck returns the gramCheck of g, the Gram matrix of inputs.
func newGramCheck(g device.GramMatrix, inputs [][]device.Span) *gramCheck {
	c := &gramCheck{g: g, vals: make([][]float64, len(inputs))}
	for i, in := range inputs {
		for _, sp := range in {
			for _, v := range RobustValues(sp) {
				c.vals[i] = append(c.vals[i], float64(v))
			}
			c.read += int64(len(sp.Data))
		}
	}
	c.elems = len(c.vals[0])
	c.centre()
	return c
}

// centre sets ys: the centred values (the values themselves where the device kept the raw
// matrix).
func (c *gramCheck) centre() {
	n := len(c.vals)
	c.ys = make([][]float64, n)
	col := make([]float64, n)
	for i := range c.ys {
		c.ys[i] = make([]float64, c.elems)
	}
	for j := range c.elems {
		for i := range n {
			col[i] = c.vals[i][j]
		}
		m := GramCentre(col)
		if c.g.Raw {
			m = 0
		}
		for i := range n {
			c.ys[i][j] = c.vals[i][j] - m
		}
	}
}

// checkMatrix checks the shape of the matrix, then row by row the squared norm and the entries.
func (c *gramCheck) checkMatrix(t *testing.T) {
	t.Helper()
	n := len(c.vals)
	if len(c.g.Centred) != n || len(c.g.SqNorms) != n {
		t.Fatalf("%d rows and %d norms, want %d", len(c.g.Centred), len(c.g.SqNorms), n)
	}
	for a := range n {
		if len(c.g.Centred[a]) != n {
			t.Fatalf("row %d has %d entries, want %d", a, len(c.g.Centred[a]), n)
		}
		c.checkNorm(t, a)
		for b := range n {
			c.checkEntry(t, a, b)
		}
	}
}

// checkNorm checks ‖x_a‖² against the sum of the squares of its values within SumTolerance.
func (c *gramCheck) checkNorm(t *testing.T, a int) {
	t.Helper()
	var norm float64
	for _, x := range c.vals[a] {
		norm += x * x
	}
	if math.Abs(c.g.SqNorms[a]-norm) > SumTolerance(c.elems, norm) {
		t.Fatalf("‖x_%d‖² = %v, want %v ± %v", a, c.g.SqNorms[a], norm, SumTolerance(c.elems, norm))
	}
}

// checkEntry checks G[a][b] against the sum of the products of the centred values within
// SumTolerance, and against G[b][a] bit for bit.
func (c *gramCheck) checkEntry(t *testing.T, a, b int) {
	t.Helper()
	var want, mag float64
	for j, y := range c.ys[a] {
		p := y * c.ys[b][j]
		want += p
		mag += math.Abs(p)
	}
	g := c.g.Centred
	if math.Abs(g[a][b]-want) > SumTolerance(c.elems, mag) || g[a][b] != g[b][a] {
		t.Fatalf("G[%d][%d] = %v, want %v ± %v (G[%d][%d] = %v)", a, b, g[a][b], want, SumTolerance(c.elems, mag), b, a, g[b][a])
	}
}

// checkStats checks the elements and bytes read that Gram reported.
func (c *gramCheck) checkStats(t *testing.T, stats device.Stats) {
	t.Helper()
	// A device may read the inputs twice: the CPU's raw pass, then a centred one.
	if stats.Elements != int64(c.elems) || (stats.BytesRead != c.read && (c.g.Raw || stats.BytesRead != 2*c.read)) {
		t.Errorf("stats %+v: want %d elements, %d bytes read", stats, c.elems, c.read)
	}
}

// GramDistancesPrecise checks Krum's distances where the uncentred Gram matrix fails them
// (issue 9.6): clients that send full models differing by 1e-6 (x_k = x + 1e-6·N(0,1), x ~
// N(0,1), f32), whose squared distances from the Gram matrix must agree with plain f64 sums of
// squared differences to 1e-9 (the uncentred products were off by about a percent), and an
// input holding a NaN, whose own norm is then non-finite while every other row stays finite.
func GramDistancesPrecise(t *testing.T, dev device.Device) {
	rd := dev.(device.Robust)
	r := rand.New(rand.NewPCG(113, 114))
	const n = 11
	elems := 20000
	if large() {
		elems = 300000
	}
	fields := []device.AccField{{Name: "w", Len: elems, Acc: tensor.F32, Out: tensor.F32}}
	base := make([]float32, elems)
	for j := range base {
		base[j] = float32(r.NormFloat64())
	}
	inputs := make([][]device.Span, n)
	vals := make([][]float32, n)
	for i := range inputs {
		sp := device.Span{DType: tensor.F32, Data: make([]byte, 4*elems)}
		vals[i] = make([]float32, elems)
		for j := range elems {
			vals[i][j] = base[j] + float32(1e-6*r.NormFloat64())
			putU32(sp.Data[4*j:], math.Float32bits(vals[i][j]))
		}
		inputs[i] = []device.Span{sp}
	}
	g, _, err := rd.Gram(context.Background(), fields, inputs)
	if err != nil {
		t.Fatal(err)
	}
	if g.Raw {
		t.Fatal("the raw Gram matrix was kept for full models that differ by 1e-6")
	}
	for a := range n {
		for b := range n {
			var want float64
			for j := range elems {
				d := float64(vals[a][j]) - float64(vals[b][j])
				want += d * d
			}
			if got := g.SqDistance(a, b); math.Abs(got-want) > 1e-9*want {
				t.Fatalf("‖x_%d − x_%d‖² = %v, plain sum %v: off by %.3g", a, b, got, want, math.Abs(got-want)/want)
			}
		}
	}
	putU32(inputs[3][0].Data[4*(elems/2):], math.Float32bits(float32(math.NaN())))
	g, _, err = rd.Gram(context.Background(), fields, inputs)
	if err != nil {
		t.Fatal(err)
	}
	finite := func(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }
	for a := range n {
		if finite(g.SqNorms[a]) != (a != 3) {
			t.Fatalf("NaN in input 3: ‖x_%d‖² = %v", a, g.SqNorms[a])
		}
		for b := range n {
			if a != 3 && b != 3 && !finite(g.Centred[a][b]) {
				t.Fatalf("NaN in input 3: G[%d][%d] = %v", a, b, g.Centred[a][b])
			}
		}
	}
}

// SqDistances checks the squared distances to a point and the squared norms against float64
// references within SumTolerance, and that an input holding an Inf has a non-finite norm.
func SqDistances(t *testing.T, dev device.Device) {
	rd := dev.(device.Robust)
	r := rand.New(rand.NewPCG(111, 112))
	for _, n := range []int{1, 3, 8, 17} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			dts := []tensor.DType{tensor.F32, tensor.I8, tensor.BF16, tensor.F16}
			fields, inputs, _ := robustJob(r, n, dts, tensor.F32, false, 4096)
			var z []device.Span
			for _, f := range fields {
				z = append(z, RandSpan(r, tensor.F32, f.Len, 1))
			}
			// Input 0 is f32.
			putU32(inputs[0][len(fields)-1].Data[4*17:], math.Float32bits(float32(math.Inf(-1))))
			dist, norm, stats, err := rd.SqDistances(context.Background(), fields, inputs, z)
			if err != nil {
				t.Fatal(err)
			}
			if len(dist) != n || len(norm) != n {
				t.Fatalf("%d distances and %d norms for %d inputs", len(dist), len(norm), n)
			}
			var elems, read int
			for t := range fields {
				elems += fields[t].Len
				read += 4 * fields[t].Len
				for _, in := range inputs {
					read += len(in[t].Data)
				}
			}
			for i, in := range inputs {
				var wd, wn float64
				for ti := range fields {
					zs := RobustValues(z[ti])
					for j, v := range RobustValues(in[ti]) {
						d := float64(v) - float64(zs[j])
						wd += d * d
						wn += float64(v) * float64(v)
					}
				}
				if i == 0 {
					if !math.IsInf(norm[i], 1) || !math.IsInf(dist[i], 1) {
						t.Fatalf("input %d holds -Inf: ‖x−z‖² = %v, ‖x‖² = %v", i, dist[i], norm[i])
					}
					continue
				}
				if math.Abs(dist[i]-wd) > SumTolerance(2*elems, wd) || math.Abs(norm[i]-wn) > SumTolerance(2*elems, wn) {
					t.Fatalf("input %d: ‖x−z‖² = %v, ‖x‖² = %v; want %v, %v", i, dist[i], norm[i], wd, wn)
				}
			}
			if stats.Elements != int64(elems) || stats.BytesRead != int64(read) {
				t.Errorf("stats %+v: want %d elements, %d bytes read (the point's included)", stats, elems, read)
			}
		})
	}
}

// RobustRejectsBadInputs checks the validation errors of Gram and SqDistances.
func RobustRejectsBadInputs(t *testing.T, dev device.Device) {
	rd := dev.(device.Robust)
	f := []device.AccField{{Name: "w", Len: 4, Acc: tensor.F32, Out: tensor.F32}}
	ok := device.Span{DType: tensor.F32, Data: make([]byte, 16)}
	f64 := device.Span{DType: tensor.F64, Data: make([]byte, 32)}
	short := device.Span{DType: tensor.F32, Data: make([]byte, 12)}
	for _, tc := range []struct {
		name   string
		inputs [][]device.Span
		z      []device.Span
		want   error
		msg    string
	}{
		{"f64", [][]device.Span{{ok}, {f64}}, []device.Span{ok}, device.ErrUnsupported, "not f64"},
		{"short", [][]device.Span{{short}}, []device.Span{ok}, device.ErrJob, "12 bytes of f32 for 4 elements"},
		{"spans", [][]device.Span{{ok, ok}}, []device.Span{ok}, device.ErrJob, "2 spans for 1 fields"},
		{"u32", [][]device.Span{{{DType: tensor.U32, Data: make([]byte, 16)}}}, []device.Span{ok}, device.ErrUnsupported, "u32"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := rd.Gram(context.Background(), f, tc.inputs)
			if !errors.Is(err, tc.want) || !bytes.Contains([]byte(err.Error()), []byte(tc.msg)) {
				t.Fatalf("Gram: err = %v, want %v containing %q", err, tc.want, tc.msg)
			}
			_, _, _, err = rd.SqDistances(context.Background(), f, tc.inputs, tc.z)
			if !errors.Is(err, tc.want) || !bytes.Contains([]byte(err.Error()), []byte(tc.msg)) {
				t.Fatalf("SqDistances: err = %v, want %v containing %q", err, tc.want, tc.msg)
			}
		})
	}
	for _, tc := range []struct {
		name string
		z    []device.Span
		msg  string
	}{
		{"point spans", nil, "point has 0 spans for 1 fields"},
		{"point f64", []device.Span{f64}, `point: field "w" must be 4 f32 values`},
		{"point short", []device.Span{short}, `point: field "w" must be 4 f32 values`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, _, err := rd.SqDistances(context.Background(), f, [][]device.Span{{ok}}, tc.z)
			if !errors.Is(err, device.ErrJob) || !bytes.Contains([]byte(err.Error()), []byte(tc.msg)) {
				t.Fatalf("err = %v, want ErrJob containing %q", err, tc.msg)
			}
		})
	}
}
