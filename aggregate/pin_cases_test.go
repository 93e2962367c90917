package aggregate_test

import (
	"strconv"
	"testing"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/aggregate/robust"
	"github.com/wattagg/wattagg/tensor"
)

// pinChunk cuts the pinned outputs into several chunks (the 61×53 f32 tensor spans four).
const pinChunk = 4096

func must[T any](v T, err error) func(t *testing.T) T {
	return func(t *testing.T) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

// oneRound runs one round of r in mode m.
func oneRound(t *testing.T, m pinMode, r aggregate.Rule, updates []*tensor.Set, weights []float64, opts ...aggregate.Option) ([]*tensor.Set, []*aggregate.Report) {
	set, rep := runMode(t, m, r, updates, weights, opts...)
	return []*tensor.Set{set}, []*aggregate.Report{rep}
}

// withNaN returns the updates with one value of client k replaced by NaN (in a copy).
func withNaN(t *testing.T, updates []*tensor.Set, k int) []*tensor.Set {
	out := append([]*tensor.Set(nil), updates...)
	c := updates[k].Clone()
	b := c.At(0).Bytes()
	switch c.At(0).DType {
	case tensor.F32:
		copy(b[40:], []byte{0, 0, 0xc0, 0x7f})
	case tensor.BF16, tensor.F16:
		copy(b[20:], []byte{0xc0, 0x7f})
	default:
		t.Fatalf("withNaN: dtype %s", c.At(0).DType)
	}
	out[k] = c
	return out
}

func pinCases() []pinCase { return append(batchPinCases(), statefulPinCases()...) }

// batchPinCases are FedAvg and the robust rules.
func batchPinCases() []pinCase {
	f32 := []tensor.DType{tensor.F32}
	var cases []pinCase
	add := func(name string, run func(t *testing.T, m pinMode) ([]*tensor.Set, []*aggregate.Report)) {
		cases = append(cases, pinCase{name, run})
	}
	common := func(opts ...aggregate.Option) []aggregate.Option {
		return append([]aggregate.Option{aggregate.WithChunkBytes(pinChunk)}, opts...)
	}
	batch := func(name string, build func() (aggregate.Rule, error), clients func(t *testing.T) []*tensor.Set, weights []float64, opts ...aggregate.Option) {
		add(name, func(t *testing.T, m pinMode) ([]*tensor.Set, []*aggregate.Report) {
			r := must(build())(t)
			return oneRound(t, m, r, clients(t), weights, common(opts...)...)
		})
	}
	clients := func(seed uint64, n int, dts []tensor.DType) func(t *testing.T) []*tensor.Set {
		return func(t *testing.T) []*tensor.Set { return pinClients(t, seed, n, dts, nil, 1) }
	}
	withExamples := func(seed uint64, n int, dts []tensor.DType) func(t *testing.T) []*tensor.Set {
		return func(t *testing.T) []*tensor.Set {
			cs := pinClients(t, seed, n, dts, nil, 1)
			for k, c := range cs {
				c.Metadata[aggregate.NumExamplesKey] = strconv.Itoa(10 + 7*k)
			}
			return cs
		}
	}
	fedavg := func() (aggregate.Rule, error) { return aggregate.NewFedAvg(), nil }
	w9 := []float64{1, 2, 3, 0.5, 4, 1.25, 7, 2, 1}

	// FedAvg.
	batch("fedavg/f32", fedavg, clients(1, 9, f32), w9)
	batch("fedavg/f32-examples", fedavg, withExamples(2, 9, f32), nil)
	batch("fedavg/bf16", fedavg, clients(3, 9, []tensor.DType{tensor.BF16}), w9)
	batch("fedavg/f16-i8out", fedavg, clients(4, 9, []tensor.DType{tensor.F16}), w9, aggregate.WithOutDType(tensor.I8))
	batch("fedavg/i8", fedavg, clients(5, 9, []tensor.DType{tensor.I8}), w9)
	batch("fedavg/f32-acc64-bf16out", fedavg, clients(6, 9, f32), w9, aggregate.WithAccumulator(tensor.F64), aggregate.WithOutDType(tensor.BF16))
	batch("fedavg/f64", fedavg, clients(7, 9, []tensor.DType{tensor.F64}), w9)
	batch("fedavg/mixed-grouped", fedavg, clients(8, 9, []tensor.DType{tensor.F32, tensor.F32, tensor.F32, tensor.BF16, tensor.BF16, tensor.BF16, tensor.I8, tensor.I8, tensor.I8}), w9, aggregate.WithMixedDTypes(true))

	// Robust rules.
	median := func() (aggregate.Rule, error) { return robust.NewMedian(), nil }
	batch("median/f32-odd", median, clients(10, 9, f32), nil)
	batch("median/bf16-even", median, clients(11, 8, []tensor.DType{tensor.BF16}), nil)
	add("median/nan-excluded", func(t *testing.T, m pinMode) ([]*tensor.Set, []*aggregate.Report) {
		return oneRound(t, m, robust.NewMedian(), withNaN(t, pinClients(t, 12, 9, f32, nil, 1), 4), nil, common()...)
	})
	batch("trimmed-mean/0.2", func() (aggregate.Rule, error) { return robust.NewTrimmedMean(0.2) },
		clients(13, 11, f32), nil)
	batch("trimmed-mean/f16", func() (aggregate.Rule, error) { return robust.NewTrimmedMean(0.3) },
		clients(14, 10, []tensor.DType{tensor.F16}), nil)
	batch("krum/f1", func() (aggregate.Rule, error) { return robust.NewKrum(1, 1) },
		clients(15, 9, f32), nil)
	batch("multi-krum/f1m3", func() (aggregate.Rule, error) { return robust.NewKrum(1, 3) },
		clients(16, 9, f32), w9)
	batch("multi-krum/f2m0", func() (aggregate.Rule, error) { return robust.NewKrum(2, 0) },
		clients(17, 9, f32), nil)
	batch("bulyan/f1", func() (aggregate.Rule, error) { return robust.NewBulyan(1) },
		clients(18, 9, f32), nil)
	batch("bulyan/f1-bf16", func() (aggregate.Rule, error) { return robust.NewBulyan(1) },
		clients(19, 8, []tensor.DType{tensor.BF16}), nil)
	batch("geomed", func() (aggregate.Rule, error) {
		return robust.NewGeometricMedian(robust.WithSmoothing(1e-6), robust.WithMaxIterations(20), robust.WithTolerance(1e-5))
	}, clients(20, 9, f32), w9)
	batch("centered-clip", func() (aggregate.Rule, error) {
		return robust.NewCenteredClipping(30, robust.WithIterations(3))
	}, clients(21, 9, f32), nil)
	batch("norm-clip/fixed", func() (aggregate.Rule, error) {
		return robust.NewNormClipping(robust.FixedBound(57))
	}, clients(22, 9, f32), w9)
	batch("norm-clip/quantile", func() (aggregate.Rule, error) {
		return robust.NewNormClipping(robust.QuantileBound(0.5))
	}, clients(23, 9, f32), nil)
	batch("norm-zero/fixed", func() (aggregate.Rule, error) {
		return robust.NewNormZeroing(robust.FixedBound(57))
	}, clients(24, 9, f32), w9)

	return cases
}
