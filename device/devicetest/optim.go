package devicetest

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/kernels"
	"github.com/wattagg/wattagg/tensor"
)

// The conformance tests of device.Optimizer and device.ModSummer. Both are exact: the optimizer
// step's every operation is an f32 operation the job's doc fixes, and modular sums have one
// answer, so results are compared bit for bit with references written here.

// Optimizer runs every conformance test of device.Optimizer as a subtest; dev must implement it.
func Optimizer(t *testing.T, dev device.Device) {
	if _, ok := dev.(device.Optimizer); !ok {
		t.Fatalf("%s does not implement device.Optimizer", dev.Name())
	}
	t.Run("Optimize", func(t *testing.T) { Optimize(t, dev) })
	t.Run("OptimizeSpecialValues", func(t *testing.T) { OptimizeSpecialValues(t, dev) })
	t.Run("OptimizeRejectsBadJobs", func(t *testing.T) { OptimizeRejectsBadJobs(t, dev) })
}

// ModSummer runs every conformance test of device.ModSummer as a subtest; dev must implement it.
func ModSummer(t *testing.T, dev device.Device) {
	if _, ok := dev.(device.ModSummer); !ok {
		t.Fatalf("%s does not implement device.ModSummer", dev.Name())
	}
	t.Run("ModSum", func(t *testing.T) { ModSum(t, dev) })
	t.Run("ModSumRejectsBadJobs", func(t *testing.T) { ModSumRejectsBadJobs(t, dev) })
}

// StepReference is element j of the job per device.OptimJob's doc comment, every operation
// rounded to f32 (the explicit conversions keep Go from fusing multiply-adds).
func StepReference(s *device.OptimJob, j int) (x, m, v float32) {
	d := s.D[j]
	if s.Rule == device.OptimFedAvgM {
		m = float32(s.Beta1*s.M[j]) + d
		return s.X[j] + float32(s.LR*m), m, 0
	}
	m = float32(s.Beta1*s.M[j]) + float32((1-s.Beta1)*d)
	d2 := float32(d * d)
	switch s.Rule {
	case device.OptimFedAdagrad:
		v = s.V[j] + d2
	case device.OptimFedAdam:
		v = float32(s.Beta2*s.V[j]) + float32((1-s.Beta2)*d2)
	case device.OptimFedYogi:
		var sg float32
		if diff := s.V[j] - d2; diff > 0 {
			sg = 1
		} else if diff < 0 {
			sg = -1
		}
		v = s.V[j] - float32(float32((1-s.Beta2)*d2)*sg)
	}
	return s.X[j] + float32(s.LR*m)/(float32(math.Sqrt(float64(v)))+s.Tau), m, v
}

// poisonF32 fills v with a NaN of a payload no operation produces.
func poisonF32(v []float32) {
	p := math.Float32frombits(0x7fa5a5a5)
	for i := range v {
		v[i] = p
	}
}

// sameF32 reports whether got is want bit for bit, or both are NaN: a NaN's payload is the
// hardware's choice (x86 keeps an operand's, NVIDIA GPUs return a canonical one).
func sameF32(got, want float32) bool {
	return math.Float32bits(got) == math.Float32bits(want) || got != got && want != want
}

// Aliasing of an optimizer job's outputs, as device.OptimJob allows it.
type aliasing int

const (
	separate aliasing = iota // every output its own slice
	inPlace                  // XOut = X, MOut = M, VOut = V
	overD                    // XOut = D (the update overwritten by the model), MOut = M, VOut = V
)

func (a aliasing) String() string { return [...]string{"separate", "in-place", "x-over-delta"}[a] }

// optimJob returns a job of n elements: normal x, Δ and m, v >= 0 and, every fifth element,
// v = Δ² (FedYogi's sign 0); outputs as a says, poisoned where they are not inputs.
func optimJob(r *rand.Rand, rule device.OptimRule, n int, a aliasing) *device.OptimJob {
	s := &device.OptimJob{Rule: rule, OptimParams: kernels.OptimParams{LR: 0.05, Beta1: 0.9, Beta2: 0.99, Tau: 1e-3}}
	in := make([][]float32, 4)
	for k := range in {
		in[k] = make([]float32, n)
		for j := range in[k] {
			in[k][j] = float32(r.NormFloat64())
		}
	}
	for j := range in[3] {
		in[3][j] = float32(math.Abs(float64(in[3][j])))
		if j%5 == 0 {
			in[3][j] = float32(in[1][j] * in[1][j])
		}
	}
	s.X, s.D, s.M, s.V = in[0], in[1], in[2], in[3]
	switch a {
	case separate:
		s.XOut, s.MOut, s.VOut = make([]float32, n), make([]float32, n), make([]float32, n)
		poisonF32(s.XOut)
		poisonF32(s.MOut)
		poisonF32(s.VOut)
	case inPlace:
		s.XOut, s.MOut, s.VOut = s.X, s.M, s.V
	case overD:
		s.XOut, s.MOut, s.VOut = s.D, s.M, s.V
	}
	if !rule.SecondMoment() {
		s.V, s.VOut = nil, nil
	}
	return s
}

