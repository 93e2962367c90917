package cuda

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/device/devicetest"
	"github.com/wattagg/wattagg/kernels"
	"github.com/wattagg/wattagg/tensor"
)

// The GPU-only operations against plain float64 references written here.

// robustDTypes are the input dtypes of the robust operations; realDTypes add f64 (squaredNorms).
var (
	robustDTypes = []tensor.DType{tensor.F32, tensor.BF16, tensor.F16, tensor.I8}
	realDTypes   = []tensor.DType{tensor.F32, tensor.BF16, tensor.F16, tensor.I8, tensor.F64}
)

// clients returns n random inputs over fields, dtypes cycling through dts.
func clients(r *rand.Rand, fields []device.AccField, n int, dts ...tensor.DType) [][]device.Span {
	in := make([][]device.Span, n)
	for i := range in {
		for _, f := range fields {
			in[i] = append(in[i], devicetest.RandSpan(r, dts[i%len(dts)], f.Len, 1+float64(i%3)))
		}
	}
	return in
}

func robustFields(out tensor.DType) []device.AccField {
	lens := []int{1, 7, 300, 4099}
	if !testing.Short() {
		lens = append(lens, 20001)
	}
	var fs []device.AccField
	for i, n := range lens {
		fs = append(fs, device.AccField{Name: fmt.Sprintf("t%d", i), Len: n, Acc: tensor.F64, Out: out})
	}
	return fs
}

// upload puts host inputs on the GPU as residents.
func uploadAll(t *testing.T, g *GPU, fields []device.AccField, in [][]device.Span) []*resident {
	t.Helper()
	var rs []*resident
	for _, x := range in {
		var ts []*tensor.Tensor
		for k, sp := range x {
			tt, err := tensor.FromBytes(fields[k].Name, sp.DType, []int{fields[k].Len}, sp.Data)
			if err != nil {
				t.Fatal(err)
			}
			tt.Scale = sp.Scale
			ts = append(ts, tt)
		}
		set, err := tensor.NewSet(ts...)
		if err != nil {
			t.Fatal(err)
		}
		r, err := g.upload(context.Background(), set)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.free() })
		rs = append(rs, r)
	}
	return rs
}

func zeroResident(t *testing.T, g *GPU, fields []device.AccField, dt tensor.DType) *resident {
	t.Helper()
	var rf []residentField
	for _, f := range fields {
		rf = append(rf, residentField{Name: f.Name, DType: dt, Shape: []int{f.Len}})
	}
	r, err := g.newResident(rf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.free() })
	return r
}

func download(t *testing.T, r *resident) *tensor.Set {
	t.Helper()
	s, err := r.download(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestResidentRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(20, 21))
	for _, d := range gpus(t, fakePlain, fakePipeline) {
		t.Run(d.name, func(t *testing.T) {
			var ts []*tensor.Tensor
			for k, dt := range []tensor.DType{tensor.F32, tensor.F64, tensor.F16, tensor.BF16, tensor.I8, tensor.U32, tensor.F32} {
				n := []int{1, 1023, 0, 4097, 333, 70001, 5}[k]
				sp := devicetest.RandSpan(r, dt, n, 1)
				tt := must(tensor.FromBytes(fmt.Sprintf("x%d", k), dt, []int{n}, sp.Data))(t)
				tt.Scale = sp.Scale
				ts = append(ts, tt)
			}
			set := must(tensor.NewSet(ts...))(t)
			res, err := d.g.upload(context.Background(), set)
			if err != nil {
				t.Fatal(err)
			}
			defer res.free()
			back := download(t, res)
			for k, tt := range ts {
				b := back.At(k)
				if b.Name != tt.Name || b.DType != tt.DType || !slices.Equal(b.Shape, tt.Shape) || b.Scale != tt.Scale || !slices.Equal(b.Bytes(), tt.Bytes()) {
					t.Fatalf("tensor %s came back different (%s %v scale %v)", tt.Name, b.DType, b.Shape, b.Scale)
				}
			}
		})
	}
}

