package cuda

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/device/devicetest"
	"github.com/wattagg/wattagg/kernels"
	"github.com/wattagg/wattagg/tensor"
)

// The GPU's own paths of the robust operations (device.Robust itself is checked by the
// conformance suite, TestConformance): device-resident inputs, the order statistics' global
// scratch, and work started from a job's callbacks.

// cpuSelect runs the job on the CPU device into a new output.
func cpuSelect(t *testing.T, job device.SelectJob) *devicetest.Output {
	t.Helper()
	cpu, err := device.NewCPU(device.WithWorkers(2))
	if err != nil {
		t.Fatal(err)
	}
	out := devicetest.NewOutput(job.Fields, job.Chunks)
	job.Output, job.SqDist, job.SqNorm, job.Progress = out, nil, nil, nil
	if _, err := cpu.Select(context.Background(), &job); err != nil {
		t.Fatal(err)
	}
	return out
}

// tiesClients are inputs full of equal values and zeros of both signs (f32, so that the signs
// reach the network), where only the CPU's very network gives the CPU's bits.
func tiesClients(r *rand.Rand, fields []device.AccField, n int, dts ...tensor.DType) [][]device.Span {
	in := clients(r, fields, n, dts...)
	few := []float32{-1, float32(math.Copysign(0, -1)), 0, 2}
	for i := range in {
		for k := range in[i] {
			if in[i][k].DType != tensor.F32 {
				continue
			}
			for j := range fields[k].Len {
				if r.IntN(3) > 0 {
					putU32(in[i][k].Data[4*j:], math.Float32bits(few[r.IntN(len(few))]))
				}
			}
		}
	}
	return in
}

var selectOps = []struct {
	op device.SelectOp
	k  func(n int) int
}{
	{device.Median, func(int) int { return 0 }},
	{device.TrimmedMean, func(n int) int { return (n - 1) / 3 }},
	{device.ClosestMean, func(n int) int { return (n + 1) / 2 }},
}

// selectResident computes the host path's bits, which are the CPU device's.
func TestSelectResident(t *testing.T) {
	r := rand.New(rand.NewPCG(50, 51))
	for _, d := range gpus(t, fakePlain, fakePipeline) {
		t.Run(d.name, func(t *testing.T) {
			for i, n := range []int{1, 2, 3, 8, 17, 32, 33, 64, 65, 128, 129, 140} {
				for _, so := range selectOps {
					out := []tensor.DType{tensor.F32, tensor.F64, tensor.BF16, tensor.F16}[i%4]
					t.Run(fmt.Sprintf("%s/n=%d/%s", so.op, n, out), func(t *testing.T) {
						fields := robustFields(out)[:3]
						in := tiesClients(r, fields, n, robustDTypes...)
						chunks, _ := device.CutChunks(fields, devicetest.Packed(fields), 4096)
						job := device.SelectJob{Fields: fields, Inputs: in, Op: so.op, K: so.k(n), Chunks: chunks}
						ref := cpuSelect(t, job)
						res := zeroResident(t, d.g, fields, out)
						if _, err := d.g.selectResident(context.Background(), so.op, so.k(n), uploadAll(t, d.g, fields, in), res); err != nil {
							t.Fatal(err)
						}
						got := download(t, res)
						for k, f := range fields {
							if j := firstDiff(got.At(k).Bytes(), ref.Data(k), out.Size()); j >= 0 {
								t.Fatalf("%s[%d] = %v, want %v (the CPU device's)", f.Name, j, got.At(k).Value(j), ref.Tensor(k).Value(j))
							}
						}
					})
				}
			}
			fields := robustFields(tensor.F32)[:2]
			in := uploadAll(t, d.g, fields, clients(r, fields, 4, tensor.F32, tensor.F64))
			out := zeroResident(t, d.g, fields, tensor.F32)
			if _, err := d.g.selectResident(context.Background(), device.Median, 0, in, out); !errors.Is(err, device.ErrUnsupported) {
				t.Fatalf("f64 input: err = %v, want ErrUnsupported", err)
			}
			in = uploadAll(t, d.g, fields, clients(r, fields, 4, tensor.F32))
			if _, err := d.g.trimmedMeanResident(context.Background(), in, 2, out); !errors.Is(err, device.ErrJob) {
				t.Fatalf("trimming everything: err = %v, want ErrJob", err)
			}
			if _, err := d.g.selectResident(context.Background(), device.ClosestMean, 5, in, out); !errors.Is(err, device.ErrJob) {
				t.Fatalf("closest mean of 5 of 4: err = %v, want ErrJob", err)
			}
			u32 := zeroResident(t, d.g, fields, tensor.U32)
			if _, err := d.g.medianResident(context.Background(), in, u32); !errors.Is(err, device.ErrUnsupported) {
				t.Fatalf("u32 output: err = %v, want ErrUnsupported", err)
			}
		})
	}
}

