package aggregate

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// Rule is an aggregation rule: the arithmetic of a round, and nothing else. The round engine
// (Round, Aggregate, AggregateFile) validates updates, places and meters the work, writes the
// output, commits state and reports; a rule describes what it needs (Requirements) and, for
// each round, begins a Stage whose hooks the engine calls.
type Rule interface {
	// Name is the rule's name in reports and on the command line ("fedavg", "median", ...).
	Name() string
	// Requirements says what the rule needs from every round.
	Requirements() Requirements
	// Begin starts the rule's part of a round. A stateful rule reads its state here; nothing
	// it begins changes the rule until the engine commits the round.
	Begin(ctx context.Context, env *Env) (Stage, error)
}

// Kind is how the engine computes a rule's round.
type Kind uint8

// The kinds of rules.
const (
	// KindSum rules are weighted sums, Σ_k a_k·x_k (+ b·x_t) / D: updates are added as they
	// arrive, in O(model) memory whatever their number. FedAvg, the server optimizers, the
	// private means and fixed-bound clipping are sums.
	KindSum Kind = iota + 1
	// KindModSum rules add u32 updates modulo 2^32 (secure aggregation), also on arrival.
	KindModSum
	// KindWhole rules need every update at once (median, Krum, ...): an incremental round
	// keeps the updates in a spool as they arrive, and the rule computes at the end.
	KindWhole
)

