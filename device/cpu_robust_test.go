package device

import (
	"bytes"
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/wattagg/wattagg/internal/race"
	"github.com/wattagg/wattagg/kernels"
	"github.com/wattagg/wattagg/tensor"
)

// robustJob builds n inputs of three fields (lengths that cut blocks and chunks unevenly), the
// input dtypes cycling through dts.
func robustJob(r *rand.Rand, n int, dts []tensor.DType, out tensor.DType) ([]AccField, [][]Span, []Chunk) {
	return robustJobSized(r, n, dts, out, 9000, 4096)
}

// robustJobSized is robustJob with a first field of lenA elements and chunks of chunk bytes.
func robustJobSized(r *rand.Rand, n int, dts []tensor.DType, out tensor.DType, lenA, chunk int) ([]AccField, [][]Span, []Chunk) {
	fields := []AccField{
		{Name: "a", Len: lenA, Acc: tensor.F32, Out: out},
		{Name: "b", Len: 7, Acc: tensor.F32, Out: out},
		{Name: "c", Len: 1333, Acc: tensor.F32, Out: out},
	}
	inputs := make([][]Span, n)
	for i := range inputs {
		for _, f := range fields {
			inputs[i] = append(inputs[i], randSpan(r, dts[i%len(dts)], f.Len, 1))
		}
	}
	chunks, err := CutChunks(fields, packed(fields), chunk)
	if err != nil {
		panic(err)
	}
	return fields, inputs, chunks
}

// valuesF32 returns, per field and element, every input's value as the robust operations see it:
// widened to f32 (i8 as float32(Scale·q)).
func valuesF32(fields []AccField, inputs [][]Span) [][][]float32 {
	vals := make([][][]float32, len(fields))
	for t, f := range fields {
		vals[t] = make([][]float32, f.Len)
		for j := range f.Len {
			v := make([]float32, len(inputs))
			for i, in := range inputs {
				sp := in[t]
				if sp.DType == tensor.I8 {
					v[i] = sp.Scale * float32(int8(sp.Data[j]))
					continue
				}
				v[i] = float32(sp.Value(j))
			}
			vals[t][j] = v
		}
	}
	return vals
}

