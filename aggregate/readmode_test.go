package aggregate_test

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/aggregate/dp"
	"github.com/wattagg/wattagg/aggregate/optim"
	"github.com/wattagg/wattagg/aggregate/robust"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// openAs writes sets to files and opens them again with read mode m (the CPU device then reads
// them in place, or with pread, or with O_DIRECT).
func openAs(t *testing.T, sets []*tensor.Set, m safetensors.ReadMode) []*tensor.Set {
	t.Helper()
	dir := t.TempDir()
	out := make([]*tensor.Set, len(sets))
	for k, s := range sets {
		p := filepath.Join(dir, fmt.Sprintf("c%02d.safetensors", k))
		if err := safetensors.WriteFile(p, s); err != nil {
			t.Fatal(err)
		}
		o, err := safetensors.Open(p, safetensors.WithReadMode(m), safetensors.WithSource(s.Source)) // the same names in every mode
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { o.Close() })
		if got := safetensors.ReadModeOf(o); got != m && !(m == safetensors.ReadDirect && got == safetensors.ReadCopy) {
			t.Fatalf("%s opened for %s reads as %s", p, m, got)
		}
		out[k] = o
	}
	return out
}

// Every kind of rule gives the same bits whether its updates (and global model) are read in
// place from the mapping, copied with pread, or read with O_DIRECT: batch, file and incremental
// rounds.
func TestReadModesSameBits(t *testing.T) {
	f32 := []tensor.DType{tensor.F32}
	w9 := []float64{1, 2, 3, 0.5, 4, 1.25, 7, 2, 1}
	cases := []struct {
		name    string
		rule    func() (aggregate.Rule, error)
		dts     []tensor.DType
		weights []float64
		global  bool
		opts    []aggregate.Option
	}{
		{"fedavg/f32", func() (aggregate.Rule, error) { return aggregate.NewFedAvg(), nil }, f32, w9, false, nil},
		{"fedavg/mixed", func() (aggregate.Rule, error) { return aggregate.NewFedAvg(), nil },
			[]tensor.DType{tensor.F32, tensor.BF16, tensor.I8, tensor.F16}, w9, false, []aggregate.Option{aggregate.WithMixedDTypes(true)}},
		{"fedavg/acc64", func() (aggregate.Rule, error) { return aggregate.NewFedAvg(), nil }, f32, w9, false,
			[]aggregate.Option{aggregate.WithAccumulator(tensor.F64)}},
		{"median/bf16", func() (aggregate.Rule, error) { return robust.NewMedian(), nil }, []tensor.DType{tensor.BF16, tensor.F32}, nil, false,
			[]aggregate.Option{aggregate.WithMixedDTypes(true)}},
		{"trimmed-mean", func() (aggregate.Rule, error) { return robust.NewTrimmedMean(0.2) }, f32, nil, false, nil},
		{"multi-krum", func() (aggregate.Rule, error) { return robust.NewKrum(1, 3) }, f32, w9, false, nil},
		{"bulyan", func() (aggregate.Rule, error) { return robust.NewBulyan(1) }, f32, nil, false, nil},
		{"geomed", func() (aggregate.Rule, error) {
			return robust.NewGeometricMedian(robust.WithMaxIterations(5))
		}, f32, w9, false, nil},
		{"centered-clip", func() (aggregate.Rule, error) { return robust.NewCenteredClipping(30, robust.WithIterations(2)) }, f32, nil, false, nil},
		{"norm-clip", func() (aggregate.Rule, error) { return robust.NewNormClipping(robust.QuantileBound(0.5)) }, f32, nil, false, nil},
		{"fedadam", func() (aggregate.Rule, error) { return optim.New("fedadam") }, f32, w9, true, nil},
		{"dp-fixed", func() (aggregate.Rule, error) {
			return dp.New("dp-fixed", dp.WithClipBound(0.3), dp.WithNoiseMultiplier(0.7), dp.WithInsecureNoiseSeed(99))
		}, f32, nil, true, nil},
	}
	modes := []pinMode{modeBatch, modeFile, modeRound}
	for _, c := range cases {
		for _, m := range modes {
			t.Run(c.name+"/"+pinModes[m], func(t *testing.T) {
				run := func(rm safetensors.ReadMode) pin {
					var base *tensor.Set
					opts := append([]aggregate.Option{aggregate.WithChunkBytes(pinChunk)}, c.opts...)
					if c.global {
						base = pinSet(t, pinRNG(30), tensor.F32, nil, 1, "global")
						opts = append(opts, aggregate.WithGlobal(openAs(t, []*tensor.Set{base}, rm)[0]))
					}
					clients := pinClients(t, 50, 9, c.dts, base, 0.5)
					rule, err := c.rule()
					if err != nil {
						t.Fatal(err)
					}
					set, rep := runMode(t, m, rule, openAs(t, clients, rm), c.weights, opts...)
					return fingerprint(t, []*tensor.Set{set}, []*aggregate.Report{rep})
				}
				want := run(safetensors.ReadMap)
				for _, rm := range []safetensors.ReadMode{safetensors.ReadCopy, safetensors.ReadDirect} {
					if got := run(rm); got != want {
						t.Fatalf("read %s: fingerprint %s, read in place %s", rm, got, want)
					}
				}
			})
		}
	}
}
