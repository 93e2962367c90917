package robust

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"slices"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/device"
)

// Krum is Krum and Multi-Krum (Blanchard et al., 2017, "Machine Learning with Adversaries:
// Byzantine Tolerant Gradient Descent"), as Flower implements them. Each client's score is the
// sum of its squared distances to its n-f-2 nearest other clients; Krum returns the update with
// the lowest score, Multi-Krum the weighted mean of the m updates with the lowest scores
// (weights as FedAvg takes them; Krum's single update needs none). It needs n > 2f+2 clients,
// n counting those left after updates with NaN or Inf are excluded.
//
// The pairwise distances come from the Gram matrix of the updates less a common point r,
// accumulated in f64 (‖a-b‖² = ‖a-r‖² + ‖b-r‖² - 2(a-r)·(b-r)): r = 0 where the error bound
// of the raw matrix keeps every distance within 2⁻²⁰, else their mean, which does not cancel
// when clients send full models that differ slightly (device.CPU.Gram). The report has every
// client's score, whether it was selected, and its distance to the result.
type Krum struct{ f, m int }

// NewKrum returns Krum (m = 1) or Multi-Krum (m > 1, or m = 0 for n-f, Blanchard et al.'s
// choice) tolerating f Byzantine clients.
func NewKrum(f, m int) (*Krum, error) {
	if f < 0 {
		return nil, fmt.Errorf("%w: krum f=%d: want f >= 0 (the Byzantine clients tolerated)", aggregate.ErrOption, f)
	}
	if m < 0 {
		return nil, fmt.Errorf("%w: krum m=%d: want m >= 1 (the updates averaged), or 0 for n-f", aggregate.ErrOption, m)
	}
	return &Krum{f: f, m: m}, nil
}

// Name is "krum" (m = 1) or "multi-krum".
func (r *Krum) Name() string {
	if r.m == 1 {
		return "krum"
	}
	return "multi-krum"
}

// Requirements: every update at once; NaN or Inf excluded; f32, f16, bf16 or i8 updates.
func (*Krum) Requirements() aggregate.Requirements { return wholeRequirements }

// Begin begins a round.
func (r *Krum) Begin(context.Context, *aggregate.Env) (aggregate.Stage, error) {
	return &krumStage{Krum: r, details: map[string]float64{}}, nil
}

type krumStage struct {
	*Krum
	mixing
	details map[string]float64
}

func (s *krumStage) Report(rep *aggregate.Report) {
	s.report(rep)
	for k, v := range s.details {
		rep.Detail(k, v)
	}
}

func (s *krumStage) Compute(ctx context.Context, in *aggregate.Inputs) error {
	rd, err := newRound(in, s.Name())
	if err != nil {
		return err
	}
	if _, _, err := s.sizes(rd); err != nil { // enough clients before the Gram pass
		return err
	}
	free, err := s.apply(ctx, rd)
	if err != nil {
		return err
	}
	defer free()
	d, gram, err := rd.distances(ctx)
	if err != nil {
		return err
	}
	n, m, err := s.sizes(rd) // and after it has excluded non-finite ones
	if err != nil {
		return err
	}
	chosen := s.choose(rd, d, n, m)
	clients := make([]int, m)
	w := make([]float64, m)
	var total float64
	for i, c := range chosen {
		clients[i] = rd.keep[c]
		w[i] = rd.clients[clients[i]].Weight()
		total += w[i]
	}
	err = in.Emit(ctx, func(out device.Output) (device.Stats, error) {
		return rd.weightedJob(ctx, clients, w, 1/total, out)
	})
	if err != nil {
		return err
	}
	rd.setDistances(rd.keep, distancesToMean(gram, chosen, w, total))
	s.details["f"], s.details["m"], s.details["neighbours"] = float64(s.f), float64(m), float64(n-s.f-2)
	return nil
}