func TestSelectMatchesKernels(t *testing.T) {
	ctx := context.Background()
	r := rand.New(rand.NewPCG(21, 22))
	for _, tc := range []struct {
		dts []tensor.DType
		out tensor.DType
	}{
		{[]tensor.DType{tensor.F32}, tensor.F32},
		{[]tensor.DType{tensor.F32, tensor.BF16, tensor.F16, tensor.I8}, tensor.F32},
		{[]tensor.DType{tensor.F32}, tensor.BF16},
		{[]tensor.DType{tensor.F32}, tensor.F64},
	} {
		for i, n := range []int{1, 4, 9, 33} {
			// Small chunks (pieces within a block) or large ones (pieces of several blocks).
			fields, inputs, chunks := robustJobSized(r, n, tc.dts, tc.out, 9000, []int{4096, 64 << 10}[i%2])
			vals := valuesF32(fields, inputs)
			for _, op := range []struct {
				op SelectOp
				k  int
				// run applies the kernel to whole fields (the kernels are tested against their
				// per-coordinate reference in package kernels).
				run func(dst []float32, x [][]byte, tmp []float32)
			}{
				{Median, 0, kernels.MedianF32},
				{TrimmedMean, n / 4, func(d []float32, x [][]byte, tmp []float32) { kernels.TrimmedMeanF32(d, x, n/4, tmp) }},
				{ClosestMean, (n + 1) / 2, func(d []float32, x [][]byte, tmp []float32) { kernels.ClosestMeanF32(d, x, (n+1)/2, tmp) }},
			} {
				out := newTestOutput(fields, chunks)
				dist, norm := make([]float64, n), make([]float64, n)
				job := &SelectJob{Fields: fields, Inputs: inputs, Op: op.op, K: op.k, Chunks: chunks, Output: out, SqDist: dist, SqNorm: norm}
				// The reference of every coordinate, once.
				want := make([][]float32, len(fields))
				for ft, f := range fields {
					x := make([][]byte, n)
					for i := range x {
						col := make([]float32, f.Len)
						for j := range col {
							col[j] = vals[ft][j][i]
						}
						x[i] = f32Bytes(col)
					}
					want[ft] = make([]float32, f.Len)
					op.run(want[ft], x, make([]float32, kernels.SortScratch(n)))
				}
				for _, dev := range []*CPU{mustCPU(t, 1, 64), mustCPU(t, 3, 256)} {
					stats, err := dev.Select(ctx, job)
					if err != nil {
						t.Fatal(err)
					}
					if stats.Elements != 9000+7+1333 || stats.Chunks != len(chunks) {
						t.Fatalf("stats %+v", stats)
					}
					for c, d := range out.done {
						if d != 1 {
							t.Fatalf("chunk %d done %d times", c, d)
						}
					}
					wantD, wantN := make([]float64, n), make([]float64, n)
					for ft, f := range fields {
						got := must(tensor.FromBytes(f.Name, f.Out, []int{f.Len}, out.dst[ft]))(t)
						for j := range f.Len {
							v, want := vals[ft][j], want[ft][j]
							conv := float64(want)
							if f.Out == tensor.BF16 {
								conv = float64(tensor.BF16ToF32(tensor.F32ToBF16(want)))
							}
							if g := got.Value(j); g != conv {
								t.Fatalf("%s n=%d %s field %s element %d: %v, kernel reference %v", op.op, n, tc.out, f.Name, j, g, conv)
							}
							for i, x := range v {
								d := float64(x) - float64(want)
								wantD[i] += d * d
								wantN[i] += float64(x) * float64(x)
							}
						}
					}
					for i := range n {
						if math.Abs(dist[i]-wantD[i]) > SelectSumError*wantD[i]+1e-300 || math.Abs(norm[i]-wantN[i]) > SelectSumError*wantN[i] {
							t.Fatalf("%s n=%d: input %d: distance² %v norm² %v, want %v %v", op.op, n, i, dist[i], norm[i], wantD[i], wantN[i])
						}
					}
					for ft := range out.done {
						out.done[ft] = 0
					}
				}
			}
		}
	}
}

