package kernels

import (
	"encoding/binary"
	"math"
)

// The optimizer and secure-sum kernels: fused server-optimizer steps (Reddi et al., 2021,
// "Adaptive Federated Optimization", Algorithm 2, and its FedAvgM special case) and the modular
// sum of u32 vectors that mask-based secure aggregation needs. They are a family of the registry
// (generator kernels/_gen/optim, files optim*.go).

// OptimParams are the hyperparameters of a fused optimizer step, in f32 as the kernels compute:
// the server learning rate, the moment decays β1 and β2 and the adaptivity τ. FedAvgM uses LR
// and Beta1 (the server momentum) only; FedAdagrad ignores Beta2.
type OptimParams struct {
	LR, Beta1, Beta2, Tau float32
}

// optimTable is the constant table the assembly reads: each constant in all 8 lanes of a
// 32-byte row, in the order of the generator's cLR... constants. 1-β1 and 1-β2 are rounded
// to f32 once, as the reference loops and the CUDA kernels compute them.
func (p OptimParams) table() *[8][8]float32 {
	var t [8][8]float32
	for k, c := range [8]float32{p.LR, p.Beta1, 1 - p.Beta1, p.Beta2, 1 - p.Beta2, p.Tau, 1, -1} {
		for l := range t[k] {
			t[k][l] = c
		}
	}
	return &t
}

// optimKernels is one implementation of the family.
type optimKernels struct {
	name       string
	fedAvgM    func(xo, mo, x, d, m []float32, p OptimParams)
	fedAdagrad func(xo, mo, vo, x, d, m, v []float32, p OptimParams)
	fedAdam    func(xo, mo, vo, x, d, m, v []float32, p OptimParams)
	fedYogi    func(xo, mo, vo, x, d, m, v []float32, p OptimParams)
	modSumU32  func(acc []uint32, x [][]byte)
}

var optimGeneric = optimKernels{
	name:       "generic",
	fedAvgM:    func(xo, mo, x, d, m []float32, p OptimParams) { fedAvgMGeneric(xo, mo, x, d, m, p, 0) },
	fedAdagrad: func(xo, mo, vo, x, d, m, v []float32, p OptimParams) { fedAdagradGeneric(xo, mo, vo, x, d, m, v, p, 0) },
	fedAdam:    func(xo, mo, vo, x, d, m, v []float32, p OptimParams) { fedAdamGeneric(xo, mo, vo, x, d, m, v, p, 0) },
	fedYogi:    func(xo, mo, vo, x, d, m, v []float32, p OptimParams) { fedYogiGeneric(xo, mo, vo, x, d, m, v, p, 0) },
	modSumU32:  func(acc []uint32, x [][]byte) { modSumU32Generic(acc, x, 0) },
}

var _ = register(optimFamily, "generic", true, &optimGeneric)

// The step kernels take inputs x (model), d (the round's averaged delta Δ), m and v (moments)
// and write xo, mo and vo, all of len(x) elements. An output may be the very slice of its
// input (mo = m, vo = v, and xo = x or xo = d), which updates in place; outputs must not
// otherwise overlap inputs or each other.

// FedAvgMStepF32 is server momentum (FedAvgM; Hsu et al., 2019, as Flower computes it). It is
//
//	for j := range x {
//		mj := float32(p.Beta1*m[j]) + d[j]
//		xo[j] = x[j] + float32(p.LR*mj)
//		mo[j] = mj
//	}
func FedAvgMStepF32(xo, mo, x, d, m []float32, p OptimParams) { def.FedAvgMStepF32(xo, mo, x, d, m, p) }

// FedAvgMStepF32 is the package-level FedAvgMStepF32 run by k.
func (k *Impl) FedAvgMStepF32(xo, mo, x, d, m []float32, p OptimParams) {
	k.optim.fedAvgM(xo, mo, x, d, m, p)
}

// FedAdagradStepF32 is FedAdagrad. It is
//
//	for j := range x {
//		mj := float32(p.Beta1*m[j]) + float32((1-p.Beta1)*d[j])
//		vj := v[j] + float32(d[j]*d[j])
//		xo[j] = x[j] + float32(p.LR*mj)/(float32(math.Sqrt(float64(vj)))+p.Tau)
//		mo[j], vo[j] = mj, vj
//	}
func FedAdagradStepF32(xo, mo, vo, x, d, m, v []float32, p OptimParams) {
	def.FedAdagradStepF32(xo, mo, vo, x, d, m, v, p)
}

// FedAdagradStepF32 is the package-level FedAdagradStepF32 run by k.
func (k *Impl) FedAdagradStepF32(xo, mo, vo, x, d, m, v []float32, p OptimParams) {
	k.optim.fedAdagrad(xo, mo, vo, x, d, m, v, p)
}

