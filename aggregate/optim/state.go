package optim

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// Metadata of the state files.
const (
	stateKind    = "server-optimizer"
	stateVersion = "1"
)

// Tensor name prefixes of an optimizer state file: "m/<tensor>" and "v/<tensor>".
const (
	MomentPrefix       = "m/"
	SecondMomentPrefix = "v/"
)

// State is what a server optimizer carries from round to round: the moments m and v,
// each a Set of f32 tensors named and shaped as the model's, and the rounds applied so far. In a
// file (WriteFile, LoadState) the tensors are "m/<name>" and "v/<name>", and the
// metadata records the rule and its hyperparameters, so that a state is never continued by
// another rule or other hyperparameters.
type State struct {
	Rule                  string  // fedavgm, fedadagrad, fedadam, fedyogi
	LR, Beta1, Beta2, Tau float64 // as made; the ones the rule does not use are 0
	Round                 int     // rounds applied
	M, V                  *tensor.Set

	closer *tensor.Set // the mapped file, if loaded
}

// optimKeys are the hyperparameters' metadata keys, in the order of optimParams.values.
var optimKeys = []string{"wattagg.server_lr", "wattagg.beta1", "wattagg.beta2", "wattagg.tau"}

func (s *State) values() []float64 { return []float64{s.LR, s.Beta1, s.Beta2, s.Tau} }

