package robust

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/internal/tensortest"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// ---------------------------------------------------------------------------------------------
// Plain float64 references. Updates are flattened in the order of names (updates_test.go),
// values decoded with Tensor.Value.

func flat(u *tensor.Set) []float64 {
	var v []float64
	for _, name := range names {
		t, _ := u.Tensor(name)
		v = append(v, t.Float64s()...)
	}
	return v
}

func flats(updates []*tensor.Set) [][]float64 {
	out := make([][]float64, len(updates))
	for k, u := range updates {
		out[k] = flat(u)
	}
	return out
}

// coordinatewise applies f to every coordinate's values.
func coordinatewise(x [][]float64, f func(v []float64) float64) []float64 {
	out := make([]float64, len(x[0]))
	v := make([]float64, len(x))
	for j := range out {
		for k := range x {
			v[k] = x[k][j]
		}
		out[j] = f(v)
	}
	return out
}

func refMedian(v []float64) float64 {
	s := slices.Sorted(slices.Values(v))
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func refTrimmed(beta float64) func(v []float64) float64 {
	return func(v []float64) float64 {
		s := slices.Sorted(slices.Values(v))
		k := int(math.Floor(beta * float64(len(s))))
		var sum float64
		for _, y := range s[k : len(s)-k] {
			sum += y
		}
		return sum / float64(len(s)-2*k)
	}
}

func sqDist(a, b []float64) float64 {
	var s float64
	for j := range a {
		s += (a[j] - b[j]) * (a[j] - b[j])
	}
	return s
}

func norm(a []float64) float64 { return math.Sqrt(sqDist(a, make([]float64, len(a)))) }

// refKrumScores: for each member of set, the sum of its k smallest squared distances to the
// other members.
func refKrumScores(x [][]float64, set []int, k int) map[int]float64 {
	k = min(k, len(set)-1)
	scores := map[int]float64{}
	for _, a := range set {
		var d []float64
		for _, b := range set {
			if a != b {
				d = append(d, sqDist(x[a], x[b]))
			}
		}
		slices.Sort(d)
		for _, v := range d[:k] {
			scores[a] += v
		}
	}
	return scores
}

func refKrum(x [][]float64, w []float64, f, m int) ([]int, []float64) {
	n := len(x)
	all := make([]int, n)
	for i := range all {
		all[i] = i
	}
	scores := refKrumScores(x, all, n-f-2)
	order := slices.Clone(all)
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(scores[a], scores[b]) })
	sel := slices.Sorted(slices.Values(order[:m]))
	return sel, weightedMean(x, sel, w)
}

func weightedMean(x [][]float64, sel []int, w []float64) []float64 {
	out := make([]float64, len(x[0]))
	var total float64
	for _, k := range sel {
		total += w[k]
	}
	for _, k := range sel {
		for j := range out {
			out[j] += w[k] * x[k][j] / total
		}
	}
	return out
}

func refBulyan(x [][]float64, f int) ([]int, []float64) {
	n := len(x)
	theta, beta := n-2*f, n-4*f
	rest := make([]int, n)
	for i := range rest {
		rest[i] = i
	}
	var sel []int
	for len(sel) < theta {
		scores := refKrumScores(x, rest, max(1, len(rest)-f-2))
		best := rest[0]
		for _, i := range rest {
			if scores[i] < scores[best] {
				best = i
			}
		}
		sel = append(sel, best)
		rest = slices.DeleteFunc(rest, func(i int) bool { return i == best })
	}
	slices.Sort(sel)
	xs := make([][]float64, len(sel))
	for i, k := range sel {
		xs[i] = x[k]
	}
	// The β values nearest the median form a window of the sorted values. When windows tie
	// (as they do with bf16 or i8 values), the tied starts run from lo, after the last slide
	// right that gets strictly closer, to hi, the end of the equally close slides from lo; the
	// result is the middle tied window's mean, or the mean of the middle two's means.
	return sel, coordinatewise(xs, func(v []float64) float64 {
		s := slices.Sorted(slices.Values(v))
		m := refMedian(s)
		lo, hi := 0, 0
		for t := 0; t+beta < len(s); t++ {
			dh, dl := math.Abs(s[t+beta]-m), math.Abs(s[t]-m)
			if dh < dl {
				lo, hi = t+1, t+1
			} else if dh == dl && hi == t {
				hi = t + 1
			}
		}
		mean := func(start int) float64 {
			var sum float64
			for _, y := range s[start : start+beta] {
				sum += y
			}
			return sum / float64(beta)
		}
		return (mean((lo+hi)/2) + mean((lo+hi+1)/2)) / 2
	})
}

