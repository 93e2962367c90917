package aggregate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/internal/tensortest"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

var names = tensortest.Names

// referenceMean is FedAvg computed plainly in float64, by tensor name.
func referenceMean(updates []*tensor.Set, weights []float64) map[string][]float64 {
	var total float64
	for _, w := range weights {
		total += w
	}
	out := map[string][]float64{}
	for k, u := range updates {
		for _, t := range u.Tensors() {
			if out[t.Name] == nil {
				out[t.Name] = make([]float64, t.Len())
			}
			for j := range t.Len() {
				out[t.Name][j] += weights[k] * t.Value(j) / total
			}
		}
	}
	return out
}

// relTol is the relative error allowed for an output dtype: its rounding plus the f32
// accumulation over a few inputs.
var relTol = map[tensor.DType]float64{tensor.F32: 1e-6, tensor.F64: 1e-12, tensor.BF16: 1.0 / 128, tensor.F16: 1.0 / 1024, tensor.I8: 1.0 / 100}

func checkAgainst(t *testing.T, got *tensor.Set, want map[string][]float64, out tensor.DType) {
	t.Helper()
	if got.Len() != len(want) {
		t.Fatalf("result has %d tensors, want %d", got.Len(), len(want))
	}
	for _, tt := range got.Tensors() {
		if tt.DType != out {
			t.Fatalf("%s is %s, want %s", tt.Name, tt.DType, out)
		}
		w := want[tt.Name]
		var scale float64 // the tensor's magnitude: i8 errors are relative to it
		for _, v := range w {
			scale = max(scale, math.Abs(v))
		}
		for j := range w {
			tol := relTol[out]*math.Abs(w[j]) + 1e-6
			if out == tensor.I8 {
				tol = relTol[out] * scale
			}
			if d := math.Abs(tt.Value(j) - w[j]); !(d <= tol) {
				t.Fatalf("%s[%d] = %v, want %v (diff %g)", tt.Name, j, tt.Value(j), w[j], d)
			}
		}
	}
}

func TestWeightedMeanMatchesFloat64Reference(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	for _, tc := range []struct {
		in   []tensor.DType
		opts []Option
		out  tensor.DType
	}{
		{in: []tensor.DType{tensor.F32}, out: tensor.F32},
		{in: []tensor.DType{tensor.F64}, out: tensor.F64},
		{in: []tensor.DType{tensor.BF16}, out: tensor.BF16},
		{in: []tensor.DType{tensor.F16}, out: tensor.F16},
		{in: []tensor.DType{tensor.I8}, out: tensor.I8},
		{in: []tensor.DType{tensor.BF16}, opts: []Option{WithOutDType(tensor.F32)}, out: tensor.F32},
		{in: []tensor.DType{tensor.F32}, opts: []Option{WithOutDType(tensor.BF16), WithAccumulator(tensor.F64)}, out: tensor.BF16},
		{in: []tensor.DType{tensor.F32}, opts: []Option{WithOutDType(tensor.I8)}, out: tensor.I8},
		{in: []tensor.DType{tensor.F32, tensor.BF16, tensor.F16, tensor.I8}, opts: []Option{WithMixedDTypes(true)}, out: tensor.F32},
	} {
		t.Run(fmt.Sprintf("%v%s", tc.in, tc.out), func(t *testing.T) {
			var updates []*tensor.Set
			var weights []float64
			for k := range 7 {
				order := names
				if k%2 == 1 { // writers order tensors differently: match by name
					order = []string{"norm", "scalar", "embed", "bias"}
				}
				updates = append(updates, tensortest.Update(t, r, fmt.Sprintf("c%d", k), tc.in[k%len(tc.in)], order))
				weights = append(weights, 1+float64(r.IntN(1000)))
			}
			got, rep, err := WeightedMean(context.Background(), updates, weights, tc.opts...)
			if err != nil {
				t.Fatal(err)
			}
			checkAgainst(t, got, referenceMean(updates, weights), tc.out)
			if got.At(0).Name != "embed" || rep.Clients != 7 || rep.Params != 67*33+5+1001+1 || rep.Tensors != 4 {
				t.Fatalf("order %s, report %+v", got.At(0).Name, rep)
			}
			if rep.Joules != nil || rep.JoulesReason == "" || rep.BytesRead == 0 || rep.GBps <= 0 || rep.WeightsFrom != WeightsGiven {
				t.Fatalf("report %+v", rep)
			}
			if rep.PerClient != nil { // a client's weight is all FedAvg sees of it: Weights has it
				t.Fatalf("FedAvg reports per-client diagnostics %+v", rep.PerClient)
			}
		})
	}
}