var optimRules = []device.OptimRule{device.OptimFedAvgM, device.OptimFedAdagrad, device.OptimFedAdam, device.OptimFedYogi}

// checkStep runs s on dev and compares every output with StepReference computed from a copy of
// the inputs taken before, bit for bit, and checks that inputs that are not outputs are
// unchanged.
func checkStep(t *testing.T, opt device.Optimizer, s *device.OptimJob) device.Stats {
	t.Helper()
	ref := *s
	ref.X, ref.D, ref.M, ref.V = slices.Clone(s.X), slices.Clone(s.D), slices.Clone(s.M), slices.Clone(s.V)
	stats, err := opt.Optimize(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	second := s.Rule.SecondMoment()
	for j := range s.X {
		x, m, v := StepReference(&ref, j)
		if !sameF32(s.XOut[j], x) || !sameF32(s.MOut[j], m) || second && !sameF32(s.VOut[j], v) {
			got := fmt.Sprintf("x %v m %v", s.XOut[j], s.MOut[j])
			if second {
				got += fmt.Sprintf(" v %v", s.VOut[j])
			}
			t.Fatalf("element %d of %d: %s, want x %v m %v v %v (x %v Δ %v m %v)", j, len(s.X), got, x, m, v, ref.X[j], ref.D[j], ref.M[j])
		}
	}
	// Inputs that are not outputs stay as they were.
	written := func(in []float32) bool {
		return len(in) > 0 && (&in[0] == &s.XOut[0] || &in[0] == &s.MOut[0] || second && &in[0] == &s.VOut[0])
	}
	for k, pair := range [][2][]float32{{s.X, ref.X}, {s.D, ref.D}, {s.M, ref.M}, {s.V, ref.V}} {
		if !written(pair[0]) && !slices.EqualFunc(pair[0], pair[1], sameF32) {
			t.Fatalf("input %s was changed", []string{"X", "D", "M", "V"}[k])
		}
	}
	return stats
}

// Optimize checks every rule, for lengths from 0 to more than a GPU's transfer unit, with
// separate and aliased outputs, against StepReference bit for bit, and the statistics.
func Optimize(t *testing.T, dev device.Device) {
	opt := dev.(device.Optimizer)
	r := rand.New(rand.NewPCG(201, 202))
	lens := []int{0, 1, 7, 256, 1000, 4099}
	if large() {
		lens = append(lens, 300001) // more than a GPU's unit of results (1 MiB of each output)
	}
	for _, rule := range optimRules {
		for _, n := range lens {
			for _, a := range []aliasing{separate, inPlace, overD} {
				t.Run(fmt.Sprintf("%s/n=%d/%s", rule, n, a), func(t *testing.T) {
					s := optimJob(r, rule, n, a)
					stats := checkStep(t, opt, s)
					read, written := int64(12), int64(8)
					if rule.SecondMoment() {
						read, written = 16, 12
					}
					if stats.Elements != int64(n) || stats.BytesRead != read*int64(n) || stats.BytesWritten != written*int64(n) {
						t.Errorf("stats %+v: want %d elements, %d bytes read, %d written", stats, n, read*int64(n), written*int64(n))
					}
				})
			}
		}
	}
}

// OptimizeSpecialValues checks zeros of both signs, subnormals, values near the f32 range,
// Inf and NaN, which propagate as the formulas say (a NaN with any payload).
func OptimizeSpecialValues(t *testing.T, dev device.Device) {
	opt := dev.(device.Optimizer)
	special := []float32{0, float32(math.Copysign(0, -1)), 1e-40, -1e-40, 1e-20, 3e38, -3e38, 1,
		float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.NaN()), 0.5}
	n := len(special) * len(special)
	for _, rule := range optimRules {
		t.Run(rule.String(), func(t *testing.T) {
			s := optimJob(rand.New(rand.NewPCG(203, 204)), rule, n, separate)
			for j := range n {
				a, b := special[j%len(special)], special[j/len(special)]
				s.D[j], s.X[j] = a, b
				s.M[j] = special[(j+3)%len(special)]
				if s.V != nil {
					s.V[j] = float32(math.Abs(float64(special[(j+5)%len(special)])))
				}
			}
			checkStep(t, opt, s)
		})
	}
}