// refGeoMed is the smoothed Weiszfeld iteration of RFA, run for exactly iters iterations.
func refGeoMed(x [][]float64, alpha []float64, nu float64, iters int) []float64 {
	all := make([]int, len(x))
	for i := range all {
		all[i] = i
	}
	z := weightedMean(x, all, alpha)
	for range iters {
		beta := make([]float64, len(x))
		for i := range x {
			beta[i] = alpha[i] / max(nu, math.Sqrt(sqDist(z, x[i])))
		}
		z = weightedMean(x, all, beta)
	}
	return z
}

func refCenteredClip(x [][]float64, v []float64, tau float64, iters int) []float64 {
	v = slices.Clone(v)
	n := float64(len(x))
	for range iters {
		next := slices.Clone(v)
		for _, xi := range x {
			c := min(1, tau/math.Sqrt(sqDist(xi, v)))
			for j := range next {
				next[j] += (xi[j] - v[j]) * c / n
			}
		}
		v = next
	}
	return v
}

func refNormClip(x [][]float64, w []float64, bound float64, zero bool) []float64 {
	out := make([]float64, len(x[0]))
	var total float64
	for _, v := range w {
		total += v
	}
	for k := range x {
		c := 1.0
		if nk := norm(x[k]); nk > bound {
			c = bound / nk
			if zero {
				c = 0
			}
		}
		for j := range out {
			out[j] += w[k] * c * x[k][j] / total
		}
	}
	return out
}

// checkClose compares a result with a reference coordinate by coordinate: tol relative to the
// coordinate's scale (its largest input magnitude) plus the output dtype's rounding.
func checkClose(t *testing.T, rule string, got *tensor.Set, want []float64, scale []float64, tol float64) {
	t.Helper()
	g := flat(got)
	out := got.At(0).DType
	for j := range want {
		allowed := tol*scale[j] + relTol[out]*math.Abs(want[j]) + 1e-9
		if d := math.Abs(g[j] - want[j]); !(d <= allowed) {
			t.Fatalf("%s: coordinate %d = %v, reference %v (diff %g > %g)", rule, j, g[j], want[j], d, allowed)
		}
	}
}

func magnitudes(x [][]float64) []float64 {
	return coordinatewise(x, func(v []float64) float64 {
		m := 0.0
		for _, y := range v {
			m = max(m, math.Abs(y))
		}
		return m
	})
}

func robustUpdates(t *testing.T, r *rand.Rand, n int, dt tensor.DType) []*tensor.Set {
	t.Helper()
	updates := make([]*tensor.Set, n)
	for k := range updates {
		order := slices.Clone(names)
		if k%3 == 1 {
			slices.Reverse(order) // tensor order differs between clients
		}
		updates[k] = tensortest.Update(t, r, fmt.Sprintf("client-%d", k), dt, order)
	}
	return updates
}

func uniform(n int) []float64 {
	w := make([]float64, n)
	for i := range w {
		w[i] = 1
	}
	return w
}

// ---------------------------------------------------------------------------------------------
// Every rule against its reference.

func TestRobustRulesMatchFloat64References(t *testing.T) {
	for _, dt := range []tensor.DType{tensor.F32, tensor.BF16, tensor.I8} {
		for _, n := range []int{1, 2, 7, 12} {
			t.Run(fmt.Sprintf("%s/n=%d", dt, n), func(t *testing.T) {
				r := rand.New(rand.NewPCG(uint64(n), uint64(dt)))
				updates := robustUpdates(t, r, n, dt)
				w := make([]float64, n)
				for k := range w {
					w[k] = 1 + float64(r.IntN(100))
				}
				x := flats(updates)
				scale := magnitudes(x)
				opts := []aggregate.Option{aggregate.WithOutDType(tensor.F32)}

				checkRule(t, NewMedian(), updates, w, coordinatewise(x, refMedian), scale, 1e-7, opts...)
				tm := tensortest.Must(NewTrimmedMean(0.2))(t)
				checkRule(t, tm, updates, w, coordinatewise(x, refTrimmed(0.2)), scale, 1e-6, opts...)
				gm := tensortest.Must(NewGeometricMedian(WithSmoothing(1e-6), WithMaxIterations(6), WithTolerance(0)))(t)
				alpha := slices.Clone(w)
				checkRule(t, gm, updates, w, refGeoMed(x, alpha, 1e-6, 6), scale, 1e-5, opts...)
				cc := tensortest.Must(NewCenteredClipping(3, WithIterations(3)))(t)
				checkRule(t, cc, updates, w, refCenteredClip(x, make([]float64, len(x[0])), 3, 3), scale, 1e-5, opts...)
				for _, zero := range []bool{false, true} {
					bound := 40.0
					build := NewNormClipping
					if zero {
						build = NewNormZeroing
					}
					nc := tensortest.Must(build(FixedBound(bound)))(t)
					checkRule(t, nc, updates, w, refNormClip(x, w, bound, zero), scale, 1e-6, opts...)
				}
				if n >= 7 {
					for _, m := range []int{1, 3} {
						kr := tensortest.Must(NewKrum(2, m))(t)
						sel, want := refKrum(x, w, 2, m)
						rep := checkRule(t, kr, updates, w, want, scale, 1e-6, opts...)
						checkSelected(t, kr.Name(), rep, sel)
					}
					bu := tensortest.Must(NewBulyan(1))(t)
					sel, want := refBulyan(x, 1)
					rep := checkRule(t, bu, updates, w, want, scale, 1e-6, opts...)
					checkSelected(t, "bulyan", rep, sel)
				}
			})
		}
	}
}

