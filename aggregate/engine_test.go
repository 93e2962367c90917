package aggregate_test

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/aggregate/dp"
	"github.com/wattagg/wattagg/aggregate/optim"
	"github.com/wattagg/wattagg/aggregate/robust"
	"github.com/wattagg/wattagg/aggregate/secagg"
	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/energy"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// engineCase is a rule with the inputs and round options it needs.
type engineCase struct {
	name    string
	rule    func(t *testing.T) aggregate.Rule
	updates func(t *testing.T) []*tensor.Set
	opts    func(t *testing.T) []aggregate.Option
}

// globalModel is the global model of the engine cases' rules that move one.
func globalModel(t *testing.T) *tensor.Set {
	return pinSet(t, pinRNG(70), tensor.F32, nil, 1, "global")
}

// engineCases are every rule and the compositions the papers use, each with inputs it accepts.
func engineCases() []engineCase {
	plain := func(t *testing.T) []*tensor.Set { return pinClients(t, 71, 9, []tensor.DType{tensor.F32}, nil, 1) }
	models := func(t *testing.T) []*tensor.Set {
		return pinClients(t, 72, 7, []tensor.DType{tensor.F32}, globalModel(t), 0.01)
	}
	none := func(*testing.T) []aggregate.Option { return nil }
	withGlobal := func(t *testing.T) []aggregate.Option { return []aggregate.Option{aggregate.WithGlobal(globalModel(t))} }
	rule := func(build func() (aggregate.Rule, error)) func(t *testing.T) aggregate.Rule {
		return func(t *testing.T) aggregate.Rule { return must(build())(t) }
	}
	compose := func(builds ...func() (aggregate.Rule, error)) func(t *testing.T) aggregate.Rule {
		return func(t *testing.T) aggregate.Rule {
			var rs []aggregate.Rule
			for _, b := range builds {
				rs = append(rs, must(b())(t))
			}
			return must(aggregate.Compose(rs...))(t)
		}
	}
	fedavg := func() (aggregate.Rule, error) { return aggregate.NewFedAvg(), nil }
	median := func() (aggregate.Rule, error) { return robust.NewMedian(), nil }
	clip := func() (aggregate.Rule, error) { return robust.NewNormClipping(robust.FixedBound(50)) }
	dpFixed := func() (aggregate.Rule, error) {
		return dp.New("dp-fixed", dp.WithClipBound(0.3), dp.WithNoiseMultiplier(0.5), dp.WithInsecureNoiseSeed(1))
	}
	fedadam := func() (aggregate.Rule, error) { return optim.NewFedAdam() }
	secure := func() (aggregate.Rule, error) { return secagg.New(secagg.WithBits(12), secagg.WithRange(4)) }
	cases := []engineCase{
		{"fedavg", rule(fedavg), plain, none},
		{"median", rule(median), plain, none},
		{"trimmed-mean", rule(func() (aggregate.Rule, error) { return robust.NewTrimmedMean(0.2) }), plain, none},
		{"krum", rule(func() (aggregate.Rule, error) { return robust.NewKrum(1, 1) }), plain, none},
		{"multi-krum", rule(func() (aggregate.Rule, error) { return robust.NewKrum(1, 0) }), plain, none},
		{"bulyan", rule(func() (aggregate.Rule, error) { return robust.NewBulyan(1) }), plain, none},
		{"geomed", rule(func() (aggregate.Rule, error) { return robust.NewGeometricMedian() }), plain, none},
		{"centered-clip", rule(func() (aggregate.Rule, error) { return robust.NewCenteredClipping(20, robust.WithIterations(2)) }), plain, none},
		{"norm-clip", rule(clip), plain, none},
		{"norm-clip-quantile", rule(func() (aggregate.Rule, error) { return robust.NewNormClipping(robust.QuantileBound(0.5)) }), plain, none},
		{"norm-zero", rule(func() (aggregate.Rule, error) { return robust.NewNormZeroing(robust.FixedBound(50)) }), plain, none},
		{"dp-fixed", rule(dpFixed), models, withGlobal},
		{"dp-adaptive", rule(func() (aggregate.Rule, error) {
			return dp.New("dp-adaptive", dp.WithNoiseMultiplier(0.5), dp.WithClippedCountStddev(1), dp.WithInsecureNoiseSeed(1))
		}), models, withGlobal},
		{"secagg", rule(secure), maskedUpdates, none},
		{"norm-clip,fedavg", compose(clip, fedavg), plain, none},
		{"norm-clip,median", compose(clip, median), plain, none},
		{"dp-fixed,fedadam", compose(dpFixed, fedadam), models, withGlobal},
		{"secagg,fedadam", compose(secure, fedadam), maskedUpdates, withGlobal},
	}
	for _, name := range optim.Names() {
		cases = append(cases, engineCase{name, rule(func() (aggregate.Rule, error) { return optim.New(name) }), models, withGlobal})
	}
	return cases
}

