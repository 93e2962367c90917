package main

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/spf13/pflag"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/aggregate/robust"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// The Byzantine-robust rules and their flags. The family's flags are registered once and each
// rule says which of them it reads, so that a flag given to a rule that ignores it is an error
// instead of a surprise.

// robustFlagNames are the flags of the family; memory-budget applies to every rule of it.
var robustFlagNames = []string{"f", "m", "beta", "nu", "max-iter", "tol", "tau", "iters", "center",
	"clip-bound", "clip-quantile", "nnm", "memory-budget"}

func registerRobustFlags(fs *pflag.FlagSet) {
	addInt(fs, "f", 0, "krum, multi-krum, bulyan: Byzantine clients tolerated")
	addInt(fs, "m", 0, "krum, multi-krum: updates averaged (krum: 1; multi-krum: default n-f)")
	addFloat(fs, "beta", 0.1, "trimmed-mean: fraction of values cut from each end, in [0, 0.5)")
	addFloat(fs, "nu", robust.DefaultSmoothing, "geomed: smoothing distance of the Weiszfeld weights")
	addInt(fs, "max-iter", robust.DefaultMaxIterations, "geomed: most Weiszfeld iterations")
	addFloat(fs, "tol", robust.DefaultTolerance, "geomed: stop when the objective changes by less than tol x objective")
	addFloat(fs, "tau", 0, "centered-clip: clipping radius (required); fedadagrad, fedadam, fedyogi: adaptivity τ > 0 (default 1e-3)")
	addInt(fs, "iters", 1, "centered-clip: clipping iterations")
	addString(fs, "center", "centered-clip: .safetensors file to start from (default: zero)")
	addFloat(fs, "clip-bound", 0, "norm-clip, norm-zero: fixed L2 bound")
	addFloat(fs, "clip-quantile", 0, "norm-clip, norm-zero: bound = this quantile (0,1] of the round's norms")
	addInt(fs, "nnm", 0, "median, trimmed-mean, krum, multi-krum, bulyan: first replace each update by the mean of its n-F nearest (nearest-neighbour mixing, Allouah et al., 2023), F >= 1")
	addString(fs, "memory-budget", "robust rules: bytes of model-sized iterates they may hold, e.g. 8GiB (default "+
		formatBytes(aggregate.DefaultMemoryBudget)+")")
}

// robustSpec registers a rule of the family reading the given flags (and --memory-budget).
func robustSpec(name, usage string, takes []string, build func() (aggregate.Rule, error)) {
	registerRule(&ruleSpec{name: name, usage: usage, family: "robust", takes: append(takes, "memory-budget"),
		build: func([]string) (aggregate.Rule, error) { return build() }})
}

// mixableSpec is robustSpec for a rule that also takes --nnm: nearest-neighbour mixing first.
func mixableSpec(name, usage string, takes []string, build func() (aggregate.Rule, error)) {
	robustSpec(name, usage+"; --nnm F mixes first", append(takes, "nnm"), func() (aggregate.Rule, error) {
		r, err := build()
		if err != nil || !given("nnm") {
			return r, err
		}
		f, err := flagInt("nnm")
		if err != nil {
			return nil, err
		}
		return robust.NewNNM(r, f)
	})
}

func init() {
	registerFamily("robust", robustFlagNames, registerRobustFlags)
	mixableSpec("median", "coordinate-wise median (Yin et al., 2018); ignores weights", nil,
		func() (aggregate.Rule, error) { return robust.NewMedian(), nil })
	mixableSpec("trimmed-mean", "coordinate-wise mean without floor(beta*n) values at each end (--beta); ignores weights",
		[]string{"beta"}, trimmedMeanRule)
	mixableSpec("krum", "the update with the lowest Krum score (Blanchard et al., 2017); --f, --m for Multi-Krum",
		[]string{"f", "m"}, func() (aggregate.Rule, error) { return krum(1) })
	mixableSpec("multi-krum", "weighted mean of the --m (default n-f) updates with the lowest Krum scores; --f",
		[]string{"f", "m"}, func() (aggregate.Rule, error) { return krum(0) })
	mixableSpec("bulyan", "Bulyan over Krum (El Mhamdi et al., 2018), needs n >= 4f+3; --f; ignores weights",
		[]string{"f"}, bulyanRule)
	robustSpec("geomed", "geometric median by smoothed Weiszfeld (RFA, Pillutla et al., 2022); --nu, --max-iter, --tol",
		[]string{"nu", "max-iter", "tol"}, geomedRule)
	robustSpec("centered-clip", "centered clipping (Karimireddy et al., 2021); --tau, --iters, --center; ignores weights",
		[]string{"tau", "iters", "center"}, centeredClipRule)
	for _, zero := range []bool{false, true} {
		name, usage := "norm-clip", "FedAvg of updates scaled to L2 norm <= bound; --clip-bound or --clip-quantile"
		if zero {
			name, usage = "norm-zero", "FedAvg with updates of L2 norm > bound zeroed; --clip-bound or --clip-quantile"
		}
		robustSpec(name, usage, []string{"clip-bound", "clip-quantile"},
			func() (aggregate.Rule, error) { return normClipRule(name, zero) })
	}
}

