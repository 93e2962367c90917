package dp

import (
	"errors"
	"math"
	"testing"

	"github.com/wattagg/wattagg/aggregate"
)

// The accountant against values published in the unit tests of the reference implementations.

// TensorFlow Privacy, tensorflow_privacy/privacy/analysis/rdp_accountant_test.py,
// test_compute_rdp_scalar: compute_rdp(q=0.1, noise_multiplier=2, steps=10, orders=5) = 0.07737
// (5 places); test_compute_rdp_no_data and test_compute_rdp_no_sampling: q = 0 gives 0, and
// q = 1, σ = 10, α = 20 gives α/(2σ²) = 0.1.
func TestRDPTensorFlowPrivacy(t *testing.T) {
	if got := ComputeRDP(0.1, 2, 10, []float64{5})[0]; math.Abs(got-0.07737) > 5e-6 {
		t.Errorf("compute_rdp(0.1, 2, 10, 5) = %.7f, TF Privacy 0.07737", got)
	}
	if got := ComputeRDP(0, 10, 1, []float64{20})[0]; got != 0 {
		t.Errorf("q = 0: %v", got)
	}
	if got := ComputeRDP(1, 10, 1, []float64{20})[0]; got != 0.1 {
		t.Errorf("q = 1: %v, want 0.1", got)
	}
}

// TensorFlow Privacy's test_compute_rdp_sequence: compute_rdp(q=0.01, noise_multiplier=2.5,
// steps=50, orders=[1.5, 2.5, 5, 50, 100, inf]) = [0.00065, 0.001085, 0.00218075, 0.023846,
// 167.416307, inf] (within 1e-5), fractional and integer orders. Google's dp_accounting
// (rdp_privacy_accountant_test.py, test_compute_rdp_poisson_sampled_gaussian) publishes the
// same case to more digits, [6.70579741e-04, 1.08548710e-03, 2.18075656e-03, 2.38460375e-02,
// 1.67416308e02, inf] (rtol 1e-4); we match it at the integer orders and at 2.5. At α = 1.5 it
// differs: since v0.4 dp_accounting sums the absolute values of the fractional binomial
// coefficients, a looser bound, where compute_rdp (and Opacus, and this accountant) keeps
// their signs, the exact series of Mironov et al. (2019).
func TestRDPSequence(t *testing.T) {
	orders := []float64{1.5, 2.5, 5, 50, 100, math.Inf(1)}
	tfp := []float64{0.00065, 0.001085, 0.00218075, 0.023846, 167.416307, math.Inf(1)}
	dpa := []float64{0, 1.08548710e-03, 2.18075656e-03, 2.38460375e-02, 1.67416308e02, 0}
	got := ComputeRDP(0.01, 2.5, 50, orders)
	for i := range orders {
		if math.IsInf(tfp[i], 1) {
			if !math.IsInf(got[i], 1) {
				t.Errorf("order %v: %v, want +Inf", orders[i], got[i])
			}
			continue
		}
		if math.Abs(got[i]-tfp[i]) > 1e-5 {
			t.Errorf("order %v: RDP %.9g, TF Privacy %.9g", orders[i], got[i], tfp[i])
		}
		if dpa[i] != 0 && math.Abs(got[i]-dpa[i]) > 1e-4*dpa[i] {
			t.Errorf("order %v: RDP %.9g, dp_accounting %.9g", orders[i], got[i], dpa[i])
		}
	}
}

// dp_accounting's test_compute_epsilon_delta_pure_dp (and TF Privacy's
// test_get_privacy_spent_check_target_delta): a constant RDP of 1.1 at orders 2..32 and
// δ = 1e-5 give ε = 1.32783806176 at order 32; test_compute_epsilon_delta_gaussian: the
// Gaussian mechanism without sampling and σ = 4.530877117 is (1, 1e-6)-DP over the orders
// 1.000, 1.001, ..., 99.999 (7 places).
func TestEpsilonConversion(t *testing.T) {
	var orders, rdp []float64
	for a := 2; a <= 32; a++ {
		orders, rdp = append(orders, float64(a)), append(rdp, 1.1)
	}
	eps, order, err := EpsilonFromRDP(orders, rdp, 1e-5)
	if err != nil || math.Abs(eps-1.32783806176) > 1e-9 || order != 32 {
		t.Errorf("pure DP: ε %.11f at order %v (%v), want 1.32783806176 at 32", eps, order, err)
	}
	orders = orders[:0]
	for i := 1000; i < 100000; i++ {
		orders = append(orders, 0.001*float64(i))
	}
	eps, _, err = EpsilonFromRDP(orders, ComputeRDP(1, 4.530877117, 1, orders), 1e-6)
	if err != nil || math.Abs(eps-1) > 5e-8 {
		t.Errorf("Gaussian σ 4.530877117: ε %.9f (%v), want 1", eps, err)
	}
}

