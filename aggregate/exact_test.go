package aggregate_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/big"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/aggregate/dp"
	"github.com/wattagg/wattagg/aggregate/optim"
	"github.com/wattagg/wattagg/aggregate/robust"
	"github.com/wattagg/wattagg/aggregate/secagg"
	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/kernels"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// exactLayout is the model of the exact-sum tests: a matrix spread over several chunks, a vector
// shorter than a vector register and an odd 3-d tensor.
var exactLayout = []struct {
	name  string
	shape []int
}{{"w", []int{97, 71}}, {"b", []int{5}}, {"k", []int{3, 5, 7}}}

// exactUpdate makes an update of dtype dt (f32, bf16, f16 or i8) holding base + spread·N(0,1),
// clamped within ±bound.
func exactUpdate(t *testing.T, r *rand.Rand, dt tensor.DType, base *tensor.Set, spread, bound float64, source string) *tensor.Set {
	t.Helper()
	s := &tensor.Set{Source: source, Metadata: map[string]string{}}
	for i, l := range exactLayout {
		tt := must(tensor.New(l.name, dt, l.shape...))(t)
		b := tt.Bytes()
		var bv []float64
		if base != nil {
			bv = base.At(i).Float64s()
		}
		if dt == tensor.I8 {
			tt.Scale = float32(spread / 40)
		}
		for j := range tt.Len() {
			v := spread * r.NormFloat64()
			if bv != nil {
				v += bv[j]
			}
			v = math.Max(-bound, math.Min(bound, v))
			switch dt {
			case tensor.F32:
				binary.LittleEndian.PutUint32(b[4*j:], math.Float32bits(float32(v)))
			case tensor.BF16:
				binary.LittleEndian.PutUint16(b[2*j:], tensor.F32ToBF16(float32(v)))
			case tensor.F16:
				binary.LittleEndian.PutUint16(b[2*j:], tensor.F32ToF16(float32(v)))
			case tensor.I8:
				b[j] = byte(int8(math.Max(-127, math.Min(127, math.Round(v/float64(tt.Scale))))))
			}
		}
		if err := s.Add(tt); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func exactUpdates(t *testing.T, seed uint64, n int, dts []tensor.DType, base *tensor.Set, spread float64) []*tensor.Set {
	r := rand.New(rand.NewPCG(seed, 13))
	out := make([]*tensor.Set, n)
	for k := range out {
		out[k] = exactUpdate(t, r, dts[k%len(dts)], base, spread, 60000, fmt.Sprintf("client%02d", k))
	}
	return out
}

// exactWeights draws weights: example counts, or arbitrary positive floats.
func exactWeights(r *rand.Rand, n int, counts bool) []float64 {
	w := make([]float64, n)
	for k := range w {
		if counts {
			w[k] = float64(1 + r.IntN(5000))
		} else {
			w[k] = math.Ldexp(0.5+r.Float64(), r.IntN(30)-15)
		}
	}
	return w
}

// sameBits fails unless a and b hold the same tensors with the same bytes.
func sameBits(t *testing.T, what string, a, b *tensor.Set) {
	t.Helper()
	if a.Len() != b.Len() {
		t.Fatalf("%s: %d tensors, want %d", what, a.Len(), b.Len())
	}
	for i := range a.Len() {
		x := a.At(i)
		y, ok := b.Tensor(x.Name)
		if !ok || x.DType != y.DType || !slices.Equal(x.Bytes(), y.Bytes()) || x.Scale != y.Scale {
			for j := range x.Len() {
				if ok && x.Value(j) != y.Value(j) {
					t.Fatalf("%s: tensor %q element %d is %v, want %v", what, x.Name, j, y.Value(j), x.Value(j))
				}
			}
			t.Fatalf("%s: tensor %q differs", what, x.Name)
		}
	}
}

// exactCase is a rule run with exact sums in the order-independence tests.
type exactCase struct {
	name    string
	rule    func(t *testing.T) aggregate.Rule // a fresh rule (stateful rules start at round 1)
	dts     []tensor.DType
	global  bool
	equal   bool // the rule counts every client once: no weights
	counts  bool // weights are example counts
	options []aggregate.Option
}

func exactCases() []exactCase {
	fedavg := func(*testing.T) aggregate.Rule { return aggregate.NewFedAvg() }
	f32 := []tensor.DType{tensor.F32}
	return []exactCase{
		{name: "fedavg/f32-counts", rule: fedavg, dts: f32, counts: true},
		{name: "fedavg/f32-floats", rule: fedavg, dts: f32},
		{name: "fedavg/mixed", rule: fedavg, dts: []tensor.DType{tensor.F32, tensor.BF16, tensor.F16, tensor.I8},
			options: []aggregate.Option{aggregate.WithMixedDTypes(true)}},
		{name: "fedavg/bf16-out-bf16", rule: fedavg, dts: []tensor.DType{tensor.BF16}, counts: true},
		{name: "fedavg/f16-out-i8", rule: fedavg, dts: []tensor.DType{tensor.F16}, options: []aggregate.Option{aggregate.WithOutDType(tensor.I8)}},
		{name: "fedadam", rule: func(t *testing.T) aggregate.Rule { return must(optim.New("fedadam"))(t) }, dts: f32, global: true, counts: true},
		{name: "fedavgm", rule: func(t *testing.T) aggregate.Rule { return must(optim.New("fedavgm"))(t) }, dts: f32, global: true},
		{name: "dp-fixed", rule: func(t *testing.T) aggregate.Rule {
			return must(dp.New("dp-fixed", dp.WithClipBound(0.5), dp.WithNoiseMultiplier(0.5), dp.WithInsecureNoiseSeed(7)))(t)
		}, dts: f32, global: true, equal: true},
		{name: "norm-clip", rule: func(t *testing.T) aggregate.Rule {
			return must(robust.NewNormClipping(robust.FixedBound(3)))(t)
		}, dts: f32},
	}
}

// exactDevices are CPU devices with 1, 2 and 5 workers, small and default blocks, every kernel
// implementation.
func exactDevices(t *testing.T) []device.Device {
	var devs []device.Device
	for _, k := range kernels.Impls() {
		for _, w := range []int{1, 2, 5} {
			block := device.DefaultBlockElems
			if w == 5 {
				block = 512
			}
			devs = append(devs, must(device.NewCPU(device.WithKernels(k.Name()), device.WithWorkers(w), device.WithBlockElems(block)))(t))
		}
	}
	return devs
}

// runExact runs one round of c over updates (weights in the same order), in batch (Aggregate),
// incrementally (NewRound, Add) or incrementally to a file, on dev.
func runExact(t *testing.T, c exactCase, mode int, dev device.Device, global *tensor.Set, updates []*tensor.Set, weights []float64, extra ...aggregate.Option) *tensor.Set {
	t.Helper()
	ctx := context.Background()
	opts := append(slices.Clone(c.options), aggregate.WithExactSum(aggregate.ExactSum{}), aggregate.WithDevices(dev), aggregate.WithChunkBytes(8192))
	if global != nil {
		opts = append(opts, aggregate.WithGlobal(global))
	}
	opts = append(opts, extra...)
	rule := c.rule(t)
	switch mode {
	case 0:
		set, _, err := aggregate.Aggregate(ctx, rule, updates, weights, opts...)
		if err != nil {
			t.Fatal(err)
		}
		return set
	default:
		r := must(aggregate.NewRound(ctx, rule, opts...))(t)
		defer r.Close()
		for k, u := range updates {
			w := 1.0
			if weights != nil {
				w = weights[k]
			}
			if err := r.Add(ctx, u, w); err != nil {
				t.Fatal(err)
			}
		}
		if mode == 1 {
			set, _, err := r.Result(ctx)
			if err != nil {
				t.Fatal(err)
			}
			return set
		}
		path := filepath.Join(t.TempDir(), "out.safetensors")
		if _, err := r.WriteFile(ctx, path); err != nil {
			t.Fatal(err)
		}
		set := must(safetensors.Open(path))(t)
		t.Cleanup(func() { set.Close() })
		return set
	}
}

// TestExactOrderIndependent is the property exact sums exist for: every rule they apply to gives
// the same bits for the same (update, weight) pairs in random orders, in batch, incremental and
// file rounds, on CPUs with 1, 2 or 5 workers and every kernel implementation.
func TestExactOrderIndependent(t *testing.T) {
	trials := 8
	if testing.Short() {
		trials = 3
	}
	orderIndependent(t, 1, 200, trials)
}

// TestExactOneLimb: sums kept in one limb (ExactSum.OneLimb) are as independent of order as two
// limbs', in batch, incremental and file rounds, on every CPU configuration and kernel set
// (their accuracy is TestExactAccuracy's "one-limb").
func TestExactOneLimb(t *testing.T) {
	orderIndependent(t, 41, 300, 3, aggregate.WithExactSum(aggregate.ExactSum{Bound: 16, MaxWeight: 1 << 20, OneLimb: true}))
}

// orderIndependent runs every exact case over its updates in trials random orders, cycling
// through batch, incremental and file rounds on random devices, with the options extra, and
// checks the bits against a batch in the updates' order.
func orderIndependent(t *testing.T, stream, seed uint64, trials int, extra ...aggregate.Option) {
	devs := exactDevices(t)
	for ci, c := range exactCases() {
		t.Run(c.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(uint64(ci), stream))
			var global *tensor.Set
			spread := 0.5
			if c.global {
				global = exactUpdates(t, seed-100, 1, []tensor.DType{tensor.F32}, nil, 1)[0]
				spread = 0.01
			}
			n := 7 + r.IntN(6)
			updates := exactUpdates(t, seed+uint64(ci), n, c.dts, global, spread)
			var weights []float64
			if !c.equal {
				weights = exactWeights(r, n, c.counts)
			}
			want := runExact(t, c, 0, devs[0], global, updates, weights, extra...)
			for trial := range trials {
				perm := r.Perm(n)
				pu := make([]*tensor.Set, n)
				var pw []float64
				for i, p := range perm {
					pu[i] = updates[p]
					if weights != nil {
						pw = append(pw, weights[p])
					}
				}
				mode, dev := trial%3, devs[r.IntN(len(devs))]
				got := runExact(t, c, mode, dev, global, pu, pw, extra...)
				sameBits(t, fmt.Sprintf("trial %d (mode %d, %s %s, %d workers)", trial, mode, dev.Name(), dev.Info().Kernels, dev.Info().Workers), want, got)
			}
		})
	}
}

