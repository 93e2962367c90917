package federation

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"time"

	"github.com/wattagg/wattagg/energy"
	"github.com/wattagg/wattagg/interop/gorgonia/attack"
	"github.com/wattagg/wattagg/interop/gorgonia/mlp"
)

// ErrOption is returned for an option out of range.
var ErrOption = errors.New("federation: invalid option")

// ErrCollapsed marks a round in which no client could send an update (every client's
// training diverged, or the server refused every update): the federation cannot go on.
var ErrCollapsed = errors.New("federation collapsed")

// ErrRound is returned when the server ends a round without a model (a failed round), or does
// not open the next one.
var ErrRound = errors.New("federation: round did not produce a model")

// Attack is what the poisoned clients do.
type Attack int

// The attacks of the table.
const (
	NoAttack Attack = iota
	// ScaleAttack: a poisoned client trains honestly, then sends x_t + s(x_k − x_t) with
	// s = attack.DefaultScale (−10): ten times its update, reversed.
	ScaleAttack
	// FlipAttack: a poisoned client trains on labels y → 9−y and sends what it learned.
	FlipAttack
)

func (a Attack) String() string {
	switch a {
	case NoAttack:
		return "none"
	case ScaleAttack:
		return "scaled ×−10"
	case FlipAttack:
		return "label flip"
	}
	return fmt.Sprintf("Attack(%d)", int(a))
}

// attackNames are the attacks' names in JSON and flags.
var attackNames = map[Attack]string{NoAttack: "none", ScaleAttack: "scale", FlipAttack: "label-flip"}

// MarshalText writes the attack's name: none, scale or label-flip.
func (a Attack) MarshalText() ([]byte, error) {
	if n, ok := attackNames[a]; ok {
		return []byte(n), nil
	}
	return nil, fmt.Errorf("%w: attack %d", ErrOption, int(a))
}

// UnmarshalText reads an attack's name.
func (a *Attack) UnmarshalText(b []byte) error {
	for x, n := range attackNames {
		if n == string(b) {
			*a = x
			return nil
		}
	}
	return fmt.Errorf("%w: attack %q (none, scale or label-flip)", ErrOption, b)
}

// Rule is the server's aggregation rule: a name the server builds and its parameters, as a
// server configuration's round.rule and round.params give them.
type Rule struct {
	Name   string             `json:"name"`
	Params map[string]float64 `json:"params,omitempty"`
}

func (r Rule) String() string { return r.Name }

// Label is the rule with its parameters, as tables and plots name it: "krum (f=3, m=1)".
func (r Rule) Label() string { return ruleLabel(r) }

// Progress is told about every round as it ends.
type Progress func(Round)

type config struct {
	rule     Rule
	rounds   int
	clients  int
	hidden   int
	alpha    float64
	testFrac float64
	seed     uint64
	train    []mlp.Option
	attack   Attack
	poisoned int
	scale    float64 // the scaling attack's factor (attack.DefaultScale; tests change it)
	dir      string  // kept
	scratch  string  // parent of a temporary directory, removed
	meters   []energy.Meter
	log      *slog.Logger
	progress Progress
	load     time.Duration // pause between background inference requests; 0: none
	poll     time.Duration
}

// Option configures Run.
type Option func(*config) error

func defaults() config {
	return config{
		rule:     Rule{Name: "fedavg"},
		rounds:   20,
		clients:  10,
		hidden:   32,
		alpha:    0.5,
		testFrac: 0.2,
		seed:     42,
		poll:     2 * time.Millisecond,
		scale:    attack.DefaultScale,
	}
}

// WithRule sets the server's aggregation rule (default fedavg); params are copied.
func WithRule(name string, params map[string]float64) Option {
	return func(c *config) error {
		if name == "" {
			return fmt.Errorf("%w: empty rule name", ErrOption)
		}
		c.rule = Rule{Name: name, Params: maps.Clone(params)}
		return nil
	}
}

// WithRounds sets the number of rounds (default 20).
func WithRounds(n int) Option {
	return func(c *config) error {
		if n < 1 || n > 10000 {
			return fmt.Errorf("%w: %d rounds", ErrOption, n)
		}
		c.rounds = n
		return nil
	}
}