// LoadState maps a state file written by WriteFile or by a server optimizer's
// AggregateFile. The moments view the mapping until Close. Anything that is not such a state is
// an aggregate.ErrState error naming the file.
func LoadState(path string) (*State, error) {
	f, err := safetensors.Open(path)
	if err != nil {
		return nil, err
	}
	s, err := optimizerStateOf(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	s.closer = f
	return s, nil
}

func optimizerStateOf(f *tensor.Set) (*State, error) {
	md := f.Metadata
	if md[aggregate.StateKindKey] != stateKind {
		return nil, fmt.Errorf("%w: not a server-optimizer state (%s is %q)", aggregate.ErrState, aggregate.StateKindKey, md[aggregate.StateKindKey])
	}
	if md[aggregate.StateVersionKey] != stateVersion {
		return nil, fmt.Errorf("%w: state version %q, want %s", aggregate.ErrState, md[aggregate.StateVersionKey], stateVersion)
	}
	s := &State{Rule: md[aggregate.RuleKey]}
	kind, ok := kinds[s.Rule]
	if !ok {
		return nil, fmt.Errorf("%w: unknown optimizer %q", aggregate.ErrState, s.Rule)
	}
	vals := make([]float64, len(optimKeys))
	for i, k := range optimKeys {
		if !kind.uses[i] {
			continue
		}
		v, err := strconv.ParseFloat(md[k], 64)
		if err != nil {
			return nil, fmt.Errorf("%w: %s %q is not a number", aggregate.ErrState, k, md[k])
		}
		vals[i] = v
	}
	s.LR, s.Beta1, s.Beta2, s.Tau = vals[0], vals[1], vals[2], vals[3]
	round, err := strconv.Atoi(md[aggregate.RoundKey])
	if err != nil || round < 1 {
		return nil, fmt.Errorf("%w: %s %q is not a round number", aggregate.ErrState, aggregate.RoundKey, md[aggregate.RoundKey])
	}
	s.Round = round
	s.M, s.V = &tensor.Set{Source: f.Source}, &tensor.Set{Source: f.Source}
	for _, t := range f.Tensors() {
		var dst *tensor.Set
		name, found := strings.CutPrefix(t.Name, MomentPrefix)
		if found {
			dst = s.M
		} else if name, found = strings.CutPrefix(t.Name, SecondMomentPrefix); found && kind.rule.SecondMoment() {
			dst = s.V
		} else {
			return nil, fmt.Errorf("%w: unexpected tensor %q in a %s state", aggregate.ErrState, t.Name, s.Rule)
		}
		if t.DType != tensor.F32 {
			return nil, fmt.Errorf("%w: tensor %q is %s, want f32", aggregate.ErrState, t.Name, t.DType)
		}
		view, err := tensor.FromBytes(name, tensor.F32, t.Shape, t.Bytes())
		if err != nil {
			return nil, fmt.Errorf("%w: %w", aggregate.ErrState, err)
		}
		if err := dst.Add(view); err != nil {
			return nil, fmt.Errorf("%w: %w", aggregate.ErrState, err)
		}
	}
	if !kind.rule.SecondMoment() {
		s.V = nil
	} else if _, err := s.M.Layout().Match(s.V.Layout(), true); err != nil {
		return nil, fmt.Errorf("%w: second moment: %w", aggregate.ErrState, err)
	}
	if s.M.Len() == 0 {
		return nil, fmt.Errorf("%w: no moment tensors", aggregate.ErrState)
	}
	return s, nil
}

// WriteFile writes the state atomically to path (the file appears complete or not at all).
func (s *State) WriteFile(path string) error {
	if s.M == nil {
		return fmt.Errorf("%w: no rounds applied yet: nothing to save", aggregate.ErrState)
	}
	out := &tensor.Set{Metadata: s.metadata()}
	sides := []*tensor.Set{s.M}
	prefixes := []string{MomentPrefix}
	if s.V != nil {
		sides, prefixes = append(sides, s.V), append(prefixes, SecondMomentPrefix)
	}
	for k, side := range sides {
		for _, t := range side.Tensors() {
			view, err := tensor.FromBytes(prefixes[k]+t.Name, t.DType, t.Shape, t.Bytes())
			if err != nil {
				return err
			}
			if err := out.Add(view); err != nil {
				return err
			}
		}
	}
	return safetensors.WriteFile(path, out)
}

// metadata is the state's __metadata__: kind, version, rule, hyperparameters, round.
func (s *State) metadata() map[string]string {
	md := map[string]string{
		aggregate.StateKindKey:    stateKind,
		aggregate.StateVersionKey: stateVersion,
		aggregate.RuleKey:         s.Rule,
		aggregate.RoundKey:        strconv.Itoa(s.Round),
	}
	kind := kinds[s.Rule]
	for i, v := range s.values() {
		if kind.uses[i] {
			md[optimKeys[i]] = strconv.FormatFloat(v, 'g', -1, 64)
		}
	}
	return md
}

// Close releases the state: the mapping of a loaded state, or the memory of one made in memory.
// It is safe to call more than once.
func (s *State) Close() error {
	if s == nil {
		return nil
	}
	var errs []error
	if s.closer != nil {
		errs = append(errs, s.closer.Close())
		s.closer = nil
	} else {
		for _, set := range []*tensor.Set{s.M, s.V} {
			if set != nil {
				errs = append(errs, set.Close())
			}
		}
	}
	return errors.Join(errs...)
}

// compatible checks that the state was made by optimizer o with o's hyperparameters.
func (s *State) compatible(o *Optimizer) error {
	if s.Rule != o.name {
		return fmt.Errorf("%w: the state was made by %s, this rule is %s", aggregate.ErrState, s.Rule, o.name)
	}
	for i, v := range s.values() {
		if o.kind.uses[i] && v != o.vals[i] {
			return fmt.Errorf("%w: the state was made with %s %v, this rule has %v (start a new state to change it)",
				aggregate.ErrState, hyperNames[i], v, o.vals[i])
		}
	}
	return nil
}

// views returns the moments' f32 views in the layout's order (nil before round 1), checking that
// they hold the model's tensors.
func (s *State) views(layout tensor.Layout) (m, v [][]float32, err error) {
	if s == nil || s.M == nil {
		return nil, nil, nil
	}
	get := func(set *tensor.Set, what string) ([][]float32, error) {
		if set.Len() != len(layout) {
			var names []string
			for _, t := range set.Tensors() {
				if !slices.ContainsFunc(layout, func(f tensor.Field) bool { return f.Name == t.Name }) {
					names = append(names, t.Name)
				}
			}
			return nil, fmt.Errorf("%w: %w: the %s has %d tensors, the model %d (unexpected: %v)",
				aggregate.ErrState, tensor.ErrLayoutMismatch, what, set.Len(), len(layout), names)
		}
		out := make([][]float32, len(layout))
		for t, f := range layout {
			st, ok := set.Tensor(f.Name)
			if !ok {
				return nil, fmt.Errorf("%w: %w: the %s has no tensor %q", aggregate.ErrState, tensor.ErrLayoutMismatch, what, f.Name)
			}
			if !slices.Equal(st.Shape, f.Shape) {
				return nil, fmt.Errorf("%w: %w: the %s's tensor %q has shape %v, the model %v",
					aggregate.ErrState, tensor.ErrLayoutMismatch, what, f.Name, st.Shape, f.Shape)
			}
			x, err := st.F32()
			if errors.Is(err, tensor.ErrUnaligned) {
				x, err = st.Clone().F32()
			}
			if err != nil {
				return nil, err
			}
			out[t] = x
		}
		return out, nil
	}
	if m, err = get(s.M, "first moment"); err != nil {
		return nil, nil, err
	}
	if s.V != nil {
		if v, err = get(s.V, "second moment"); err != nil {
			return nil, nil, err
		}
	}
	return m, v, nil
}

// fileExists reports whether path exists; other errors than non-existence are returned.
func fileExists(path string) (bool, error) {
	_, err := os.Stat(path)
	if err == nil {
		return true, nil
	}
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	return false, err
}