func mustCPU(t *testing.T, workers, block int) *CPU {
	t.Helper()
	c, err := NewCPU(WithWorkers(workers), WithBlockElems(block))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestSelectDistancesDoNotDependOnWorkers(t *testing.T) {
	r := rand.New(rand.NewPCG(23, 24))
	fields, inputs, chunks := robustJob(r, 12, []tensor.DType{tensor.F32, tensor.BF16}, tensor.F32)
	var first []float64
	for _, w := range []int{1, 2, 5} {
		d := make([]float64, 12)
		job := &SelectJob{Fields: fields, Inputs: inputs, Op: TrimmedMean, K: 2, Chunks: chunks, Output: newTestOutput(fields, chunks), SqDist: d}
		if _, err := mustCPU(t, w, 64).Select(context.Background(), job); err != nil {
			t.Fatal(err)
		}
		if first == nil {
			first = d
		} else if !slices.Equal(first, d) {
			t.Fatalf("%d workers: distances %v, 1 worker %v", w, d, first)
		}
	}
}

func TestGramAndDistancesMatchFloat64(t *testing.T) {
	ctx := context.Background()
	r := rand.New(rand.NewPCG(25, 26))
	fields, inputs, _ := robustJobSized(r, 11, []tensor.DType{tensor.F32, tensor.F16, tensor.I8}, tensor.F32, 70000, 4096)
	vals := valuesF32(fields, inputs)
	z := make([]Span, len(fields))
	for t, f := range fields {
		z[t] = randSpan(r, tensor.F32, f.Len, 1)
	}
	// The references, once: products of the centred values, norms and distances in float64.
	n := len(inputs)
	wantG, magG := make([][]float64, n), make([][]float64, n)
	rawG, magRaw := make([][]float64, n), make([][]float64, n) // the same without the centre
	wantD, wantN := make([]float64, n), make([]float64, n)
	for a := range n {
		wantG[a], magG[a] = make([]float64, n), make([]float64, n)
		rawG[a], magRaw[a] = make([]float64, n), make([]float64, n)
	}
	y := make([]float64, n)
	for ft, f := range fields {
		for j := range f.Len {
			v := vals[ft][j]
			var sum float32
			for _, x := range v {
				sum += x
			}
			centre := float64(sum / float32(n))
			zj := z[ft].Value(j)
			for a := range n {
				d := float64(v[a]) - zj
				wantD[a] += d * d
				wantN[a] += float64(v[a]) * float64(v[a])
				y[a] = float64(v[a]) - centre
			}
			for a := range n {
				for b := range n {
					p := y[a] * y[b]
					wantG[a][b] += p
					magG[a][b] += math.Abs(p)
					p = float64(v[a]) * float64(v[b])
					rawG[a][b] += p
					magRaw[a][b] += math.Abs(p)
				}
			}
		}
	}
	var gram0 GramMatrix
	var dist0 []float64
	for _, w := range []int{1, 2, 3} {
		dev := mustCPU(t, w, 64)
		gram, stats, err := dev.Gram(ctx, fields, inputs)
		if err != nil {
			t.Fatal(err)
		}
		if stats.Elements != 70000+7+1333 {
			t.Fatalf("stats %+v", stats)
		}
		dist, norm, _, err := dev.SqDistances(ctx, fields, inputs, z)
		if err != nil {
			t.Fatal(err)
		}
		want, mag := wantG, magG
		if gram.Raw {
			want, mag = rawG, magRaw
		}
		for a := range n {
			for b := range n {
				g := gram.Centred[a][b]
				if math.Abs(g-want[a][b]) > 1e-12*mag[a][b] || g != gram.Centred[b][a] {
					t.Fatalf("G[%d][%d] = %v (G[%d][%d] = %v), want %v (raw %v)", a, b, g, b, a, gram.Centred[b][a], want[a][b], gram.Raw)
				}
			}
			if math.Abs(dist[a]-wantD[a]) > 1e-12*wantD[a] || math.Abs(norm[a]-wantN[a]) > 1e-12*wantN[a] ||
				math.Abs(gram.SqNorms[a]-wantN[a]) > 1e-12*wantN[a] {
				t.Fatalf("input %d: distance² %v, norm² %v and %v (Gram); want %v, %v", a, dist[a], norm[a], gram.SqNorms[a], wantD[a], wantN[a])
			}
		}
		// The same bits whatever the number of workers.
		if gram0.Centred == nil {
			gram0, dist0 = gram, dist
		} else if !slices.EqualFunc(gram.Centred, gram0.Centred, slices.Equal) || !slices.Equal(gram.SqNorms, gram0.SqNorms) || !slices.Equal(dist, dist0) {
			t.Fatalf("%d workers: results differ from 1 worker", w)
		}
	}
}

// krumPick is Krum's choice from squared distances d (n·n): the client whose n-f-2 smallest
// distances to the others have the smallest sum, and every client's score.
func krumPick(d [][]float64, set []int, f int) (int, []float64) {
	k := max(1, len(set)-f-2)
	scores := make([]float64, len(d))
	best := -1
	for _, a := range set {
		var near []float64
		for _, b := range set {
			if b != a {
				near = append(near, d[a][b])
			}
		}
		slices.Sort(near)
		for _, v := range near[:min(k, len(near))] {
			scores[a] += v
		}
		if best < 0 || scores[a] < scores[best] {
			best = a
		}
	}
	return best, scores
}

// bulyanSelect is Bulyan's selection: n-2f applications of Krum, each removing its choice.
func bulyanSelect(d [][]float64, f int) []int {
	rest := make([]int, len(d))
	for i := range rest {
		rest[i] = i
	}
	var chosen []int
	for len(chosen) < len(d)-2*f {
		best, _ := krumPick(d, rest, f)
		chosen = append(chosen, best)
		rest = slices.DeleteFunc(rest, func(i int) bool { return i == best })
	}
	slices.Sort(chosen)
	return chosen
}

// TestGramKrumFullModels is issue 9.6's repro: 11 clients of 1M f32 parameters,
// x_k = x_t + 1e-6·N(0,1) with x_t ~ N(0,1), where the uncentred Gram matrix made Krum (f = 1)
// and Bulyan (f = 2) select the wrong clients and every Krum score 1.7% high. Krum's choice,
// its scores and Bulyan's selection from the device's Gram matrix must be those of plain f64
// sums of squared differences (the data is generated here with a fixed seed, not numpy's, so
// the clients are others than the issue's). The uncentred route is checked too, so that the
// test can fail: its scores are off by more than 0.1%.
func TestGramKrumFullModels(t *testing.T) {
	const n = 11
	elems := 1 << 20
	if testing.Short() || race.Enabled {
		elems = 1 << 16
	}
	r := rand.New(rand.NewPCG(9, 6))
	xt := make([]float32, elems)
	for j := range xt {
		xt[j] = float32(r.NormFloat64())
	}
	fields, inputs, vals := inputsAround(r, n, xt, 1e-6)
	exact, uncentred := make([][]float64, n), make([][]float64, n)
	dots := make([][]float64, n)
	for a := range n {
		exact[a], uncentred[a], dots[a] = make([]float64, n), make([]float64, n), make([]float64, n)
		for b := range n {
			var s, p float64
			for j := range elems {
				d := float64(vals[a][j]) - float64(vals[b][j])
				s += d * d
				p = math.FMA(float64(vals[a][j]), float64(vals[b][j]), p)
			}
			exact[a][b], dots[a][b] = s, p
		}
	}
	for a := range n {
		for b := range n {
			if a != b {
				uncentred[a][b] = max(0, dots[a][a]+dots[b][b]-2*dots[a][b])
			}
		}
	}
	all := make([]int, n)
	for i := range all {
		all[i] = i
	}
	wantKrum, wantScores := krumPick(exact, all, 1)
	wantBulyan := bulyanSelect(exact, 2)
	for _, k := range kernels.Impls() {
		t.Run(k.Name(), func(t *testing.T) {
			dev, err := NewCPU(WithWorkers(2), WithKernels(k.Name()))
			if err != nil {
				t.Fatal(err)
			}
			g, _, err := dev.Gram(context.Background(), fields, inputs)
			if err != nil {
				t.Fatal(err)
			}
			d := make([][]float64, n)
			for a := range n {
				d[a] = make([]float64, n)
				for b := range n {
					d[a][b] = g.SqDistance(a, b)
				}
			}
			got, scores := krumPick(d, all, 1)
			if got != wantKrum {
				t.Errorf("Krum picks client %d, the exact distances client %d", got, wantKrum)
			}
			for i := range n {
				if e := math.Abs(scores[i]-wantScores[i]) / wantScores[i]; e > 1e-9 {
					t.Errorf("client %d: Krum score %v, exact %v (off by %.3g)", i, scores[i], wantScores[i], e)
				}
			}
			if sel := bulyanSelect(d, 2); !slices.Equal(sel, wantBulyan) {
				t.Errorf("Bulyan selects %v, the exact distances %v", sel, wantBulyan)
			}
		})
	}
	_, scores := krumPick(uncentred, all, 1)
	var worst float64
	for i := range n {
		worst = max(worst, math.Abs(scores[i]-wantScores[i])/wantScores[i])
	}
	t.Logf("exact: Krum picks %d, Bulyan selects %v; the uncentred Gram matrix's scores are off by up to %.3g", wantKrum, wantBulyan, worst)
	if worst < 1e-3 {
		t.Errorf("the uncentred scores are off by only %.3g: the data does not show the cancellation", worst)
	}
}

func TestRobustOpsRejectBadJobs(t *testing.T) {
	ctx := context.Background()
	r := rand.New(rand.NewPCG(27, 28))
	fields, inputs, chunks := robustJob(r, 4, []tensor.DType{tensor.F32}, tensor.F32)
	dev := mustCPU(t, 2, 64)
	out := newTestOutput(fields, chunks)
	for _, tc := range []struct {
		name string
		job  SelectJob
		err  error
	}{
		{"no inputs", SelectJob{Fields: fields, Op: Median, Chunks: chunks, Output: out}, ErrJob},
		{"trim 2 of 4", SelectJob{Fields: fields, Inputs: inputs, Op: TrimmedMean, K: 2, Chunks: chunks, Output: out}, ErrJob},
		{"closest 0", SelectJob{Fields: fields, Inputs: inputs, Op: ClosestMean, K: 0, Chunks: chunks, Output: out}, ErrJob},
		{"closest 5 of 4", SelectJob{Fields: fields, Inputs: inputs, Op: ClosestMean, K: 5, Chunks: chunks, Output: out}, ErrJob},
		{"unknown op", SelectJob{Fields: fields, Inputs: inputs, Op: 9, Chunks: chunks, Output: out}, ErrJob},
		{"distances", SelectJob{Fields: fields, Inputs: inputs, Op: Median, Chunks: chunks, Output: out, SqDist: make([]float64, 3)}, ErrJob},
		{"short input", SelectJob{Fields: fields, Inputs: append(slices.Clone(inputs[:3]), []Span{inputs[0][0], inputs[0][0], inputs[0][2]}), Op: Median, Chunks: chunks, Output: out}, ErrJob},
		{"f64 input", SelectJob{Fields: fields, Inputs: [][]Span{{randSpan(r, tensor.F64, 9000, 1), inputs[0][1], inputs[0][2]}}, Op: Median, Chunks: chunks, Output: out}, ErrUnsupported},
		{"u32 input", SelectJob{Fields: fields, Inputs: [][]Span{{{DType: tensor.U32, Data: make([]byte, 36000)}, inputs[0][1], inputs[0][2]}}, Op: Median, Chunks: chunks, Output: out}, ErrUnsupported},
	} {
		if _, err := dev.Select(ctx, &tc.job); !errors.Is(err, tc.err) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.err)
		}
	}
	bad := [][]Span{{randSpan(r, tensor.F64, 9000, 1), inputs[0][1], inputs[0][2]}}
	if _, _, err := dev.Gram(ctx, fields, bad); !errors.Is(err, ErrUnsupported) {
		t.Errorf("gram of f64: %v", err)
	}
	z := []Span{inputs[0][0], inputs[0][1]}
	if _, _, _, err := dev.SqDistances(ctx, fields, inputs, z); !errors.Is(err, ErrJob) {
		t.Errorf("distances to a point with a field missing: %v", err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, _, err := dev.Gram(cancelled, fields, inputs); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled gram: %v", err)
	}
	job := &SelectJob{Fields: fields, Inputs: inputs, Op: Median, Chunks: chunks, Output: out}
	if _, err := dev.Select(cancelled, job); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled select: %v", err)
	}
}