// Opacus, opacus/tests/accountants_test.py, test_rdp_accountant: σ = 1.5, q = 0.04,
// int(90/0.04) = 2250 steps, δ = 1e-5 give ε = 7.32911117143 (7 places) over Opacus's
// DEFAULT_ALPHAS, the first 150 of our RDPOrders. The composition here goes round by round,
// as a federated server records it.
func TestAccountantOpacus(t *testing.T) {
	var a Accountant
	for range 2250 {
		if err := a.Compose(1.5, 0.04, 1); err != nil {
			t.Fatal(err)
		}
	}
	if a.Rounds() != 2250 || len(a.Steps()) != 1 {
		t.Fatalf("rounds %d, steps %v", a.Rounds(), a.Steps())
	}
	opacus := RDPOrders[:150]
	eps, _, err := EpsilonFromRDP(opacus, a.RDP(opacus), 1e-5)
	if err != nil || math.Abs(eps-7.32911117143) > 5e-8 {
		t.Errorf("ε = %.11f (%v), Opacus 7.32911117143", eps, err)
	}
	// The default orders add 128, 256 and 512, which cannot make ε larger.
	if e2, _, _ := a.Epsilon(1e-5); e2 > eps {
		t.Errorf("ε over all orders %v > over Opacus's %v", e2, eps)
	}
}

// TF Privacy's test_check_composition: heterogeneous rounds compose by adding RDP, and the
// result stays below the value the older conversion gave, 8.509656.
func TestAccountantComposition(t *testing.T) {
	orders := []float64{1.25, 1.5, 1.75, 2, 2.5, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 64, 256}
	var a Accountant
	a.Compose(0.4, 1e-4, 40000)
	a.Compose(2, 0.1, 100)
	eps, _, err := EpsilonFromRDP(orders, a.RDP(orders), 1e-5)
	if err != nil || eps > 8.509656 || eps <= 0 {
		t.Errorf("ε = %v (%v), want in (0, 8.509656]", eps, err)
	}
	if len(a.Steps()) != 2 || a.Rounds() != 40100 {
		t.Errorf("steps %v", a.Steps())
	}
}

// log A_α against a plain numerical integral of its definition,
// A_α = ∫ μ0(z)·((1-q) + q·exp((2z-1)/(2σ²)))^α dz with μ0 the N(0, σ²) density (the check
// TF Privacy's test_compute_log_a_equals_mp makes with mpmath), for some of its parameters.
func TestLogAIntegral(t *testing.T) {
	for _, c := range []struct{ q, sigma, alpha float64 }{
		{1e-3, 1, 2}, {1e-4, 1, 1.5}, {0.01, 10, 20}, {0.1, 100, 20.5}, {0.1, 2, 5}, {0.05, 1.5, 7.3},
	} {
		got := logA(c.q, c.sigma, c.alpha)
		want := math.Log(integrateA(c.q, c.sigma, c.alpha))
		if math.Abs(got-want) > 1e-4*math.Abs(want)+1e-8 {
			t.Errorf("log A(q %v, σ %v, α %v) = %.10g, integral %.10g", c.q, c.sigma, c.alpha, got, want)
		}
	}
}

// integrateA integrates by the composite Simpson rule over ±40σ (+ the shift), in float64.
func integrateA(q, sigma, alpha float64) float64 {
	f := func(z float64) float64 {
		mu0 := math.Exp(-z*z/(2*sigma*sigma)) / (sigma * math.Sqrt(2*math.Pi))
		return mu0 * math.Pow((1-q)+q*math.Exp((2*z-1)/(2*sigma*sigma)), alpha)
	}
	lo, hi := -40*sigma, 40*sigma+alpha
	const n = 100000
	h := (hi - lo) / n
	s := f(lo) + f(hi)
	for i := 1; i < n; i++ {
		w := 2.0
		if i%2 == 1 {
			w = 4
		}
		s += w * f(lo+float64(i)*h)
	}
	return s * h / 3
}

func TestAccountantEdges(t *testing.T) {
	var a Accountant
	if eps, _, _ := a.Epsilon(1e-5); eps != 0 {
		t.Errorf("no rounds: ε %v", eps)
	}
	a.Compose(0, 0.1, 1)
	if eps, _, _ := a.Epsilon(1e-5); !math.IsInf(eps, 1) {
		t.Errorf("no noise: ε %v, want +Inf", eps)
	}
	for _, bad := range []struct{ z, q float64 }{{-1, 0.1}, {1, 1.5}, {math.NaN(), 0.1}, {1, -0.1}} {
		if err := a.Compose(bad.z, bad.q, 1); !errors.Is(err, aggregate.ErrOption) {
			t.Errorf("Compose(%v, %v): %v", bad.z, bad.q, err)
		}
	}
	for _, d := range []float64{0, 1, -1, math.NaN()} {
		if _, _, err := a.Epsilon(d); !errors.Is(err, aggregate.ErrOption) {
			t.Errorf("δ %v: %v", d, err)
		}
	}
}
