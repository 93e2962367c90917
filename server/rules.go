package server

import (
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/aggregate/dp"
	"github.com/wattagg/wattagg/aggregate/optim"
	"github.com/wattagg/wattagg/aggregate/robust"
	"github.com/wattagg/wattagg/aggregate/secagg"
)

// ruleBuilder makes one rule from the round's parameters; stateDir is where a stateful rule
// keeps its state across rounds.
type ruleBuilder struct {
	params []string // the parameters it reads
	build  func(p ruleParams, stateDir string, chain []string) (aggregate.Rule, error)
	// needs, when set, is the fewest clients a round of the rule can close with, and why:
	// checked against round.max_clients when the server starts, so that a configuration whose
	// every round would fail is refused (the parameters are valid: build accepted them).
	needs func(p ruleParams) (int, string)
}

// ruleParams reads the configured parameters, remembering which were read.
type ruleParams map[string]float64

func (p ruleParams) float(name string, def float64) float64 {
	if v, ok := p[name]; ok {
		return v
	}
	return def
}

// int reads an integer parameter; a fraction is an error.
func (p ruleParams) int(name string, def int) (int, error) {
	v, ok := p[name]
	if !ok {
		return def, nil
	}
	if v != math.Trunc(v) || math.Abs(v) > 1<<31 {
		return 0, fmt.Errorf("%w: round.params.%s = %v: want an integer", ErrConfig, name, v)
	}
	return int(v), nil
}

// Rules lists the rule names the server builds, with the parameters each reads.
func Rules() map[string][]string {
	out := map[string][]string{}
	for n, b := range ruleBuilders {
		out[n] = slices.Clone(b.params)
	}
	return out
}

var ruleBuilders = map[string]ruleBuilder{
	"fedavg": {build: func(ruleParams, string, []string) (aggregate.Rule, error) { return aggregate.NewFedAvg(), nil }},
	// Mask-based secure aggregation: clients push masked, quantised u32 updates (secagg.Client
	// with the quantiser's bits and range); the seeds that unmask the sum come after the
	// updates, with the round's recovery (PUT /v1/rounds/{round}/recovery).
	"secagg": {params: []string{"bits", "range"}, build: func(p ruleParams, _ string, _ []string) (aggregate.Rule, error) {
		bits, err := p.int("bits", 16)
		if err != nil {
			return nil, err
		}
		return secagg.New(secagg.WithBits(bits), secagg.WithRange(p.float("range", 1)), secagg.WithLateRecovery())
	}},
	"median": {params: []string{"nnm"}, build: mixable(func(ruleParams) (aggregate.Rule, error) { return robust.NewMedian(), nil })},
	"trimmed-mean": {params: []string{"beta", "nnm"}, build: mixable(func(p ruleParams) (aggregate.Rule, error) {
		return robust.NewTrimmedMean(p.float("beta", 0.1))
	})},
	"krum":       {params: []string{"f", "m", "nnm"}, build: mixable(krumBuilder(1)), needs: krumNeeds(1)},
	"multi-krum": {params: []string{"f", "m", "nnm"}, build: mixable(krumBuilder(0)), needs: krumNeeds(0)},
	"bulyan": {params: []string{"f", "nnm"}, build: mixable(func(p ruleParams) (aggregate.Rule, error) {
		f, err := p.int("f", 0)
		if err != nil {
			return nil, err
		}
		return robust.NewBulyan(f)
	}), needs: func(p ruleParams) (int, string) {
		f, _ := p.int("f", 0)
		return 4*f + 3, fmt.Sprintf("f=%d (n >= 4f+3)", f)
	}},
	"geomed": {params: []string{"nu", "max_iter", "tol"}, build: func(p ruleParams, _ string, _ []string) (aggregate.Rule, error) {
		var opts []robust.Option
		if v, ok := p["nu"]; ok {
			opts = append(opts, robust.WithSmoothing(v))
		}
		if _, ok := p["max_iter"]; ok {
			n, err := p.int("max_iter", 0)
			if err != nil {
				return nil, err
			}
			opts = append(opts, robust.WithMaxIterations(n))
		}
		if v, ok := p["tol"]; ok {
			opts = append(opts, robust.WithTolerance(v))
		}
		return robust.NewGeometricMedian(opts...)
	}},
	"centered-clip": {params: []string{"tau", "iters"}, build: func(p ruleParams, _ string, _ []string) (aggregate.Rule, error) {
		var opts []robust.Option
		if _, ok := p["iters"]; ok {
			n, err := p.int("iters", 0)
			if err != nil {
				return nil, err
			}
			opts = append(opts, robust.WithIterations(n))
		}
		return robust.NewCenteredClipping(p.float("tau", 0), opts...)
	}},
	"norm-clip": {params: []string{"clip_bound", "clip_quantile"}, build: clipBuilder(false)},
	"norm-zero": {params: []string{"clip_bound", "clip_quantile"}, build: clipBuilder(true)},
}

