package robust

import (
	"context"
	"fmt"
	"slices"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/device"
)

// Bulyan is Bulyan (El Mhamdi et al., 2018, "The Hidden Vulnerability of Distributed Learning
// in Byzantium"), as Flower implements it over Krum: θ = n-2f updates are selected by applying
// Krum θ times, each time removing the update chosen from the candidates (n-f-2 neighbours of
// the remaining ones, at least 1); then every coordinate of the result is the mean of the
// β = θ-2f selected values closest to the selected values' median. It needs n >= 4f+3
// clients, n counting those left after updates with NaN or Inf are excluded. Weights are
// ignored. With at most f Byzantine clients every coordinate of the result lies within the
// range of the honest values of that coordinate.
//
// One pass computes the Gram matrix, one the coordinate-wise step. The report has each client's
// first Krum score and whether it was selected, and the selected clients' distances to the
// result.
type Bulyan struct{ f int }

// NewBulyan returns Bulyan tolerating f Byzantine clients.
func NewBulyan(f int) (*Bulyan, error) {
	if f < 0 {
		return nil, fmt.Errorf("%w: bulyan f=%d: want f >= 0 (the Byzantine clients tolerated)", aggregate.ErrOption, f)
	}
	return &Bulyan{f: f}, nil
}

// Name is "bulyan".
func (*Bulyan) Name() string { return "bulyan" }

// Requirements: every update at once; NaN or Inf excluded; f32, f16, bf16 or i8 updates.
func (*Bulyan) Requirements() aggregate.Requirements { return wholeRequirements }

// Begin begins a round.
func (r *Bulyan) Begin(context.Context, *aggregate.Env) (aggregate.Stage, error) {
	return &bulyanStage{f: r.f}, nil
}

type bulyanStage struct {
	mixing
	f, theta, beta int
}

func (s *bulyanStage) Report(rep *aggregate.Report) {
	s.report(rep)
	rep.Detail("f", float64(s.f))
	rep.Detail("theta", float64(s.theta))
	rep.Detail("beta", float64(s.beta))
}

func (s *bulyanStage) Compute(ctx context.Context, in *aggregate.Inputs) error {
	rd, err := newRound(in, "bulyan")
	if err != nil {
		return err
	}
	why := fmt.Sprintf("f=%d (n >= 4f+3)", s.f)
	if err := rd.need(4*s.f+3, why); err != nil {
		return err
	}
	free, err := s.apply(ctx, rd)
	if err != nil {
		return err
	}
	defer free()
	d, _, err := rd.distances(ctx)
	if err != nil {
		return err
	}
	if err := rd.need(4*s.f+3, why); err != nil {
		return err
	}
	n := len(rd.keep)
	s.theta = n - 2*s.f
	s.beta = s.theta - 2*s.f
	rest := make([]int, n)
	for i := range rest {
		rest[i] = i
	}
	first := krumScores(d, rest, n-s.f-2)
	var chosen []int
	for len(chosen) < s.theta {
		scores := krumScores(d, rest, max(1, len(rest)-s.f-2))
		best := rest[0]
		for _, i := range rest {
			if scores[i] < scores[best] {
				best = i
			}
		}
		chosen = append(chosen, best)
		rest = slices.DeleteFunc(rest, func(i int) bool { return i == best })
	}
	slices.Sort(chosen)
	clients := make([]int, len(chosen))
	for i, c := range chosen {
		clients[i] = rd.keep[c]
	}
	for i, k := range rd.keep {
		rd.clients[k].Diag().Score = aggregate.Ptr(first[i])
		rd.clients[k].Diag().Selected = aggregate.Ptr(slices.Contains(chosen, i))
	}
	// The selected updates were finite in the Gram pass; one that is not any more was changed
	// under the rule (a file rewritten while mapped), and the selection no longer holds.
	_, err = rd.selectRound(ctx, device.ClosestMean, func() []int { return clients },
		func(int) int { return s.beta }, func() error {
			for _, k := range clients {
				if ex := rd.clients[k].Excluded(); ex != "" {
					return fmt.Errorf("%s: %s changed after the Gram pass: %s", rd.rule, rd.clients[k].Source, ex)
				}
			}
			return nil
		})
	return err
}