func TestSelectReportsOverflow(t *testing.T) {
	fields := []AccField{{Name: "w", Len: 20, Acc: tensor.F32, Out: tensor.F16}}
	chunks := must(CutChunks(fields, []int64{0}, 4096))(t)
	var inputs [][]Span
	for range 3 {
		sp := randSpan(rand.New(rand.NewPCG(1, 1)), tensor.F32, 20, 1)
		putU32(sp.Data[4*13:], math.Float32bits(1e6)) // beyond f16
		inputs = append(inputs, []Span{sp})
	}
	_, err := mustCPU(t, 1, 64).Select(context.Background(), &SelectJob{Fields: fields, Inputs: inputs, Op: Median, Chunks: chunks, Output: newTestOutput(fields, chunks)})
	var nf *tensor.NonFiniteError
	if !errors.As(err, &nf) || nf.Tensor != "w" || nf.Index != 13 {
		t.Fatalf("median beyond the f16 range: %v", err)
	}
}

// TestGramRawOrCentred checks Gram's choice between the raw and the centred matrix: inputs
// whose distances are of the order of their norms (independent updates) keep the raw matrix,
// read once, with every squared distance within rawGramTolerance of plain f64 sums of squared
// differences; inputs at 1e-3 of a common point (relative distances of 1e-6, under the bound's
// 4e-6 here) get the centred one, read twice, distances within 1e-9.
func TestGramRawOrCentred(t *testing.T) {
	const n, elems = 6, 300000
	r := rand.New(rand.NewPCG(21, 22))
	base := make([]float32, elems)
	for j := range base {
		base[j] = float32(r.NormFloat64())
	}
	for _, tc := range []struct {
		name   string
		centre []float32 // clients are centre + spread·N(0,1)
		spread float64
		raw    bool
		tol    float64
	}{
		{"independent", make([]float32, elems), 1, true, rawGramTolerance},
		{"close", base, 1e-3, false, 1e-9},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fields, inputs, vals := inputsAround(r, n, tc.centre, tc.spread)
			dev := mustCPU(t, 2, 64)
			g, stats, err := dev.Gram(context.Background(), fields, inputs)
			if err != nil {
				t.Fatal(err)
			}
			if g.Raw != tc.raw {
				t.Fatalf("raw matrix kept: %v, want %v", g.Raw, tc.raw)
			}
			passes := int64(1)
			if !tc.raw {
				passes = 2
			}
			if stats.Elements != elems || stats.BytesRead != passes*n*4*elems {
				t.Errorf("stats %+v: want %d elements, %d passes over the inputs", stats, elems, passes)
			}
			for a := range n {
				for b := a + 1; b < n; b++ {
					var want float64
					for j := range elems {
						d := float64(vals[a][j]) - float64(vals[b][j])
						want += d * d
					}
					if got := g.SqDistance(a, b); math.Abs(got-want) > tc.tol*want {
						t.Fatalf("‖x_%d − x_%d‖² = %v, plain sum %v: off by %.3g", a, b, got, want, math.Abs(got-want)/want)
					}
				}
			}
		})
	}
}

