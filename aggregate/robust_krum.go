package aggregate

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"slices"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
)

// Krum is Krum and Multi-Krum (Blanchard et al., 2017, "Machine Learning with Adversaries:
// Byzantine Tolerant Gradient Descent"), as Flower implements them. Each client's score is the
// sum of its squared distances to its n-f-2 nearest other clients; Krum returns the update with
// the lowest score, Multi-Krum the weighted mean of the m updates with the lowest scores
// (weights as FedAvg takes them; Krum's single update needs none). It needs n > 2f+2 clients,
// n counting those left after updates with NaN or Inf are excluded.
//
// The pairwise distances come from the Gram matrix of the updates, computed in one pass in f64
// accumulation (‖a-b‖² = ‖a‖² + ‖b‖² - 2a·b), and the result streams to a file. The report has
// every client's score, whether it was selected, and its distance to the result.
type Krum struct {
	f, m int
	opts []Option
}

var _ FileRule = (*Krum)(nil)

// NewKrum returns Krum (m = 1) or Multi-Krum (m > 1, or m = 0 for n-f, Blanchard et al.'s
// choice) tolerating f Byzantine clients.
func NewKrum(f, m int, opts ...Option) (*Krum, error) {
	if f < 0 {
		return nil, fmt.Errorf("%w: krum f=%d: want f >= 0 (the Byzantine clients tolerated)", ErrOption, f)
	}
	if m < 0 {
		return nil, fmt.Errorf("%w: krum m=%d: want m >= 1 (the updates averaged), or 0 for n-f", ErrOption, m)
	}
	if _, err := newConfig(opts); err != nil {
		return nil, err
	}
	return &Krum{f: f, m: m, opts: opts}, nil
}

// Name is "krum" (m = 1) or "multi-krum".
func (r *Krum) Name() string {
	if r.m == 1 {
		return "krum"
	}
	return "multi-krum"
}

// Aggregate computes the result in memory.
func (r *Krum) Aggregate(ctx context.Context, updates []*tensor.Set, weights []float64) (*tensor.Set, *Report, error) {
	return r.run(ctx, "", updates, weights)
}

// AggregateFile writes the result to path as .safetensors without holding it in memory.
func (r *Krum) AggregateFile(ctx context.Context, path string, updates []*tensor.Set, weights []float64) (*Report, error) {
	_, rep, err := r.run(ctx, path, updates, weights)
	return rep, err
}

func (r *Krum) run(ctx context.Context, path string, updates []*tensor.Set, weights []float64) (*tensor.Set, *Report, error) {
	rd, err := newRobustRound(ctx, r.Name(), updates, weights, r.opts)
	if err != nil {
		return nil, nil, err
	}
	// Enough clients before the Gram pass, and after it has excluded non-finite ones.
	check := func() (n, m int, err error) {
		if err := rd.need(2*r.f+3, fmt.Sprintf("f=%d (n > 2f+2)", r.f)); err != nil {
			return 0, 0, err
		}
		n, m = len(rd.keep), r.m
		if m == 0 {
			m = n - r.f
		}
		if m > n {
			return 0, 0, fmt.Errorf("%s: %w: m=%d updates to average, have %d clients", rd.rule, ErrTooFewClients, m, n)
		}
		return n, m, nil
	}
	if _, _, err := check(); err != nil {
		return nil, nil, err
	}
	d, gram, err := rd.distances(ctx)
	if err != nil {
		return nil, nil, err
	}
	n, m, err := check()
	if err != nil {
		return nil, nil, err
	}
	all := make([]int, n)
	for i := range all {
		all[i] = i
	}
	scores := krumScores(d, all, n-r.f-2)
	order := slices.Clone(all)
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(scores[a], scores[b]) })
	chosen := slices.Sorted(slices.Values(order[:m])) // positions in keep, input order
	for i, k := range rd.keep {
		rd.diag[k].Score = ptr(scores[i])
		rd.diag[k].Selected = ptr(slices.Contains(chosen, i))
	}
	clients := make([]int, m)
	w := make([]float64, m)
	var total float64
	for i, c := range chosen {
		clients[i] = rd.keep[c]
		w[i] = rd.weights[clients[i]]
		total += w[i]
	}
	set, written, err := rd.emit(ctx, path, func(out device.Output) (device.Stats, error) {
		return rd.weightedJob(ctx, clients, w, 1/total, out)
	})
	if err != nil {
		return nil, nil, err
	}
	// ‖x_i − Σ_s w_s x_s‖² from the Gram matrix, with w normalised: no further pass.
	sq := make([]float64, n)
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
	rd.setDistances(rd.keep, sq)
	details := map[string]float64{"f": float64(r.f), "m": float64(m), "neighbours": float64(n - r.f - 2)}
	return set, rd.report(path, written, details), nil
}