// Bulyan's closest mean takes the middle of the tied closest windows (issue 9.11), in the
// register kernels (n <= 128) and the table-driven one (n > 128), where the first tied window
// (the rule before) erred low. Each coordinate holds the case's values in another order of the
// inputs; the wants are worked out by hand in f32.
func TestClosestMeanTiesMiddle(t *testing.T) {
	steps := func(n int, lo float32) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = lo + float32(i)
		}
		return v
	}
	cases := []struct {
		name string
		vals []float32
		k    int
		want float32
	}{
		// m = 0.5; starts 2 and 3 tie: mean(-0.5, 0.5)·0.5 + mean(0.5, 1.5)·0.5 (first: 0).
		{"two tied", steps(7, -2.5), 2, 0.5},
		// m = 0.25; starts 2, 3 and 4 tie: the middle window {-0.75, 1.25} (first: -0.75).
		{"three tied", []float32{-2.75, -1.75, -0.75, -0.75, 1.25, 1.25, 2.25, 3.25}, 2, 0.25},
		// 35 inputs, m = 0.5; starts 16 and 17 tie, as in the first case (first: 0).
		{"two tied, 64 wires", steps(35, -16.5), 2, 0.5},
		// 67 inputs, m = 0.5; starts 32 and 33 tie (first: 0).
		{"two tied, 128 wires", steps(67, -32.5), 2, 0.5},
		// 131 inputs, m = 0.5; starts 64 and 65 tie (first: 0).
		{"two tied, network table", steps(131, -64.5), 2, 0.5},
	}
	r := rand.New(rand.NewPCG(58, 59))
	for _, d := range gpus(t, fakePlain, fakePipeline) {
		for _, c := range cases {
			t.Run(d.name+"/"+c.name, func(t *testing.T) {
				n, elems := len(c.vals), 600
				fields := []device.AccField{{Name: "w", Len: elems, Acc: tensor.F32, Out: tensor.F32}}
				in := make([][]device.Span, n)
				for i := range in {
					in[i] = []device.Span{{DType: tensor.F32, Data: make([]byte, 4*elems)}}
				}
				for j := range elems {
					for i, p := range r.Perm(n) {
						putU32(in[i][0].Data[4*j:], math.Float32bits(c.vals[p]))
					}
				}
				chunks, err := device.CutChunks(fields, devicetest.Packed(fields), 1024)
				if err != nil {
					t.Fatal(err)
				}
				job := device.SelectJob{Fields: fields, Inputs: in, Op: device.ClosestMean, K: c.k, Chunks: chunks}
				ref := cpuSelect(t, job)
				out := devicetest.NewOutput(fields, chunks)
				job.Output = out
				if _, err := d.g.Select(context.Background(), &job); err != nil {
					t.Fatal(err)
				}
				gpu, cpu := f32View(out.Data(0)), f32View(ref.Data(0))
				for j := range elems {
					if got := gpu[j]; got != c.want || cpu[j] != c.want {
						t.Fatalf("w[%d] = %v on the GPU, %v on the CPU, want %v", j, got, cpu[j], c.want)
					}
				}
			})
		}
	}
}