func TestWeightedMeanIsDeterministic(t *testing.T) {
	r := rand.New(rand.NewPCG(2, 2))
	var updates []*tensor.Set
	for k := range 5 {
		updates = append(updates, tensortest.Update(t, r, fmt.Sprint(k), tensor.BF16, names))
	}
	var first *tensor.Set
	for _, workers := range []int{1, 2, 5} {
		dev, err := device.NewCPU(device.WithWorkers(workers), device.WithBlockElems(64))
		if err != nil {
			t.Fatal(err)
		}
		got, _, err := WeightedMean(context.Background(), updates, nil, WithDevices(dev), WithChunkBytes(4096))
		if err != nil {
			t.Fatal(err)
		}
		if first == nil {
			first = got
			continue
		}
		for i, tt := range got.Tensors() {
			if !bytes.Equal(tt.Bytes(), first.At(i).Bytes()) {
				t.Fatalf("%d workers: %s differs", workers, tt.Name)
			}
		}
	}
}

func TestWeightsFromNumExamples(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 3))
	a, b := tensortest.Update(t, r, "a.safetensors", tensor.F32, names), tensortest.Update(t, r, "b.safetensors", tensor.F32, names)
	a.Metadata[NumExamplesKey], b.Metadata[NumExamplesKey] = "300", "100"
	got, rep, err := WeightedMean(context.Background(), []*tensor.Set{a, b}, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkAgainst(t, got, referenceMean([]*tensor.Set{a, b}, []float64{300, 100}), tensor.F32)
	if rep.WeightsFrom != WeightsNumExamples || rep.Weights[0] != 0.75 || got.Metadata[NumExamplesKey] != "400" {
		t.Fatalf("report %+v, metadata %v", rep, got.Metadata)
	}
	delete(b.Metadata, NumExamplesKey)
	_, _, err = WeightedMean(context.Background(), []*tensor.Set{a, b}, nil)
	if !errors.Is(err, ErrWeight) || err.Error() != "invalid weight: a.safetensors has num_examples but b.safetensors has none: give weights explicitly" {
		t.Fatalf("err = %v", err)
	}
	delete(a.Metadata, NumExamplesKey)
	if _, rep, err = WeightedMean(context.Background(), []*tensor.Set{a, b}, nil); err != nil || rep.WeightsFrom != WeightsUniform {
		t.Fatalf("uniform: %v %+v", err, rep)
	}
	a.Metadata[NumExamplesKey] = "many"
	_, _, err = WeightedMean(context.Background(), []*tensor.Set{a, b}, nil)
	if !errors.Is(err, ErrWeight) || err.Error() != `a.safetensors: invalid weight: num_examples "many" is not a number` {
		t.Fatalf("err = %v", err)
	}
}