// FedAdamStepF32 is FedAdam (without bias correction, as Algorithm 2). It is FedAdagradStepF32
// with
//
//	vj := float32(p.Beta2*v[j]) + float32((1-p.Beta2)*float32(d[j]*d[j]))
func FedAdamStepF32(xo, mo, vo, x, d, m, v []float32, p OptimParams) {
	def.FedAdamStepF32(xo, mo, vo, x, d, m, v, p)
}

// FedAdamStepF32 is the package-level FedAdamStepF32 run by k.
func (k *Impl) FedAdamStepF32(xo, mo, vo, x, d, m, v []float32, p OptimParams) {
	k.optim.fedAdam(xo, mo, vo, x, d, m, v, p)
}

// FedYogiStepF32 is FedYogi. It is FedAdagradStepF32 with
//
//	d2 := float32(d[j] * d[j])
//	var s float32 // sign(v[j] - d2); 0 for 0 and NaN
//	if diff := v[j] - d2; diff > 0 {
//		s = 1
//	} else if diff < 0 {
//		s = -1
//	}
//	vj := v[j] - float32(float32((1-p.Beta2)*d2)*s)
func FedYogiStepF32(xo, mo, vo, x, d, m, v []float32, p OptimParams) {
	def.FedYogiStepF32(xo, mo, vo, x, d, m, v, p)
}

// FedYogiStepF32 is the package-level FedYogiStepF32 run by k.
func (k *Impl) FedYogiStepF32(xo, mo, vo, x, d, m, v []float32, p OptimParams) {
	k.optim.fedYogi(xo, mo, vo, x, d, m, v, p)
}

// ModSumU32 adds u32 vectors to acc modulo 2^32 (the inputs are raw little-endian bytes at any
// alignment, each at least 4·len(acc) long). It is
//
//	for i := range x {
//		for j := range acc {
//			acc[j] += binary.LittleEndian.Uint32(x[i][4*j:]) // wraps around
//		}
//	}
//
// Addition modulo 2^32 is associative and commutative, so the result is exact whatever the
// order and the blocking: masks that cancel in the sum cancel exactly.
func ModSumU32(acc []uint32, x [][]byte) { def.ModSumU32(acc, x) }

// ModSumU32 is the package-level ModSumU32 run by k.
func (k *Impl) ModSumU32(acc []uint32, x [][]byte) { k.optim.modSumU32(acc, x) }

// The reference loops, from element from on (the assembly's tail handlers). The explicit
// float32 conversions keep the compiler from fusing a multiply and an add into one FMA, which
// would round once where the assembly and the CUDA kernels round twice.

func fedAvgMGeneric(xo, mo, x, d, m []float32, p OptimParams, from int) {
	for j := from; j < len(x); j++ {
		mj := float32(p.Beta1*m[j]) + d[j]
		xo[j] = x[j] + float32(p.LR*mj)
		mo[j] = mj
	}
}

func firstMoment(m, d float32, p OptimParams) float32 {
	return float32(p.Beta1*m) + float32((1-p.Beta1)*d)
}

func adaptiveStep(x, m, v float32, p OptimParams) float32 {
	return x + float32(p.LR*m)/(float32(math.Sqrt(float64(v)))+p.Tau)
}

func fedAdagradGeneric(xo, mo, vo, x, d, m, v []float32, p OptimParams, from int) {
	for j := from; j < len(x); j++ {
		mj := firstMoment(m[j], d[j], p)
		vj := v[j] + float32(d[j]*d[j])
		xo[j] = adaptiveStep(x[j], mj, vj, p)
		mo[j], vo[j] = mj, vj
	}
}

func fedAdamGeneric(xo, mo, vo, x, d, m, v []float32, p OptimParams, from int) {
	for j := from; j < len(x); j++ {
		mj := firstMoment(m[j], d[j], p)
		vj := float32(p.Beta2*v[j]) + float32((1-p.Beta2)*float32(d[j]*d[j]))
		xo[j] = adaptiveStep(x[j], mj, vj, p)
		mo[j], vo[j] = mj, vj
	}
}

func fedYogiGeneric(xo, mo, vo, x, d, m, v []float32, p OptimParams, from int) {
	for j := from; j < len(x); j++ {
		mj := firstMoment(m[j], d[j], p)
		d2 := float32(d[j] * d[j])
		var s float32
		if diff := v[j] - d2; diff > 0 {
			s = 1
		} else if diff < 0 {
			s = -1
		}
		vj := v[j] - float32(float32((1-p.Beta2)*d2)*s)
		xo[j] = adaptiveStep(x[j], mj, vj, p)
		mo[j], vo[j] = mj, vj
	}
}

func modSumU32Generic(acc []uint32, x [][]byte, from int) {
	for _, xi := range x {
		for j := from; j < len(acc); j++ {
			acc[j] += binary.LittleEndian.Uint32(xi[4*j:])
		}
	}
}
