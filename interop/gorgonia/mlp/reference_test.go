package mlp

import (
	"math"
	"testing"

	"github.com/wattagg/wattagg/tensor"
)

// refParams are the model's parameters in float64, read element by element from a Set.
type refParams struct {
	hidden         int
	w1, b1, w2, b2 []float64
}

func refFrom(t *testing.T, s *tensor.Set) refParams {
	t.Helper()
	get := func(name string) []float64 {
		x, ok := s.Tensor(name)
		if !ok {
			t.Fatalf("no %s", name)
		}
		return x.Float64s()
	}
	w1, _ := s.Tensor(FC1Weight)
	return refParams{hidden: w1.Shape[0], w1: get(FC1Weight), b1: get(FC1Bias), w2: get(FC2Weight), b2: get(FC2Bias)}
}

// refForward is the model's forward pass written plainly in float64: for each row,
// h = relu(W1·x + b1), z = W2·h + b2. It also returns, per logit, a bound on how far a float32
// evaluation of the same expression can be from it, whatever the order of its sums and
// whether it fuses multiply-adds (Higham, Accuracy and Stability of Numerical Algorithms,
// §3.1: a float32 dot product of n terms is within γ_n·Σ|a_k·b_k| of the exact one,
// γ_n = n·u/(1−n·u), u = 2⁻²⁴; the inputs are exactly representable in float32):
//
//	|ĥ_j − h_j| ≤ e_j = γ_{65}·(Σ_k |W1_jk·x_k| + |b1_j|)        (relu is 1-Lipschitz)
//	|ẑ_i − z_i| ≤ Σ_j |W2_ij|·e_j + γ_{H+1}·(Σ_j |W2_ij|·(|h_j| + e_j) + |b2_i|)
//
// The float64 reference itself is ~2⁻⁵³ relative, negligible against these.
func refForward(p refParams, x []float32) (logits, bound []float64) {
	const u = 1.0 / (1 << 24)
	gamma := func(n int) float64 { return float64(n) * u / (1 - float64(n)*u) }
	n := len(x) / Inputs
	h := make([]float64, p.hidden)
	e := make([]float64, p.hidden)
	for r := range n {
		row := x[r*Inputs : (r+1)*Inputs]
		for j := range p.hidden {
			s, abs := p.b1[j], math.Abs(p.b1[j])
			for k := range Inputs {
				prod := p.w1[j*Inputs+k] * float64(row[k])
				s += prod
				abs += math.Abs(prod)
			}
			h[j] = max(s, 0)
			e[j] = gamma(Inputs+1) * abs
		}
		for i := range Outputs {
			s, abs, prop := p.b2[i], math.Abs(p.b2[i]), 0.0
			for j := range p.hidden {
				w := p.w2[i*p.hidden+j]
				s += w * h[j]
				abs += math.Abs(w) * (h[j] + e[j])
				prop += math.Abs(w) * e[j]
			}
			logits = append(logits, s)
			bound = append(bound, prop+gamma(p.hidden+1)*abs)
		}
	}
	return logits, bound
}

// refArgmax is the first largest value of each row.
func refArgmax(v []float64) []int {
	var out []int
	for r := 0; r < len(v); r += Outputs {
		best := r
		for i := r; i < r+Outputs; i++ {
			if v[i] > v[best] {
				best = i
			}
		}
		out = append(out, best-r)
	}
	return out
}

// refSGDStep is one step of plain gradient descent on the mean cross-entropy of the rows x
// with labels y, backpropagated by hand in float64:
//
//	p = softmax(z), dz = (p − onehot(y))/n, dW2 = dzᵀ·h, db2 = Σ dz,
//	dh = dz·W2 ⊙ [W1·x + b1 > 0], dW1 = dhᵀ·x, db1 = Σ dh.
func refSGDStep(p refParams, x []float32, y []int, lr float64) refParams {
	n := len(y)
	H := p.hidden
	gw1, gb1 := make([]float64, len(p.w1)), make([]float64, len(p.b1))
	gw2, gb2 := make([]float64, len(p.w2)), make([]float64, len(p.b2))
	pre, h := make([]float64, H), make([]float64, H)
	z := make([]float64, Outputs)
	for r := range n {
		row := x[r*Inputs : (r+1)*Inputs]
		for j := range H {
			s := p.b1[j]
			for k := range Inputs {
				s += p.w1[j*Inputs+k] * float64(row[k])
			}
			pre[j], h[j] = s, max(s, 0)
		}
		zmax := math.Inf(-1)
		for i := range Outputs {
			s := p.b2[i]
			for j := range H {
				s += p.w2[i*H+j] * h[j]
			}
			z[i] = s
			zmax = max(zmax, s)
		}
		sum := 0.0
		for i := range z {
			sum += math.Exp(z[i] - zmax)
		}
		dh := make([]float64, H)
		for i := range Outputs {
			dz := math.Exp(z[i]-zmax) / sum
			if i == y[r] {
				dz--
			}
			dz /= float64(n)
			gb2[i] += dz
			for j := range H {
				gw2[i*H+j] += dz * h[j]
				dh[j] += dz * p.w2[i*H+j]
			}
		}
		for j := range H {
			if pre[j] <= 0 {
				continue
			}
			gb1[j] += dh[j]
			for k := range Inputs {
				gw1[j*Inputs+k] += dh[j] * float64(row[k])
			}
		}
	}
	step := func(w, g []float64) []float64 {
		out := make([]float64, len(w))
		for i := range w {
			out[i] = w[i] - lr*g[i]
		}
		return out
	}
	return refParams{hidden: H, w1: step(p.w1, gw1), b1: step(p.b1, gb1), w2: step(p.w2, gw2), b2: step(p.b2, gb2)}
}

// refLoss is the mean cross-entropy of the model on the rows x with labels y.
func refLoss(p refParams, x []float32, y []int) float64 {
	z, _ := refForward(p, x)
	loss := 0.0
	for r, label := range y {
		row := z[r*Outputs : (r+1)*Outputs]
		zmax := math.Inf(-1)
		for _, v := range row {
			zmax = max(zmax, v)
		}
		sum := 0.0
		for _, v := range row {
			sum += math.Exp(v - zmax)
		}
		loss += -(row[label] - zmax - math.Log(sum))
	}
	return loss / float64(len(y))
}