func init() {
	for _, name := range optim.Names() {
		ruleBuilders[name] = ruleBuilder{params: []string{"server_lr", "beta1", "beta2", "tau"}, build: optimBuilder(name)}
	}
	for _, name := range dp.Names() {
		ruleBuilders[name] = ruleBuilder{params: []string{"clip", "noise_multiplier", "sampling_rate", "delta",
			"target_quantile", "clip_lr", "clipped_count_stddev", "expected_clients"}, build: dpBuilder(name)}
	}
}

// mixable builds a rule that takes the nnm parameter: when it is given and positive, each update
// is first replaced by the mean of its n−nnm nearest (robust.NNM: nearest-neighbour mixing).
func mixable(build func(ruleParams) (aggregate.Rule, error)) func(ruleParams, string, []string) (aggregate.Rule, error) {
	return func(p ruleParams, _ string, _ []string) (aggregate.Rule, error) {
		r, err := build(p)
		if err != nil {
			return nil, err
		}
		f, err := p.int("nnm", 0)
		if err != nil || f == 0 {
			return r, err
		}
		return robust.NewNNM(r, f)
	}
}

func krumBuilder(m int) func(ruleParams) (aggregate.Rule, error) {
	return func(p ruleParams) (aggregate.Rule, error) {
		f, err := p.int("f", 0)
		if err != nil {
			return nil, err
		}
		if m, err = p.int("m", m); err != nil {
			return nil, err
		}
		return robust.NewKrum(f, m)
	}
}

// krumNeeds is Krum's n > 2f+2, and m updates to average (m = 0: n−f).
func krumNeeds(m int) func(ruleParams) (int, string) {
	return func(p ruleParams) (int, string) {
		f, _ := p.int("f", 0)
		m, _ := p.int("m", m)
		if m > 2*f+3 {
			return m, fmt.Sprintf("m=%d updates to average", m)
		}
		return 2*f + 3, fmt.Sprintf("f=%d (n > 2f+2)", f)
	}
}

func clipBuilder(zero bool) func(ruleParams, string, []string) (aggregate.Rule, error) {
	return func(p ruleParams, _ string, _ []string) (aggregate.Rule, error) {
		bound, hasBound := p["clip_bound"]
		q, hasQ := p["clip_quantile"]
		var b robust.ClipBound
		switch {
		case hasBound && hasQ:
			return nil, fmt.Errorf("%w: round.params: clip_bound and clip_quantile: give one", ErrConfig)
		case hasBound:
			b = robust.FixedBound(bound)
		case hasQ:
			b = robust.QuantileBound(q)
		default:
			return nil, fmt.Errorf("%w: round.params: norm clipping needs clip_bound or clip_quantile", ErrConfig)
		}
		if zero {
			return robust.NewNormZeroing(b)
		}
		return robust.NewNormClipping(b)
	}
}

func optimBuilder(name string) func(ruleParams, string, []string) (aggregate.Rule, error) {
	return func(p ruleParams, stateDir string, _ []string) (aggregate.Rule, error) {
		opts := []optim.Option{optim.WithStateFile(filepath.Join(stateDir, "optimizer.safetensors"))}
		for _, f := range []struct {
			name string
			opt  func(float64) optim.Option
		}{{"server_lr", optim.WithServerLR}, {"beta1", optim.WithBeta1}, {"beta2", optim.WithBeta2}, {"tau", optim.WithTau}} {
			if v, ok := p[f.name]; ok {
				opts = append(opts, f.opt(v))
			}
		}
		return optim.New(name, opts...)
	}
}