// Inputs in page-locked memory are copied straight to the GPU; results do not change.
func TestPinnedInputs(t *testing.T) {
	r := rand.New(rand.NewPCG(22, 23))
	for _, d := range gpus(t, fakePlain, fakePipeline) {
		t.Run(d.name, func(t *testing.T) {
			fields := []device.AccField{{Name: "a", Len: 50001, Acc: tensor.F32, Out: tensor.F32}, {Name: "b", Len: 999, Acc: tensor.F64, Out: tensor.BF16}}
			in := clients(r, fields, 6, tensor.F32, tensor.BF16)
			for i := range in {
				if i%3 == 2 {
					continue // a mix of page-locked and pageable inputs
				}
				for k, sp := range in[i] {
					p, err := d.g.allocPinned(len(sp.Data))
					if err != nil {
						t.Fatal(err)
					}
					defer d.g.freePinned(p)
					copy(p, sp.Data)
					in[i][k].Data = p
				}
			}
			matchCPU(t, d.g, fields, in)
		})
	}
}

// matchCPU runs a weighted sum of in on g and on the CPU device and compares bit for bit.
func matchCPU(t *testing.T, g *GPU, fields []device.AccField, in [][]device.Span) {
	t.Helper()
	w := make([]float64, len(in))
	for i := range w {
		w[i] = 0.5 + float64(i)
	}
	chunks, err := device.CutChunks(fields, devicetest.Packed(fields), 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	job := &device.SumJob{Fields: fields, Inputs: in, Weights: w, Scale: 1 / 7.0, Chunks: chunks}
	out, ref := devicetest.NewOutput(fields, chunks), devicetest.NewOutput(fields, chunks)
	job.Output = out
	if _, err := g.WeightedSum(context.Background(), job); err != nil {
		t.Fatal(err)
	}
	cpu := must(device.NewCPU())(t)
	job.Output = ref
	if _, err := cpu.WeightedSum(context.Background(), job); err != nil {
		t.Fatal(err)
	}
	out.Check(t)
	for k, f := range fields {
		if !slices.Equal(out.Data(k), ref.Data(k)) {
			t.Fatalf("field %s differs from the CPU device's result", f.Name)
		}
	}
}

func TestWeightedSumResident(t *testing.T) {
	r := rand.New(rand.NewPCG(24, 25))
	for _, d := range gpus(t, fakePlain, fakePipeline) {
		t.Run(d.name, func(t *testing.T) {
			fields := []device.AccField{
				{Name: "a", Len: 40001, Acc: tensor.F32, Out: tensor.F32},
				{Name: "b", Len: 777, Acc: tensor.F64, Out: tensor.F16},
				{Name: "c", Len: 5, Acc: tensor.F64, Out: tensor.F64},
				{Name: "d", Len: 0, Acc: tensor.F32, Out: tensor.BF16},
			}
			in := clients(r, fields, 7, tensor.F32, tensor.I8, tensor.BF16)
			res := uploadAll(t, d.g, fields, in)
			out := d.g.newOut(t, fields)
			w := []float64{1, 2, 3, 4, 5, 6, 7}
			stats, err := d.g.weightedSumResident(context.Background(), fields, res, w, 1.0/28, out)
			if err != nil {
				t.Fatal(err)
			}
			if stats.Elements != 40001+777+5 {
				t.Errorf("stats: %d elements", stats.Elements)
			}
			// The CPU device computes the same bits.
			chunks := must(device.CutChunks(fields, devicetest.Packed(fields), 8192))(t)
			ref := devicetest.NewOutput(fields, chunks)
			cpu := must(device.NewCPU())(t)
			if _, err := cpu.WeightedSum(context.Background(), &device.SumJob{Fields: fields, Inputs: in, Weights: w, Scale: 1.0 / 28, Chunks: chunks, Output: ref}); err != nil {
				t.Fatal(err)
			}
			got := download(t, out)
			for k, f := range fields {
				if !slices.Equal(got.At(k).Bytes(), ref.Data(k)) {
					t.Fatalf("field %s differs from the CPU device's result", f.Name)
				}
			}

			// A sum that overflows its f16 output is reported with its element.
			_, err = d.g.weightedSumResident(context.Background(), fields, res, []float64{1e6, 1, 1, 1, 1, 1, 1}, 1, out)
			var nf *tensor.NonFiniteError
			if !errors.As(err, &nf) || nf.Tensor != "b" || !math.IsInf(nf.Value, 0) {
				t.Fatalf("err = %v, want an overflow in b", err)
			}
			if _, err := d.g.weightedSumResident(context.Background(), fields, res, w[:3], 1, out); !errors.Is(err, device.ErrJob) {
				t.Fatalf("3 weights for 7 inputs: err = %v", err)
			}
			if _, err := d.g.weightedSumResident(context.Background(), fields, res, w, 1, res[0]); !errors.Is(err, device.ErrJob) {
				t.Fatalf("output among the inputs: err = %v", err)
			}
		})
	}
}

// newOut allocates a resident for the Out dtypes of fields.
func (g *GPU) newOut(t *testing.T, fields []device.AccField) *resident {
	t.Helper()
	var rf []residentField
	for _, f := range fields {
		rf = append(rf, residentField{Name: f.Name, DType: f.Out, Shape: []int{f.Len}})
	}
	r, err := g.newResident(rf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.free() })
	return r
}