// sizes checks that enough clients are usable for f and returns their number n and the updates
// m to average.
func (s *krumStage) sizes(rd *round) (n, m int, err error) {
	if err := rd.need(2*s.f+3, fmt.Sprintf("f=%d (n > 2f+2)", s.f)); err != nil {
		return 0, 0, err
	}
	n, m = len(rd.keep), s.m
	if m == 0 {
		m = n - s.f
	}
	if m > n {
		return 0, 0, fmt.Errorf("%s: %w: m=%d updates to average, have %d clients", rd.rule, aggregate.ErrTooFewClients, m, n)
	}
	return n, m, nil
}

// choose scores every usable client and returns the positions in keep of the m with the lowest
// scores, in input order, recording scores and selection in the diagnostics.
func (s *krumStage) choose(rd *round, d [][]float64, n, m int) []int {
	all := make([]int, n)
	for i := range all {
		all[i] = i
	}
	scores := krumScores(d, all, n-s.f-2)
	order := slices.Clone(all)
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(scores[a], scores[b]) })
	chosen := slices.Sorted(slices.Values(order[:m]))
	for i, k := range rd.keep {
		rd.clients[k].Diag().Score = aggregate.Ptr(scores[i])
		rd.clients[k].Diag().Selected = aggregate.Ptr(slices.Contains(chosen, i))
	}
	return chosen
}

// distancesToMean is ‖x_i − Σ_s w_s x_s / total‖² for every usable client, from the Gram matrix:
// no further pass over the updates.
func distancesToMean(gram [][]float64, chosen []int, w []float64, total float64) []float64 {
	sq := make([]float64, len(gram))
	var self float64
	for a, ca := range chosen {
		for b, cb := range chosen {
			self += w[a] / total * w[b] / total * gram[ca][cb]
		}
	}
	for i := range sq {
		var cross float64
		for s, c := range chosen {
			cross += w[s] / total * gram[i][c]
		}
		sq[i] = gram[i][i] - 2*cross + self
	}
	return sq
}

// distances computes the Gram matrix of the usable clients on the device (less a common
// point: see device.GramMatrix), excludes the clients whose norm is not finite, and returns the
// Gram matrix of the others and their squared distances (clamped at 0: rounding can make a
// tiny negative), indexed by position in r.keep. A client holding a NaN or Inf leaves the
// coordinates where it does uncentred (their centre is 0), and its norm out of the raw
// matrix's check, so the others' matrix is computed again without it: a rejected update must
// not cost the others their precision.
func (r *round) distances(ctx context.Context) (d, gram [][]float64, err error) {
	cs := slices.Clone(r.keep)
	g, stats, err := r.dev.Gram(ctx, r.in.Fields(), r.inputsOf(cs))
	r.in.Record(stats)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", r.rule, err)
	}
	if r.setNorms(cs, g.SqNorms) > 0 && len(r.keep) > 0 {
		cs = slices.Clone(r.keep)
		g, stats, err = r.dev.Gram(ctx, r.in.Fields(), r.inputsOf(cs))
		r.in.Record(stats)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", r.rule, err)
		}
	}
	var rows []int // positions in cs of the clients still kept
	for i, k := range cs {
		if slices.Contains(r.keep, k) {
			rows = append(rows, i)
		}
	}
	n := len(rows)
	gram, d = make([][]float64, n), make([][]float64, n)
	for a, ra := range rows {
		gram[a], d[a] = make([]float64, n), make([]float64, n)
		for b, rb := range rows {
			gram[a][b] = g.Centred[ra][rb]
			d[a][b] = g.SqDistance(ra, rb)
		}
	}
	return d, gram, nil
}

// krumScores returns, for each member of set, the sum of its k smallest squared distances to
// the other members (k clamped to the members there are).
func krumScores(d [][]float64, set []int, k int) []float64 {
	k = min(k, len(set)-1)
	scores := make([]float64, len(d))
	for i := range scores {
		scores[i] = math.Inf(1)
	}
	near := make([]float64, 0, len(set))
	for _, a := range set {
		near = near[:0]
		for _, b := range set {
			if b != a {
				near = append(near, d[a][b])
			}
		}
		slices.Sort(near)
		var s float64
		for _, v := range near[:max(0, k)] {
			s += v
		}
		scores[a] = s
	}
	return scores
}
