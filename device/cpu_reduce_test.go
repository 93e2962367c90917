package device

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/wattagg/wattagg/tensor"
)

// normFields are the tensors of a small model with the spread real ones have (a matrix, odd
// vectors, a scalar), and one long enough that its f32, f64 and i8 inputs span several blocks
// of a norm and of a distance.
var normFields = []AccField{
	{Name: "embed", Len: 67 * 33, Acc: tensor.F64, Out: tensor.F64},
	{Name: "bias", Len: 5, Acc: tensor.F64, Out: tensor.F64},
	{Name: "norm", Len: 1001, Acc: tensor.F64, Out: tensor.F64},
	{Name: "scalar", Len: 1, Acc: tensor.F64, Out: tensor.F64},
	{Name: "long", Len: 300_001, Acc: tensor.F64, Out: tensor.F64},
}

// normInputs makes one input per dtype (every field of the input in that dtype).
func normInputs(r *rand.Rand, dts []tensor.DType) [][]Span {
	inputs := make([][]Span, len(dts))
	for k, dt := range dts {
		for _, f := range normFields {
			inputs[k] = append(inputs[k], randSpan(r, dt, f.Len, 1))
		}
	}
	return inputs
}

// spanValues decodes a span in float64 (I8 scaled).
func spanValues(t *testing.T, sp Span) []float64 {
	t.Helper()
	tt, err := tensor.FromBytes("x", sp.DType, []int{len(sp.Data) / sp.DType.Size()}, sp.Data)
	if err != nil {
		t.Fatal(err)
	}
	tt.Scale = sp.Scale
	return tt.Float64s()
}

// reduceCPU is a CPU device with the given workers.
func reduceCPU(t *testing.T, workers int) *CPU {
	t.Helper()
	c, err := NewCPU(WithWorkers(workers))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

var normDTypes = []tensor.DType{tensor.F32, tensor.BF16, tensor.F16, tensor.I8, tensor.F64}

// Without a reference, SqNorms is ‖x‖² over every field, against a plain float64 sum (the old
// aggregate.Norms test: the norms agree to 1e-12).
func TestSqNormsMatchFloat64Reference(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 9))
	inputs := normInputs(r, normDTypes)
	cpu := reduceCPU(t, 2)
	got, st, err := cpu.SqNorms(context.Background(), normFields, inputs, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, in := range inputs {
		var want float64
		for _, sp := range in {
			for _, v := range spanValues(t, sp) {
				want += v * v
			}
		}
		if g, w := math.Sqrt(got[k]), math.Sqrt(want); math.Abs(g-w) > 1e-12*w {
			t.Fatalf("input %d (%s): norm %v, want %v", k, normDTypes[k], g, w)
		}
	}
	var elems int64
	for _, f := range normFields {
		elems += int64(f.Len)
	}
	if st.Device != cpu.Name() || st.Elements != elems*int64(len(inputs)) || st.BytesRead == 0 {
		t.Fatalf("stats %+v", st)
	}
}

// With a reference g (one f32 span per field), SqNorms is ‖x − g‖². The difference of each
// element is rounded once to f32 (f64 inputs are differenced in f64): with x and g of the same
// spread, the sum of squares is within 1e-6 of the float64 reference (2^-23 per element, twice
// for i8 whose dequantised value is rounded too), and within 1e-12 for f64 inputs.
func TestSqNormsToReferenceMatchFloat64(t *testing.T) {
	r := rand.New(rand.NewPCG(19, 19))
	inputs := normInputs(r, normDTypes)
	ref := normInputs(r, []tensor.DType{tensor.F32})[0]
	got, _, err := reduceCPU(t, 2).SqNorms(context.Background(), normFields, inputs, ref)
	if err != nil {
		t.Fatal(err)
	}
	for k, in := range inputs {
		var want float64
		for f, sp := range in {
			g := spanValues(t, ref[f])
			for j, v := range spanValues(t, sp) {
				want += (v - g[j]) * (v - g[j])
			}
		}
		tol := 1e-6
		if normDTypes[k] == tensor.F64 {
			tol = 1e-12
		}
		if math.Abs(got[k]-want) > tol*want {
			t.Fatalf("input %d (%s): ‖x−g‖² %v, want %v (relative error %g)", k, normDTypes[k], got[k], want, math.Abs(got[k]-want)/want)
		}
	}
}

