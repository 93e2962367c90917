package dp

import (
	"bytes"
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/internal/tensortest"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// referencePrivateMean is the clipped mean written plainly in float64: g + Σ_k min(1, C/‖Δ_k‖)·Δ_k / d.
func referencePrivateMean(g *tensor.Set, updates []*tensor.Set, clip float64, d int) (map[string][]float64, []float64) {
	norms := make([]float64, len(updates))
	for k, u := range updates {
		for _, t := range u.Tensors() {
			gt, _ := g.Tensor(t.Name)
			for j := range t.Len() {
				x := t.Value(j) - gt.Value(j)
				norms[k] += x * x
			}
		}
		norms[k] = math.Sqrt(norms[k])
	}
	out := map[string][]float64{}
	for _, t := range g.Tensors() {
		out[t.Name] = t.Float64s()
	}
	for k, u := range updates {
		s := math.Min(1, clip/norms[k])
		for _, t := range u.Tensors() {
			gt, _ := g.Tensor(t.Name)
			for j := range t.Len() {
				out[t.Name][j] += s * (t.Value(j) - gt.Value(j)) / float64(d)
			}
		}
	}
	return out, norms
}

func TestPrivateMeanReference(t *testing.T) {
	ctx := context.Background()
	r := rand.New(rand.NewPCG(21, 22))
	order := []string{"embed", "bias", "norm", "scalar"}
	for _, expected := range []int{0, 10} {
		g := tensortest.Update(t, r, "global", tensor.F32, order)
		updates := tensortest.AroundGlobal(t, r, g, 6, 0.5) // norms about 0.5, 1, ..., 3
		opts := []Option{WithClipBound(1.2), WithNoiseMultiplier(0)}
		d := len(updates)
		if expected > 0 {
			opts, d = append(opts, WithExpectedClients(expected)), expected
		}
		rule := tensortest.Must(NewFixedClipping(opts...))(t)
		got, rep, err := aggregate.Aggregate(ctx, rule, updates, nil, aggregate.WithGlobal(g), aggregate.WithChunkBytes(4096))
		if err != nil {
			t.Fatal(err)
		}
		want, norms := referencePrivateMean(g, updates, 1.2, d)
		for _, tt := range got.Tensors() {
			for j := range tt.Len() {
				if w := want[tt.Name][j]; math.Abs(tt.Value(j)-w) > 1e-6*(1+math.Abs(w)) {
					t.Fatalf("expected=%d: %s[%d] = %v, float64 reference %v", expected, tt.Name, j, tt.Value(j), w)
				}
			}
		}
		clipped := 0
		for k, c := range rep.PerClient {
			if math.Abs(*c.Norm-norms[k]) > 1e-5*norms[k] || *c.Clipped != (norms[k] > 1.2) {
				t.Fatalf("client %d: norm %v clipped %v, reference %v", k, *c.Norm, *c.Clipped, norms[k])
			}
			if *c.Clipped {
				clipped++
			}
		}
		if clipped == 0 || clipped == len(updates) {
			t.Fatalf("the test should clip some clients, not %d", clipped)
		}
		if rep.Rule != "dp-fixed" || rep.Details["denominator"] != float64(d) || rep.Details["noise_std"] != 0 ||
			rep.Details["epsilon_infinite"] != 1 || rep.Details["rounds"] != 1 {
			t.Fatalf("details %v", rep.Details)
		}
	}
}

// The noise, with a fixed seed: a model at zero whose clients send zero, so the new model is
// the noise itself (rounded to f32). N = 2·2^17 draws of N(0, σ²) with σ = z·C/n:
//   - the sample mean has standard deviation σ/√N: |mean| < 5σ/√N;
//   - the sample variance has standard deviation σ²·√(2/N): |s²/σ² - 1| < 5·√(2/N);
//   - the fraction within one σ is 0.6827 with standard deviation √(p(1-p)/N);
//   - two tensors', two rounds' and two seeds' noises are uncorrelated: |ρ| < 5/√N' for N'
//     pairs (the correlation of independent samples has standard deviation 1/√N').
//
// Five standard deviations: a correct generator fails one seed in two million.
func TestPrivateMeanNoise(t *testing.T) {
	ctx := context.Background()
	const half = 1 << 17
	zero := tensortest.F32Set(t, "global", "a", make([]float32, half), "b", make([]float32, half))
	clients := []*tensor.Set{tensortest.F32Set(t, "c0", "a", make([]float32, half), "b", make([]float32, half)),
		tensortest.F32Set(t, "c1", "a", make([]float32, half), "b", make([]float32, half))}
	const z, clip = 1.3, 2.0
	sigma := z * clip / 2
	build := func(seed uint64) *Mean {
		return tensortest.Must(NewFixedClipping(WithClipBound(clip), WithNoiseMultiplier(z), WithInsecureNoiseSeed(seed),
			WithSamplingRate(0.01), WithTargetDelta(1e-6)))(t)
	}
	run := func(rule *Mean, global *tensor.Set, clients []*tensor.Set) (*tensor.Set, *aggregate.Report) {
		t.Helper()
		out, rep, err := aggregate.Aggregate(ctx, rule, clients, nil, aggregate.WithGlobal(global))
		if err != nil {
			t.Fatal(err)
		}
		return out, rep
	}
	rule := build(7)
	round1, rep := run(rule, zero, clients)
	if rep.Details["noise_std"] != sigma || rep.Details["insecure_seed"] != 1 {
		t.Fatalf("details %v", rep.Details)
	}
	a, b := tensortest.F32Of(t, round1, "a"), tensortest.F32Of(t, round1, "b")
	all := append(append([]float32(nil), a...), b...)
	n := float64(len(all))
	var sum, sq float64
	within := 0
	for _, v := range all {
		x := float64(v)
		sum += x
		sq += x * x
		if math.Abs(x) <= sigma {
			within++
		}
	}
	mean := sum / n
	variance := sq/n - mean*mean
	if math.Abs(mean) > 5*sigma/math.Sqrt(n) {
		t.Errorf("noise mean %v, |mean| should be below %v", mean, 5*sigma/math.Sqrt(n))
	}
	if d := math.Abs(variance/(sigma*sigma) - 1); d > 5*math.Sqrt(2/n) {
		t.Errorf("noise variance %v, σ² = %v (relative error %v > %v)", variance, sigma*sigma, d, 5*math.Sqrt(2/n))
	}
	if p := float64(within) / n; math.Abs(p-0.682689) > 5*math.Sqrt(0.682689*0.317311/n) {
		t.Errorf("fraction within one σ %v, want 0.6827", p)
	}
	corr := func(x, y []float32) float64 {
		var sxy, sxx, syy float64
		for j := range x {
			sxy += float64(x[j]) * float64(y[j])
			sxx += float64(x[j]) * float64(x[j])
			syy += float64(y[j]) * float64(y[j])
		}
		return sxy / math.Sqrt(sxx*syy)
	}
	bound := 5 / math.Sqrt(half)
	if c := corr(a, b); math.Abs(c) > bound {
		t.Errorf("tensors a and b share noise: correlation %v", c)
	}
	// Round 2 from the same rule, from round 1's model: the clients send that model (two
	// copies: a round refuses one update given twice), so the new model is round 1's plus fresh
	// noise.
	round2, _ := run(rule, round1, []*tensor.Set{round1.Clone(), round1.Clone()})
	a2 := tensortest.F32Of(t, round2, "a")
	diff := make([]float32, half)
	for j := range diff {
		diff[j] = a2[j] - a[j]
	}
	if c := corr(a, diff); math.Abs(c) > bound {
		t.Errorf("rounds 1 and 2 share noise: correlation %v", c)
	}
	// The same seed reproduces the noise; another seed does not.
	again, _ := run(build(7), zero, clients)
	other, _ := run(build(8), zero, clients)
	if !tensortest.EqualF32(tensortest.F32Of(t, again, "a"), a) {
		t.Error("the same insecure seed gave different noise")
	}
	if c := corr(tensortest.F32Of(t, other, "a"), a); math.Abs(c) > bound {
		t.Errorf("seeds 7 and 8 share noise: correlation %v", c)
	}
	// Without a seed the noise comes from crypto/rand: two rules differ.
	sec1 := tensortest.Must(NewFixedClipping(WithClipBound(clip), WithNoiseMultiplier(z)))(t)
	sec2 := tensortest.Must(NewFixedClipping(WithClipBound(clip), WithNoiseMultiplier(z)))(t)
	s1, rep1 := run(sec1, zero, clients)
	s2, _ := run(sec2, zero, clients)
	if c := corr(tensortest.F32Of(t, s1, "a"), tensortest.F32Of(t, s2, "a")); math.Abs(c) > bound || rep1.Details["insecure_seed"] != 0 {
		t.Errorf("secure noise reproduced: correlation %v", c)
	}
	// The accountant: one round at z = 1.3, q = 0.01 so far, two after round 2.
	var acc Accountant
	if err := acc.Compose(z, 0.01, 2); err != nil {
		t.Fatal(err)
	}
	want, _, err := acc.Epsilon(1e-6)
	if err != nil {
		t.Fatal(err)
	}
	if got := rule.State().Accountant; got.Rounds() != 2 {
		t.Fatalf("accountant rounds %d", got.Rounds())
	} else if eps, _, _ := got.Epsilon(1e-6); eps != want {
		t.Errorf("ε after two rounds %v, want %v", eps, want)
	}
}

// Adaptive clipping without noise: the count is exact and C moves by exp(-η·(b - γ)).
func TestPrivateMeanAdaptiveClip(t *testing.T) {
	ctx := context.Background()
	r := rand.New(rand.NewPCG(31, 32))
	g := tensortest.Update(t, r, "global", tensor.F32, []string{"norm", "bias"})
	updates := tensortest.AroundGlobal(t, r, g, 5, 0.4) // norms about 0.4 .. 2
	rule := tensortest.Must(NewAdaptiveClipping(WithClipBound(1), WithNoiseMultiplier(0), WithTargetQuantile(0.8), WithClipLearningRate(0.5)))(t)
	x1, rep, err := aggregate.Aggregate(ctx, rule, updates, nil, aggregate.WithGlobal(g))
	if err != nil {
		t.Fatal(err)
	}
	unclipped := 0
	for _, c := range rep.PerClient {
		if !*c.Clipped {
			unclipped++
		}
	}
	b := float64(unclipped) / 5
	want := math.Exp(-0.5 * (b - 0.8))
	if rep.Details["clip_bound"] != 1 || math.Abs(rep.Details["next_clip_bound"]-want) > 1e-12 || rep.Details["unclipped_fraction"] != b {
		t.Fatalf("details %v, want next bound %v for unclipped fraction %v", rep.Details, want, b)
	}
	// Round 2 clips to the new bound.
	_, rep2, err := aggregate.Aggregate(ctx, rule, tensortest.AroundGlobal(t, r, x1, 5, 0.4), nil, aggregate.WithGlobal(x1))
	if err != nil {
		t.Fatal(err)
	}
	if rep2.Details["clip_bound"] != want || rule.State().Round != 2 {
		t.Fatalf("round 2 clipped to %v, want %v", rep2.Details["clip_bound"], want)
	}
	// With noise: z_Δ = (z⁻² - (2σ_b)⁻²)^(-1/2), σ_b = n/20 by default.
	noisy := tensortest.Must(NewAdaptiveClipping(WithNoiseMultiplier(0.5), WithExpectedClients(40), WithInsecureNoiseSeed(1)))(t)
	_, rep3, err := aggregate.Aggregate(ctx, noisy, updates, nil, aggregate.WithGlobal(g))
	if err != nil {
		t.Fatal(err)
	}
	zU := 1 / math.Sqrt(1/0.25-1/16.0) // σ_b = 40/20 = 2
	if math.Abs(rep3.Details["update_noise_multiplier"]-zU) > 1e-12 || rep3.Details["count_noise_std"] != 2 ||
		math.Abs(rep3.Details["noise_std"]-zU*DefaultInitialClip/40) > 1e-15 {
		t.Fatalf("details %v, want z_Δ %v", rep3.Details, zU)
	}
	// σ_b too small for z: 2σ_b = 5/20·2 = 0.5 is not above z = 0.5.
	small := tensortest.Must(NewAdaptiveClipping(WithNoiseMultiplier(0.5)))(t)
	if _, _, err := aggregate.Aggregate(ctx, small, updates, nil, aggregate.WithGlobal(g)); !errors.Is(err, aggregate.ErrOption) || !strings.Contains(err.Error(), "clipped-count noise above 0.25") {
		t.Fatalf("σ_b too small: %v", err)
	}
	if small.State() != nil {
		t.Fatal("a refused round moved the mechanism on")
	}
	if _, err := NewAdaptiveClipping(WithNoiseMultiplier(1), WithClippedCountStddev(0.4)); !errors.Is(err, aggregate.ErrOption) {
		t.Fatalf("σ_b too small at build: %v", err)
	}
}

// The privacy state persists the accountant and the bound between rounds, through files.
func TestPrivacyStateFiles(t *testing.T) {
	ctx := context.Background()
	r := rand.New(rand.NewPCG(41, 42))
	dir := t.TempDir()
	gpath := filepath.Join(dir, "g.safetensors")
	state := filepath.Join(dir, "dp.safetensors")
	g := tensortest.Update(t, r, "", tensor.F32, []string{"norm", "bias"})
	if err := safetensors.WriteFile(gpath, g); err != nil {
		t.Fatal(err)
	}
	zs := []float64{1.1, 1.1, 0.9}
	for round, z := range zs {
		rule := tensortest.Must(NewAdaptiveClipping(WithStateFile(state), WithNoiseMultiplier(z),
			WithSamplingRate(0.05), WithClippedCountStddev(2), WithInsecureNoiseSeed(3)))(t)
		global, err := safetensors.Open(gpath)
		if err != nil {
			t.Fatal(err)
		}
		updates := tensortest.AroundGlobal(t, r, global, 4, 0.1)
		global.Close()
		// The new model replaces the old.
		rep, err := aggregate.AggregateFile(ctx, rule, gpath, updates, nil, aggregate.WithGlobalFile(gpath))
		if err != nil {
			t.Fatal(err)
		}
		var acc Accountant
		for _, zz := range zs[:round+1] {
			if err := acc.Compose(zz, 0.05, 1); err != nil {
				t.Fatal(err)
			}
		}
		want, _, err := acc.Epsilon(DefaultTargetDelta)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Details["rounds"] != float64(round+1) || rep.Details["epsilon"] != want {
			t.Fatalf("round %d: details %v, want ε %v", round+1, rep.Details, want)
		}
		st, err := LoadPrivacyState(state)
		if err != nil {
			t.Fatal(err)
		}
		if st.Round != round+1 || st.ClipBound != rep.Details["next_clip_bound"] || len(st.Accountant.Steps()) != 1+round/2 {
			t.Fatalf("state %+v after round %d (%v)", st, round+1, rep.Details)
		}
	}
	// Another mechanism, or other adaptive hyperparameters, cannot continue it: the state is
	// read when a round begins, and the round is refused.
	for _, c := range []struct {
		name string
		opts []Option
		want string
	}{
		{"dp-fixed", []Option{WithClipBound(1)}, "made by dp-adaptive, this rule is dp-fixed"},
		{"dp-adaptive", []Option{WithClippedCountStddev(3)}, "clipped-count noise 2, this rule has 3"},
		{"dp-adaptive", []Option{WithClippedCountStddev(2), WithTargetQuantile(0.9)}, "target quantile 0.5"},
	} {
		rule := tensortest.Must(New(c.name, append(c.opts, WithStateFile(state), WithNoiseMultiplier(1))...))(t)
		_, err := aggregate.NewRound(ctx, rule, aggregate.WithGlobalFile(gpath))
		if !errors.Is(err, aggregate.ErrState) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want ErrState saying %q", c.name, err, c.want)
		}
	}
	// A failed round leaves the state as it was.
	before, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	rule := tensortest.Must(NewAdaptiveClipping(WithStateFile(state), WithNoiseMultiplier(1), WithClippedCountStddev(2)))(t)
	bad := tensortest.F32Set(t, "nan-client", "norm", make([]float32, 1001), "bias", []float32{0, 0, float32(math.Inf(1)), 0, 0})
	_, err = aggregate.AggregateFile(ctx, rule, filepath.Join(dir, "out.safetensors"), []*tensor.Set{bad}, nil, aggregate.WithGlobalFile(gpath))
	var nf *tensor.NonFiniteError
	if !errors.As(err, &nf) || nf.Source != "nan-client" || nf.Tensor != "bias" || nf.Index != 2 {
		t.Fatalf("Inf client: %v", err)
	}
	if after, _ := os.ReadFile(state); !bytes.Equal(before, after) {
		t.Fatal("a failed round changed the privacy state")
	}
	if _, err := LoadPrivacyState(gpath); !errors.Is(err, aggregate.ErrState) {
		t.Errorf("a model as privacy state: %v", err)
	}
}

