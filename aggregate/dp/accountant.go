package dp

import (
	"fmt"
	"math"
	"slices"

	"github.com/wattagg/wattagg/aggregate"
)

// The privacy accountant: Rényi differential privacy (RDP) of the sampled Gaussian mechanism
// (Mironov, Talwar and Zhang, 2019, "Rényi Differential Privacy of the Sampled Gaussian
// Mechanism", Section 3.3), composed over rounds by adding RDP order by order, and converted to
// (ε, δ) with the bound of Balle et al. (2020, "Hypothesis Testing Interpretations and Rényi
// Differential Privacy", Theorem 21) — the computation of TensorFlow Privacy's compute_rdp and
// of Google's dp_accounting compute_epsilon, which Opacus's RDP accountant also performs. The
// neighbouring relation is add/remove one client, with Poisson sampling of clients at rate q.

// RDPOrders are the orders the accountant evaluates by default: Opacus's DEFAULT_ALPHAS
// (1.1 to 10.9 in steps of 0.1, then 12 to 63) and 128, 256, 512 for very small ε.
var RDPOrders = func() []float64 {
	var o []float64
	for x := 1; x < 100; x++ {
		o = append(o, 1+float64(x)/10)
	}
	for a := 12; a < 64; a++ {
		o = append(o, float64(a))
	}
	return append(o, 128, 256, 512)
}()

// AccountantStep is a run of rounds with the same noise multiplier and sampling rate.
type AccountantStep struct {
	NoiseMultiplier float64 `json:"noise_multiplier"`
	SamplingRate    float64 `json:"sampling_rate"`
	Rounds          int     `json:"rounds"`
}

// Accountant tracks the privacy spent by rounds of the sampled Gaussian mechanism. The zero
// value has spent nothing.
type Accountant struct {
	steps []AccountantStep
}

// Compose records rounds more rounds with noise multiplier z (≥ 0) and sampling rate q in
// [0, 1].
func (a *Accountant) Compose(z, q float64, rounds int) error {
	if !(z >= 0) || math.IsInf(z, 0) {
		return fmt.Errorf("%w: noise multiplier %v: want a finite value >= 0", aggregate.ErrOption, z)
	}
	if !(q >= 0 && q <= 1) {
		return fmt.Errorf("%w: sampling rate %v: want a value in [0, 1]", aggregate.ErrOption, q)
	}
	if rounds < 0 {
		return fmt.Errorf("%w: %d rounds", aggregate.ErrOption, rounds)
	}
	if rounds == 0 {
		return nil
	}
	if n := len(a.steps); n > 0 && a.steps[n-1].NoiseMultiplier == z && a.steps[n-1].SamplingRate == q {
		a.steps[n-1].Rounds += rounds
		return nil
	}
	a.steps = append(a.steps, AccountantStep{z, q, rounds})
	return nil
}

// Steps returns the rounds recorded, runs of equal (z, q) merged.
func (a *Accountant) Steps() []AccountantStep { return slices.Clone(a.steps) }

// Rounds is the number of rounds recorded.
func (a *Accountant) Rounds() int {
	n := 0
	for _, s := range a.steps {
		n += s.Rounds
	}
	return n
}

// RDP returns the RDP of the rounds so far at each order.
func (a *Accountant) RDP(orders []float64) []float64 {
	total := make([]float64, len(orders))
	for _, s := range a.steps {
		for i, r := range ComputeRDP(s.SamplingRate, s.NoiseMultiplier, s.Rounds, orders) {
			total[i] += r
		}
	}
	return total
}

// Epsilon returns the ε of (ε, δ)-DP for the rounds so far, and the RDP order that gives it,
// over RDPOrders.
func (a *Accountant) Epsilon(delta float64) (eps, order float64, err error) {
	return EpsilonFromRDP(RDPOrders, a.RDP(RDPOrders), delta)
}

// ComputeRDP is the RDP, at each order, of steps rounds of the Gaussian mechanism with noise
// multiplier z applied to a Poisson sample of rate q (TensorFlow Privacy's compute_rdp): 0 for
// q = 0, +Inf for z = 0, α/(2z²) per round for q = 1.
func ComputeRDP(q, z float64, steps int, orders []float64) []float64 {
	out := make([]float64, len(orders))
	for i, a := range orders {
		out[i] = rdpSampledGaussian(q, z, a) * float64(steps)
	}
	return out
}

func rdpSampledGaussian(q, sigma, alpha float64) float64 {
	switch {
	case q == 0:
		return 0
	case sigma == 0:
		return math.Inf(1)
	case q == 1:
		return alpha / (2 * sigma * sigma)
	case math.IsInf(alpha, 1):
		return math.Inf(1)
	}
	return logA(q, sigma, alpha) / (alpha - 1)
}

// logA is log(A_α) of Mironov et al. (2019), Section 3.3, for 0 < q < 1.
func logA(q, sigma, alpha float64) float64 {
	if alpha == math.Trunc(alpha) {
		return logAInt(q, sigma, int(alpha))
	}
	return logAFrac(q, sigma, alpha)
}

// logAInt sums the binomial expansion for an integer order:
// A_α = Σ_{i=0}^{α} C(α, i)·q^i·(1-q)^(α-i)·exp((i²-i)/(2σ²)), in log space.
func logAInt(q, sigma float64, alpha int) float64 {
	la := math.Inf(-1)
	lq, l1q := math.Log(q), math.Log1p(-q)
	for i := 0; i <= alpha; i++ {
		fi := float64(i)
		coef := logBinom(float64(alpha), fi) + fi*lq + float64(alpha-i)*l1q
		la = logAdd(la, coef+(fi*fi-fi)/(2*sigma*sigma))
	}
	return la
}

