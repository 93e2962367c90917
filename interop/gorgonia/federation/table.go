package federation

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"
)

// DefaultRules are the rules of the attack table, with the parameters the showcase gives them
// for 10 clients of which 3 are poisoned:
//
//   - trimmed mean cuts β = 0.3 of the values at each end (3 of 10), as many as there are
//     attackers;
//   - Krum assumes f = 3 attackers (it needs n > 2f+2) and picks one update (m = 1);
//     Multi-Krum averages the n−f = 7 best-scored ones (Blanchard et al.'s m);
//   - Bulyan needs n ≥ 4f+3, so with 10 clients it can only assume f = 1: fewer than the 3
//     attackers, and the table shows what that costs;
//   - centered clipping starts from zero (the server has no option to center it on the
//     previous global model), so it runs enough iterations for the clipped iterate to reach
//     its fixed point, which does not depend on the start; τ is about the spread of the honest
//     clients' models, well below the attackers' distance from them;
//   - median, trimmed mean and Krum run again after nearest-neighbour mixing (nnm = 3: each
//     update replaced by the mean of its 7 nearest; robust.NNM, Allouah et al., 2023), which
//     is what keeps them close to clean FedAvg on label-skewed shards.
func DefaultRules() []Rule {
	return []Rule{
		{Name: "fedavg"},
		{Name: "median"},
		{Name: "trimmed-mean", Params: map[string]float64{"beta": 0.3}},
		{Name: "krum", Params: map[string]float64{"f": 3, "m": 1}},
		{Name: "multi-krum", Params: map[string]float64{"f": 3}},
		{Name: "bulyan", Params: map[string]float64{"f": 1}},
		{Name: "geomed"},
		{Name: "centered-clip", Params: map[string]float64{"tau": 0.5, "iters": 100}},
		{Name: "median", Params: map[string]float64{"nnm": 3}},
		{Name: "trimmed-mean", Params: map[string]float64{"beta": 0.3, "nnm": 3}},
		{Name: "krum", Params: map[string]float64{"f": 3, "m": 1, "nnm": 3}},
	}
}

// DefaultAttacks are the table's columns: no attack, then the two attacks.
func DefaultAttacks() []Attack { return []Attack{NoAttack, ScaleAttack, FlipAttack} }

// Table is the final held-out accuracy of every rule under every attack.
type Table struct {
	Rules    []Rule
	Attacks  []Attack
	Poisoned int
	// Results[i][j] is rule i under attack j (nil until run).
	Results [][]*Result
	// Wall is the time Run took.
	Wall time.Duration
}

// NewTable returns an empty table of rules × attacks, poisoned clients attacking in the
// attacks' columns. A cell may be filled before Run (with Set) to reuse a run made already.
func NewTable(rules []Rule, attacks []Attack, poisoned int) (*Table, error) {
	if len(rules) == 0 || len(attacks) == 0 {
		return nil, fmt.Errorf("%w: a table needs rules and attacks", ErrOption)
	}
	if poisoned < 1 && slices.ContainsFunc(attacks, func(a Attack) bool { return a != NoAttack }) {
		return nil, fmt.Errorf("%w: %d poisoned clients", ErrOption, poisoned)
	}
	t := &Table{Rules: rules, Attacks: attacks, Poisoned: poisoned, Results: make([][]*Result, len(rules))}
	for i := range t.Results {
		t.Results[i] = make([]*Result, len(attacks))
	}
	return t, nil
}

// Set fills the cell of res's rule (by name) and attack, and reports whether the table has it.
func (t *Table) Set(res *Result) bool {
	i := slices.IndexFunc(t.Rules, func(r Rule) bool { return r.Name == res.Rule.Name })
	j := slices.Index(t.Attacks, res.Attack)
	if i < 0 || j < 0 {
		return false
	}
	t.Results[i][j] = res
	return true
}

// Run runs a federation, with opts, for every empty cell, parallel at a time: each has its
// own server, clients and inference node, and they share nothing but the machine. done, if
// not nil, is called (from one goroutine at a time) as each run ends. A run that fails takes
// its cell with Result.Error set, and the others go on: Run returns every failure, joined,
// once all have ended. Cancelling ctx stops them all.
func (t *Table) Run(ctx context.Context, parallel int, done func(*Result), opts ...Option) error {
	if parallel < 1 || parallel > 64 {
		return fmt.Errorf("%w: %d parallel runs", ErrOption, parallel)
	}
	start := time.Now()
	defer func() { t.Wall = time.Since(start) }()
	sem := make(chan struct{}, parallel)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
cells:
	for i, r := range t.Rules {
		for j, a := range t.Attacks {
			if t.Results[i][j] != nil {
				continue
			}
			n := t.Poisoned
			if a == NoAttack {
				n = 0
			}
			run := append(append([]Option(nil), opts...), WithRule(r.Name, r.Params), WithAttack(a, n))
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				break cells
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				res, err := Run(ctx, run...)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					if ctx.Err() != nil {
						return // cancelled: not a result
					}
					if res == nil {
						res = &Result{Rule: r, Attack: a}
					}
					res.Error = err.Error()
					errs = append(errs, fmt.Errorf("rule %s, attack %s: %w", r.Name, a, err))
				}
				t.Results[i][j] = res
				if done != nil {
					done(res)
				}
			}()
		}
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return err
	}
	return errors.Join(errs...)
}

// WriteMarkdown writes the table: a row per rule, a column per attack, each cell the final
// held-out accuracy, with a note when the run collapsed or clients dropped out of rounds.
func (t *Table) WriteMarkdown(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "| rule (parameters) |")
	for _, a := range t.Attacks {
		switch a {
		case NoAttack:
			fmt.Fprintf(&b, " no attack |")
		default:
			fmt.Fprintf(&b, " %s (%d clients) |", a, t.Poisoned)
		}
	}
	b.WriteString("\n|---|")
	for range t.Attacks {
		b.WriteString("---:|")
	}
	b.WriteString("\n")
	for i, r := range t.Rules {
		fmt.Fprintf(&b, "| %s |", ruleLabel(r))
		for j := range t.Attacks {
			res := t.Results[i][j]
			switch {
			case res == nil:
				b.WriteString(" — |")
			case res.Error != "" && len(res.Rounds) == 0:
				b.WriteString(" failed (see the run's error) |")
			case res.Error != "":
				fmt.Fprintf(&b, " %.3f (failed in round %d) |", res.Final(), len(res.Rounds)+1)
			case len(res.Rounds) == 0:
				b.WriteString(" — |")
			case res.Collapsed != "":
				fmt.Fprintf(&b, " %.3f (collapsed in round %d) |", res.Final(), len(res.Rounds)+1)
			case res.FirstDropped() > 0:
				fmt.Fprintf(&b, " %.3f (clients drop out from round %d) |", res.Final(), res.FirstDropped())
			default:
				fmt.Fprintf(&b, " %.3f |", res.Final())
			}
		}
		b.WriteString("\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// ruleLabel is a rule with its parameters: "krum (f=3, m=1)".
func ruleLabel(r Rule) string {
	if len(r.Params) == 0 {
		return r.Name
	}
	keys := make([]string, 0, len(r.Params))
	for k := range r.Params {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%g", k, r.Params[k])
	}
	return fmt.Sprintf("%s (%s)", r.Name, strings.Join(parts, ", "))
}