// With a state file, a round whose model stays in memory records the state too, before the
// model is returned: the ledger never lags the models released.
func TestPrivacyStateRecordedInMemory(t *testing.T) {
	ctx := context.Background()
	r := rand.New(rand.NewPCG(43, 44))
	state := filepath.Join(t.TempDir(), "dp.safetensors")
	g := tensortest.Update(t, r, "global", tensor.F32, []string{"norm", "bias"})
	rule := tensortest.Must(NewFixedClipping(WithClipBound(1), WithNoiseMultiplier(1.1), WithSamplingRate(0.05), WithStateFile(state)))(t)
	for round := 1; round <= 2; round++ {
		x, rep, err := aggregate.Aggregate(ctx, rule, tensortest.AroundGlobal(t, r, g, 4, 0.1), nil, aggregate.WithGlobal(g))
		if err != nil {
			t.Fatal(err)
		}
		st, err := LoadPrivacyState(state)
		if err != nil {
			t.Fatal(err)
		}
		if st.Round != round || st.Accountant.Rounds() != round || rep.Details["rounds"] != float64(round) {
			t.Fatalf("round %d: state %+v, details %v", round, st, rep.Details)
		}
		g = x
	}
}

// A mechanism's rounds are serialised: a second round is refused while the first is open.
func TestPrivateMeanRoundsAreSerialised(t *testing.T) {
	ctx := context.Background()
	g := tensortest.F32Set(t, "g", "w", []float32{1, 2})
	rule := tensortest.Must(NewFixedClipping(WithClipBound(1), WithNoiseMultiplier(0)))(t)
	first, err := aggregate.NewRound(ctx, rule, aggregate.WithGlobal(g))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := aggregate.NewRound(ctx, rule, aggregate.WithGlobal(g)); !errors.Is(err, aggregate.ErrOption) || !strings.Contains(err.Error(), "in another round") {
		t.Fatalf("second open round: %v", err)
	}
	if err := first.Close(); err != nil { // abandoned: the mechanism does not move
		t.Fatal(err)
	}
	if rule.State() != nil {
		t.Fatal("an abandoned round moved the mechanism on")
	}
	if _, _, err := aggregate.Aggregate(ctx, rule, []*tensor.Set{tensortest.F32Set(t, "a", "w", []float32{1.5, 2})}, nil, aggregate.WithGlobal(g)); err != nil {
		t.Fatalf("a round after the abandoned one: %v", err)
	}
	if st := rule.State(); st == nil || st.Round != 1 {
		t.Fatalf("state %+v after one round", st)
	}
}