func gramRef(in [][]device.Span) (g, mag [][]float64) {
	n := len(in)
	vals := make([][]float64, n)
	for a := range n {
		for _, sp := range in[a] {
			vals[a] = append(vals[a], devicetest.Values(sp)...)
		}
	}
	g, mag = make([][]float64, n), make([][]float64, n)
	for a := range n {
		g[a], mag[a] = make([]float64, n), make([]float64, n)
		for b := range n {
			for j, x := range vals[a] {
				p := x * vals[b][j]
				g[a][b] += p
				mag[a][b] += math.Abs(p)
			}
		}
	}
	return g, mag
}

func TestSumSquares(t *testing.T) {
	r := rand.New(rand.NewPCG(28, 29))
	for _, d := range gpus(t, fakePlain, fakePipeline) {
		t.Run(d.name, func(t *testing.T) {
			fields := robustFields(tensor.F64)
			in := clients(r, fields, 9, realDTypes...)
			want, _ := gramRef(in)
			for how, f := range map[string]func() ([]float64, error){
				"host": func() ([]float64, error) { return d.g.squaredNorms(context.Background(), fields, in) },
				"resident": func() ([]float64, error) {
					return d.g.squaredNormsResident(context.Background(), uploadAll(t, d.g, fields, in))
				},
			} {
				got, err := f()
				if err != nil {
					t.Fatal(err)
				}
				for i := range in {
					if math.Abs(got[i]-want[i][i]) > 1e-12*want[i][i] {
						t.Fatalf("%s: input %d: %v, want %v", how, i, got[i], want[i][i])
					}
				}
			}
		})
	}
}

func firstDiff(a, b []byte, size int) int {
	for j := 0; j+size <= len(a); j += size {
		if !slices.Equal(a[j:j+size], b[j:j+size]) {
			return j / size
		}
	}
	return -1
}

// encode converts a float64 result to dt as the kernels do (16-bit formats through f32).
func encode(dt tensor.DType, v float64) []byte {
	b := make([]byte, dt.Size())
	switch dt {
	case tensor.F64:
		putU64(b, math.Float64bits(v))
	case tensor.F32:
		putU32(b, math.Float32bits(float32(v)))
	case tensor.BF16:
		putU16(b, tensor.F32ToBF16(float32(v)))
	case tensor.F16:
		putU16(b, tensor.F32ToF16(float32(v)))
	}
	return b
}

func putU16(b []byte, v uint16) { b[0], b[1] = byte(v), byte(v>>8) }
func putU32(b []byte, v uint32) { putU16(b, uint16(v)); putU16(b[2:], uint16(v>>16)) }
func putU64(b []byte, v uint64) { putU32(b, uint32(v)); putU32(b[4:], uint32(v>>32)) }