func dpBuilder(name string) func(ruleParams, string, []string) (aggregate.Rule, error) {
	return func(p ruleParams, stateDir string, _ []string) (aggregate.Rule, error) {
		opts := []dp.Option{dp.WithStateFile(filepath.Join(stateDir, "privacy.safetensors"))}
		for _, f := range []struct {
			name string
			opt  func(float64) dp.Option
		}{
			{"clip", dp.WithClipBound}, {"noise_multiplier", dp.WithNoiseMultiplier},
			{"sampling_rate", dp.WithSamplingRate}, {"delta", dp.WithTargetDelta},
			{"target_quantile", dp.WithTargetQuantile}, {"clip_lr", dp.WithClipLearningRate},
			{"clipped_count_stddev", dp.WithClippedCountStddev},
		} {
			if v, ok := p[f.name]; ok {
				opts = append(opts, f.opt(v))
			}
		}
		if _, ok := p["expected_clients"]; ok {
			n, err := p.int("expected_clients", 0)
			if err != nil {
				return nil, err
			}
			opts = append(opts, dp.WithExpectedClients(n))
		}
		return dp.New(name, opts...)
	}
}

// ruleFactory builds the configured rule afresh for every round: stateful rules read their
// state (optimizer moments, privacy ledger) from stateDir when a round begins.
type ruleFactory struct {
	names    []string
	params   ruleParams
	stateDir string
}

// newRuleFactory checks the rule configuration by building it once.
func newRuleFactory(rc RoundConfig, stateDir string) (*ruleFactory, error) {
	f := &ruleFactory{params: rc.Params, stateDir: stateDir}
	read := map[string]bool{}
	for _, n := range strings.Split(rc.Rule, ",") {
		n = strings.TrimSpace(n)
		b, ok := ruleBuilders[n]
		if !ok {
			names := make([]string, 0, len(ruleBuilders))
			for k := range ruleBuilders {
				names = append(names, k)
			}
			sort.Strings(names)
			return nil, fmt.Errorf("%w: round.rule: unknown rule %q (the server builds %s)",
				ErrConfig, n, strings.Join(names, ", "))
		}
		for _, p := range b.params {
			read[p] = true
		}
		f.names = append(f.names, n)
	}
	for p := range rc.Params {
		if !read[p] {
			return nil, fmt.Errorf("%w: round.params.%s does not apply to rule %s", ErrConfig, p, rc.Rule)
		}
	}
	r, err := f.build()
	if err != nil {
		return nil, err
	}
	closeRule(r)
	if err := f.checkClients(rc.MaxClients); err != nil {
		return nil, err
	}
	return f, nil
}

// checkClients refuses a rule that needs more clients than a round takes.
func (f *ruleFactory) checkClients(maxClients int) error {
	for _, n := range f.names {
		b := ruleBuilders[n]
		if b.needs == nil {
			continue
		}
		if min, why := b.needs(f.params); maxClients < min {
			return fmt.Errorf("%w: round.rule %s: %s needs at least %d clients, but a round takes at most %d (round.max_clients, or the number of clients): every round would fail",
				ErrConfig, n, why, min, maxClients)
		}
	}
	return nil
}

// build makes the rule (a composition when several names are given).
func (f *ruleFactory) build() (aggregate.Rule, error) {
	r, _, err := f.buildIn(f.stateDir)
	return r, err
}

// buildIn makes the rule with its state in stateDir: the server's state directory, or an empty
// one for a rule that must not see the server's state (probeRound). sec is its secure sum, the
// part that takes the round's recovery, nil if it has none.
func (f *ruleFactory) buildIn(stateDir string) (rule aggregate.Rule, sec *secagg.Sum, err error) {
	var rules []aggregate.Rule
	for _, n := range f.names {
		r, err := ruleBuilders[n].build(f.params, stateDir, f.names)
		if err != nil {
			for _, r := range rules {
				closeRule(r)
			}
			return nil, nil, fmt.Errorf("%w: round.rule %s: %w", ErrConfig, n, err)
		}
		if s, ok := r.(*secagg.Sum); ok {
			sec = s
		}
		rules = append(rules, r)
	}
	r, err := aggregate.Compose(rules...)
	if err != nil {
		for _, r := range rules {
			closeRule(r)
		}
		return nil, nil, fmt.Errorf("%w: round.rule %s: %w", ErrConfig, strings.Join(f.names, ","), err)
	}
	return r, sec, nil
}

// closeRule releases what a rule holds, for rules that hold something.
func closeRule(r aggregate.Rule) {
	if c, ok := r.(interface{ Close() error }); ok {
		_ = c.Close()
	}
}