// TestExactPartials splits the clients into partial rounds at random, writes and reads the
// partials back, merges them in a random tree and adds the result (with some clients of its own)
// to a final round: the bits are those of one batch over every client.
func TestExactPartials(t *testing.T) {
	ctx := context.Background()
	devs := exactDevices(t)
	cases := exactCases()
	for _, ci := range []int{0, 2, 5} { // FedAvg with counts, mixed dtypes; FedAdam with a global model
		c := cases[ci]
		t.Run(c.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(uint64(ci), 2))
			var global *tensor.Set
			spread := 0.5
			if c.global {
				global = exactUpdates(t, 101, 1, []tensor.DType{tensor.F32}, nil, 1)[0]
				spread = 0.01
			}
			const n = 13
			updates := exactUpdates(t, uint64(300+ci), n, c.dts, global, spread)
			weights := exactWeights(r, n, c.counts)
			want := runExact(t, c, 0, devs[0], global, updates, weights)
			opts := func(dev device.Device) []aggregate.Option {
				o := append(slices.Clone(c.options), aggregate.WithExactSum(aggregate.ExactSum{}), aggregate.WithDevices(dev), aggregate.WithChunkBytes(8192))
				if global != nil {
					o = append(o, aggregate.WithGlobal(global))
				}
				return o
			}
			for trial := range 4 {
				perm := r.Perm(n)
				own := r.IntN(3) // clients the final round adds itself
				parts := 1 + r.IntN(4)
				groups := make([][]int, parts)
				for _, p := range perm[own:] {
					g := r.IntN(parts)
					groups[g] = append(groups[g], p)
				}
				var partials []*aggregate.Partial
				for g, members := range groups {
					if len(members) == 0 {
						continue
					}
					dev := devs[r.IntN(len(devs))]
					var pr *aggregate.Round
					if r.IntN(2) == 0 { // a batch round makes a partial too
						pr = must(aggregate.NewRound(ctx, c.rule(t), append(opts(dev), aggregate.WithRetainedUpdates())...))(t)
					} else {
						pr = must(aggregate.NewRound(ctx, c.rule(t), opts(dev)...))(t)
					}
					for _, m := range members {
						if err := pr.Add(ctx, updates[m], weights[m]); err != nil {
							t.Fatal(err)
						}
					}
					p := must(pr.Partial(ctx))(t)
					pr.Close()
					path := filepath.Join(t.TempDir(), fmt.Sprintf("part%d.safetensors", g))
					if err := p.WriteFile(path); err != nil {
						t.Fatal(err)
					}
					partials = append(partials, must(aggregate.ReadPartial(path))(t))
				}
				for len(partials) > 1 { // merge two at random until one is left
					a := r.IntN(len(partials))
					b := (a + 1 + r.IntN(len(partials)-1)) % len(partials)
					m := must(aggregate.MergePartials(partials[a], partials[b]))(t)
					partials[min(a, b)] = m
					partials = slices.Delete(partials, max(a, b), max(a, b)+1)
				}
				final := must(aggregate.NewRound(ctx, c.rule(t), opts(devs[r.IntN(len(devs))])...))(t)
				for _, p := range perm[:own] {
					if err := final.Add(ctx, updates[p], weights[p]); err != nil {
						t.Fatal(err)
					}
				}
				if len(partials) == 1 {
					if err := final.AddPartial(ctx, partials[0]); err != nil {
						t.Fatal(err)
					}
				}
				got, rep, err := final.Result(ctx)
				if err != nil {
					t.Fatal(err)
				}
				final.Close()
				if rep.Clients != n || rep.AccDType != "exact" {
					t.Fatalf("report: %d clients, accumulator %q", rep.Clients, rep.AccDType)
				}
				sameBits(t, fmt.Sprintf("trial %d: %d partials + %d clients", trial, parts, own), want, got)
			}
		})
	}
}