// checkRule runs the rule in memory and to a file, compares the result with the reference and
// the two results with each other (bit for bit), and checks the distances it reports.
func checkRule(t *testing.T, rule aggregate.Rule, updates []*tensor.Set, w, want, scale []float64, tol float64, opts ...aggregate.Option) *aggregate.Report {
	t.Helper()
	ctx := context.Background()
	got, rep, err := aggregate.Aggregate(ctx, rule, updates, w, opts...)
	if err != nil {
		t.Fatalf("%s: %v", rule.Name(), err)
	}
	checkClose(t, rule.Name(), got, want, scale, tol)
	if rep.Rule != rule.Name() || len(rep.PerClient) != len(updates) || got.Metadata["wattagg.rule"] != rule.Name() {
		t.Fatalf("%s: report %+v, metadata %v", rule.Name(), rep, got.Metadata)
	}
	res := flat(got)
	for k, d := range rep.PerClient {
		if d.Distance == nil {
			continue
		}
		xk := flat(updates[k])
		want := math.Sqrt(sqDist(xk, res))
		if math.Abs(*d.Distance-want) > 1e-4*want+1e-6*norm(xk) {
			t.Fatalf("%s: client %d: distance to the aggregate %v, want %v", rule.Name(), k, *d.Distance, want)
		}
	}
	path := filepath.Join(t.TempDir(), "out.safetensors")
	frep, err := aggregate.AggregateFile(ctx, rule, path, updates, w, opts...)
	if err != nil {
		t.Fatalf("%s: file: %v", rule.Name(), err)
	}
	file, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	for _, tt := range got.Tensors() {
		ft, ok := file.Tensor(tt.Name)
		if !ok || !bytes.Equal(ft.Bytes(), tt.Bytes()) {
			t.Fatalf("%s: tensor %q differs between Aggregate and AggregateFile", rule.Name(), tt.Name)
		}
	}
	if frep.Output != path || file.Metadata["wattagg.rule"] != rule.Name() {
		t.Fatalf("%s: file report %+v, metadata %v", rule.Name(), frep, file.Metadata)
	}
	return rep
}