// WithClients sets the number of clients (default 10); each gets a Dirichlet shard of the
// training split.
func WithClients(n int) Option {
	return func(c *config) error {
		if n < 1 || n > 64 {
			return fmt.Errorf("%w: %d clients not in 1..64", ErrOption, n)
		}
		c.clients = n
		return nil
	}
}

// WithDirichlet sets the label skew of the shards (default alpha 0.5: most clients hold a few
// dominant classes).
func WithDirichlet(alpha float64) Option {
	return func(c *config) error {
		if !(alpha > 0) || math.IsInf(alpha, 0) {
			return fmt.Errorf("%w: Dirichlet alpha %v", ErrOption, alpha)
		}
		c.alpha = alpha
		return nil
	}
}

// WithHidden sets the MLP's hidden width (default 32).
func WithHidden(n int) Option {
	return func(c *config) error {
		if n < 1 || n > 4096 {
			return fmt.Errorf("%w: hidden width %d not in 1..4096", ErrOption, n)
		}
		c.hidden = n
		return nil
	}
}

// WithSeed seeds the split, the shards, the initial model and every client's training
// (default 42): the same seed and options give the same clients' updates.
func WithSeed(seed uint64) Option {
	return func(c *config) error { c.seed = seed; return nil }
}

// WithTraining adds options to every client's local training (mlp.WithEpochs, ...); the
// federation sets each client's seed itself.
func WithTraining(opts ...mlp.Option) Option {
	return func(c *config) error {
		c.train = append(c.train, opts...)
		return nil
	}
}

// WithAttack poisons the first n clients with attack a (the default is no attack).
func WithAttack(a Attack, n int) Option {
	return func(c *config) error {
		switch {
		case a != NoAttack && a != ScaleAttack && a != FlipAttack:
			return fmt.Errorf("%w: attack %d", ErrOption, int(a))
		case a == NoAttack && n != 0, a != NoAttack && n < 1:
			return fmt.Errorf("%w: %d clients poisoned with attack %s", ErrOption, n, a)
		}
		c.attack, c.poisoned = a, n
		return nil
	}
}

// WithDir keeps the federation's files under dir (the server's data directory, the clients'
// and the inference node's model files) instead of a temporary directory removed at the end.
func WithDir(dir string) Option {
	return func(c *config) error {
		if dir == "" {
			return fmt.Errorf("%w: empty directory", ErrOption)
		}
		c.dir = dir
		return nil
	}
}

// WithScratch puts the federation's files in a temporary directory under parent (default
// os.TempDir()), removed at the end. A tmpfs parent (/dev/shm) makes the server's fsyncs
// free: the same protocol, without the disk's latency.
func WithScratch(parent string) Option {
	return func(c *config) error {
		if parent == "" {
			return fmt.Errorf("%w: empty directory", ErrOption)
		}
		c.scratch = parent
		return nil
	}
}

// WithMeters meters the server's rounds with ms (default: energy.Discover's meters, opened
// and closed by Run).
func WithMeters(ms ...energy.Meter) Option {
	return func(c *config) error {
		if len(ms) == 0 {
			return fmt.Errorf("%w: no meters", ErrOption)
		}
		for _, m := range ms {
			if m == nil {
				return fmt.Errorf("%w: nil meter", ErrOption)
			}
		}
		c.meters = ms
		return nil
	}
}

// WithLogger sends the server's and the inference node's logs to l (default: warnings and
// errors to slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(c *config) error {
		if l == nil {
			return fmt.Errorf("%w: nil logger", ErrOption)
		}
		c.log = l
		return nil
	}
}

// WithProgress calls fn after every round, from Run's goroutine.
func WithProgress(fn Progress) Option {
	return func(c *config) error {
		if fn == nil {
			return fmt.Errorf("%w: nil progress function", ErrOption)
		}
		c.progress = fn
		return nil
	}
}

// WithInferenceLoad keeps a stream of prediction requests on the inference node for the
// whole run, one every pause, and counts those that fail: the check that reloading each
// round's model drops none.
func WithInferenceLoad(pause time.Duration) Option {
	return func(c *config) error {
		if pause < 100*time.Microsecond || pause > time.Minute {
			return fmt.Errorf("%w: inference load pause %v not in 100µs..1m", ErrOption, pause)
		}
		c.load = pause
		return nil
	}
}