// maskedUpdates are 5 clients' quantised, pairwise-masked updates (12 bits over ±4).
func maskedUpdates(t *testing.T) []*tensor.Set {
	ctx := context.Background()
	q := must(secagg.NewQuantizer(12, 4))(t)
	r := rand.NewChaCha8([32]byte{9})
	const n = 5
	pairs := make([]map[int]secagg.Seed, n)
	for i := range pairs {
		pairs[i] = map[int]secagg.Seed{}
	}
	for i := range n {
		for j := i + 1; j < n; j++ {
			var s secagg.Seed
			r.Read(s[:])
			pairs[i][j], pairs[j][i] = s, s
		}
	}
	var out []*tensor.Set
	for id, u := range pinClients(t, 73, n, []tensor.DType{tensor.F32}, nil, 0.01) {
		m := must(q.QuantizeSet(u, r))(t)
		if err := (&secagg.Client{ID: id, Pairs: pairs[id]}).Mask(ctx, m); err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

// closeRule releases what a stateful rule (or a composition of them) holds.
func closeRule(r aggregate.Rule) {
	if c, ok := r.(interface{ Close() error }); ok {
		c.Close()
	}
}

// Every rule, run through the engine with meters, reports joules with their provenance, names
// the device it ran on, and gives back every buffer it took from the allocator and the device's
// scratch pool, in memory and to a file, batch and incremental.
func TestEveryRuleIsMeteredAndLeaksNothing(t *testing.T) {
	meter, err := energy.NewCPUEstimate()
	if err != nil {
		t.Fatal(err)
	}
	defer meter.Close()
	for _, c := range engineCases() {
		for _, m := range []pinMode{modeBatch, modeFile, modeRound, modeRoundFile} {
			t.Run(c.name+"/"+pinModes[m], func(t *testing.T) {
				alloc := tensor.NewCheckedAllocator(nil)
				cpu := must(device.NewCPU())(t)
				rule := c.rule(t)
				opts := append(c.opts(t), aggregate.WithMeters(meter), aggregate.WithAllocator(alloc), aggregate.WithChunkBytes(pinChunk),
					aggregate.WithDevices(cpu))
				set, rep := runMode(t, m, rule, c.updates(t), nil, opts...)
				if rep.Joules == nil || rep.JoulesSource != string(energy.SourceEstimate) || len(rep.Energy) == 0 || rep.Energy[0].Source != energy.SourceEstimate {
					t.Fatalf("joules %v from %q (%s), energy %+v: want a measurement with its provenance", rep.Joules, rep.JoulesSource, rep.JoulesReason, rep.Energy)
				}
				if len(rep.Devices) == 0 || rep.Devices[0].Device != "cpu" {
					t.Fatalf("devices %+v: want the cpu", rep.Devices)
				}
				if rep.Rule != rule.Name() {
					t.Fatalf("report rule %q, want %q", rep.Rule, rule.Name())
				}
				set.Close()
				closeRule(rule)
				alloc.AssertSize(t, 0)
				if n := cpu.ScratchInUse(); n != 0 {
					t.Fatalf("%d pooled scratch buffers still held by the device", n)
				}
			})
		}
	}
}

// An update the round rejects leaves it exactly as it was: the result is bit for bit the result
// without those attempts, for a sum (added on arrival) and a whole-set rule (spooled).
func TestRejectedUpdatesLeaveTheRound(t *testing.T) {
	ctx := context.Background()
	good := pinClients(t, 80, 5, []tensor.DType{tensor.F32}, nil, 1)
	nan := withNaN(t, pinClients(t, 81, 1, []tensor.DType{tensor.F32}, nil, 1), 0)[0]
	nan.Source = "nan client"
	other := pinSet(t, pinRNG(82), tensor.BF16, nil, 1, "bf16 client")
	wrong := must(tensor.NewSet(must(tensor.New("a", tensor.F32, 3))(t)))(t)
	wrong.Source = "wrong layout"
	type attempt struct {
		u      *tensor.Set
		w      float64
		target error
	}
	attempts := []attempt{
		{wrong, 1, tensor.ErrLayoutMismatch},
		{other, 1, tensor.ErrLayoutMismatch},
		{good[0], 1, aggregate.ErrDuplicate},
		{good[3], math.NaN(), aggregate.ErrWeight},
		{good[3], -1, aggregate.ErrWeight},
		{nil, 1, aggregate.ErrOption},
	}
	// run adds the good updates, trying the bad ones before the third.
	run := func(t *testing.T, rule aggregate.Rule, bad []attempt) *tensor.Set {
		r := must(aggregate.NewRound(ctx, rule))(t)
		defer r.Close()
		for k, u := range good {
			if k == 2 {
				for _, a := range bad {
					if err := r.Add(ctx, a.u, a.w); !errors.Is(err, a.target) {
						t.Fatalf("Add(%v, %v) = %v, want %v", a.u, a.w, err, a.target)
					}
				}
			}
			if err := r.Add(ctx, u, float64(k+1)); err != nil {
				t.Fatal(err)
			}
		}
		got, _, err := r.Result(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	for _, tc := range []struct {
		rule aggregate.Rule
		bad  []attempt
	}{
		{aggregate.NewFedAvg(), append(slices.Clone(attempts), attempt{nan, 1, tensor.ErrNonFinite})},
		{robust.NewMedian(), attempts},
	} {
		t.Run(tc.rule.Name(), func(t *testing.T) {
			want, got := run(t, tc.rule, nil), run(t, tc.rule, tc.bad)
			for i := range want.Len() {
				if string(got.At(i).Bytes()) != string(want.At(i).Bytes()) {
					t.Fatalf("tensor %q differs from the round without the rejected updates", want.At(i).Name)
				}
			}
		})
	}
}

// A round refuses to be used wrongly with an error, never a panic or a wrong result.
func TestRoundMisuse(t *testing.T) {
	ctx := context.Background()
	u := pinClients(t, 83, 2, []tensor.DType{tensor.F32}, nil, 1)
	r := must(aggregate.NewRound(ctx, aggregate.NewFedAvg()))(t)
	if _, _, err := r.Result(ctx); !errors.Is(err, aggregate.ErrNoInputs) {
		t.Fatalf("Result of an empty round: %v, want ErrNoInputs", err)
	}
	if err := r.Add(ctx, u[0], 1); !errors.Is(err, aggregate.ErrClosed) {
		t.Fatalf("Add after a Result was asked for: %v, want ErrClosed", err)
	}
	r = must(aggregate.NewRound(ctx, aggregate.NewFedAvg()))(t)
	if err := r.Add(ctx, u[0], 1); err != nil {
		t.Fatal(err)
	}
	set, _, err := r.Result(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.Result(ctx); !errors.Is(err, aggregate.ErrClosed) {
		t.Fatalf("second Result: %v, want ErrClosed", err)
	}
	if err := r.Add(ctx, u[1], 1); !errors.Is(err, aggregate.ErrClosed) {
		t.Fatalf("Add after Result: %v, want ErrClosed", err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := r.Add(ctx, u[1], 1); !errors.Is(err, aggregate.ErrClosed) {
		t.Fatalf("Add after Close: %v, want ErrClosed", err)
	}
	if _, err := r.WriteFile(ctx, filepath.Join(t.TempDir(), "x.safetensors")); !errors.Is(err, aggregate.ErrClosed) {
		t.Fatalf("WriteFile after Close: %v, want ErrClosed", err)
	}
	if v := set.At(0).Value(0); v != u[0].At(0).Value(0) {
		t.Fatalf("the result changed after Close: %v", v)
	}
	if _, err := aggregate.NewRound(ctx, nil); !errors.Is(err, aggregate.ErrOption) {
		t.Fatalf("NewRound(nil): %v", err)
	}
	if _, err := aggregate.NewRound(ctx, aggregate.NewFedAvg(), aggregate.WithGlobal(u[0])); !errors.Is(err, aggregate.ErrOption) {
		t.Fatalf("fedavg with a global model: %v, want ErrOption", err)
	}
	if _, err := aggregate.NewRound(ctx, must(optim.NewFedAdam())(t)); !errors.Is(err, aggregate.ErrOption) {
		t.Fatalf("fedadam without a global model: %v, want ErrOption", err)
	}
}

// Any finite positive weights work: 1e-320 each (whose total's reciprocal overflows), the
// smallest denormal, 1e308 each (whose total overflows) and the largest float all give the
// equal-weights mean, bit for bit.
func TestExtremeWeights(t *testing.T) {
	u := pinClients(t, 84, 4, []tensor.DType{tensor.F32}, nil, 1)
	want, _ := runMode(t, modeBatch, aggregate.NewFedAvg(), u, []float64{1, 1, 1, 1})
	for _, w := range []float64{1e-320, 5e-324, 1e308, math.MaxFloat64} {
		for _, m := range []pinMode{modeBatch, modeRound} {
			got, rep := runMode(t, m, aggregate.NewFedAvg(), u, []float64{w, w, w, w})
			for i := range want.Len() {
				if string(got.At(i).Bytes()) != string(want.At(i).Bytes()) {
					t.Fatalf("weights %v (%s): tensor %q differs from the equal-weights mean", w, pinModes[m], want.At(i).Name)
				}
			}
			if rep.TotalWeight != 4*w {
				t.Fatalf("weights %v: total %v, want %v", w, rep.TotalWeight, 4*w)
			}
		}
	}
}

// Mixed dtypes in any order: the batch applies inputs in their order, as an incremental round
// adds them, so the two give the same bits (they did not when the batch grouped by dtype).
func TestMixedDTypesIncrementalIsBatch(t *testing.T) {
	dts := []tensor.DType{tensor.F32, tensor.BF16, tensor.F32, tensor.I8, tensor.F16, tensor.F32, tensor.BF16}
	u := pinClients(t, 85, len(dts), dts, nil, 1)
	w := []float64{1, 3, 2, 5, 1, 4, 2}
	opts := []aggregate.Option{aggregate.WithMixedDTypes(true), aggregate.WithChunkBytes(pinChunk)}
	want, _ := runMode(t, modeBatch, aggregate.NewFedAvg(), u, w, opts...)
	got, _ := runMode(t, modeRound, aggregate.NewFedAvg(), u, w, opts...)
	for i := range want.Len() {
		if string(got.At(i).Bytes()) != string(want.At(i).Bytes()) {
			t.Fatalf("tensor %q: incremental differs from batch", want.At(i).Name)
		}
	}
}

// Compositions the papers do not make are refused when composed.
func TestComposeRefusesWhatDoesNotCompose(t *testing.T) {
	sa := must(secagg.New())(t)
	adam := must(optim.NewFedAdam())(t)
	for _, tc := range []struct {
		rules []aggregate.Rule
		msg   string
	}{
		{[]aggregate.Rule{aggregate.NewFedAvg(), sa}, "must come first"},
		{[]aggregate.Rule{robust.NewMedian(), aggregate.NewFedAvg()}, "must come last"},
		{[]aggregate.Rule{adam}, ""},
		{[]aggregate.Rule{adam, aggregate.NewFedAvg()}, "put a sum before it"},
		{[]aggregate.Rule{sa, robust.NewMedian()}, "cannot follow a secure sum"},
		{[]aggregate.Rule{must(dp.New("dp-fixed", dp.WithClipBound(1), dp.WithNoiseMultiplier(1)))(t), robust.NewMedian()}, "robust statistic"},
	} {
		_, err := aggregate.Compose(tc.rules...)
		if tc.msg == "" {
			if err != nil {
				t.Fatalf("compose: %v", err)
			}
			continue
		}
		if !errors.Is(err, aggregate.ErrOption) || !strings.Contains(err.Error(), tc.msg) {
			t.Fatalf("compose: %v, want ErrOption mentioning %q", err, tc.msg)
		}
	}
}

// Norm clipping composed before the median scales each update before the median sees it: the
// result is the median of the clipped updates, computed plainly in float64 here.
func TestNormClipThenMedian(t *testing.T) {
	u := pinClients(t, 86, 7, []tensor.DType{tensor.F32}, nil, 1)
	const bound = 55.0
	rule := must(aggregate.Compose(must(robust.NewNormClipping(robust.FixedBound(bound)))(t), robust.NewMedian()))(t)
	scale := make([]float64, len(u))
	for k, s := range u {
		var sq float64
		for _, tt := range s.Tensors() {
			for _, v := range tt.Float64s() {
				sq += v * v
			}
		}
		scale[k] = min(1, bound/math.Sqrt(sq))
	}
	for _, m := range []pinMode{modeBatch, modeRound} {
		got, rep := runMode(t, m, rule, u, nil)
		for i, tt := range got.Tensors() {
			for j := range tt.Len() {
				col := make([]float64, len(u))
				for k, s := range u {
					col[k] = float64(float32(s.At(i).Value(j) * scale[k]))
				}
				slices.Sort(col)
				want := col[len(col)/2]
				if d := math.Abs(tt.Value(j) - want); d > 1e-6*(1+math.Abs(want)) {
					t.Fatalf("%s: %s[%d] = %v, want %v", pinModes[m], tt.Name, j, tt.Value(j), want)
				}
			}
		}
		if rep.Rule != "norm-clip,median" || rep.Details["clipped"] == 0 {
			t.Fatalf("report %s, details %v: want the composition and some clipped", rep.Rule, rep.Details)
		}
	}
}

// DP-FedAdam: the private mean's noised average delta is the optimizer's Δ. Without noise the
// result is FedAdam's step from the clipped mean delta, computed plainly here.
func TestPrivateMeanThenFedAdam(t *testing.T) {
	global := globalModel(t)
	u := pinClients(t, 87, 6, []tensor.DType{tensor.F32}, global, 0.01)
	const clip = 0.3
	rule := must(aggregate.Compose(
		must(dp.New("dp-fixed", dp.WithClipBound(clip), dp.WithNoiseMultiplier(0)))(t),
		must(optim.NewFedAdam(optim.WithServerLR(0.1), optim.WithTau(1e-3)))(t)))(t)
	defer closeRule(rule)
	got, rep := runMode(t, modeBatch, rule, u, nil, aggregate.WithGlobal(global))
	// Reference: clip each delta to norm C, average over the clients, one FedAdam step from
	// m = 0, v = τ².
	n := float64(len(u))
	scale := make([]float64, len(u))
	for k, s := range u {
		var sq float64
		for i, tt := range s.Tensors() {
			g := global.At(i).Float64s()
			for j, v := range tt.Float64s() {
				d := v - g[j]
				sq += d * d
			}
		}
		scale[k] = min(1, clip/math.Sqrt(sq))
	}
	const b1, b2, lr, tau = 0.9, 0.99, 0.1, 1e-3
	for i, tt := range got.Tensors() {
		g := global.At(i).Float64s()
		for j := range tt.Len() {
			var delta float64
			for k, s := range u {
				delta += scale[k] * (s.At(i).Value(j) - g[j])
			}
			delta /= n
			m := (1 - b1) * delta
			v := b2*tau*tau + (1-b2)*delta*delta
			want := g[j] + lr*m/(math.Sqrt(v)+tau)
			if d := math.Abs(tt.Value(j) - want); d > 1e-5*(1+math.Abs(want)) {
				t.Fatalf("%s[%d] = %v, want %v", tt.Name, j, tt.Value(j), want)
			}
		}
	}
	if rep.Details["epsilon_infinite"] != 1 || rep.Details["round"] != 1 {
		t.Fatalf("details %v: want both rules' figures", rep.Details)
	}
}

// An input truncated while it is mapped is one error naming the file, not a SIGBUS that kills
// the process; nothing is written.
func TestTruncatedInputIsAnError(t *testing.T) {
	dir := t.TempDir()
	var sets []*tensor.Set
	for k, u := range pinClients(t, 88, 3, []tensor.DType{tensor.F32}, nil, 1) {
		p := filepath.Join(dir, "c"+string(rune('0'+k))+".safetensors")
		if err := safetensors.WriteFile(p, u); err != nil {
			t.Fatal(err)
		}
		s := must(safetensors.Open(p))(t)
		defer s.Close()
		sets = append(sets, s)
	}
	victim := sets[1].Source
	if err := os.Truncate(victim, 4096); err != nil { // the header stays, the data goes
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out.safetensors")
	for _, rule := range []aggregate.Rule{aggregate.NewFedAvg(), robust.NewMedian()} {
		_, err := aggregate.AggregateFile(context.Background(), rule, out, sets, nil)
		if !errors.Is(err, device.ErrFault) || !strings.HasPrefix(err.Error(), victim+": ") || strings.Contains(err.Error(), "\n") {
			t.Fatalf("%s: %v: want one line naming %s and wrapping device.ErrFault", rule.Name(), err, victim)
		}
		if _, err := os.Stat(out); !os.IsNotExist(err) {
			t.Fatalf("%s: output written", rule.Name())
		}
	}
}