func checkSelected(t *testing.T, rule string, rep *aggregate.Report, want []int) {
	t.Helper()
	var got []int
	for k, d := range rep.PerClient {
		if d.Selected == nil || d.Score == nil {
			t.Fatalf("%s: client %d has no score or selection", rule, k)
		}
		if *d.Selected {
			got = append(got, k)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("%s: selected %v, reference %v", rule, got, want)
	}
}

func TestRobustRulesAreDeterministic(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	updates := robustUpdates(t, r, 9, tensor.F32)
	rules := []aggregate.Rule{
		NewMedian(),
		tensortest.Must(NewTrimmedMean(0.1))(t),
		tensortest.Must(NewKrum(2, 3))(t),
		tensortest.Must(NewBulyan(1))(t),
		tensortest.Must(NewGeometricMedian(WithSmoothing(1e-6), WithMaxIterations(5), WithTolerance(0)))(t),
		tensortest.Must(NewCenteredClipping(1, WithIterations(2)))(t),
		tensortest.Must(NewNormClipping(QuantileBound(0.5)))(t),
	}
	one := []aggregate.Option{aggregate.WithDevices(mustCPU(t, 1)), aggregate.WithChunkBytes(8192)}
	two := []aggregate.Option{aggregate.WithDevices(mustCPU(t, 2)), aggregate.WithChunkBytes(8192)}
	for _, rule := range rules {
		a, ra, err := aggregate.Aggregate(context.Background(), rule, updates, nil, one...)
		if err != nil {
			t.Fatal(err)
		}
		b, rb, err := aggregate.Aggregate(context.Background(), rule, updates, nil, two...)
		if err != nil {
			t.Fatal(err)
		}
		for k, ta := range a.Tensors() {
			if !bytes.Equal(ta.Bytes(), b.At(k).Bytes()) {
				t.Fatalf("%s: 1 and 2 workers differ in %q", rule.Name(), ta.Name)
			}
		}
		for k := range ra.PerClient {
			if da, db := ra.PerClient[k].Distance, rb.PerClient[k].Distance; da != nil && *da != *db {
				t.Fatalf("%s: distances differ with the worker count: %v, %v", rule.Name(), *da, *db)
			}
		}
	}
}

// ---------------------------------------------------------------------------------------------
// Attacks: the robust result stays within its paper's bound, FedAvg does not.

// attackRound is 9 honest clients around a common point (μ + N(0, σ²) per coordinate) and 2
// attackers.
type attackRound struct {
	name    string
	updates []*tensor.Set
	honest  []int
	x       [][]float64 // decoded values (nil rows for NaN attackers)
	nan     bool
}

func attackRounds(t *testing.T, r *rand.Rand) []attackRound {
	const nh = 9
	mu := tensortest.Update(t, r, "mu", tensor.F32, names)
	noisy := func(k int, scale float64) *tensor.Set {
		s := &tensor.Set{Source: fmt.Sprintf("client-%d", k), Metadata: map[string]string{}}
		for _, name := range names {
			m, _ := mu.Tensor(name)
			tt := tensortest.New(t, name, tensor.F32, tensortest.Shapes[name]...)
			for j := range tt.Len() {
				tensortest.SetValue(tt, j, scale*(m.Value(j)+0.05*r.NormFloat64()))
			}
			tensortest.Add(t, s, tt)
		}
		return s
	}
	var honest []*tensor.Set
	for k := range nh {
		honest = append(honest, noisy(k, 1))
	}
	flip := func(u *tensor.Set, s float64, name string) *tensor.Set {
		c := u.Clone()
		c.Source = name
		for _, tt := range c.Tensors() {
			for j := range tt.Len() {
				tensortest.SetValue(tt, j, s*tt.Value(j))
			}
		}
		return c
	}
	colluder := noisy(nh, 1)
	for _, tt := range colluder.Tensors() {
		for j := range tt.Len() {
			tensortest.SetValue(tt, j, tt.Value(j)+3) // far from every honest value, the same for both
		}
	}
	nanUpdate := func(k int) *tensor.Set {
		c := flip(honest[0], 1, fmt.Sprintf("nan-%d", k))
		for _, tt := range c.Tensors() {
			for j := range tt.Len() {
				tensortest.SetValue(tt, j, math.NaN())
			}
		}
		return c
	}
	rounds := []attackRound{
		{name: "sign-flipped", updates: []*tensor.Set{flip(honest[0], -1, "flip-0"), flip(honest[1], -1, "flip-1")}},
		{name: "scaled-1e3", updates: []*tensor.Set{flip(honest[0], 1e3, "big-0"), flip(honest[1], 1e3, "big-1")}},
		{name: "colluding", updates: []*tensor.Set{colluder, flip(colluder, 1, "colluder-1")}},
		{name: "nan-filled", updates: []*tensor.Set{nanUpdate(0), nanUpdate(1)}, nan: true},
	}
	for i := range rounds {
		a := &rounds[i]
		// Attackers first and in the middle, so that positions do not favour anyone.
		all := []*tensor.Set{a.updates[0]}
		all = append(all, honest[:5]...)
		all = append(all, a.updates[1])
		all = append(all, honest[5:]...)
		a.updates = all
		a.honest = []int{1, 2, 3, 4, 5, 7, 8, 9, 10}
		a.x = flats(all)
	}
	return rounds
}

// honestRange is the smallest and largest honest value of every coordinate.
func honestRange(a attackRound) (lo, hi []float64) {
	hx := make([][]float64, len(a.honest))
	for i, k := range a.honest {
		hx[i] = a.x[k]
	}
	lo = coordinatewise(hx, func(v []float64) float64 { return slices.Min(v) })
	hi = coordinatewise(hx, func(v []float64) float64 { return slices.Max(v) })
	return lo, hi
}

func withinRange(got []float64, lo, hi []float64) (int, bool) {
	for j := range got {
		slack := 1e-6 * max(math.Abs(lo[j]), math.Abs(hi[j]))
		if got[j] < lo[j]-slack || got[j] > hi[j]+slack {
			return j, false
		}
	}
	return 0, true
}

func TestRobustRulesResistAttacks(t *testing.T) {
	ctx := context.Background()
	r := rand.New(rand.NewPCG(11, 12))
	for _, a := range attackRounds(t, r) {
		t.Run(a.name, func(t *testing.T) {
			lo, hi := honestRange(a)
			// FedAvg: an error for NaN, else outside the honest range.
			fed, _, err := aggregate.WeightedMean(ctx, a.updates, nil)
			if a.nan {
				if !errors.Is(err, tensor.ErrNonFinite) {
					t.Fatalf("fedavg of NaN updates: %v", err)
				}
			} else if err != nil {
				t.Fatal(err)
			} else if _, ok := withinRange(flat(fed), lo, hi); ok {
				t.Fatalf("fedavg stays within the honest range: the attack is too weak to test anything")
			}
			f := 2
			if a.nan {
				f = 1 // two clients excluded leave 9: Bulyan's 4f+3
			}
			// Coordinate-wise rules: every coordinate within the honest range (Yin et al.,
			// 2018 for the median and the trimmed mean with floor(βn) >= f; El Mhamdi et
			// al., 2018 for Bulyan); Krum selects honest updates, whose weighted mean is in
			// the range too (Blanchard et al., 2017).
			med := NewMedian()
			tm := tensortest.Must(NewTrimmedMean(0.2))(t) // floor(0.2·11) = 2 = f
			kr := tensortest.Must(NewKrum(f, 1))(t)
			mk := tensortest.Must(NewKrum(f, 4))(t)
			bu := tensortest.Must(NewBulyan(f))(t)
			for _, rule := range []aggregate.Rule{med, tm, kr, mk, bu} {
				got, rep, err := aggregate.Aggregate(ctx, rule, a.updates, nil)
				if err != nil {
					t.Fatalf("%s: %v", rule.Name(), err)
				}
				if j, ok := withinRange(flat(got), lo, hi); !ok {
					t.Fatalf("%s: coordinate %d = %v outside the honest range [%v, %v]", rule.Name(), j, flat(got)[j], lo[j], hi[j])
				}
				checkExcluded(t, rule.Name(), a, rep)
				if rule == aggregate.Rule(kr) || rule == aggregate.Rule(mk) {
					for k, d := range rep.PerClient {
						if d.Selected != nil && *d.Selected && !slices.Contains(a.honest, k) {
							t.Fatalf("%s selected attacker %d", rule.Name(), k)
						}
					}
				}
			}
			// Geometric median: within 2(1-θ)r/(1-2θ) of the honest mean μ, where every honest
			// update lies within r of μ and θ is the attackers' weight (Minsker, 2015; the
			// robustness argument of RFA).
			hx := make([][]float64, len(a.honest))
			for i, k := range a.honest {
				hx[i] = a.x[k]
			}
			mu := weightedMean(hx, []int{0, 1, 2, 3, 4, 5, 6, 7, 8}, uniform(9))
			var rad float64
			for _, v := range hx {
				rad = max(rad, math.Sqrt(sqDist(v, mu)))
			}
			theta := 2.0 / 11
			if a.nan {
				theta = 0
			}
			gmBound := 2 * (1 - theta) * rad / (1 - 2*theta)
			gm := tensortest.Must(NewGeometricMedian(WithSmoothing(1e-6), WithMaxIterations(200), WithTolerance(1e-10)))(t)
			got, rep, err := aggregate.Aggregate(ctx, gm, a.updates, nil)
			if err != nil {
				t.Fatal(err)
			}
			if d := math.Sqrt(sqDist(flat(got), mu)); d > gmBound*1.001 {
				t.Fatalf("geomed: %v from the honest mean, bound %v", d, gmBound)
			}
			if !a.nan {
				if d := math.Sqrt(sqDist(flat(fed), mu)); d <= gmBound {
					t.Fatalf("fedavg within the geometric median's bound (%v <= %v)", d, gmBound)
				}
			}
			checkExcluded(t, "geomed", a, rep)
			// Centered clipping, one step from the honest mean's neighbourhood with τ above
			// every honest distance: within f·τ/n of v + (n_h/n)(x̄_h − v) (Karimireddy et
			// al., 2021: each Byzantine client moves the center by at most τ/n).
			center := slices.Clone(mu)
			for j := range center {
				center[j] += 0.01
			}
			var tau float64
			for _, v := range hx {
				tau = max(tau, 1.01*math.Sqrt(sqDist(v, center)))
			}
			n := float64(len(a.updates))
			if a.nan {
				n = 9
			}
			want := slices.Clone(center)
			for j := range want {
				want[j] += 9 / n * (mu[j] - center[j])
			}
			cc := tensortest.Must(NewCenteredClipping(tau, WithIterations(1), WithCenter(setOf(t, center))))(t)
			got, rep, err = aggregate.Aggregate(ctx, cc, a.updates, nil)
			if err != nil {
				t.Fatal(err)
			}
			ccBound := (n - 9) * tau / n
			if d := math.Sqrt(sqDist(flat(got), want)); d > ccBound+1e-4*tau {
				t.Fatalf("centered-clip: %v from the honest step, bound f·τ/n = %v", d, ccBound)
			}
			if !a.nan {
				if d := math.Sqrt(sqDist(flat(fed), want)); d <= ccBound {
					t.Fatalf("fedavg within centered clipping's bound")
				}
				for _, k := range []int{0, 6} {
					if c := rep.PerClient[k].Clipped; c == nil || !*c {
						t.Fatalf("centered-clip: attacker %d not clipped", k)
					}
				}
			}
			checkExcluded(t, "centered-clip", a, rep)
			// Norm clipping: the result's norm is at most the bound. Norm zeroing with a bound
			// above every honest norm: the honest updates' sum over all the weight.
			var hmax float64
			for _, v := range hx {
				hmax = max(hmax, norm(v))
			}
			nc := tensortest.Must(NewNormClipping(FixedBound(hmax / 2)))(t)
			got, _, err = aggregate.Aggregate(ctx, nc, a.updates, nil)
			if err != nil {
				t.Fatal(err)
			}
			if g := norm(flat(got)); g > hmax/2*(1+1e-6) {
				t.Fatalf("norm-clip: result norm %v above the bound %v", g, hmax/2)
			}
			if !a.nan && a.name != "sign-flipped" && norm(flat(fed)) <= hmax/2 {
				t.Fatalf("fedavg within the clipping bound")
			}
			nz := tensortest.Must(NewNormZeroing(FixedBound(hmax * 1.001)))(t)
			got, rep, err = aggregate.Aggregate(ctx, nz, a.updates, nil)
			if err != nil {
				t.Fatal(err)
			}
			if a.name == "scaled-1e3" || a.name == "colluding" {
				zeroed := slices.Clone(mu)
				for j := range zeroed {
					zeroed[j] *= 9 / n
				}
				if d := math.Sqrt(sqDist(flat(got), zeroed)); d > 1e-5*norm(zeroed) {
					t.Fatalf("norm-zero: %v from the honest sum over all weight", d)
				}
				for _, k := range []int{0, 6} {
					if c := rep.PerClient[k].Clipped; c == nil || !*c {
						t.Fatalf("norm-zero: attacker %d kept", k)
					}
				}
			}
		})
	}
}

// setOf makes a one-tensor-per-name f32 Set from flat values in names order.
func setOf(t *testing.T, v []float64) *tensor.Set {
	t.Helper()
	s := &tensor.Set{Metadata: map[string]string{}}
	off := 0
	for _, name := range names {
		tt := tensortest.New(t, name, tensor.F32, tensortest.Shapes[name]...)
		for j := range tt.Len() {
			tensortest.SetValue(tt, j, v[off+j])
		}
		off += tt.Len()
		tensortest.Add(t, s, tt)
	}
	return s
}

func checkExcluded(t *testing.T, rule string, a attackRound, rep *aggregate.Report) {
	t.Helper()
	for k, d := range rep.PerClient {
		attacker := !slices.Contains(a.honest, k)
		if ex := d.Excluded != ""; ex != (a.nan && attacker) {
			t.Fatalf("%s: client %d excluded = %q", rule, k, d.Excluded)
		}
		if d.Excluded != "" && (!strings.Contains(d.Excluded, "NaN") || rep.Weights[k] != 0 || d.Norm != nil) {
			t.Fatalf("%s: excluded client %d reported as %+v, weight %v", rule, k, d, rep.Weights[k])
		}
	}
	if want := map[bool]float64{true: 2, false: 0}[a.nan]; rep.Details["excluded"] != want {
		t.Fatalf("%s: details %v", rule, rep.Details)
	}
}

// ---------------------------------------------------------------------------------------------
// Errors.

func TestRobustParametersOutOfRange(t *testing.T) {
	nan := math.NaN()
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"beta 0.5", second(NewTrimmedMean(0.5))},
		{"beta -0.1", second(NewTrimmedMean(-0.1))},
		{"beta NaN", second(NewTrimmedMean(nan))},
		{"krum f -1", second(NewKrum(-1, 1))},
		{"krum m -1", second(NewKrum(1, -1))},
		{"bulyan f -1", second(NewBulyan(-1))},
		{"geomed nu 0", second(NewGeometricMedian(WithSmoothing(0), WithMaxIterations(10), WithTolerance(1e-6)))},
		{"geomed nu NaN", second(NewGeometricMedian(WithSmoothing(nan), WithMaxIterations(10), WithTolerance(1e-6)))},
		{"geomed max-iter 0", second(NewGeometricMedian(WithSmoothing(1e-6), WithMaxIterations(0), WithTolerance(1e-6)))},
		{"geomed tol -1", second(NewGeometricMedian(WithSmoothing(1e-6), WithMaxIterations(10), WithTolerance(-1)))},
		{"cc tau -1", second(NewCenteredClipping(-1, WithIterations(1)))},
		{"cc tau 0", second(NewCenteredClipping(0, WithIterations(1)))},
		{"cc tau Inf", second(NewCenteredClipping(math.Inf(1), WithIterations(1)))},
		{"cc iters 0", second(NewCenteredClipping(1, WithIterations(0)))},
		{"clip bound 0", second(NewNormClipping(FixedBound(0)))},
		{"clip bound -1", second(NewNormClipping(FixedBound(-1)))},
		{"clip quantile 0", second(NewNormClipping(QuantileBound(0)))},
		{"zero quantile 1.5", second(NewNormZeroing(QuantileBound(1.5)))},
		{"zero quantile NaN", second(NewNormZeroing(QuantileBound(nan)))},
		// The memory budget is an engine option now (it was a rule option of the median).
		{"bad engine option", aggregate.CheckOptions(aggregate.WithMemoryBudget(1))},
		// Options of the iterative rules are one type: each refuses the others'.
		{"geomed iterations", second(NewGeometricMedian(WithIterations(3)))},
		{"cc smoothing", second(NewCenteredClipping(1, WithSmoothing(1e-6)))},
		{"cc nil center", second(NewCenteredClipping(1, WithCenter(nil)))},
		{"geomed nil option", second(NewGeometricMedian(nil))},
	} {
		if !errors.Is(tc.err, aggregate.ErrOption) || strings.Contains(tc.err.Error(), "\n") {
			t.Errorf("%s: %v, want a one-line ErrOption", tc.name, tc.err)
		}
	}
	for _, q := range []float64{1e-9, 0.5, 1} {
		if _, err := NewNormClipping(QuantileBound(q)); err != nil {
			t.Errorf("quantile %v: %v", q, err)
		}
	}
}

