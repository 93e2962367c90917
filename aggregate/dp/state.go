package dp

import (
	"fmt"
	"math"
	"strconv"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// stateVersion is the version of the privacy state file format.
const stateVersion = "1"

// Tensors of a privacy state file: the accountant's runs of rounds with equal noise multiplier
// and sampling rate, one element per run.
const (
	accountantNoiseTensor    = "accountant/noise_multiplier" // f64
	accountantSamplingTensor = "accountant/sampling_rate"    // f64
	accountantRoundsTensor   = "accountant/rounds"           // u32
)

// PrivacyState is what a private mean carries from round to round: the rounds run, the clipping
// bound of the next round (adaptive clipping moves it) and the accountant. In a file
// (WriteFile, LoadPrivacyState) the accountant's runs are f64/u32 tensors and the rest is
// metadata, with the mechanism and, for adaptive clipping, its hyperparameters, so that a state
// is never continued by another mechanism.
type PrivacyState struct {
	Mechanism string // dp-fixed, dp-adaptive
	Round     int
	ClipBound float64
	// Adaptive clipping's hyperparameters as made (0 for fixed clipping); CountStddev 0 means
	// the default, expected clients / 20.
	TargetQuantile, ClipLearningRate, CountStddev float64
	Accountant                                    Accountant
}

var privacyKeys = []string{"wattagg.target_quantile", "wattagg.clip_lr", "wattagg.count_stddev"}

// LoadPrivacyState reads a state written by WriteFile or by a private mean's AggregateFile.
// Anything else is an aggregate.ErrState error naming the file.
func LoadPrivacyState(path string) (*PrivacyState, error) {
	f, err := safetensors.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	s, err := privacyStateOf(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

func privacyStateOf(f *tensor.Set) (*PrivacyState, error) {
	md := f.Metadata
	if md[aggregate.StateKindKey] != "privacy" {
		return nil, fmt.Errorf("%w: not a privacy state (%s is %q)", aggregate.ErrState, aggregate.StateKindKey, md[aggregate.StateKindKey])
	}
	if md[aggregate.StateVersionKey] != stateVersion {
		return nil, fmt.Errorf("%w: state version %q, want %s", aggregate.ErrState, md[aggregate.StateVersionKey], stateVersion)
	}
	s := &PrivacyState{Mechanism: md[aggregate.RuleKey]}
	if s.Mechanism != "dp-fixed" && s.Mechanism != "dp-adaptive" {
		return nil, fmt.Errorf("%w: unknown mechanism %q", aggregate.ErrState, s.Mechanism)
	}
	var err error
	if s.Round, err = strconv.Atoi(md[aggregate.RoundKey]); err != nil || s.Round < 1 {
		return nil, fmt.Errorf("%w: %s %q is not a round number", aggregate.ErrState, aggregate.RoundKey, md[aggregate.RoundKey])
	}
	if s.ClipBound, err = strconv.ParseFloat(md["wattagg.clip_bound"], 64); err != nil || !(s.ClipBound > 0) || math.IsInf(s.ClipBound, 0) {
		return nil, fmt.Errorf("%w: clip bound %q", aggregate.ErrState, md["wattagg.clip_bound"])
	}
	if s.Mechanism == "dp-adaptive" {
		vals := []*float64{&s.TargetQuantile, &s.ClipLearningRate, &s.CountStddev}
		for i, k := range privacyKeys {
			if *vals[i], err = strconv.ParseFloat(md[k], 64); err != nil {
				return nil, fmt.Errorf("%w: %s %q is not a number", aggregate.ErrState, k, md[k])
			}
		}
	}
	var z, q []float64
	var rounds []uint32
	for _, t := range f.Tensors() {
		switch t.Name {
		case accountantNoiseTensor:
			z, err = t.F64()
		case accountantSamplingTensor:
			q, err = t.F64()
		case accountantRoundsTensor:
			rounds, err = t.U32()
		default:
			return nil, fmt.Errorf("%w: unexpected tensor %q in a privacy state", aggregate.ErrState, t.Name)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %w", aggregate.ErrState, err)
		}
	}
	if len(z) != len(q) || len(z) != len(rounds) || len(z) == 0 {
		return nil, fmt.Errorf("%w: accountant runs of %d, %d and %d elements", aggregate.ErrState, len(z), len(q), len(rounds))
	}
	for i := range z {
		if err := s.Accountant.Compose(z[i], q[i], int(rounds[i])); err != nil {
			return nil, fmt.Errorf("%w: accountant run %d: %w", aggregate.ErrState, i, err)
		}
	}
	if s.Accountant.Rounds() != s.Round {
		return nil, fmt.Errorf("%w: the accountant holds %d rounds, the state says %d", aggregate.ErrState, s.Accountant.Rounds(), s.Round)
	}
	return s, nil
}

// WriteFile writes the state atomically to path.
func (s *PrivacyState) WriteFile(path string) error {
	w, err := s.writer(path)
	if err != nil {
		return err
	}
	return w.Commit()
}

// writer writes the state to a temporary file beside path and returns it unpublished: the
// round publishes it with the model, the ledger first.
func (s *PrivacyState) writer(path string) (*safetensors.Writer, error) {
	steps := s.Accountant.Steps()
	z, q := make([]float64, len(steps)), make([]float64, len(steps))
	rounds, err := tensor.New(accountantRoundsTensor, tensor.U32, len(steps))
	if err != nil {
		return nil, err
	}
	rv, _ := rounds.U32()
	for i, st := range steps {
		z[i], q[i], rv[i] = st.NoiseMultiplier, st.SamplingRate, uint32(st.Rounds)
	}
	zt, err := tensor.FromF64(accountantNoiseTensor, []int{len(z)}, z)
	if err != nil {
		return nil, err
	}
	qt, err := tensor.FromF64(accountantSamplingTensor, []int{len(q)}, q)
	if err != nil {
		return nil, err
	}
	ts := []*tensor.Tensor{zt, qt, rounds}
	var layout tensor.Layout
	for _, t := range ts {
		layout = append(layout, t.Field())
	}
	w, err := safetensors.Create(path, layout, s.metadata())
	if err != nil {
		return nil, err
	}
	for i, t := range ts {
		if _, err := w.WriteAt(t.Bytes(), w.TensorOffset(i)); err != nil {
			_ = w.Abort()
			return nil, err
		}
	}
	return w, nil
}

func (s *PrivacyState) metadata() map[string]string {
	f := func(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }
	md := map[string]string{
		aggregate.StateKindKey:    "privacy",
		aggregate.StateVersionKey: stateVersion,
		aggregate.RuleKey:         s.Mechanism,
		aggregate.RoundKey:        strconv.Itoa(s.Round),
		"wattagg.clip_bound":      f(s.ClipBound),
	}
	if s.Mechanism == "dp-adaptive" {
		for i, v := range []float64{s.TargetQuantile, s.ClipLearningRate, s.CountStddev} {
			md[privacyKeys[i]] = f(v)
		}
	}
	return md
}

// clone copies the state, the accountant included.
func (s *PrivacyState) clone() *PrivacyState {
	c := *s
	c.Accountant = Accountant{steps: s.Accountant.Steps()}
	return &c
}