func (k Kind) String() string {
	switch k {
	case KindSum:
		return "sum"
	case KindModSum:
		return "mod-sum"
	case KindWhole:
		return "whole"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// WeightPolicy is how a rule uses the clients' weights.
type WeightPolicy uint8

// The weight policies.
const (
	// WeightsApplied: the weights given, else each update's num_examples, else 1 each.
	WeightsApplied WeightPolicy = iota
	// WeightsEqual: every client counts once. Weights given must be equal; num_examples
	// metadata is ignored (a client's example count is its own business under privacy).
	WeightsEqual
)

// Requirements is what a rule needs from every round.
type Requirements struct {
	Kind    Kind
	Weights WeightPolicy
	// ExcludeNonFinite leaves an update holding NaN or Inf out of the round, reporting why in
	// Report.PerClient, instead of rejecting it: robust rules exist to survive such clients.
	ExcludeNonFinite bool
	// Global says the rule needs the global model x_t the clients trained from (WithGlobal): a
	// sum then works on the deltas x_k − x_t, updates are full models (UpdateKindKey), and the
	// result is the new global model, in f32.
	Global bool
	// ConsumesDelta says the rule's stage takes the averaged delta Δ rather than the model (a
	// server optimizer's step): the sum before it then produces Δ instead of x_t + Δ.
	ConsumesDelta bool
	// DTypes lists the update dtypes the rule takes (nil: every real dtype).
	DTypes []tensor.DType
}

// Env is what the engine tells a rule's Begin about the round.
type Env struct {
	// Global is the global model (Requirements.Global), nil otherwise.
	Global *tensor.Set
	// Layout is the round's layout when it is known at the start (from the global model), nil
	// when the first update will fix it.
	Layout tensor.Layout
	// Chunks is the number of output chunks when Layout is known (0 otherwise): the unit of
	// Chunk processing.
	Chunks int
	// Device is the round's device (stages run their own operations on it, or on the host
	// CPU when it lacks them).
	Device device.Device
}

// Stage is one rule's part of one round. Besides Report, it implements the hooks it needs:
// Admitter, Weigher, Denominator, Finisher, ChunkStage, Computer, Committer, Annotator. The
// engine finds the hooks by type assertion, so a stage type must not embed another stage type
// (embedding would promote the other's hooks).
type Stage interface {
	// Report adds the stage's figures (Details, per-client diagnostics) to the round's report.
	Report(r *Report)
}

// Admitter checks an update beyond what the engine validates (layout, dtypes, finiteness,
// weights) before anything of it is added: a secure sum's client ID, a quantiser's parameters.
type Admitter interface {
	Stage
	Admit(ctx context.Context, c *Client) error
}

// Weigher scales each client's contribution to a sum: clipping. c.Norm and c.DeltaNorm compute
// norms on the round's device. Weigh is called once per admitted client, in arrival order,
// before anything of it is added; it returns the factor by which the update enters the sum
// (1: as it is; 0: left out but counted), or excludes the client (c.Exclude).
type Weigher interface {
	Stage
	Weigh(ctx context.Context, c *Client) (float64, error)
}

// Denominator sets a sum's divisor D given the clients and total weight in the sum (default:
// the total weight).
type Denominator interface {
	Stage
	Denominator(clients int, weight float64) float64
}

// Finisher is told the sum's totals once every update is in, before the output pass.
type Finisher interface {
	Stage
	Finish(ctx context.Context, s *SumInfo) error
}

// SumInfo is what a sum saw, for Finisher.
type SumInfo struct {
	Layout      tensor.Layout // the round's tensors, in field order
	Clients     []*Client     // in arrival order, excluded ones included
	Weight      float64       // total weight of the clients in the sum
	Denominator float64
}

// ChunkStage processes every finished chunk of a sum before it is output: noise, an optimizer
// step, a secure sum's decoding. Chunks are processed concurrently, each by the goroutine that
// computed it, in any order.
type ChunkStage interface {
	Stage
	// Sides describes the per-coordinate state the stage writes beside the result (an
	// optimizer's moments), or nil.
	Sides() *Sides
	// Process post-processes chunk c in place.
	Process(ctx context.Context, c *Chunk) error
}

// Sides describes a stage's per-coordinate state tensors: one Set laid out like the result per
// prefix, named prefix + tensor name in a state file.
type Sides struct {
	Prefixes []string
	// Path is the state file the sides are written to, chunk by chunk, when the round's result
	// goes to a file (published with it); an in-memory result, or "", keeps them in memory
	// (Outcome.Sides).
	Path     string
	Metadata map[string]string
	// Recycle are sets (one per prefix, or nil) whose memory may receive the sides of an
	// in-memory round: a stage's retired state, so that steady rounds touch no fresh pages.
	Recycle []*tensor.Set
}

// Computer computes a whole-set rule's result from every update at once (KindWhole).
type Computer interface {
	Stage
	Compute(ctx context.Context, in *Inputs) error
}

// Committer moves a stateful rule on once its round succeeded. Prepare runs after the output is
// complete and before it is released: it returns the state files to publish with the result
// (written but not yet renamed), in the order they must appear (a privacy ledger before the
// model it accounts for). The engine publishes them and the result as one unit (a journaled
// group commit: a crash leaves all old or all new), then calls Commit; on failure it calls
// Abort and the rule stays as it was.
type Committer interface {
	Stage
	Prepare(ctx context.Context, o *Outcome) ([]*safetensors.Writer, error)
	Commit(o *Outcome) error
	Abort()
}

// Outcome is a successful round as committers see it.
type Outcome struct {
	Result *tensor.Set    // the result in memory (nil when it went to a file)
	Path   string         // the result's file ("" in memory)
	Sides  []*tensor.Set  // the stage's sides in memory, one per prefix; nil when they went to Sides.Path
	Info   *SumInfo       // the sum's totals (nil for whole-set rules)
	Round  map[string]any // free for stages to pass figures from Prepare to Commit
}

// Compose chains rules into one, where the papers compose them: clipping before FedAvg or a
// robust statistic, a private mean before a server optimizer (DP-FedAdam), a secure sum under a
// server optimizer. The engine runs the stages over the same chunks in order. At most one rule
// may be a mod-sum (first) or a whole-set rule (last); a rule that consumes the averaged delta
// needs a global model.
func Compose(rules ...Rule) (Rule, error) {
	if len(rules) == 0 {
		return nil, fmt.Errorf("%w: no rules to compose", ErrOption)
	}
	var flat []Rule
	for _, r := range rules {
		if r == nil {
			return nil, fmt.Errorf("%w: nil rule", ErrOption)
		}
		if c, ok := r.(chain); ok {
			flat = append(flat, c...)
		} else {
			flat = append(flat, r)
		}
	}
	if len(flat) == 1 {
		return flat[0], nil
	}
	c := chain(flat)
	if _, err := c.requirements(); err != nil {
		return nil, err
	}
	return c, nil
}

// chain is a composition of rules.
type chain []Rule

func (c chain) Name() string {
	names := make([]string, len(c))
	for i, r := range c {
		names[i] = r.Name()
	}
	return strings.Join(names, ",")
}

func (c chain) Requirements() Requirements {
	r, _ := c.requirements() // checked by Compose
	return r
}

// requirements merges the links' requirements and checks that they compose.
func (c chain) requirements() (Requirements, error) {
	out := Requirements{Kind: KindSum}
	for i, r := range c {
		q := r.Requirements()
		switch q.Kind {
		case KindModSum:
			if i != 0 {
				return out, fmt.Errorf("%w: %s adds masked vectors and must come first in %s", ErrOption, r.Name(), c.Name())
			}
			out.Kind = KindModSum
		case KindWhole:
			if i != len(c)-1 {
				return out, fmt.Errorf("%w: %s needs every update at once and must come last in %s", ErrOption, r.Name(), c.Name())
			}
			if out.Kind == KindModSum {
				return out, fmt.Errorf("%w: %s cannot follow a secure sum in %s", ErrOption, r.Name(), c.Name())
			}
			out.Kind = KindWhole
		}
		if q.Weights == WeightsEqual {
			out.Weights = WeightsEqual
		}
		out.ExcludeNonFinite = out.ExcludeNonFinite || q.ExcludeNonFinite
		out.Global = out.Global || q.Global
		if q.ConsumesDelta {
			if i == 0 {
				return out, fmt.Errorf("%w: %s steps from an averaged delta: put a sum before it in %s", ErrOption, r.Name(), c.Name())
			}
			out.ConsumesDelta = true
		}
		if q.DTypes != nil {
			if out.DTypes == nil {
				out.DTypes = slices.Clone(q.DTypes)
			} else {
				out.DTypes = slices.DeleteFunc(out.DTypes, func(dt tensor.DType) bool { return !slices.Contains(q.DTypes, dt) })
			}
		}
	}
	if out.Kind == KindWhole && out.Global {
		return out, fmt.Errorf("%w: %s: a robust statistic cannot be combined with a rule that moves a global model", ErrOption, c.Name())
	}
	return out, nil
}

// Close releases what the links hold (a stateful rule's state).
func (c chain) Close() error {
	var errs []error
	for _, r := range c {
		if cl, ok := r.(interface{ Close() error }); ok {
			errs = append(errs, cl.Close())
		}
	}
	return errors.Join(errs...)
}

// Begin begins every link; the engine calls the stages' hooks in order.
func (c chain) Begin(ctx context.Context, env *Env) (Stage, error) {
	stages := make(stageList, 0, len(c))
	for _, r := range c {
		s, err := r.Begin(ctx, env)
		if err != nil {
			stages.abort()
			return nil, fmt.Errorf("%s: %w", r.Name(), err)
		}
		stages = append(stages, s)
	}
	return stages, nil
}

// stageList is the stages of a chain, as one Stage.
type stageList []Stage

func (l stageList) Report(r *Report) {
	for _, s := range l {
		s.Report(r)
	}
}

func (l stageList) abort() {
	for _, s := range l {
		if c, ok := s.(Committer); ok {
			c.Abort()
		}
	}
}

// stagesOf flattens a stage into the list of its links.
func stagesOf(s Stage) []Stage {
	if l, ok := s.(stageList); ok {
		return l
	}
	return []Stage{s}
}