func second[T any](_ T, err error) error { return err }

func TestRobustTooFewClients(t *testing.T) {
	ctx := context.Background()
	r := rand.New(rand.NewPCG(13, 14))
	updates := robustUpdates(t, r, 6, tensor.F32)
	kr := tensortest.Must(NewKrum(2, 1))(t) // needs 7
	bu := tensortest.Must(NewBulyan(1))(t)  // needs 7
	mk := tensortest.Must(NewKrum(1, 6))(t) // m = 6 of 6, fine; m = 7 is not
	mk7 := tensortest.Must(NewKrum(0, 7))(t)
	for _, rule := range []aggregate.Rule{kr, bu, mk7} {
		_, _, err := aggregate.Aggregate(ctx, rule, updates, nil)
		if !errors.Is(err, aggregate.ErrTooFewClients) || !strings.Contains(err.Error(), rule.Name()) {
			t.Errorf("%s: %v, want ErrTooFewClients naming the rule", rule.Name(), err)
		}
	}
	if _, _, err := aggregate.Aggregate(ctx, mk, updates, nil); err != nil {
		t.Errorf("multi-krum m = n: %v", err)
	}
	// NaN clients count against f.
	nan := updates[2].Clone()
	tensortest.SetValue(nan.At(1), 0, math.Inf(-1))
	updates[2] = nan
	kr1 := tensortest.Must(NewKrum(1, 1))(t) // needs 5: 6 - 1 excluded
	if _, rep, err := aggregate.Aggregate(ctx, kr1, updates, nil); err != nil || !strings.Contains(rep.PerClient[2].Excluded, "-Inf") {
		t.Fatalf("krum f=1 with one -Inf client: %v", err)
	}
	kr2 := tensortest.Must(NewKrum(2, 1))(t) // 7 clients pass the first check; without the -Inf one, 6 are too few
	seven := append(updates, tensortest.Update(t, r, "client-6", tensor.F32, names))
	if _, _, err := aggregate.Aggregate(ctx, kr2, seven, nil); !errors.Is(err, aggregate.ErrTooFewClients) || !strings.Contains(err.Error(), "have 6 (1 excluded") {
		t.Fatalf("krum f=2: %v", err)
	}
	// Three different non-finite updates (a round refuses one update given twice).
	all := make([]*tensor.Set, 3)
	for k := range all {
		all[k] = nan.Clone()
		all[k].Source = fmt.Sprintf("nan-%d", k)
	}
	if _, _, err := aggregate.Aggregate(ctx, NewMedian(), all, nil); !errors.Is(err, aggregate.ErrTooFewClients) {
		t.Fatalf("median of only non-finite updates: %v", err)
	}
}