func TestModSum(t *testing.T) {
	r := rand.New(rand.NewPCG(32, 33))
	for _, d := range gpus(t, fakePlain, fakePipeline) {
		t.Run(d.name, func(t *testing.T) {
			fields := robustFields(tensor.U32)
			in := clients(r, fields, 11, tensor.U32)
			chunks := must(device.CutChunks(fields, devicetest.Packed(fields), 4096))(t)
			out := devicetest.NewOutput(fields, chunks)
			if _, err := d.g.ModSum(context.Background(), fields, in, chunks, out); err != nil {
				t.Fatal(err)
			}
			out.Check(t)
			res := zeroResident(t, d.g, fields, tensor.U32)
			if _, err := d.g.modSumResident(context.Background(), uploadAll(t, d.g, fields, in), res); err != nil {
				t.Fatal(err)
			}
			rs := download(t, res)
			for k, f := range fields {
				got, _ := out.Tensor(k).U32()
				gotRes, _ := rs.At(k).U32()
				for j := range f.Len {
					var want uint32
					for i := range in {
						want += uint32(in[i][k].Value(j))
					}
					if got[j] != want || gotRes[j] != want {
						t.Fatalf("%s[%d] = %d (resident %d), want %d", f.Name, j, got[j], gotRes[j], want)
					}
				}
			}
			bad := clients(r, fields, 2, tensor.F32)
			if _, err := d.g.ModSum(context.Background(), fields, bad, chunks, out); !errors.Is(err, device.ErrUnsupported) {
				t.Fatalf("f32 inputs: err = %v", err)
			}
		})
	}
}

// wa_optim numbers its rules (optim.cu's OPT_AVGM = 1 ... OPT_YOGI = 4) as device.OptimRule does:
// the engine passes the rule through.
func TestOptimRuleNumbers(t *testing.T) {
	for want, r := range []device.OptimRule{device.OptimFedAvgM, device.OptimFedAdagrad, device.OptimFedAdam, device.OptimFedYogi} {
		if int(r) != want+1 {
			t.Fatalf("%s is %d; optim.cu has %d", r, int(r), want+1)
		}
	}
}