// distances computes the Gram matrix of the usable clients on the device, excludes the clients
// whose norm (the square root of their diagonal entry) is not finite, and returns the Gram
// matrix of the others and their squared distances (clamped at 0: rounding can make a tiny
// negative), indexed by position in r.keep.
func (r *robustRound) distances(ctx context.Context) (d, gram [][]float64, err error) {
	cs := slices.Clone(r.keep)
	g, stats, err := r.dev.Gram(ctx, r.plan.fields, r.inputsOf(cs))
	r.stats = append(r.stats, stats)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", r.rule, err)
	}
	sq := make([]float64, len(cs))
	for i := range cs {
		sq[i] = g[i][i]
	}
	r.setNorms(cs, sq)
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
			gram[a][b] = g[ra][rb]
		}
	}
	for a := range d {
		for b := range d[a] {
			if a != b {
				d[a][b] = max(0, gram[a][a]+gram[b][b]-2*gram[a][b])
			}
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

// Bulyan is Bulyan (El Mhamdi et al., 2018, "The Hidden Vulnerability of Distributed Learning
// in Byzantium"), as Flower implements it over Krum: θ = n-2f updates are selected by applying
// Krum θ times, each time removing the update chosen from the candidates (n-f-2 neighbours of
// the remaining ones, at least 1); then every coordinate of the result is the mean of the
// β = θ-2f selected values closest to the selected values' median. It needs n >= 4f+3
// clients, n counting those left after updates with NaN or Inf are excluded. Weights are
// ignored. With at most f Byzantine clients every coordinate of the result lies within the
// range of the honest values of that coordinate.
//
// One pass computes the Gram matrix, one the coordinate-wise step (streamed to a file). The
// report has each client's first Krum score and whether it was selected, and the selected
// clients' distances to the result.
type Bulyan struct {
	f    int
	opts []Option
}

var _ FileRule = (*Bulyan)(nil)

// NewBulyan returns Bulyan tolerating f Byzantine clients.
func NewBulyan(f int, opts ...Option) (*Bulyan, error) {
	if f < 0 {
		return nil, fmt.Errorf("%w: bulyan f=%d: want f >= 0 (the Byzantine clients tolerated)", ErrOption, f)
	}
	if _, err := newConfig(opts); err != nil {
		return nil, err
	}
	return &Bulyan{f: f, opts: opts}, nil
}

// Name is "bulyan".
func (*Bulyan) Name() string { return "bulyan" }

// Aggregate computes the result in memory.
func (r *Bulyan) Aggregate(ctx context.Context, updates []*tensor.Set, weights []float64) (*tensor.Set, *Report, error) {
	return r.run(ctx, "", updates, weights)
}

// AggregateFile writes the result to path as .safetensors without holding it in memory.
func (r *Bulyan) AggregateFile(ctx context.Context, path string, updates []*tensor.Set, weights []float64) (*Report, error) {
	_, rep, err := r.run(ctx, path, updates, weights)
	return rep, err
}

func (r *Bulyan) run(ctx context.Context, path string, updates []*tensor.Set, weights []float64) (*tensor.Set, *Report, error) {
	rd, err := newRobustRound(ctx, r.Name(), updates, weights, r.opts)
	if err != nil {
		return nil, nil, err
	}
	if err := rd.need(4*r.f+3, fmt.Sprintf("f=%d (n >= 4f+3)", r.f)); err != nil {
		return nil, nil, err
	}
	d, _, err := rd.distances(ctx)
	if err != nil {
		return nil, nil, err
	}
	if err := rd.need(4*r.f+3, fmt.Sprintf("f=%d (n >= 4f+3)", r.f)); err != nil {
		return nil, nil, err
	}
	n := len(rd.keep)
	theta := n - 2*r.f
	beta := theta - 2*r.f
	rest := make([]int, n)
	for i := range rest {
		rest[i] = i
	}
	first := krumScores(d, rest, n-r.f-2)
	var chosen []int
	for len(chosen) < theta {
		scores := krumScores(d, rest, max(1, len(rest)-r.f-2))
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
		rd.diag[k].Score = ptr(first[i])
		rd.diag[k].Selected = ptr(slices.Contains(chosen, i))
	}
	// The selected updates were finite in the Gram pass; one that is not any more was changed
	// under the rule (a file rewritten while mapped), and the selection no longer holds.
	set, written, _, err := rd.selectRound(ctx, path, device.ClosestMean, func() []int { return clients },
		func(int) int { return beta }, func() error {
			for _, k := range clients {
				if rd.diag[k].Excluded != "" {
					return fmt.Errorf("%s: %s changed after the Gram pass: %s", rd.rule, rd.diag[k].Source, rd.diag[k].Excluded)
				}
			}
			return nil
		})
	if err != nil {
		return nil, nil, err
	}
	details := map[string]float64{"f": float64(r.f), "theta": float64(theta), "beta": float64(beta)}
	return set, rd.report(path, written, details), nil
}