func TestRobustBadInputsStayErrors(t *testing.T) {
	ctx := context.Background()
	r := rand.New(rand.NewPCG(15, 16))
	med := NewMedian()
	updates := robustUpdates(t, r, 3, tensor.F32)
	other := tensortest.Update(t, r, "other", tensor.F32, names[:2])
	if _, _, err := aggregate.Aggregate(ctx, med, append(updates, other), nil); !errors.Is(err, tensor.ErrLayoutMismatch) {
		t.Errorf("layout mismatch: %v", err)
	}
	f64 := robustUpdates(t, r, 3, tensor.F64)
	if _, _, err := aggregate.Aggregate(ctx, med, f64, nil); !errors.Is(err, tensor.ErrDType) || !strings.Contains(err.Error(), "f64") {
		t.Errorf("f64 updates: %v", err)
	}
	if _, _, err := aggregate.Aggregate(ctx, med, nil, nil); !errors.Is(err, aggregate.ErrNoInputs) {
		t.Errorf("no updates: %v", err)
	}
	if _, _, err := aggregate.Aggregate(ctx, med, updates, []float64{1, -1, 1}); !errors.Is(err, aggregate.ErrWeight) {
		t.Errorf("negative weight: %v", err)
	}
	plain := aggregate.WithDevices(plainDevice{mustCPU(t, 1)})
	if _, _, err := aggregate.Aggregate(ctx, med, updates, nil, plain); !errors.Is(err, device.ErrUnsupported) {
		t.Errorf("device without robust operations: %v", err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, _, err := aggregate.Aggregate(cancelled, med, updates, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
	// The iterative rules' two f32 iterates must fit the memory budget.
	big := make([]*tensor.Set, 2)
	for k := range big {
		s, err := tensor.NewSet(tensortest.New(t, "w", tensor.F32, 200_000))
		if err != nil {
			t.Fatal(err)
		}
		big[k] = s
	}
	gm := tensortest.Must(NewGeometricMedian(WithSmoothing(1e-6), WithMaxIterations(3), WithTolerance(0)))(t)
	if _, _, err := aggregate.Aggregate(ctx, gm, big, nil, aggregate.WithMemoryBudget(1<<20)); !errors.Is(err, aggregate.ErrOption) || !strings.Contains(err.Error(), "memory budget") {
		t.Errorf("geomed over budget: %v", err)
	}
	cc := tensortest.Must(NewCenteredClipping(1, WithIterations(1), WithCenter(other)))(t)
	if _, _, err := aggregate.Aggregate(ctx, cc, updates, nil); !errors.Is(err, tensor.ErrLayoutMismatch) {
		t.Errorf("center of another layout: %v", err)
	}
}

// plainDevice is a Device without the Robust operations.
type plainDevice struct{ device.Device }

func TestRobustOverflowIsAnError(t *testing.T) {
	// The trimmed mean of finite f32 values can overflow f32 (it sums in f32).
	big := make([]*tensor.Set, 3)
	for k := range big {
		tt, err := tensor.FromF32("w", []int{9}, []float32{3e38, 3e38, 3e38, 3e38, 3e38, 3e38, 3e38, 3e38, 3e38})
		if err != nil {
			t.Fatal(err)
		}
		s, err := tensor.NewSet(tt)
		if err != nil {
			t.Fatal(err)
		}
		big[k] = s
	}
	tm := tensortest.Must(NewTrimmedMean(0))(t)
	if _, _, err := aggregate.Aggregate(context.Background(), tm, big, nil); !errors.Is(err, aggregate.ErrOverflow) {
		t.Fatalf("overflowing trimmed mean: %v", err)
	}
	if _, _, err := aggregate.Aggregate(context.Background(), NewMedian(), big, nil); err != nil {
		t.Fatalf("median of large values: %v", err)
	}
}

func TestRobustReportsDiagnostics(t *testing.T) {
	r := rand.New(rand.NewPCG(17, 18))
	updates := robustUpdates(t, r, 8, tensor.F32)
	x := flats(updates)
	gm := tensortest.Must(NewGeometricMedian(WithSmoothing(1e-6), WithMaxIterations(50), WithTolerance(1e-8)))(t)
	_, rep, err := aggregate.Aggregate(context.Background(), gm, updates, nil)
	if err != nil {
		t.Fatal(err)
	}
	it, res := rep.Details["iterations"], rep.Details["residual"]
	if !(it >= 1 && it <= 50) || !(res >= 0 && (res < 1e-8 || it == 50)) || rep.Details["objective"] <= 0 {
		t.Fatalf("details %v", rep.Details)
	}
	for k, d := range rep.PerClient {
		if d.Norm == nil || math.Abs(*d.Norm-norm(x[k])) > 1e-9*norm(x[k]) || d.Weight != 1.0/8 {
			t.Fatalf("client %d: %+v", k, d)
		}
	}
	nc := tensortest.Must(NewNormClipping(QuantileBound(0.5)))(t)
	_, rep, err = aggregate.Aggregate(context.Background(), nc, updates, nil)
	if err != nil {
		t.Fatal(err)
	}
	norms := make([]float64, len(x))
	for k := range x {
		norms[k] = norm(x[k])
	}
	if b := rep.Details["bound"]; math.Abs(b-refMedian(norms)) > 1e-9*b || rep.Details["clipped"] != 4 {
		t.Fatalf("details %v, median norm %v", rep.Details, refMedian(norms))
	}
}