// Each bad input is an error with the exact one-line message a user reads.
func TestWeightedMeanBadInput(t *testing.T) {
	r := rand.New(rand.NewPCG(4, 4))
	good := func(src string) *tensor.Set { return tensortest.Update(t, r, src, tensor.F32, names) }
	withTensor := func(src string, mutate func(*tensor.Set) *tensor.Set) *tensor.Set { return mutate(good(src)) }
	rebuild := func(s *tensor.Set, name string, dt tensor.DType, shape ...int) *tensor.Set {
		out := &tensor.Set{Source: s.Source, Metadata: s.Metadata}
		for _, tt := range s.Tensors() {
			if tt.Name == name {
				tt = tensortest.New(t, name, dt, shape...)
			}
			tensortest.Add(t, out, tt)
		}
		return out
	}
	for _, tc := range []struct {
		name    string
		updates []*tensor.Set
		weights []float64
		opts    []Option
		is      error
		msg     string
	}{
		{"no inputs", nil, nil, nil, ErrNoInputs, "no updates to aggregate"},
		{"zero weight", []*tensor.Set{good("a"), good("b")}, []float64{1, 0}, nil, ErrWeight, "b: invalid weight 0: weights must be positive and finite"},
		{"negative weight", []*tensor.Set{good("a"), good("b")}, []float64{-1, 1}, nil, ErrWeight, "a: invalid weight -1: weights must be positive and finite"},
		{"nan weight", []*tensor.Set{good("a")}, []float64{math.NaN()}, nil, ErrWeight, "a: invalid weight NaN: weights must be positive and finite"},
		{"inf weight", []*tensor.Set{good("a")}, []float64{math.Inf(1)}, nil, ErrWeight, "a: invalid weight +Inf: weights must be positive and finite"},
		{"weights count", []*tensor.Set{good("a"), good("b")}, []float64{1}, nil, ErrWeight, "invalid weight: 1 weights for 2 updates"},
		{"missing tensor", []*tensor.Set{good("a"), withTensor("b", func(s *tensor.Set) *tensor.Set {
			out := &tensor.Set{Source: "b"}
			for _, tt := range s.Tensors()[1:] {
				tensortest.Add(t, out, tt)
			}
			return out
		})}, nil, nil, tensor.ErrLayoutMismatch, `b: layout mismatch: tensor "embed" is missing (as in a)`},
		{"extra tensor", []*tensor.Set{good("a"), withTensor("b", func(s *tensor.Set) *tensor.Set {
			tensortest.Add(t, s, tensortest.New(t, "extra", tensor.F32, 2))
			return s
		})}, nil, nil, tensor.ErrLayoutMismatch, `b: layout mismatch: unexpected tensor "extra" (as in a)`},
		{"shape", []*tensor.Set{good("a"), withTensor("b", func(s *tensor.Set) *tensor.Set { return rebuild(s, "bias", tensor.F32, 6) })},
			nil, nil, tensor.ErrLayoutMismatch, `b: layout mismatch: tensor "bias" has shape [6], want [5] (as in a)`},
		{"dtype", []*tensor.Set{good("a"), withTensor("b", func(s *tensor.Set) *tensor.Set { return rebuild(s, "bias", tensor.BF16, 5) })},
			nil, nil, tensor.ErrLayoutMismatch, `b: layout mismatch: tensor "bias" has dtype bf16, want f32 (as in a; --mixed-dtypes accepts it)`},
		{"u32", []*tensor.Set{withTensor("a", func(s *tensor.Set) *tensor.Set { return rebuild(s, "bias", tensor.U32, 5) })},
			nil, nil, tensor.ErrDType, `a: unsupported dtype: tensor "bias" is u32: fedavg averages real values (u32 tensors are for the secure-sum rule)`},
		{"nan", []*tensor.Set{good("a"), withTensor("b.safetensors", func(s *tensor.Set) *tensor.Set {
			tt, _ := s.Tensor("norm")
			tensortest.SetValue(tt, 600, math.NaN())
			return s
		})}, nil, nil, tensor.ErrNonFinite, `b.safetensors: tensor "norm": non-finite value NaN at element 600`},
		{"inf", []*tensor.Set{withTensor("a.safetensors", func(s *tensor.Set) *tensor.Set {
			tt, _ := s.Tensor("embed")
			tensortest.SetValue(tt, 2000, math.Inf(-1))
			return s
		}), good("b")}, nil, nil, tensor.ErrNonFinite, `a.safetensors: tensor "embed": non-finite value -Inf at element 2000`},
		{"f16 overflow", []*tensor.Set{withTensor("a", func(s *tensor.Set) *tensor.Set {
			tt, _ := s.Tensor("bias")
			tensortest.SetValue(tt, 3, 1e6)
			return s
		})}, nil, []Option{WithOutDType(tensor.F16)}, ErrOverflow,
			`fedavg: tensor "bias" element 3: overflow: the result is +Inf in f16 (accumulate in f64 or choose a wider output dtype)`},
		{"f64 with f32 acc", []*tensor.Set{tensortest.Update(t, r, "a", tensor.F64, names)}, nil, []Option{WithAccumulator(tensor.F32)}, ErrOption,
			`a: invalid option: tensor "embed" has f64 inputs: accumulate in f64`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := WeightedMean(context.Background(), tc.updates, tc.weights, tc.opts...)
			if !errors.Is(err, tc.is) || err.Error() != tc.msg {
				t.Fatalf("err = %v\nwant %q (%v)", err, tc.msg, tc.is)
			}
		})
	}
}

func TestOptionsRejectBadValues(t *testing.T) {
	for _, tc := range []struct {
		opt Option
		msg string
	}{
		{WithOutDType(tensor.U32), "invalid option: output dtype u32: want f32, f64, f16, bf16 or i8"},
		{WithAccumulator(tensor.BF16), "invalid option: accumulator dtype bf16: want f32 or f64"},
		{WithChunkBytes(1000), "invalid option: chunk of 1000 bytes: want a multiple of 4096 up to 64 MiB"},
		{WithDevices(nil), "invalid option: nil device"},
		{WithOutput(nil), "invalid option: nil output set"},
	} {
		if _, err := NewRound(context.Background(), NewFedAvg(), tc.opt); !errors.Is(err, ErrOption) || err.Error() != tc.msg {
			t.Errorf("NewRound: err = %v, want %q", err, tc.msg)
		}
		if err := CheckOptions(tc.opt); !errors.Is(err, ErrOption) || err.Error() != tc.msg {
			t.Errorf("CheckOptions: err = %v, want %q", err, tc.msg)
		}
	}
}