// inputsAround returns n f32 inputs of one field, x_i[j] = centre[j] + float32(spread·N(0,1)),
// with their values.
func inputsAround(r *rand.Rand, n int, centre []float32, spread float64) ([]AccField, [][]Span, [][]float32) {
	fields := []AccField{{Name: "w", Len: len(centre), Acc: tensor.F32, Out: tensor.F32}}
	inputs := make([][]Span, n)
	vals := make([][]float32, n)
	for i := range inputs {
		vals[i] = make([]float32, len(centre))
		for j, c := range centre {
			vals[i][j] = c + float32(spread*r.NormFloat64())
		}
		inputs[i] = []Span{{DType: tensor.F32, Data: f32Bytes(vals[i])}}
	}
	return fields, inputs, vals
}

// countingOutput is testOutput that counts the requests of each piece, under a lock (the parts
// of a chunk run on several goroutines; its first part requests every piece).
type countingOutput struct {
	*testOutput
	mu    sync.Mutex
	dests map[[2]int]int
}

func (o *countingOutput) Dest(c, p int) ([]byte, error) {
	o.mu.Lock()
	o.dests[[2]int{c, p}]++
	o.mu.Unlock()
	return o.testOutput.Dest(c, p)
}

// check fails t unless every piece was requested once, every chunk done once, and stats count
// the chunks and elements of a job run in parts of limit bytes.
func (o *countingOutput) check(t *testing.T, limit int64, stats Stats, elems int64) {
	t.Helper()
	for c, ch := range o.chunks {
		if o.done[c] != 1 {
			t.Fatalf("parts of %d bytes: chunk %d done %d times", limit, c, o.done[c])
		}
		for p := range ch.Pieces {
			if o.dests[[2]int{c, p}] != 1 {
				t.Fatalf("parts of %d bytes: chunk %d piece %d requested %d times", limit, c, p, o.dests[[2]int{c, p}])
			}
		}
	}
	if stats.Chunks != len(o.chunks) || stats.Elements != elems {
		t.Fatalf("parts of %d bytes: stats %+v", limit, stats)
	}
}

