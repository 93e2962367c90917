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

	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// dpClients makes n client models around g: client k moves every coordinate by a random amount
// scaled so that its delta norm is about scale·(k+1).
func dpClients(r *rand.Rand, g *tensor.Set, n int, scale float64) []*tensor.Set {
	var out []*tensor.Set
	var p float64
	for _, t := range g.Tensors() {
		p += float64(t.Len())
	}
	for k := range n {
		u := &tensor.Set{Source: fmt.Sprintf("client%d", k), Metadata: map[string]string{}}
		for _, t := range g.Tensors() {
			nt, _ := tensor.New(t.Name, tensor.F32, t.Shape...)
			for j := range nt.Len() {
				setValue(nt, j, t.Value(j)+r.NormFloat64()*scale*float64(k+1)/math.Sqrt(p))
			}
			u.Add(nt)
		}
		out = append(out, u)
	}
	return out
}

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
		g := update(r, "global", tensor.F32, order)
		updates := dpClients(r, g, 6, 0.5) // norms about 0.5, 1, ..., 3
		opts := []RoundOption{WithGlobal(g), WithClipBound(1.2), WithNoiseMultiplier(0), WithRuleOptions(WithChunkBytes(4096))}
		d := len(updates)
		if expected > 0 {
			opts, d = append(opts, WithExpectedClients(expected)), expected
		}
		rule, err := NewDPFixedClipping(opts...)
		if err != nil {
			t.Fatal(err)
		}
		got, rep, err := rule.Aggregate(ctx, updates, nil)
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
	zero := f32Set("global", "a", make([]float32, half), "b", make([]float32, half))
	clients := []*tensor.Set{f32Set("c0", "a", make([]float32, half), "b", make([]float32, half)),
		f32Set("c1", "a", make([]float32, half), "b", make([]float32, half))}
	const z, clip = 1.3, 2.0
	sigma := z * clip / 2
	build := func(seed uint64) *PrivateMean {
		r, err := NewDPFixedClipping(WithGlobal(zero), WithClipBound(clip), WithNoiseMultiplier(z), WithInsecureNoiseSeed(seed),
			WithSamplingRate(0.01), WithTargetDelta(1e-6))
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	rule := build(7)
	round1, rep, err := rule.Aggregate(ctx, clients, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Details["noise_std"] != sigma || rep.Details["insecure_seed"] != 1 {
		t.Fatalf("details %v", rep.Details)
	}
	a, b := f32Of(t, round1, "a"), f32Of(t, round1, "b")
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
	// Round 2 from the same rule (the model moved on: the clients send round 1's model, so the
	// new model is round 1's plus fresh noise).
	c2 := []*tensor.Set{round1, round1}
	round2, _, err := rule.Aggregate(ctx, c2, nil)
	if err != nil {
		t.Fatal(err)
	}
	a2 := f32Of(t, round2, "a")
	diff := make([]float32, half)
	for j := range diff {
		diff[j] = a2[j] - a[j]
	}
	if c := corr(a, diff); math.Abs(c) > bound {
		t.Errorf("rounds 1 and 2 share noise: correlation %v", c)
	}
	// The same seed reproduces the noise; another seed does not.
	again, _, _ := build(7).Aggregate(ctx, clients, nil)
	other, _, _ := build(8).Aggregate(ctx, clients, nil)
	if !equalF32(f32Of(t, again, "a"), a) {
		t.Error("the same insecure seed gave different noise")
	}
	if c := corr(f32Of(t, other, "a"), a); math.Abs(c) > bound {
		t.Errorf("seeds 7 and 8 share noise: correlation %v", c)
	}
	// Without a seed the noise comes from crypto/rand: two rules differ.
	sec1, _ := NewDPFixedClipping(WithGlobal(zero), WithClipBound(clip), WithNoiseMultiplier(z))
	sec2, _ := NewDPFixedClipping(WithGlobal(zero), WithClipBound(clip), WithNoiseMultiplier(z))
	s1, rep1, _ := sec1.Aggregate(ctx, clients, nil)
	s2, _, _ := sec2.Aggregate(ctx, clients, nil)
	if c := corr(f32Of(t, s1, "a"), f32Of(t, s2, "a")); math.Abs(c) > bound || rep1.Details["insecure_seed"] != 0 {
		t.Errorf("secure noise reproduced: correlation %v", c)
	}
	// The accountant: one round at z = 1.3, q = 0.01 so far, two after round 2.
	var acc Accountant
	acc.Compose(z, 0.01, 2)
	want, _, _ := acc.Epsilon(1e-6)
	if got := rule.State().Accountant; got.Rounds() != 2 {
		t.Fatalf("accountant rounds %d", got.Rounds())
	} else if eps, _, _ := got.Epsilon(1e-6); eps != want {
		t.Errorf("ε after two rounds %v, want %v", eps, want)
	}
}

func equalF32(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for j := range a {
		if math.Float32bits(a[j]) != math.Float32bits(b[j]) {
			return false
		}
	}
	return true
}

// Adaptive clipping without noise: the count is exact and C moves by exp(-η·(b - γ)).
func TestPrivateMeanAdaptiveClip(t *testing.T) {
	ctx := context.Background()
	r := rand.New(rand.NewPCG(31, 32))
	g := update(r, "global", tensor.F32, []string{"norm", "bias"})
	updates := dpClients(r, g, 5, 0.4) // norms about 0.4 .. 2
	rule, err := NewDPAdaptiveClipping(WithGlobal(g), WithClipBound(1), WithNoiseMultiplier(0), WithTargetQuantile(0.8), WithClipLearningRate(0.5))
	if err != nil {
		t.Fatal(err)
	}
	_, rep, err := rule.Aggregate(ctx, updates, nil)
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
	_, rep2, err := rule.Aggregate(ctx, dpClients(r, rule.Global(), 5, 0.4), nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep2.Details["clip_bound"] != want || rule.State().Round != 2 {
		t.Fatalf("round 2 clipped to %v, want %v", rep2.Details["clip_bound"], want)
	}
	// With noise: z_Δ = (z⁻² - (2σ_b)⁻²)^(-1/2), σ_b = n/20 by default.
	noisy, err := NewDPAdaptiveClipping(WithGlobal(g), WithNoiseMultiplier(0.5), WithExpectedClients(40), WithInsecureNoiseSeed(1))
	if err != nil {
		t.Fatal(err)
	}
	_, rep3, err := noisy.Aggregate(ctx, updates, nil)
	if err != nil {
		t.Fatal(err)
	}
	zU := 1 / math.Sqrt(1/0.25-1/16.0) // σ_b = 40/20 = 2
	if math.Abs(rep3.Details["update_noise_multiplier"]-zU) > 1e-12 || rep3.Details["count_noise_std"] != 2 ||
		math.Abs(rep3.Details["noise_std"]-zU*DefaultInitialClip/40) > 1e-15 {
		t.Fatalf("details %v, want z_Δ %v", rep3.Details, zU)
	}
	// σ_b too small for z: 2σ_b = 5/20·2 = 0.5 is not above z = 0.5.
	small, _ := NewDPAdaptiveClipping(WithGlobal(g), WithNoiseMultiplier(0.5))
	if _, _, err := small.Aggregate(ctx, updates, nil); !errors.Is(err, ErrOption) || !strings.Contains(err.Error(), "clipped-count noise above 0.25") {
		t.Fatalf("σ_b too small: %v", err)
	}
	if _, err := NewDPAdaptiveClipping(WithGlobal(g), WithNoiseMultiplier(1), WithClippedCountStddev(0.4)); !errors.Is(err, ErrOption) {
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
	g := update(r, "", tensor.F32, []string{"norm", "bias"})
	if err := safetensors.WriteFile(gpath, g); err != nil {
		t.Fatal(err)
	}
	zs := []float64{1.1, 1.1, 0.9}
	for round, z := range zs {
		rule, err := NewDPAdaptiveClipping(WithGlobalFile(gpath), WithStateFile(state), WithNoiseMultiplier(z),
			WithSamplingRate(0.05), WithClippedCountStddev(2), WithInsecureNoiseSeed(3))
		if err != nil {
			t.Fatal(err)
		}
		global, _ := safetensors.Open(gpath)
		updates := dpClients(r, global, 4, 0.1)
		rep, err := rule.AggregateFile(ctx, gpath, updates, nil) // the new model replaces the old
		global.Close()
		rule.Close()
		if err != nil {
			t.Fatal(err)
		}
		var acc Accountant
		for _, zz := range zs[:round+1] {
			acc.Compose(zz, 0.05, 1)
		}
		want, _, _ := acc.Epsilon(DefaultTargetDelta)
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
	// Another mechanism, or other adaptive hyperparameters, cannot continue it.
	for _, c := range []struct {
		name string
		opts []RoundOption
		want string
	}{
		{"dp-fixed", []RoundOption{WithClipBound(1)}, "made by dp-adaptive, this rule is dp-fixed"},
		{"dp-adaptive", []RoundOption{WithClippedCountStddev(3)}, "clipped-count noise 2, this rule has 3"},
		{"dp-adaptive", []RoundOption{WithClippedCountStddev(2), WithTargetQuantile(0.9)}, "target quantile 0.5"},
	} {
		_, err := NewPrivateMean(c.name, append(c.opts, WithGlobalFile(gpath), WithStateFile(state), WithNoiseMultiplier(1))...)
		if !errors.Is(err, ErrState) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want ErrState saying %q", c.name, err, c.want)
		}
	}
	// A failed round leaves the state as it was.
	before, _ := os.ReadFile(state)
	rule, err := NewDPAdaptiveClipping(WithGlobalFile(gpath), WithStateFile(state), WithNoiseMultiplier(1), WithClippedCountStddev(2))
	if err != nil {
		t.Fatal(err)
	}
	defer rule.Close()
	bad := f32Set("nan-client", "norm", make([]float32, 1001), "bias", []float32{0, 0, float32(math.Inf(1)), 0, 0})
	_, err = rule.AggregateFile(ctx, filepath.Join(dir, "out.safetensors"), []*tensor.Set{bad}, nil)
	var nf *tensor.NonFiniteError
	if !errors.As(err, &nf) || nf.Source != "nan-client" || nf.Tensor != "bias" || nf.Index != 2 {
		t.Fatalf("Inf client: %v", err)
	}
	if after, _ := os.ReadFile(state); !bytes.Equal(before, after) {
		t.Fatal("a failed round changed the privacy state")
	}
	if _, err := LoadPrivacyState(gpath); !errors.Is(err, ErrState) {
		t.Errorf("a model as privacy state: %v", err)
	}
}

func TestPrivateMeanOptionErrors(t *testing.T) {
	g := f32Set("g", "w", []float32{1})
	base := []RoundOption{WithGlobal(g), WithClipBound(1), WithNoiseMultiplier(1)}
	for _, c := range []struct {
		name string
		opts []RoundOption
		want string
	}{
		{"dp-fixed", []RoundOption{WithClipBound(0)}, "clipping bound 0"},
		{"dp-fixed", []RoundOption{WithClipBound(-1)}, "clipping bound -1"},
		{"dp-fixed", []RoundOption{WithNoiseMultiplier(-0.1)}, "noise multiplier -0.1"},
		{"dp-fixed", []RoundOption{WithSamplingRate(0)}, "sampling rate 0: want a value in (0, 1]"},
		{"dp-fixed", []RoundOption{WithSamplingRate(1.01)}, "sampling rate 1.01"},
		{"dp-fixed", []RoundOption{WithTargetDelta(0)}, "δ 0: want a value in (0, 1)"},
		{"dp-fixed", []RoundOption{WithTargetDelta(1)}, "δ 1"},
		{"dp-adaptive", []RoundOption{WithTargetQuantile(0)}, "target quantile 0"},
		{"dp-adaptive", []RoundOption{WithTargetQuantile(1)}, "target quantile 1"},
		{"dp-adaptive", []RoundOption{WithClipLearningRate(0)}, "clip learning rate 0"},
		{"dp-adaptive", []RoundOption{WithClippedCountStddev(-1)}, "clipped-count noise -1"},
		{"dp-fixed", []RoundOption{WithExpectedClients(0)}, "expected client count 0"},
		{"dp-fixed", []RoundOption{WithTargetQuantile(0.5)}, "dp-fixed has no target quantile"},
		{"dp-fixed", []RoundOption{WithServerLR(1)}, "dp-fixed has no server learning rate"},
		{"dp-laplace", nil, `unknown private mean "dp-laplace"`},
	} {
		_, err := NewPrivateMean(c.name, append(append([]RoundOption(nil), base...), c.opts...)...)
		if !errors.Is(err, ErrOption) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want ErrOption saying %q", c.name, err, c.want)
		}
	}
	if _, err := NewDPFixedClipping(WithGlobal(g), WithNoiseMultiplier(1)); !errors.Is(err, ErrOption) || !strings.Contains(err.Error(), "needs a clipping bound") {
		t.Errorf("no clip: %v", err)
	}
	if _, err := NewDPFixedClipping(WithGlobal(g), WithClipBound(1)); !errors.Is(err, ErrOption) || !strings.Contains(err.Error(), "needs a noise multiplier") {
		t.Errorf("no noise multiplier: %v", err)
	}
	rule, _ := NewDPFixedClipping(base...)
	_, _, err := rule.Aggregate(context.Background(), []*tensor.Set{f32Set("a", "w", []float32{1}), f32Set("b", "w", []float32{2})}, []float64{1, 2})
	if !errors.Is(err, ErrWeight) || !strings.Contains(err.Error(), "counts every client once") {
		t.Errorf("unequal weights: %v", err)
	}
}
