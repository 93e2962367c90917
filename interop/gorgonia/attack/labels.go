package attack

import (
	"errors"
	"fmt"

	"github.com/wattagg/wattagg/interop/gorgonia/digits"
)

// ErrAttack is returned for attack parameters that are not valid.
var ErrAttack = errors.New("attack: invalid parameters")

// ReversedLabels is the label map of the usual label-flipping attack: y becomes 9 − y, so
// every label is wrong.
func ReversedLabels() []int {
	perm := make([]int, digits.Classes)
	for y := range perm {
		perm[y] = digits.Classes - 1 - y
	}
	return perm
}

// FlipLabels returns a copy of d whose label y is perm[y]; the features are shared, not
// copied. perm must be a permutation of 0..9.
func FlipLabels(d digits.Dataset, perm []int) (digits.Dataset, error) {
	if len(perm) != digits.Classes {
		return digits.Dataset{}, fmt.Errorf("%w: label map of %d entries, want %d", ErrAttack, len(perm), digits.Classes)
	}
	var seen [digits.Classes]bool
	for y, p := range perm {
		if p < 0 || p >= digits.Classes || seen[p] {
			return digits.Dataset{}, fmt.Errorf("%w: label map %v is not a permutation of 0..%d (entry %d)", ErrAttack, perm, digits.Classes-1, y)
		}
		seen[p] = true
	}
	out := digits.Dataset{X: d.X, Y: make([]int, len(d.Y))}
	for i, y := range d.Y {
		out.Y[i] = perm[y]
	}
	return out, nil
}