// More inputs than a block's shared memory holds keep their columns in global scratch: the same
// network, the same bits, the same distances.
func TestSelectGlobalColumns(t *testing.T) {
	r := rand.New(rand.NewPCG(52, 53))
	for _, d := range gpus(t, fakePipeline) {
		t.Run(d.name, func(t *testing.T) {
			d.g.main.mu.Lock() // no job runs while the limit changes
			saved := d.g.selectShared
			d.g.selectShared = 0
			d.g.main.mu.Unlock()
			defer func() {
				d.g.main.mu.Lock()
				d.g.selectShared = saved
				d.g.main.mu.Unlock()
			}()
			for _, n := range []int{129, 143} {
				for _, so := range selectOps {
					t.Run(fmt.Sprintf("%s/n=%d", so.op, n), func(t *testing.T) {
						fields := robustFields(tensor.BF16)[:4]
						in := tiesClients(r, fields, n, tensor.F32, tensor.I8, tensor.F16)
						chunks, _ := device.CutChunks(fields, devicetest.Packed(fields), 8192)
						job := device.SelectJob{Fields: fields, Inputs: in, Op: so.op, K: so.k(n), Chunks: chunks}
						ref := cpuSelect(t, job)
						out := devicetest.NewOutput(fields, chunks)
						job.Output = out
						job.SqDist, job.SqNorm = make([]float64, n), make([]float64, n)
						if _, err := d.g.Select(context.Background(), &job); err != nil {
							t.Fatal(err)
						}
						out.Check(t)
						for k, f := range fields {
							if j := firstDiff(out.Data(k), ref.Data(k), 2); j >= 0 {
								t.Fatalf("%s[%d] = %v, want %v (the CPU device's)", f.Name, j, out.Tensor(k).Value(j), ref.Tensor(k).Value(j))
							}
						}
						// The distances to the f32 result agree with the CPU's within rounding.
						cpu := must(device.NewCPU())(t)
						cj := job
						cj.Output, cj.SqDist, cj.SqNorm = devicetest.NewOutput(fields, chunks), make([]float64, n), make([]float64, n)
						if _, err := cpu.Select(context.Background(), &cj); err != nil {
							t.Fatal(err)
						}
						elems := 0
						for _, f := range fields {
							elems += f.Len
						}
						for i := range n {
							// Both within device.SelectSumError of the exact sums (the CPU's f32 runs).
							tol := func(v float64) float64 { return 2*device.SelectSumError*v + devicetest.SumTolerance(2*elems, v) }
							if math.Abs(job.SqDist[i]-cj.SqDist[i]) > tol(cj.SqDist[i]) ||
								math.Abs(job.SqNorm[i]-cj.SqNorm[i]) > tol(cj.SqNorm[i]) {
								t.Fatalf("input %d: ‖x−r‖² %v, ‖x‖² %v; the CPU's %v, %v", i, job.SqDist[i], job.SqNorm[i], cj.SqDist[i], cj.SqNorm[i])
							}
						}
					})
				}
			}
		})
	}
}

// gramResident is Gram over device-resident inputs: the matrix of the same values (f32-widened)
// centred on devicetest.GramCentre's centres and the squared norms of the uncentred values, each
// within f64 rounding of a plain reference, the matrix symmetric bit for bit; f64 residents are
// refused as the robust operations refuse f64.
func TestGramResident(t *testing.T) {
	r := rand.New(rand.NewPCG(54, 55))
	for _, d := range gpus(t, fakePlain, fakePipeline) {
		t.Run(d.name, func(t *testing.T) {
			for _, n := range []int{1, 5, 64, 70} {
				t.Run(fmt.Sprint(n), func(t *testing.T) {
					fields := robustFields(tensor.F32)[:3]
					in := clients(r, fields, n, robustDTypes...)
					vals := make([][]float64, n)
					for i := range in {
						for _, sp := range in[i] {
							for _, v := range devicetest.RobustValues(sp) {
								vals[i] = append(vals[i], float64(v))
							}
						}
					}
					elems := len(vals[0])
					ys := make([][]float64, n)
					for i := range ys {
						ys[i] = make([]float64, elems)
					}
					col := make([]float64, n)
					for j := range elems {
						for i := range n {
							col[i] = vals[i][j]
						}
						c := devicetest.GramCentre(col)
						for i := range n {
							ys[i][j] = vals[i][j] - c
						}
					}
					got, stats, err := d.g.gramResident(context.Background(), uploadAll(t, d.g, fields, in))
					if err != nil {
						t.Fatal(err)
					}
					if stats.Elements != 308 || stats.Device != d.g.Name() {
						t.Errorf("stats %+v", stats)
					}
					if len(got.Centred) != n || len(got.SqNorms) != n {
						t.Fatalf("%d rows and %d norms, want %d", len(got.Centred), len(got.SqNorms), n)
					}
					for a := range n {
						var norm float64
						for _, x := range vals[a] {
							norm += x * x
						}
						if math.Abs(got.SqNorms[a]-norm) > devicetest.SumTolerance(elems, norm) {
							t.Fatalf("‖x_%d‖² = %v, want %v", a, got.SqNorms[a], norm)
						}
						for b := range n {
							var want, mag float64
							for j, y := range ys[a] {
								want += y * ys[b][j]
								mag += math.Abs(y * ys[b][j])
							}
							if math.Abs(got.Centred[a][b]-want) > devicetest.SumTolerance(elems, mag) || got.Centred[a][b] != got.Centred[b][a] {
								t.Fatalf("G[%d][%d] = %v, want %v (G[%d][%d] = %v)", a, b, got.Centred[a][b], want, b, a, got.Centred[b][a])
							}
						}
					}
				})
			}
			fields := robustFields(tensor.F32)[:2]
			if _, _, err := d.g.gramResident(context.Background(), uploadAll(t, d.g, fields, clients(r, fields, 2, tensor.F64))); !errors.Is(err, device.ErrUnsupported) {
				t.Fatalf("f64 residents: err = %v, want ErrUnsupported", err)
			}
		})
	}
}