// The blocks and their summation order are fixed: the bits do not depend on the workers.
func TestSqNormsDoNotDependOnWorkers(t *testing.T) {
	r := rand.New(rand.NewPCG(29, 29))
	inputs := normInputs(r, normDTypes)
	ref := normInputs(r, []tensor.DType{tensor.F32})[0]
	for _, g := range [][]Span{nil, ref} {
		var first []float64
		for _, workers := range []int{1, 2, 5} {
			got, _, err := reduceCPU(t, workers).SqNorms(context.Background(), normFields, inputs, g)
			if err != nil {
				t.Fatal(err)
			}
			if first == nil {
				first = got
				continue
			}
			for k := range got {
				if math.Float64bits(got[k]) != math.Float64bits(first[k]) {
					t.Fatalf("reference %v, %d workers: input %d: %v, with 1 worker %v", g != nil, workers, k, got[k], first[k])
				}
			}
		}
	}
}

// A NaN or Inf makes the norm non-finite: the rounds' robust and clipping rules rely on it to
// exclude such clients.
func TestSqNormsOfNonFiniteInputs(t *testing.T) {
	r := rand.New(rand.NewPCG(39, 39))
	for _, dt := range []tensor.DType{tensor.F32, tensor.BF16, tensor.F16, tensor.F64} {
		for _, bad := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
			in := normInputs(r, []tensor.DType{dt})
			sp := in[0][4]
			tt, err := tensor.FromBytes("long", dt, []int{normFields[4].Len}, sp.Data)
			if err != nil {
				t.Fatal(err)
			}
			b := tt.Bytes()
			j := 200_000
			switch dt {
			case tensor.F32:
				putU32(b[4*j:], math.Float32bits(float32(bad)))
			case tensor.F64:
				putU64(b[8*j:], math.Float64bits(bad))
			case tensor.BF16:
				putU16(b[2*j:], tensor.F32ToBF16(float32(bad)))
			case tensor.F16:
				putU16(b[2*j:], tensor.F32ToF16(float32(bad)))
			}
			ref := normInputs(r, []tensor.DType{tensor.F32})[0]
			for _, g := range [][]Span{nil, ref} {
				got, _, err := reduceCPU(t, 2).SqNorms(context.Background(), normFields, in, g)
				if err != nil {
					t.Fatal(err)
				}
				if v := got[0]; !math.IsNaN(v) && !math.IsInf(v, 0) {
					t.Fatalf("%s with %v, reference %v: squared norm %v", dt, bad, g != nil, v)
				}
			}
		}
	}
}

func TestSqNormsRejectBadJobs(t *testing.T) {
	r := rand.New(rand.NewPCG(49, 49))
	inputs := normInputs(r, []tensor.DType{tensor.F32})
	ref := normInputs(r, []tensor.DType{tensor.F32})[0]
	cpu := reduceCPU(t, 2)
	short := append([]Span(nil), inputs[0]...)
	short[2] = Span{DType: tensor.F32, Data: short[2].Data[:4*1000], Scale: 1}
	u32 := append([]Span(nil), inputs[0]...)
	u32[1] = Span{DType: tensor.U32, Data: u32[1].Data, Scale: 1}
	refBF16 := append([]Span(nil), ref...)
	refBF16[1] = randSpan(r, tensor.BF16, normFields[1].Len, 1)
	for _, tc := range []struct {
		name   string
		inputs [][]Span
		ref    []Span
		is     error
		msg    string
	}{
		{"short input", [][]Span{inputs[0], short}, nil, ErrJob, `input 1: invalid device job: field "norm": 4000 bytes of f32 for 1001 elements`},
		{"missing field", [][]Span{inputs[0][:4]}, nil, ErrJob, "input 0: invalid device job: 4 spans for 5 fields"},
		{"u32 input", [][]Span{u32}, nil, ErrUnsupported, `input 0: unsupported by device: field "bias": input dtype u32 cannot be summed`},
		{"reference fields", inputs, ref[:3], ErrJob, "invalid device job: 3 reference spans for 5 fields"},
		{"bf16 reference", inputs, refBF16, ErrJob, `invalid device job: field "bias": the reference must be 5 f32 elements, have 10 bytes of bf16`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := cpu.SqNorms(context.Background(), normFields, tc.inputs, tc.ref)
			if !errors.Is(err, tc.is) || err.Error() != tc.msg {
				t.Fatalf("err = %v\nwant %q (%v)", err, tc.msg, tc.is)
			}
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := cpu.SqNorms(ctx, normFields, inputs, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
}