// logAFrac splits A_α at z0 = σ²·log(1/q - 1) + 1/2 into two series of erfc terms and sums
// them until the terms are below e^-30, as compute_rdp does for fractional orders.
func logAFrac(q, sigma, alpha float64) float64 {
	la0, la1 := math.Inf(-1), math.Inf(-1)
	z0 := sigma*sigma*math.Log(1/q-1) + 0.5
	lq, l1q := math.Log(q), math.Log1p(-q)
	for i := 0; ; i++ {
		if i > 100000 {
			return math.Inf(1) // did not converge: claim nothing
		}
		fi := float64(i)
		lc, sign := logAbsBinom(alpha, fi)
		j := alpha - fi
		lt0 := lc + fi*lq + j*l1q
		lt1 := lc + j*lq + fi*l1q
		le0 := math.Log(0.5) + logErfc((fi-z0)/(math.Sqrt2*sigma))
		le1 := math.Log(0.5) + logErfc((z0-j)/(math.Sqrt2*sigma))
		ls0 := lt0 + (fi*fi-fi)/(2*sigma*sigma) + le0
		ls1 := lt1 + (j*j-j)/(2*sigma*sigma) + le1
		if sign > 0 {
			la0, la1 = logAdd(la0, ls0), logAdd(la1, ls1)
		} else {
			la0, la1 = logSub(la0, ls0), logSub(la1, ls1)
		}
		if max(ls0, ls1) < -30 {
			break
		}
	}
	return logAdd(la0, la1)
}

// logBinom is log C(n, k) for 0 <= k <= n.
func logBinom(n, k float64) float64 {
	a, _ := math.Lgamma(n + 1)
	b, _ := math.Lgamma(k + 1)
	c, _ := math.Lgamma(n - k + 1)
	return a - b - c
}

// logAbsBinom is log|C(α, i)| and its sign for a real α and an integer i ≥ 0:
// C(α, i) = Γ(α+1) / (Γ(i+1)·Γ(α-i+1)), where Γ(α-i+1) changes sign below zero.
func logAbsBinom(alpha, i float64) (float64, int) {
	a, sa := math.Lgamma(alpha + 1)
	b, _ := math.Lgamma(i + 1)
	c, sc := math.Lgamma(alpha - i + 1)
	return a - b - c, sa * sc
}

func logAdd(x, y float64) float64 {
	a, b := min(x, y), max(x, y)
	if math.IsInf(a, -1) {
		return b
	}
	return math.Log1p(math.Exp(a-b)) + b
}

// logSub is log(e^x - e^y) for x ≥ y (as compute_rdp, a result below zero is clamped: it only
// happens through rounding when the terms cancel).
func logSub(x, y float64) float64 {
	switch {
	case math.IsInf(y, -1):
		return x
	case x <= y:
		return math.Inf(-1)
	}
	d := math.Expm1(x - y)
	if math.IsInf(d, 1) {
		return x
	}
	return math.Log(d) + y
}

// logErfc is log(erfc(x)), accurate where erfc underflows: beyond it the asymptotic series
// log erfc(x) = -x² - log(x·√π) - 1/(2x²) + 5/(8x⁴) - 37/(24x⁶) + 353/(64x⁸) + ...
func logErfc(x float64) float64 {
	if r := math.Erfc(x); x < 25 || r > 1e-300 {
		return math.Log(r)
	}
	x2 := x * x
	return -math.Log(math.Pi)/2 - math.Log(x) - x2 - 0.5/x2 + 0.625/(x2*x2) - 37.0/24/(x2*x2*x2) + 353.0/64/(x2*x2*x2*x2)
}

// EpsilonFromRDP converts RDP values at the given orders to the smallest ε of (ε, δ)-DP they
// prove, and the order that proves it: ε = rdp + log(1 - 1/α) - log(δ·α)/(α - 1) (Balle et al.,
// 2020), 0 where δ already bounds the KL divergence (δ² + e^-rdp > 1), orders ≤ 1.01 skipped as
// numerically unstable — as dp_accounting's compute_epsilon. ε is +Inf when no order gives a
// finite bound (no noise).
func EpsilonFromRDP(orders, rdp []float64, delta float64) (eps, order float64, err error) {
	if len(orders) != len(rdp) || len(orders) == 0 {
		return 0, 0, fmt.Errorf("%w: %d orders for %d RDP values", aggregate.ErrOption, len(orders), len(rdp))
	}
	if !(delta > 0 && delta < 1) {
		return 0, 0, fmt.Errorf("%w: δ %v: want a value in (0, 1)", aggregate.ErrOption, delta)
	}
	eps, order = math.Inf(1), math.NaN()
	for i, a := range orders {
		r := rdp[i]
		if a < 1 || r < 0 || math.IsNaN(r) {
			return 0, 0, fmt.Errorf("%w: RDP %v at order %v", aggregate.ErrOption, r, a)
		}
		var e float64
		switch {
		case delta*delta+math.Expm1(-r) > 0:
			e = 0
		case a > 1.01:
			e = r + math.Log1p(-1/a) - math.Log(delta*a)/(a-1)
		default:
			e = math.Inf(1)
		}
		if e < eps {
			eps, order = e, a
		}
	}
	return max(0, eps), order, nil
}