// onDone is a device.Output that calls done after each chunk is written.
type onDone struct {
	*devicetest.Output
	done func(c int) error
}

func (o onDone) Done(c int) error {
	if err := o.done(c); err != nil {
		return err
	}
	return o.Output.Done(c)
}

// within fails t if fn does not return in time: a deadlock shows as a failure, not a hang.
func within(t *testing.T, d time.Duration, fn func()) {
	t.Helper()
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		fn()
	}()
	select {
	case <-ch:
	case <-time.After(d):
		t.Fatalf("no return after %v: deadlock", d)
	}
}

// A server optimizer steps each finished chunk of its weighted sum from the sum's Output,
// on the same GPU: the step runs on the side lane instead of waiting for the lane the sum holds,
// and computes the CPU's bits.
func TestOptimizeFromOutputCallback(t *testing.T) {
	r := rand.New(rand.NewPCG(56, 57))
	for _, d := range gpus(t, fakePlain, fakePipeline) {
		t.Run(d.name, func(t *testing.T) {
			n := 20001
			fields := []device.AccField{{Name: "w", Len: n, Acc: tensor.F64, Out: tensor.F32}}
			in := clients(r, fields, 3, tensor.F32, tensor.BF16)
			chunks, _ := device.CutChunks(fields, []int64{0}, 16<<10)
			x, m, v := make([]float32, n), make([]float32, n), make([]float32, n)
			for j := range x {
				x[j], m[j], v[j] = float32(r.NormFloat64()), float32(r.NormFloat64()), float32(r.Float64())
			}
			x0, m0, v0 := slices.Clone(x), slices.Clone(m), slices.Clone(v)
			out := devicetest.NewOutput(fields, chunks)
			before := d.g.launches["wa_optim"].Load()
			var mu sync.Mutex
			var gram [][]float64
			step := func(c int) error {
				pc := chunks[c].Pieces[0]
				delta := f32View(out.Data(0)[4*pc.Lo : 4*pc.Hi])
				// Another goroutine's callback-free work proceeds meanwhile, on either lane.
				var wg sync.WaitGroup
				if c == 1 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						g, _, err := d.g.Gram(context.Background(), fields, in)
						if err != nil {
							t.Error(err)
						}
						mu.Lock()
						gram = g.Centred
						mu.Unlock()
					}()
				}
				s := &device.OptimJob{Rule: device.OptimFedAdam, OptimParams: kernels.OptimParams{LR: 0.1, Beta1: 0.9, Beta2: 0.99, Tau: 1e-3},
					X: x[pc.Lo:pc.Hi], D: delta, M: m[pc.Lo:pc.Hi], V: v[pc.Lo:pc.Hi],
					XOut: x[pc.Lo:pc.Hi], MOut: m[pc.Lo:pc.Hi], VOut: v[pc.Lo:pc.Hi]}
				_, err := d.g.Optimize(context.Background(), s)
				wg.Wait()
				return err
			}
			within(t, 2*time.Minute, func() {
				_, err := d.g.WeightedSum(context.Background(), &device.SumJob{Fields: fields, Inputs: in, Weights: []float64{1, -2, 0.5},
					Scale: 1, Chunks: chunks, Output: onDone{out, step}})
				if err != nil {
					t.Error(err)
				}
			})
			if t.Failed() {
				return
			}
			if got := d.g.launches["wa_optim"].Load() - before; got < int64(len(chunks)) {
				t.Errorf("wa_optim launched %d times for %d chunks", got, len(chunks))
			}
			if len(gram) != 3 {
				t.Errorf("the concurrent Gram returned %d rows", len(gram))
			}
			// The CPU: the same sum, then the same steps.
			cpu := must(device.NewCPU())(t)
			ref := devicetest.NewOutput(fields, chunks)
			if _, err := cpu.WeightedSum(context.Background(), &device.SumJob{Fields: fields, Inputs: in, Weights: []float64{1, -2, 0.5},
				Scale: 1, Chunks: chunks, Output: ref}); err != nil {
				t.Fatal(err)
			}
			s := &device.OptimJob{Rule: device.OptimFedAdam, OptimParams: kernels.OptimParams{LR: 0.1, Beta1: 0.9, Beta2: 0.99, Tau: 1e-3},
				X: x0, D: f32View(ref.Data(0)), M: m0, V: v0, XOut: x0, MOut: m0, VOut: v0}
			if _, err := cpu.Optimize(context.Background(), s); err != nil {
				t.Fatal(err)
			}
			for j := range n {
				if x[j] != x0[j] || m[j] != m0[j] || v[j] != v0[j] {
					t.Fatalf("element %d: x %v m %v v %v, the CPU's %v %v %v", j, x[j], m[j], v[j], x0[j], m0[j], v0[j])
				}
			}
		})
	}
}