func TestPrivateMeanOptionErrors(t *testing.T) {
	base := []Option{WithClipBound(1), WithNoiseMultiplier(1)}
	for _, c := range []struct {
		name string
		opts []Option
		want string
	}{
		{"dp-fixed", []Option{WithClipBound(0)}, "clipping bound 0"},
		{"dp-fixed", []Option{WithClipBound(-1)}, "clipping bound -1"},
		{"dp-fixed", []Option{WithNoiseMultiplier(-0.1)}, "noise multiplier -0.1"},
		{"dp-fixed", []Option{WithSamplingRate(0)}, "sampling rate 0: want a value in (0, 1]"},
		{"dp-fixed", []Option{WithSamplingRate(1.01)}, "sampling rate 1.01"},
		{"dp-fixed", []Option{WithTargetDelta(0)}, "δ 0: want a value in (0, 1)"},
		{"dp-fixed", []Option{WithTargetDelta(1)}, "δ 1"},
		{"dp-adaptive", []Option{WithTargetQuantile(0)}, "target quantile 0"},
		{"dp-adaptive", []Option{WithTargetQuantile(1)}, "target quantile 1"},
		{"dp-adaptive", []Option{WithClipLearningRate(0)}, "clip learning rate 0"},
		{"dp-adaptive", []Option{WithClippedCountStddev(-1)}, "clipped-count noise -1"},
		{"dp-fixed", []Option{WithExpectedClients(0)}, "expected client count 0"},
		{"dp-fixed", []Option{WithTargetQuantile(0.5)}, "dp-fixed has no target quantile"},
		{"dp-fixed", []Option{WithClipLearningRate(0.5)}, "dp-fixed has no clip learning rate"},
		{"dp-fixed", []Option{WithStateFile("")}, "empty state path"},
		{"dp-fixed", []Option{nil}, "nil option"},
		{"dp-laplace", nil, `unknown private mean "dp-laplace"`},
	} {
		_, err := New(c.name, append(append([]Option(nil), base...), c.opts...)...)
		if !errors.Is(err, aggregate.ErrOption) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want ErrOption saying %q", c.name, err, c.want)
		}
	}
	if _, err := NewFixedClipping(WithNoiseMultiplier(1)); !errors.Is(err, aggregate.ErrOption) || !strings.Contains(err.Error(), "needs a clipping bound") {
		t.Errorf("no clip: %v", err)
	}
	if _, err := NewFixedClipping(WithClipBound(1)); !errors.Is(err, aggregate.ErrOption) || !strings.Contains(err.Error(), "needs a noise multiplier") {
		t.Errorf("no noise multiplier: %v", err)
	}
	g := tensortest.F32Set(t, "g", "w", []float32{1})
	rule := tensortest.Must(NewFixedClipping(base...))(t)
	_, _, err := aggregate.Aggregate(context.Background(), rule, []*tensor.Set{tensortest.F32Set(t, "a", "w", []float32{1}), tensortest.F32Set(t, "b", "w", []float32{2})}, []float64{1, 2},
		aggregate.WithGlobal(g))
	if !errors.Is(err, aggregate.ErrWeight) || !strings.Contains(err.Error(), "counts every client once") {
		t.Errorf("unequal weights: %v", err)
	}
	if _, _, err := aggregate.Aggregate(context.Background(), rule, []*tensor.Set{tensortest.F32Set(t, "a", "w", []float32{1})}, nil); !errors.Is(err, aggregate.ErrOption) || !strings.Contains(err.Error(), "needs the global model") {
		t.Errorf("no global model: %v", err)
	}
}