func TestWithOutputReusesMemory(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 5))
	updates := []*tensor.Set{tensortest.Update(t, r, "a", tensor.F32, names), tensortest.Update(t, r, "b", tensor.F32, names)}
	dst, _, err := WeightedMean(context.Background(), updates, nil)
	if err != nil {
		t.Fatal(err)
	}
	before := &dst.At(0).Bytes()[0]
	updates[0] = tensortest.Update(t, r, "c", tensor.F32, names)
	got, _, err := WeightedMean(context.Background(), updates, []float64{1, 3}, WithOutput(dst))
	if err != nil {
		t.Fatal(err)
	}
	if got != dst || &got.At(0).Bytes()[0] != before {
		t.Fatal("WithOutput did not write into the given set")
	}
	checkAgainst(t, got, referenceMean(updates, []float64{1, 3}), tensor.F32)
	_, _, err = WeightedMean(context.Background(), updates, nil, WithOutput(dst), WithOutDType(tensor.BF16))
	if !errors.Is(err, tensor.ErrLayoutMismatch) {
		t.Fatalf("err = %v, want a layout mismatch for a bf16 result into f32 tensors", err)
	}
}

func TestWeightedMeanFile(t *testing.T) {
	r := rand.New(rand.NewPCG(6, 6))
	dir := t.TempDir()
	var updates []*tensor.Set
	for k := range 4 {
		updates = append(updates, tensortest.Update(t, r, fmt.Sprint(k), tensor.BF16, names))
	}
	for _, out := range []tensor.DType{tensor.BF16, tensor.F32, tensor.I8} {
		path := filepath.Join(dir, out.String()+".safetensors")
		rep, err := WeightedMeanFile(context.Background(), path, updates, nil, WithOutDType(out), WithChunkBytes(4096))
		if err != nil {
			t.Fatal(err)
		}
		mem, _, err := WeightedMean(context.Background(), updates, nil, WithOutDType(out))
		if err != nil {
			t.Fatal(err)
		}
		got, err := safetensors.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, tt := range mem.Tensors() {
			g, ok := got.Tensor(tt.Name)
			if !ok || !bytes.Equal(g.Bytes(), tt.Bytes()) || g.Scale != tt.Scale {
				t.Fatalf("%s: file and memory results differ", tt.Name)
			}
		}
		if got.Metadata["wattagg.rule"] != "fedavg" || got.Metadata["wattagg.clients"] != "4" || rep.Output != path {
			t.Fatalf("metadata %v report %+v", got.Metadata, rep)
		}
		got.Close()
	}
}

// A failed aggregation leaves no file, and a previous file at the path untouched.
func TestWeightedMeanFileFailureLeavesNothing(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	dir := t.TempDir()
	path := filepath.Join(dir, "global.safetensors")
	if err := os.WriteFile(path, []byte("previous round"), 0o644); err != nil {
		t.Fatal(err)
	}
	bad := tensortest.Update(t, r, "bad", tensor.F32, names)
	tt, _ := bad.Tensor("embed")
	tensortest.SetValue(tt, tt.Len()-1, math.NaN())
	_, err := WeightedMeanFile(context.Background(), path, []*tensor.Set{tensortest.Update(t, r, "a", tensor.F32, names), bad}, nil, WithChunkBytes(4096))
	if !errors.Is(err, tensor.ErrNonFinite) {
		t.Fatalf("err = %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := WeightedMeanFile(ctx, path, []*tensor.Set{tensortest.Update(t, r, "a", tensor.F32, names)}, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: err = %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "previous round" {
		t.Fatalf("previous file changed to %q", b)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Fatalf("directory holds %v, want only the previous file", entries)
	}
	_, err = WeightedMeanFile(context.Background(), filepath.Join(dir, "no", "such", "dir.safetensors"), []*tensor.Set{tensortest.Update(t, r, "a", tensor.F32, names)}, nil)
	if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "no", "such")) {
		t.Fatalf("unwritable path: err = %v", err)
	}
}

func TestProgressReachesTotal(t *testing.T) {
	r := rand.New(rand.NewPCG(8, 8))
	updates := []*tensor.Set{tensortest.Update(t, r, "a", tensor.F32, names), tensortest.Update(t, r, "b", tensor.F32, names)}
	var last, total int64
	_, rep, err := WeightedMean(context.Background(), updates, nil, WithChunkBytes(4096), WithProgress(func(done, all int64) {
		last, total = max(last, done), all
	}), WithDevices(mustCPU(t, 1)))
	if err != nil {
		t.Fatal(err)
	}
	if last != total || total != rep.BytesRead {
		t.Fatalf("progress %d of %d, read %d", last, total, rep.BytesRead)
	}
}

func mustCPU(t testing.TB, workers int) device.Device {
	t.Helper()
	d, err := device.NewCPU(device.WithWorkers(workers))
	if err != nil {
		t.Fatal(err)
	}
	return d
}