func (o *countingOutput) Done(c int) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.testOutput.Done(c)
}

// A chunk with more input bytes than partBytes runs as parts of whole blocks on several
// workers: the output has the bits of the chunk run whole, each piece is requested once and
// each chunk done once, the distances and norms have the same bits for any number of workers
// (the parts' sums are added in part order) and agree with the whole chunk's to rounding.
func TestSelectPartsOfChunks(t *testing.T) {
	r := rand.New(rand.NewPCG(41, 42))
	fields, inputs, chunks := robustJobSized(r, 40, []tensor.DType{tensor.F32, tensor.BF16}, tensor.F32, 30000, 64<<10)
	saved := partBytes
	defer func() { partBytes = saved }()
	type result struct {
		out        [][]byte
		dist, norm []float64
	}
	run := func(workers int, limit int64) result {
		partBytes = limit
		o := &countingOutput{testOutput: newTestOutput(fields, chunks), dests: map[[2]int]int{}}
		d, q := make([]float64, len(inputs)), make([]float64, len(inputs))
		job := &SelectJob{Fields: fields, Inputs: inputs, Op: Median, Chunks: chunks, Output: o, SqDist: d, SqNorm: q}
		stats, err := mustCPU(t, workers, 256).Select(context.Background(), job)
		if err != nil {
			t.Fatal(err)
		}
		o.check(t, limit, stats, 30000+7+1333)
		return result{o.dst, d, q}
	}
	if parts := cutParts(chunks, []int64{40 * 4, 40 * 4, 40 * 4}, 256); len(parts) != len(chunks) {
		t.Fatalf("%d chunks of at most 64 MiB of inputs cut into %d parts", len(chunks), len(parts))
	}
	whole := run(1, 1<<40)
	var first result
	for _, w := range []int{1, 2, 5} {
		got := run(w, 32<<10)
		for f := range fields {
			if !bytes.Equal(got.out[f], whole.out[f]) {
				t.Fatalf("%d workers, parts: field %d differs from the whole chunks'", w, f)
			}
		}
		if first.dist == nil {
			first = got
		} else if !slices.Equal(got.dist, first.dist) || !slices.Equal(got.norm, first.norm) {
			t.Fatalf("%d workers: distances %v, norms %v; 1 worker %v, %v", w, got.dist, got.norm, first.dist, first.norm)
		}
		for i := range got.dist {
			if math.Abs(got.dist[i]-whole.dist[i]) > 1e-9*whole.dist[i] || math.Abs(got.norm[i]-whole.norm[i]) > 1e-9*whole.norm[i] {
				t.Fatalf("input %d: parts' distance %v, norm %v; whole chunks' %v, %v", i, got.dist[i], got.norm[i], whole.dist[i], whole.norm[i])
			}
		}
	}
	if n := len(cutParts(chunks, []int64{40 * 3, 40 * 3, 40 * 3}, 256)); n < 4*len(chunks) {
		t.Fatalf("parts of 32 KiB: %d for %d chunks", n, len(chunks))
	}
}
