package robust

import (
	"context"
	"fmt"
	"math"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/device"
)

// TrimmedMean is the coordinate-wise trimmed mean (Yin et al., 2018; Flower's FedTrimmedAvg,
// scipy's trim_mean): per coordinate, the floor(β·n) smallest and floor(β·n) largest values are
// cut and the rest averaged. n counts the clients left after those with NaN or Inf updates are
// excluded. Weights are ignored, as in Flower. When at most floor(β·n) clients are Byzantine,
// every coordinate of the result lies within the range of the honest values of that coordinate.
//
// The kept values are summed in f32 in ascending order.
type TrimmedMean struct{ beta float64 }

// NewTrimmedMean returns the trimmed mean cutting the fraction beta (0 <= beta < 0.5) of the
// values from each end of every coordinate.
func NewTrimmedMean(beta float64) (*TrimmedMean, error) {
	if !(beta >= 0 && beta < 0.5) {
		return nil, fmt.Errorf("%w: trimmed-mean beta %v: want 0 <= beta < 0.5 (the fraction cut from each end)", aggregate.ErrOption, beta)
	}
	return &TrimmedMean{beta: beta}, nil
}

// Name is "trimmed-mean".
func (*TrimmedMean) Name() string { return "trimmed-mean" }

// Requirements: every update at once; NaN or Inf excluded; f32, f16, bf16 or i8 updates.
func (*TrimmedMean) Requirements() aggregate.Requirements { return wholeRequirements }

// Trim is the number of values cut from each end of a coordinate of n clients: floor(β·n).
func (r *TrimmedMean) Trim(n int) int { return int(math.Floor(r.beta * float64(n))) }

// Begin begins a round.
func (r *TrimmedMean) Begin(context.Context, *aggregate.Env) (aggregate.Stage, error) {
	return &orderStage{rule: r.Name(), op: device.TrimmedMean, trim: r.Trim, beta: r.beta}, nil
}