// The device-resident step is the kernel of Optimize on residents: three rounds with the state
// carried over compute devicetest.StepReference's bits, device.OptimJob's arithmetic.
func TestOptimizerStep(t *testing.T) {
	r := rand.New(rand.NewPCG(34, 35))
	for _, d := range gpus(t, fakePlain) {
		t.Run(d.name, func(t *testing.T) {
			fields := robustFields(tensor.F32)
			for _, rule := range []device.OptimRule{device.OptimFedAvgM, device.OptimFedAdagrad, device.OptimFedAdam, device.OptimFedYogi} {
				t.Run(rule.String(), func(t *testing.T) {
					p := kernels.OptimParams{LR: 0.01, Beta1: 0.9, Beta2: 0.99, Tau: 1e-3}
					state := clients(r, fields, 4, tensor.F32) // x, delta, m, v
					for k := range fields {
						d := must(tensor.FromBytes("", tensor.F32, []int{fields[k].Len}, state[1][k].Data))(t)
						v := must(tensor.FromBytes("", tensor.F32, []int{fields[k].Len}, state[3][k].Data))(t)
						ds, _ := d.F32()
						vs, _ := v.F32()
						for j := range vs {
							vs[j] = float32(math.Abs(float64(vs[j]))) // v >= 0
							if j%5 == 0 {
								vs[j] = float32(ds[j] * ds[j]) // sign(v - Δ²) = 0 for FedYogi
							}
						}
					}
					res := uploadAll(t, d.g, fields, state)
					for range 3 { // three rounds, the state carried over
						v := res[3]
						if !rule.SecondMoment() {
							v = nil
						}
						if err := d.g.step(context.Background(), rule, p, res[0], res[1], res[2], v); err != nil {
							t.Fatal(err)
						}
						for k, f := range fields {
							x := must(tensor.FromBytes("", tensor.F32, []int{f.Len}, state[0][k].Data))(t)
							dd := must(tensor.FromBytes("", tensor.F32, []int{f.Len}, state[1][k].Data))(t)
							m := must(tensor.FromBytes("", tensor.F32, []int{f.Len}, state[2][k].Data))(t)
							vv := must(tensor.FromBytes("", tensor.F32, []int{f.Len}, state[3][k].Data))(t)
							xs, _ := x.F32()
							ds, _ := dd.F32()
							ms, _ := m.F32()
							vs, _ := vv.F32()
							ref := device.OptimJob{Rule: rule, OptimParams: p, X: xs, D: ds, M: ms, V: vs}
							for j := range xs {
								x, m, v := devicetest.StepReference(&ref, j)
								xs[j], ms[j] = x, m
								if rule.SecondMoment() {
									vs[j] = v
								}
							}
						}
					}
					for q, name := range []string{"x", "delta", "m", "v"} {
						got := download(t, res[q])
						for k, f := range fields {
							if i := firstDiff(got.At(k).Bytes(), state[q][k].Data, 4); i >= 0 {
								want := must(tensor.FromBytes("", tensor.F32, []int{f.Len}, state[q][k].Data))(t)
								t.Fatalf("%s %s[%d] = %v, want %v", name, f.Name, i, got.At(k).Value(i), want.Value(i))
							}
						}
					}
				})
			}
			x := zeroResident(t, d.g, fields, tensor.F32)
			if err := d.g.step(context.Background(), device.OptimFedAdam, kernels.OptimParams{}, x, x, x, x); !errors.Is(err, device.ErrJob) {
				t.Fatalf("aliased state: err = %v", err)
			}
			f64 := zeroResident(t, d.g, fields, tensor.F64)
			if err := d.g.step(context.Background(), device.OptimFedAvgM, kernels.OptimParams{}, f64, x, zeroResident(t, d.g, fields, tensor.F32), nil); !errors.Is(err, device.ErrUnsupported) {
				t.Fatalf("f64 model: err = %v", err)
			}
		})
	}
}

func TestScale(t *testing.T) {
	r := rand.New(rand.NewPCG(36, 37))
	for _, d := range gpus(t, fakePlain) {
		t.Run(d.name, func(t *testing.T) {
			fields := robustFields(tensor.F32)
			in := clients(r, fields, 2, tensor.F32, tensor.F64)
			res := uploadAll(t, d.g, fields, in)
			for _, x := range res {
				if err := d.g.scale(context.Background(), x, 0.3); err != nil {
					t.Fatal(err)
				}
			}
			for i, x := range res {
				got := download(t, x)
				for k := range fields {
					for j := range fields[k].Len {
						var want []byte
						if in[i][k].DType == tensor.F32 {
							want = encode(tensor.F32, float64(float32(in[i][k].Value(j))*float32(0.3)))
						} else {
							want = encode(tensor.F64, in[i][k].Value(j)*0.3)
						}
						sz := in[i][k].DType.Size()
						if g := got.At(k).Bytes()[j*sz : (j+1)*sz]; !slices.Equal(g, want) {
							t.Fatalf("input %d %s[%d] = % x, want % x", i, fields[k].Name, j, g, want)
						}
					}
				}
			}
		})
	}
}

// philox is Philox4x32-10 as Random123 defines it.
func philox(ctr [4]uint32, key [2]uint32) [4]uint32 {
	for r := range 10 {
		if r > 0 {
			key[0] += 0x9E3779B9
			key[1] += 0xBB67AE85
		}
		p0 := uint64(0xD2511F53) * uint64(ctr[0])
		p1 := uint64(0xCD9E8D57) * uint64(ctr[2])
		ctr = [4]uint32{uint32(p1>>32) ^ ctr[1] ^ key[0], uint32(p1), uint32(p0>>32) ^ ctr[3] ^ key[1], uint32(p0)}
	}
	return ctr
}

