package server

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/aggregate/secagg"
	"github.com/wattagg/wattagg/server/api"
	"github.com/wattagg/wattagg/tensor"
)

// How a round sums (round.sum). Exact sums make a round's model a function of its
// (update, weight) pairs alone: the same bits whatever the order the updates arrived in, the
// order a restart replays them in, or the machine that recomputes the round from its
// acknowledged updates. The server sums exactly by default because it can afford to: an exact
// add of a 4M-parameter update took 3.9–5.1 ms on the 2-core development VM (3–4 GB/s of
// update bytes), above the 0.4–0.9 GB/s the server's durable ingest reached there, so the
// disk, not the sum, still sets the pace. Exact sums are also what lets a round add each chunk
// of an update as it arrives (aggregate.Arrival: any interleaving of the uploads gives the same
// bits) and take a refused update out again exactly; a round of float sums adds whole spool
// files in log order instead.

// resolveSum decides what round.sum means for the configured rule, by asking the engine
// (probeRound) rather than keeping a list: "auto" is exact sums where a round of the rule with
// the server's options takes them, float sums elsewhere (the whole-set rules: median, Krum, ...).
// "exact" for a rule that refuses them, and round.exact where exact sums are not in effect,
// are configuration errors.
func (s *Server) resolveSum() (string, error) {
	rc := s.cfg.Round
	if rc.Sum == SumFloat {
		return SumFloat, nil
	}
	refusal := s.probeRound(aggregate.WithExactSum(rc.Exact.exactSum()))
	if refusal == nil {
		return SumExact, nil
	}
	if err := s.probeRound(); err != nil {
		// Not about exact sums: every round of this configuration would fail so.
		return "", fmt.Errorf("%w: round.rule %s: %w", ErrConfig, rc.Rule, err)
	}
	switch {
	case rc.Sum == SumExact:
		return "", fmt.Errorf("%w: round.sum \"exact\": rule %s does not take exact sums (%w); round.sum \"auto\" or \"float\" sums it in float",
			ErrConfig, rc.Rule, refusal)
	case rc.Exact != nil:
		return "", fmt.Errorf("%w: round.exact: rule %s does not take exact sums (%w), so round.sum \"auto\" sums it in float: remove round.exact",
			ErrConfig, rc.Rule, refusal)
	}
	return SumFloat, nil
}

// probeRound begins and closes one engine round of the configured rule with the options the
// server gives every round, plus extra: the engine's answer to whether such a round can run.
// The round sees nothing of the server's: its rule keeps its state in an empty temporary
// directory, and a rule that moves a global model gets a one-element f32 model, so that the
// answer depends on the rule and the options alone.
func (s *Server) probeRound(extra ...aggregate.Option) error {
	dir, err := os.MkdirTemp("", "wattagg-probe-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	rule, _, err := s.rules.buildIn(dir)
	if err != nil {
		return err
	}
	defer closeRule(rule)
	opts := s.roundOptions(rule)
	if rule.Requirements().Global {
		g, err := probeGlobal()
		if err != nil {
			return err
		}
		opts = append(opts, aggregate.WithGlobal(g))
	}
	r, err := aggregate.NewRound(context.Background(), rule, append(opts, extra...)...)
	if err != nil {
		return err
	}
	return r.Close()
}

// probeGlobal is the global model of probeRound.
func probeGlobal() (*tensor.Set, error) {
	t, err := tensor.FromF32("probe", []int{1}, []float32{0})
	if err != nil {
		return nil, err
	}
	return tensor.NewSet(t)
}

// roundOptions are the engine options of every round of rule, but for its global model and
// its sums (newEngineRound adds them).
func (s *Server) roundOptions(rule aggregate.Rule) []aggregate.Option {
	opts := []aggregate.Option{aggregate.WithMixedDTypes(s.cfg.Round.MixedDTypes)}
	if len(s.meters) > 0 {
		opts = append(opts, aggregate.WithMeters(s.meters...))
	}
	if rule.Requirements().Kind == aggregate.KindWhole {
		opts = append(opts, aggregate.WithRetainedUpdates())
	}
	return append(opts, s.engineOpts...)
}

// exactSettings are the exact sums a new round opens with: the configured bounds, defaults
// filled in, so that the round keeps them (round.json) whatever later versions default to.
func exactSettings(c *ExactConfig) *ExactConfig {
	e := &ExactConfig{Bound: aggregate.DefaultExactBound, MaxWeight: aggregate.DefaultExactMaxWeight}
	if c != nil {
		e.OneLimb = c.OneLimb
		if c.Bound != 0 {
			e.Bound = c.Bound
		}
		if c.MaxWeight != 0 {
			e.MaxWeight = c.MaxWeight
		}
		if len(c.TensorBounds) > 0 {
			e.TensorBounds = make(map[string]float64, len(c.TensorBounds))
			for k, v := range c.TensorBounds {
				e.TensorBounds[k] = v
			}
		}
	}
	return e
}

// apiExact is the status document's copy of a round's exact sums.
func apiExact(c *ExactConfig) *api.ExactSum {
	if c == nil {
		return nil
	}
	return &api.ExactSum{Bound: c.Bound, MaxWeight: c.MaxWeight, TensorBounds: c.TensorBounds, OneLimb: c.OneLimb}
}

// engineRound is the engine's round as the server drives it: the refusals a setting of the
// server could lift say which one. Exact sums refuse f64 updates (round.sum "float" takes
// them) and values and weights beyond round.exact; the engine names the update, tensor and
// element, the server its own setting.
type engineRound struct {
	*aggregate.Round
	exact bool
	sec   *secagg.Sum // the rule's secure sum, which the round's recovery unmasks; nil if none
}

// CheckHeader is the engine's, explained.
func (e *engineRound) CheckHeader(source string, layout tensor.Layout, metadata map[string]string) error {
	return e.explain(e.Round.CheckHeader(source, layout, metadata), layout)
}

// Add is the engine's, explained.
func (e *engineRound) Add(ctx context.Context, u *tensor.Set, weight float64) error {
	return e.explain(e.Round.Add(ctx, u, weight), u.Layout())
}

// AddByExamples is the engine's, explained.
func (e *engineRound) AddByExamples(ctx context.Context, u *tensor.Set) error {
	return e.explain(e.Round.AddByExamples(ctx, u), u.Layout())
}

func (e *engineRound) explain(err error, layout tensor.Layout) error {
	if err == nil || !e.exact {
		return err
	}
	switch {
	case errors.Is(err, tensor.ErrDType) && hasF64(layout):
		return fmt.Errorf("%w; this server sums exactly (round.sum): round.sum: \"float\" takes f64 updates", err)
	case errors.Is(err, aggregate.ErrOutOfRange):
		return fmt.Errorf("%w; the server's round.exact sets the bounds (bound, tensor_bounds) and the cap on the round's total weight (max_weight)", err)
	}
	return err
}

func hasF64(l tensor.Layout) bool {
	for _, f := range l {
		if f.DType == tensor.F64 {
			return true
		}
	}
	return false
}