// OptimizeRejectsBadJobs checks the validation errors and that a cancelled context stops a job
// with ctx.Err().
func OptimizeRejectsBadJobs(t *testing.T, dev device.Device) {
	opt := dev.(device.Optimizer)
	five := make([]float32, 5)
	for _, tc := range []struct {
		name string
		job  device.OptimJob
		msg  string
	}{
		{"rule", device.OptimJob{Rule: 0, X: five, D: five, M: five, XOut: five, MOut: five}, "unknown rule 0"},
		{"short", device.OptimJob{Rule: device.OptimFedAvgM, X: five, D: five[:4], M: five, XOut: five, MOut: five}, "D has 4 elements, X has 5"},
		{"no v", device.OptimJob{Rule: device.OptimFedAdam, X: five, D: five, M: five, XOut: five, MOut: five}, "V has 0 elements"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := opt.Optimize(context.Background(), &tc.job)
			if !errors.Is(err, device.ErrJob) || !contains(err, tc.msg) {
				t.Fatalf("err = %v, want ErrJob containing %q", err, tc.msg)
			}
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	big := make([]float32, 1<<20)
	out := make([]float32, 1<<20)
	s := &device.OptimJob{Rule: device.OptimFedAvgM, X: big, D: big, M: big, XOut: out, MOut: big}
	if _, err := opt.Optimize(ctx, s); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context: err = %v, want context.Canceled", err)
	}
}

func contains(err error, s string) bool { return err != nil && strings.Contains(err.Error(), s) }

// ModSum checks sums modulo 2^32 of 0 to 9 inputs (at odd addresses) over fields of uneven
// lengths, in chunks whose pieces cross fields: every element, one Done per chunk, the guards,
// and the statistics.
func ModSum(t *testing.T, dev device.Device) {
	ms := dev.(device.ModSummer)
	r := rand.New(rand.NewPCG(205, 206))
	lens := []int{0, 1, 63, 64, 65, 1000, 7}
	fields := make([]device.AccField, len(lens))
	for k, n := range lens {
		fields[k] = device.AccField{Name: fmt.Sprint("u", k), Len: n, Acc: tensor.U32, Out: tensor.U32}
	}
	for _, cnt := range []int{0, 1, 5, 9} {
		for _, chunkBytes := range []int{256, 4096} {
			t.Run(fmt.Sprintf("inputs=%d/chunk=%d", cnt, chunkBytes), func(t *testing.T) {
				chunks, err := device.CutChunks(fields, Packed(fields), chunkBytes)
				if err != nil {
					t.Fatal(err)
				}
				want := make([][]uint32, len(fields))
				for k, f := range fields {
					want[k] = make([]uint32, f.Len)
				}
				inputs := make([][]device.Span, cnt)
				for i := range inputs {
					for k, f := range fields {
						b := make([]byte, 4*f.Len+1)[1:] // an odd address
						for j := range f.Len {
							v := r.Uint32()
							putU32(b[4*j:], v)
							want[k][j] += v
						}
						inputs[i] = append(inputs[i], device.Span{DType: tensor.U32, Data: b})
					}
				}
				out := NewOutput(fields, chunks)
				stats, err := ms.ModSum(context.Background(), fields, inputs, chunks, out)
				if err != nil {
					t.Fatal(err)
				}
				out.Check(t)
				var elems int64
				for k, f := range fields {
					for j := range f.Len {
						if got := getU32(out.Data(k)[4*j:]); got != want[k][j] {
							t.Fatal(out.mismatch(k, j, want[k][j]))
						}
					}
					elems += int64(f.Len)
				}
				if stats.Elements != elems || stats.Chunks != len(chunks) || stats.BytesRead != 4*int64(cnt)*elems {
					t.Errorf("stats %+v: want %d elements in %d chunks, %d bytes read", stats, elems, len(chunks), 4*int64(cnt)*elems)
				}
			})
		}
	}
}

// ModSumRejectsBadJobs checks the validation errors and that a cancelled context stops a job.
func ModSumRejectsBadJobs(t *testing.T, dev device.Device) {
	ms := dev.(device.ModSummer)
	f := []device.AccField{{Name: "w", Len: 4, Acc: tensor.U32, Out: tensor.U32}}
	chunks, _ := device.CutChunks(f, []int64{0}, 256)
	ok := device.Span{DType: tensor.U32, Data: make([]byte, 16)}
	for _, tc := range []struct {
		name   string
		fields []device.AccField
		inputs [][]device.Span
		want   error
		msg    string
	}{
		{"f32 input", f, [][]device.Span{{ok}, {{DType: tensor.F32, Data: make([]byte, 16)}}}, device.ErrUnsupported, "only u32 is summed"},
		{"short", f, [][]device.Span{{{DType: tensor.U32, Data: make([]byte, 15)}}}, device.ErrJob, "15 bytes for 4 u32 elements"},
		{"spans", f, [][]device.Span{{ok, ok}}, device.ErrJob, "2 spans for 1 fields"},
		{"f32 output", []device.AccField{{Name: "w", Len: 4, Out: tensor.F32}}, [][]device.Span{{ok}}, device.ErrUnsupported, "output dtype f32"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ms.ModSum(context.Background(), tc.fields, tc.inputs, chunks, NewOutput(tc.fields, chunks))
			if !errors.Is(err, tc.want) || !contains(err, tc.msg) {
				t.Fatalf("err = %v, want %v containing %q", err, tc.want, tc.msg)
			}
		})
	}
	r := rand.New(rand.NewPCG(207, 208))
	big := []device.AccField{{Name: "w", Len: 1 << 16, Acc: tensor.U32, Out: tensor.U32}}
	bigChunks, _ := device.CutChunks(big, []int64{0}, 4096)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := ms.ModSum(ctx, big, [][]device.Span{{RandSpan(r, tensor.U32, 1<<16, 1)}}, bigChunks, NewOutput(big, bigChunks))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context: err = %v, want context.Canceled", err)
	}
}