func f32View(b []byte) []float32 {
	t, err := tensor.FromBytes("", tensor.F32, []int{len(b) / 4}, b)
	if err != nil {
		panic(err)
	}
	v, err := t.F32()
	if err != nil {
		panic(err)
	}
	return v
}

// Optimize stages page-locked inputs directly; the results do not change.
func TestOptimizePinned(t *testing.T) {
	r := rand.New(rand.NewPCG(58, 59))
	for _, d := range gpus(t, fakePipeline) {
		t.Run(d.name, func(t *testing.T) {
			n := 300001
			buf := make([][]float32, 4)
			for k := range buf {
				p, err := d.g.allocPinned(4 * n)
				if err != nil {
					t.Fatal(err)
				}
				defer d.g.freePinned(p)
				buf[k] = f32View(p)
				for j := range buf[k] {
					buf[k][j] = float32(r.NormFloat64())
				}
			}
			for j := range buf[3] {
				buf[3][j] = float32(math.Abs(float64(buf[3][j])))
			}
			s := &device.OptimJob{Rule: device.OptimFedYogi, OptimParams: kernels.OptimParams{LR: 0.01, Beta1: 0.9, Beta2: 0.99, Tau: 1e-3},
				X: buf[0], D: buf[1], M: buf[2], V: buf[3], XOut: buf[1], MOut: buf[2], VOut: buf[3]}
			ref := *s
			ref.X, ref.D, ref.M, ref.V = slices.Clone(s.X), slices.Clone(s.D), slices.Clone(s.M), slices.Clone(s.V)
			if _, err := d.g.Optimize(context.Background(), s); err != nil {
				t.Fatal(err)
			}
			for j := range n {
				x, m, v := devicetest.StepReference(&ref, j)
				if s.XOut[j] != x || s.MOut[j] != m || s.VOut[j] != v {
					t.Fatalf("element %d: (%v %v %v), want (%v %v %v)", j, s.XOut[j], s.MOut[j], s.VOut[j], x, m, v)
				}
			}
		})
	}
}

// The table wa_select_net reads is kernels.SortNetwork's comparators, and it sorts: every input
// of zeros and ones (the 0-1 principle) comes out ascending.
func TestSortNetworkTable(t *testing.T) {
	for n := 1; n <= 17; n++ {
		net, comps := sortNetwork(n), kernels.SortNetwork(n)
		if len(net) != 2*len(comps) {
			t.Fatalf("n=%d: %d table entries for %d comparators", n, len(net), len(comps))
		}
		for q, c := range comps {
			if int(net[2*q]) != c[0] || int(net[2*q+1]) != c[1] || c[0] >= c[1] || c[1] >= n {
				t.Fatalf("n=%d: comparator %d is (%d, %d) in the table, %v in kernels", n, q, net[2*q], net[2*q+1], c)
			}
		}
		v := make([]int, n)
		for bits := range 1 << n {
			for i := range v {
				v[i] = bits >> i & 1
			}
			for q := 0; q < len(net); q += 2 {
				a, b := net[q], net[q+1]
				v[a], v[b] = min(v[a], v[b]), max(v[a], v[b])
			}
			if !slices.IsSorted(v) {
				t.Fatalf("n=%d: input %b comes out %v", n, bits, v)
			}
		}
	}
}