// TestExactAccuracy checks FedAvg's exact sums against exact rational arithmetic. Each term is
// rounded to the grid (at most 3/4 of a step off), so the sum S·2^G is within 0.75·n·2^G of the
// exact weighted sum, and the mean within 0.75·n·2^G/D of the exact mean before its own rounding
// (within one f32 ulp of S·2^G/D). The check: every coordinate is within one ulp of the correctly
// rounded mean, or (where the grid's error is larger than half an ulp: tiny means of coarse
// grids) within one ulp plus that error; on the fine grid every coordinate must be within one
// ulp. The test reports how many coordinates are the correctly rounded value itself.
func TestExactAccuracy(t *testing.T) {
	ctx := context.Background()
	configs := []struct {
		name  string
		set   aggregate.ExactSum
		bound float64 // the grid: 2^(⌈log2 bound⌉ + ⌈log2 cap⌉ − bits)
		cap   float64
		bits  int // 101 with two limbs, 61 with one
	}{
		{"default-grid", aggregate.ExactSum{}, aggregate.DefaultExactBound, aggregate.DefaultExactMaxWeight, 101},
		{"fine-grid", aggregate.ExactSum{Bound: 16, MaxWeight: 1 << 24}, 16, 1 << 24, 101},
		{"one-limb", aggregate.ExactSum{Bound: 16, MaxWeight: 1 << 24, OneLimb: true}, 16, 1 << 24, 61},
	}
	for _, cfg := range configs {
		t.Run(cfg.name, func(t *testing.T) {
			grid := math.Ldexp(1, int(math.Ceil(math.Log2(cfg.bound)))+int(math.Ceil(math.Log2(cfg.cap)))-cfg.bits)
			r := rand.New(rand.NewPCG(9, uint64(len(cfg.name))))
			var total, exact, within, gridBound int
			for trial := range 100 {
				n := 1 + r.IntN(9)
				updates := make([]*tensor.Set, n)
				for k := range updates {
					v := make([]float32, 64)
					scale := math.Ldexp(1, -r.IntN(20))
					for j := range v {
						v[j] = float32(r.NormFloat64() * scale)
						if j%8 == 0 { // a coordinate that cancels: the mean is tiny
							v[j] = float32((float64(k%2)*2 - 1) * scale)
						}
					}
					tt := must(tensor.FromF32("v", []int{64}, v))(t)
					updates[k] = must(tensor.NewSet(tt))(t)
					updates[k].Source = fmt.Sprintf("c%d", k)
				}
				weights := exactWeights(r, n, trial%2 == 0)
				mean, _, err := aggregate.WeightedMean(ctx, updates, weights, aggregate.WithExactSum(cfg.set))
				if err != nil {
					t.Fatal(err)
				}
				got := must(mean.At(0).F32())(t)
				den := new(big.Rat)
				for _, w := range weights {
					den.Add(den, new(big.Rat).SetFloat64(w))
				}
				d, _ := den.Float64()
				for j := range got {
					num := new(big.Rat)
					for k, u := range updates {
						num.Add(num, new(big.Rat).Mul(new(big.Rat).SetFloat64(weights[k]), new(big.Rat).SetFloat64(u.At(0).Value(j))))
					}
					exactMean := new(big.Rat).Quo(num, den)
					want, _ := exactMean.Float32()
					total++
					switch u := ulps(got[j], want); {
					case u == 0:
						exact++
					case u == 1:
						within++
					default:
						em, _ := exactMean.Float64()
						errBound := 0.75*float64(n)*grid/d + ulp32(want)
						if math.Abs(float64(got[j])-em) > errBound || cfg.name == "fine-grid" {
							t.Fatalf("trial %d element %d: %v, correctly rounded %v (%d ulps; the grid allows %g)", trial, j, got[j], want, u, errBound)
						}
						gridBound++
					}
				}
			}
			t.Logf("%d coordinates: %d correctly rounded, %d within one ulp, %d within one ulp plus the grid's error", total, exact, within, gridBound)
		})
	}
}