// Known answers of Random123's kat_vectors for philox4x32-10.
func TestPhiloxKnownAnswers(t *testing.T) {
	for _, tc := range []struct {
		ctr  [4]uint32
		key  [2]uint32
		want [4]uint32
	}{
		{[4]uint32{}, [2]uint32{}, [4]uint32{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
		{[4]uint32{^uint32(0), ^uint32(0), ^uint32(0), ^uint32(0)}, [2]uint32{^uint32(0), ^uint32(0)}, [4]uint32{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
		{[4]uint32{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, [2]uint32{0xa4093822, 0x299f31d0}, [4]uint32{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
	} {
		if got := philox(tc.ctr, tc.key); got != tc.want {
			t.Errorf("philox(%08x, %08x) = %08x, want %08x", tc.ctr, tc.key, got, tc.want)
		}
	}
}

// noiseRef is the normal that element j of a buffer noised from counter c0 receives.
func noiseRef(seed, c0 uint64, j int) float64 {
	c := c0 + uint64(j/4)
	w := philox([4]uint32{uint32(c), uint32(c >> 32)}, [2]uint32{uint32(seed), uint32(seed >> 32)})
	pair := j % 4 / 2
	u1 := (float64(w[2*pair]) + 0.5) * 0x1p-32
	u2 := (float64(w[2*pair+1]) + 0.5) * 0x1p-32
	r := math.Sqrt(-2 * math.Log(u1))
	if j%2 == 0 {
		return r * math.Cos(2*math.Pi*u2)
	}
	return r * math.Sin(2*math.Pi*u2)
}

func TestAddNoise(t *testing.T) {
	for _, d := range gpus(t, fakePlain) {
		t.Run(d.name, func(t *testing.T) {
			fields := robustFields(tensor.F32)
			r := rand.New(rand.NewPCG(38, 39))
			in := clients(r, fields, 2, tensor.F32, tensor.F64)
			res := uploadAll(t, d.g, fields, in)
			const seed, sigma = 0x0123456789abcdef, 0.5
			var next uint64 = 1000
			var total uint64
			for _, f := range fields {
				total += uint64(f.Len+3) / 4
			}
			bases := make([][]uint64, len(res))
			for i, x := range res {
				c0 := next
				var err error
				if next, err = d.g.addNoise(context.Background(), x, sigma, seed, next); err != nil {
					t.Fatal(err)
				}
				if next != c0+total {
					t.Fatalf("addNoise returned counter %d, want %d", next, c0+total)
				}
				for _, f := range fields {
					bases[i] = append(bases[i], c0)
					c0 += uint64(f.Len+3) / 4
				}
			}
			var sum, sum2 float64
			var count int
			for i, x := range res {
				got := download(t, x)
				for k, f := range fields {
					for j := range f.Len {
						z := noiseRef(seed, bases[i][k], j)
						v := got.At(k).Value(j)
						want := in[i][k].Value(j) + sigma*z
						tol := 1e-12 * (math.Abs(want) + 1)
						if in[i][k].DType == tensor.F32 {
							want = float64(float32(want))
							tol = 4 * 0x1p-24 * (math.Abs(want) + 1e-30)
						}
						if math.Abs(v-want) > tol {
							t.Fatalf("input %d %s[%d] = %v, want %v", i, f.Name, j, v, want)
						}
						sum += z
						sum2 += z * z
						count++
					}
				}
			}
			// The reference normals are normal: mean 0 and variance 1 within 5 standard errors.
			mean, varc := sum/float64(count), sum2/float64(count)
			if math.Abs(mean) > 5/math.Sqrt(float64(count)) || math.Abs(varc-1) > 5*math.Sqrt(2/float64(count)) {
				t.Fatalf("noise mean %v variance %v over %d draws", mean, varc, count)
			}
			if _, err := d.g.addNoise(context.Background(), res[0], -1, seed, 0); !errors.Is(err, device.ErrJob) {
				t.Fatalf("negative sigma: err = %v", err)
			}
		})
	}
}