// trimmedMeanRule builds the trimmed mean (--beta).
func trimmedMeanRule() (aggregate.Rule, error) {
	b, err := flagFloat("beta")
	if err != nil {
		return nil, err
	}
	return robust.NewTrimmedMean(b)
}

// bulyanRule builds Bulyan (--f).
func bulyanRule() (aggregate.Rule, error) {
	f, err := flagInt("f")
	if err != nil {
		return nil, err
	}
	return robust.NewBulyan(f)
}

// geomedRule builds the geometric median (--nu, --max-iter, --tol).
func geomedRule() (aggregate.Rule, error) {
	nu, err1 := flagFloat("nu")
	iters, err2 := flagInt("max-iter")
	tol, err3 := flagFloat("tol")
	if err := firstErr(err1, err2, err3); err != nil {
		return nil, err
	}
	return robust.NewGeometricMedian(robust.WithSmoothing(nu), robust.WithMaxIterations(iters), robust.WithTolerance(tol))
}

// centeredClipRule builds centered clipping (--tau, --iters, --center).
func centeredClipRule() (aggregate.Rule, error) {
	tau, err1 := flagFloat("tau")
	iters, err2 := flagInt("iters")
	if err := firstErr(err1, err2); err != nil {
		return nil, err
	}
	opts := []robust.Option{robust.WithIterations(iters)}
	if given("center") {
		// The center stays mapped until the process exits, as the inputs do.
		c, err := safetensors.Open(flagString("center"))
		if err != nil {
			return nil, usagef("--center: %v", err)
		}
		opts = append(opts, robust.WithCenter(c))
	}
	return robust.NewCenteredClipping(tau, opts...)
}

// normClipRule builds the rule name: norm-clip, or norm-zero when zero is set.
func normClipRule(name string, zero bool) (aggregate.Rule, error) {
	b, err := clipBound(name)
	if err != nil {
		return nil, err
	}
	if zero {
		return robust.NewNormZeroing(b)
	}
	return robust.NewNormClipping(b)
}

// clipBound reads the bound of norm-clip or norm-zero (rule name): --clip-bound or
// --clip-quantile, exactly one of them.
func clipBound(name string) (robust.ClipBound, error) {
	switch bound, q := given("clip-bound"), given("clip-quantile"); {
	case bound && q:
		return robust.ClipBound{}, usagef("--clip-bound and --clip-quantile: give one")
	case bound:
		v, err := flagFloat("clip-bound")
		if err != nil {
			return robust.ClipBound{}, err
		}
		return robust.FixedBound(v), nil
	case q:
		v, err := flagFloat("clip-quantile")
		if err != nil {
			return robust.ClipBound{}, err
		}
		return robust.QuantileBound(v), nil
	default:
		return robust.ClipBound{}, usagef("--rule %s needs --clip-bound or --clip-quantile", name)
	}
}

// krum builds Krum (m 1 unless --m) or Multi-Krum (m n-f unless --m).
func krum(m int) (aggregate.Rule, error) {
	f, err := flagInt("f")
	if err != nil {
		return nil, err
	}
	if given("m") {
		if m, err = flagInt("m"); err != nil {
			return nil, err
		}
		if m < 1 {
			return nil, usagef("--m %d: want m >= 1", m)
		}
	}
	return robust.NewKrum(f, m)
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// parseBytes reads a byte count: an integer or a number with a unit (KB, MB, GB, KiB, MiB, GiB,
// TiB; a bare B or none means bytes).
func parseBytes(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   float64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
		{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1}}
	t := strings.TrimSpace(s)
	mult := 1.0
	for _, u := range units {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || !(v >= 0) || v*mult > math.MaxInt64/2 {
		return 0, fmt.Errorf("%q is not a byte count (e.g. 8GiB, 512MiB, 1000000)", s)
	}
	return int64(v * mult), nil
}

func formatBytes(n int64) string {
	switch {
	case n%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", n>>30)
	case n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	}
	return strconv.FormatInt(n, 10)
}