// ulp32 is the spacing of f32 values at v.
func ulp32(v float32) float64 {
	a := float32(math.Abs(float64(v)))
	return float64(math.Nextafter32(a, float32(math.Inf(1))) - a)
}

// ulps is the distance between two f32 values in units in the last place (across zero too).
func ulps(a, b float32) int64 {
	key := func(f float32) int64 {
		u := int64(math.Float32bits(f))
		if u&(1<<31) != 0 {
			return -(u &^ (1 << 31))
		}
		return u
	}
	d := key(a) - key(b)
	if d < 0 {
		d = -d
	}
	return d
}

// TestExactErrors checks what exact sums refuse, each with its own error naming what is wrong:
// values beyond the bound (file, tensor and element), NaN, f64 updates, weights beyond the cap, a
// global model beyond the bound, options that contradict the mode, rules it does not apply to,
// and partials that do not belong together. A refused update leaves the round as it was.
func TestExactErrors(t *testing.T) {
	ctx := context.Background()
	updates := exactUpdates(t, 400, 4, []tensor.DType{tensor.F32}, nil, 0.5)
	bad := updates[2].Clone()
	bad.Source = "bad.safetensors"
	w := must(bad.At(0).F32())(t)
	w[1234] = 9
	opts := []aggregate.Option{aggregate.WithExactSum(aggregate.ExactSum{Bound: 8})}

	// Batch: the job finds it as it sums, and names the file.
	_, _, err := aggregate.WeightedMean(ctx, []*tensor.Set{updates[0], updates[1], bad}, nil, opts...)
	var re *device.RangeError
	if !errors.As(err, &re) || re.Source != "bad.safetensors" || re.Tensor != "w" || re.Index != 1234 || re.Value != 9 || !errors.Is(err, aggregate.ErrOutOfRange) {
		t.Fatalf("batch, a value beyond the bound: err = %v", err)
	}
	// Incremental: refused before it reaches the sum, which stays as it was.
	round := func(opts ...aggregate.Option) *aggregate.Round {
		r := must(aggregate.NewRound(ctx, aggregate.NewFedAvg(), opts...))(t)
		t.Cleanup(func() { r.Close() })
		return r
	}
	r1, r2 := round(opts...), round(opts...)
	for _, r := range []*aggregate.Round{r1, r2} {
		if err := r.Add(ctx, updates[0], 3); err != nil {
			t.Fatal(err)
		}
	}
	if err := r1.Add(ctx, bad, 2); !errors.As(err, &re) || re.Source != "bad.safetensors" || re.Index != 1234 {
		t.Fatalf("incremental, a value beyond the bound: err = %v", err)
	}
	for _, r := range []*aggregate.Round{r1, r2} {
		if err := r.Add(ctx, updates[1], 5); err != nil {
			t.Fatal(err)
		}
	}
	a, _ := must2(r1.Result(ctx))(t)
	b, _ := must2(r2.Result(ctx))(t)
	sameBits(t, "after a refused update", b, a)

	// NaN: a NonFiniteError naming the file, batch and incremental.
	nan := updates[3].Clone()
	nan.Source = "nan.safetensors"
	must(nan.At(2).F32())(t)[7] = float32(math.NaN())
	var nf *tensor.NonFiniteError
	if _, _, err := aggregate.WeightedMean(ctx, []*tensor.Set{updates[0], nan}, nil, opts...); !errors.As(err, &nf) || nf.Source != "nan.safetensors" || nf.Tensor != "k" || nf.Index != 7 {
		t.Fatalf("batch NaN: err = %v", err)
	}
	if err := round(opts...).Add(ctx, nan, 1); !errors.As(err, &nf) || nf.Source != "nan.safetensors" {
		t.Fatalf("incremental NaN: err = %v", err)
	}

	// f64 updates.
	f64 := &tensor.Set{Source: "f64.safetensors"}
	if err := f64.Add(must(tensor.FromF64("w", []int{3}, []float64{1, 2, 3}))(t)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := aggregate.WeightedMean(ctx, []*tensor.Set{f64}, nil, opts...); !errors.Is(err, tensor.ErrDType) && !errors.Is(err, aggregate.ErrOption) {
		t.Fatalf("f64 update: err = %v", err)
	}

	// Weights beyond the cap: the round's total, then the one that would pass it.
	capped := round(aggregate.WithExactSum(aggregate.ExactSum{MaxWeight: 100}))
	if err := capped.Add(ctx, updates[0], 60); err != nil {
		t.Fatal(err)
	}
	if err := capped.Add(ctx, updates[1], 50); !errors.Is(err, aggregate.ErrOutOfRange) {
		t.Fatalf("total weight beyond the cap: err = %v", err)
	}
	if err := capped.Add(ctx, updates[1], 40); err != nil {
		t.Fatalf("within the cap after a refusal: %v", err)
	}

	// A global model beyond the bound.
	g := updates[0].Clone()
	g.Source = "global.safetensors"
	must(g.At(1).F32())(t)[2] = -100
	rule := must(optim.New("fedavgm"))(t)
	gr := must(aggregate.NewRound(ctx, rule, aggregate.WithGlobal(g), aggregate.WithExactSum(aggregate.ExactSum{Bound: 8})))(t)
	defer gr.Close()
	if err := gr.Add(ctx, updates[1], 1); err != nil {
		t.Fatal(err)
	}
	if _, _, err := gr.Result(ctx); !errors.As(err, &re) || re.Source != "global.safetensors" || re.Tensor != "b" || re.Index != 2 {
		t.Fatalf("global model beyond the bound: err = %v", err)
	}

	// Options and rules.
	for _, c := range []struct {
		name string
		run  func() error
	}{
		{"with an accumulator", func() error {
			return aggregate.CheckOptions(aggregate.WithExactSum(aggregate.ExactSum{}), aggregate.WithAccumulator(tensor.F64))
		}},
		{"f64 output", func() error {
			_, _, err := aggregate.WeightedMean(ctx, updates, nil, aggregate.WithExactSum(aggregate.ExactSum{}), aggregate.WithOutDType(tensor.F64))
			return err
		}},
		{"median", func() error {
			_, err := aggregate.NewRound(ctx, robust.NewMedian(), aggregate.WithExactSum(aggregate.ExactSum{}))
			return err
		}},
		{"bound -1", func() error { return aggregate.CheckOptions(aggregate.WithExactSum(aggregate.ExactSum{Bound: -1})) }},
		{"infinite cap", func() error {
			return aggregate.CheckOptions(aggregate.WithExactSum(aggregate.ExactSum{MaxWeight: math.Inf(1)}))
		}},
		{"tensor bound NaN", func() error {
			return aggregate.CheckOptions(aggregate.WithExactSum(aggregate.ExactSum{TensorBounds: map[string]float64{"w": math.NaN()}}))
		}},
	} {
		if err := c.run(); !errors.Is(err, aggregate.ErrOption) {
			t.Errorf("%s: err = %v, want ErrOption", c.name, err)
		}
	}

	// Partials that do not belong together.
	part := func(opts []aggregate.Option, us ...*tensor.Set) *aggregate.Partial {
		r := round(opts...)
		for _, u := range us {
			if err := r.Add(ctx, u, 1); err != nil {
				t.Fatal(err)
			}
		}
		return must(r.Partial(ctx))(t)
	}
	p1 := part(opts, updates[0], updates[1])
	p2 := part(opts, updates[1], updates[2])
	if _, err := aggregate.MergePartials(p1, p2); !errors.Is(err, aggregate.ErrDuplicate) {
		t.Errorf("merging partials that share a client: err = %v", err)
	}
	other := part([]aggregate.Option{aggregate.WithExactSum(aggregate.ExactSum{Bound: 4})}, updates[3])
	if _, err := aggregate.MergePartials(p1, other); !errors.Is(err, aggregate.ErrOption) {
		t.Errorf("merging partials on different grids: err = %v", err)
	}
	if err := round(opts...).AddPartial(ctx, other); !errors.Is(err, aggregate.ErrOption) {
		t.Errorf("a partial on another grid: err = %v", err)
	}
	r3 := round(opts...)
	if err := r3.Add(ctx, updates[0], 1); err != nil {
		t.Fatal(err)
	}
	if err := r3.AddPartial(ctx, p1); !errors.Is(err, aggregate.ErrDuplicate) {
		t.Errorf("a partial with a client already in the round: err = %v", err)
	}
	batch := round(append(opts, aggregate.WithRetainedUpdates())...)
	if err := batch.AddPartial(ctx, p2); !errors.Is(err, aggregate.ErrOption) {
		t.Errorf("a partial into a batch round: err = %v", err)
	}
	if err := batch.Add(ctx, bad, 1); err != nil { // a batch finds it when it sums
		t.Fatal(err)
	}
	if _, err := batch.Partial(ctx); !errors.As(err, &re) || re.Source != "bad.safetensors" || re.Index != 1234 {
		t.Errorf("a partial of a batch holding a value beyond the bound: err = %v", err)
	}
	clip := must(aggregate.NewRound(ctx, must(robust.NewNormClipping(robust.FixedBound(3)))(t), opts...))(t)
	defer clip.Close()
	if err := clip.AddPartial(ctx, p2); !errors.Is(err, aggregate.ErrOption) {
		t.Errorf("a partial into a round whose rule weighs clients: err = %v", err)
	}
	if _, err := round().Partial(ctx); !errors.Is(err, aggregate.ErrOption) {
		t.Errorf("a partial of a floating-point round: err = %v", err)
	}
	path := filepath.Join(t.TempDir(), "model.safetensors")
	if err := safetensors.WriteFile(path, updates[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := aggregate.ReadPartial(path); !errors.Is(err, aggregate.ErrState) {
		t.Errorf("reading a model as a partial: err = %v", err)
	}
}

func must2[A, B any](a A, b B, err error) func(t *testing.T) (A, B) {
	return func(t *testing.T) (A, B) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return a, b
	}
}

// TestExactSecureSum checks that a secure sum takes WithExactSum (its modular sum is exact
// already) and gives the same bits in any order.
func TestExactSecureSum(t *testing.T) {
	ctx := context.Background()
	q := must(secagg.NewQuantizer(16, 4))(t)
	r := rand.NewChaCha8([32]byte{3})
	raw := exactUpdates(t, 500, 6, []tensor.DType{tensor.F32}, nil, 0.5)
	var masked []*tensor.Set
	for _, u := range raw {
		m := must(q.QuantizeSet(u, r))(t)
		m.Source = u.Source
		masked = append(masked, m)
	}
	rule := func() aggregate.Rule { return must(secagg.New(secagg.WithBits(16), secagg.WithRange(4)))(t) }
	want, _, err := aggregate.Aggregate(ctx, rule(), masked, nil)
	if err != nil {
		t.Fatal(err)
	}
	rev := slices.Clone(masked)
	slices.Reverse(rev)
	got, _, err := aggregate.Aggregate(ctx, rule(), rev, nil, aggregate.WithExactSum(aggregate.ExactSum{}))
	if err != nil {
		t.Fatal(err)
	}
	sameBits(t, "secure sum, exact, reversed", want, got)
}

// TestExactSumBytes: an incremental exact round on the CPU reports what its running sums held at
// the close (Round.SumBytes, Report.SumBytes): one limb, 8 bytes a parameter, for updates of
// weight 1 (sums far within 2^62 units of the default grid, 2^-45), and 16 once an update of
// weight 2^20 takes |Σ w·x| past 2^17; a batch round holds no running sums.
func TestExactSumBytes(t *testing.T) {
	ctx := context.Background()
	r := rand.New(rand.NewPCG(3, 4))
	params := int64(97*71 + 5 + 3*5*7) // one block of the CPU's limbs
	for _, tc := range []struct {
		weights []float64
		want    int64
	}{{[]float64{1, 1, 1}, 8 * params}, {[]float64{1, 0x1p20}, 16 * params}} {
		round := must(aggregate.NewRound(ctx, aggregate.NewFedAvg(), aggregate.WithExactSum(aggregate.ExactSum{})))(t)
		if got := round.SumBytes(); got != 0 {
			t.Fatalf("before the first update: SumBytes %d, want 0", got)
		}
		for k, w := range tc.weights {
			if err := round.Add(ctx, exactUpdate(t, r, tensor.F32, nil, 1, 60000, fmt.Sprintf("c%d", k)), w); err != nil {
				t.Fatal(err)
			}
		}
		if got := round.SumBytes(); got != tc.want {
			t.Fatalf("weights %v: SumBytes %d, want %d", tc.weights, got, tc.want)
		}
		out, rep, err := round.Result(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if rep.SumBytes != tc.want {
			t.Fatalf("weights %v: report's sum_bytes %d, want %d", tc.weights, rep.SumBytes, tc.want)
		}
		out.Close()
		round.Close()
	}
	ups := []*tensor.Set{exactUpdate(t, r, tensor.F32, nil, 1, 60000, "c0"), exactUpdate(t, r, tensor.F32, nil, 1, 60000, "c1")}
	out, rep, err := aggregate.Aggregate(ctx, aggregate.NewFedAvg(), ups, []float64{1, 1}, aggregate.WithExactSum(aggregate.ExactSum{}))
	if err != nil {
		t.Fatal(err)
	}
	out.Close()
	if rep.SumBytes != 0 {
		t.Fatalf("a batch round's sum_bytes: %d, want 0", rep.SumBytes)
	}
}
