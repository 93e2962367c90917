package gorgonia

import (
	"fmt"

	gt "gorgonia.org/tensor"

	"github.com/wattagg/wattagg/tensor"
)

// DenseSet returns the tensors of s as gorgonia Dense values in Set order, each viewing its
// tensor's data (see Dense). The views live as long as s: closing s empties them.
func DenseSet(s *tensor.Set) ([]*gt.Dense, error) {
	out := make([]*gt.Dense, s.Len())
	for i, t := range s.Tensors() {
		d, err := Dense(t)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s.Source, err)
		}
		out[i] = d
	}
	return out, nil
}

// SetFromDense builds a Set whose i-th tensor is named names[i] and views ds[i] (see
// FromDense). Names must be unique (tensor.ErrDuplicateName) and as many as the Dense values
// (tensor.ErrLayoutMismatch).
func SetFromDense(names []string, ds []*gt.Dense) (*tensor.Set, error) {
	if len(names) != len(ds) {
		return nil, fmt.Errorf("%w: %d names for %d dense values", tensor.ErrLayoutMismatch, len(names), len(ds))
	}
	s, err := tensor.NewSet()
	if err != nil {
		return nil, err
	}
	for i, d := range ds {
		t, err := FromDense(names[i], d)
		if err != nil {
			return nil, err
		}
		if err := s.Add(t); err != nil {
			return nil, err
		}
	}
	return s, nil
}
