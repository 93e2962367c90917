package main

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/pflag"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// The Byzantine-robust rules and their flags. The family's flags are registered once (by the
// median spec) and each rule says which of them it takes, so that a flag given to a rule that
// ignores it is an error instead of a surprise.

// robustFlags holds the values of the family's flags for the command being run.
var robustFlags struct {
	fs                      *pflag.FlagSet
	f, m, maxIter, iters    int
	beta, nu, tol, tau      float64
	clipBound, clipQuantile float64
	center, memoryBudget    string
}

// robustFlagNames are the flags of the family; memory-budget applies to every rule of it.
var robustFlagNames = []string{"f", "m", "beta", "nu", "max-iter", "tol", "tau", "iters", "center",
	"clip-bound", "clip-quantile"}

func registerRobustFlags(fs *pflag.FlagSet) {
	rf := &robustFlags
	rf.fs = fs
	fs.IntVar(&rf.f, "f", 0, "krum, multi-krum, bulyan: Byzantine clients tolerated")
	fs.IntVar(&rf.m, "m", 0, "krum, multi-krum: updates averaged (krum: 1; multi-krum: default n-f)")
	fs.Float64Var(&rf.beta, "beta", 0.1, "trimmed-mean: fraction of values cut from each end, in [0, 0.5)")
	fs.Float64Var(&rf.nu, "nu", 1e-6, "geomed: smoothing distance of the Weiszfeld weights")
	fs.IntVar(&rf.maxIter, "max-iter", 10, "geomed: most Weiszfeld iterations")
	fs.Float64Var(&rf.tol, "tol", 1e-6, "geomed: stop when the objective changes by less than tol x objective")
	fs.Float64Var(&rf.tau, "tau", 0, "centered-clip: clipping radius (required)")
	fs.IntVar(&rf.iters, "iters", 1, "centered-clip: clipping iterations")
	fs.StringVar(&rf.center, "center", "", "centered-clip: .safetensors file to start from (default: zero)")
	fs.Float64Var(&rf.clipBound, "clip-bound", 0, "norm-clip, norm-zero: fixed L2 bound")
	fs.Float64Var(&rf.clipQuantile, "clip-quantile", 0, "norm-clip, norm-zero: bound = this quantile (0,1] of the round's norms")
	fs.StringVar(&rf.memoryBudget, "memory-budget", "", "robust rules: bytes of copies they may hold, e.g. 8GiB (default "+
		formatBytes(aggregate.DefaultMemoryBudget)+")")
}

// robustRule builds a rule of the family once the flags it does not take are checked unset and
// --memory-budget is added to the common options.
func robustRule(name string, takes []string, build func(common []aggregate.Option) (aggregate.Rule, error)) func([]aggregate.Option) (aggregate.Rule, error) {
	return func(common []aggregate.Option) (aggregate.Rule, error) {
		rf := &robustFlags
		for _, fl := range robustFlagNames {
			if rf.fs != nil && rf.fs.Changed(fl) && !slices.Contains(takes, fl) {
				return nil, usagef("--%s does not apply to --rule %s", fl, name)
			}
		}
		opts := slices.Clone(common)
		if rf.memoryBudget != "" {
			n, err := parseBytes(rf.memoryBudget)
			if err != nil {
				return nil, usagef("--memory-budget: %v", err)
			}
			opts = append(opts, aggregate.WithMemoryBudget(n))
		}
		r, err := build(opts)
		if err != nil {
			return nil, usagef("--rule %s: %w", name, err)
		}
		return r, nil
	}
}

func init() {
	rf := &robustFlags
	registerRule(&ruleSpec{
		name:  "median",
		usage: "coordinate-wise median (Yin et al., 2018); ignores weights",
		flags: registerRobustFlags,
		build: robustRule("median", nil, func(o []aggregate.Option) (aggregate.Rule, error) {
			return aggregate.NewMedian(o...)
		}),
	})
	registerRule(&ruleSpec{
		name:  "trimmed-mean",
		usage: "coordinate-wise mean without floor(beta*n) values at each end (--beta); ignores weights",
		build: robustRule("trimmed-mean", []string{"beta"}, func(o []aggregate.Option) (aggregate.Rule, error) {
			return aggregate.NewTrimmedMean(rf.beta, o...)
		}),
	})
	registerRule(&ruleSpec{
		name:  "krum",
		usage: "the update with the lowest Krum score (Blanchard et al., 2017); --f, --m for Multi-Krum",
		build: robustRule("krum", []string{"f", "m"}, func(o []aggregate.Option) (aggregate.Rule, error) {
			m := rf.m
			if !rf.fs.Changed("m") {
				m = 1
			}
			if m < 1 {
				return nil, fmt.Errorf("%w: krum m=%d: want m >= 1", aggregate.ErrOption, m)
			}
			return aggregate.NewKrum(rf.f, m, o...)
		}),
	})
	registerRule(&ruleSpec{
		name:  "multi-krum",
		usage: "weighted mean of the --m (default n-f) updates with the lowest Krum scores; --f",
		build: robustRule("multi-krum", []string{"f", "m"}, func(o []aggregate.Option) (aggregate.Rule, error) {
			if rf.fs.Changed("m") && rf.m < 1 {
				return nil, fmt.Errorf("%w: multi-krum m=%d: want m >= 1", aggregate.ErrOption, rf.m)
			}
			return aggregate.NewKrum(rf.f, rf.m, o...)
		}),
	})
	registerRule(&ruleSpec{
		name:  "bulyan",
		usage: "Bulyan over Krum (El Mhamdi et al., 2018), needs n >= 4f+3; --f; ignores weights",
		build: robustRule("bulyan", []string{"f"}, func(o []aggregate.Option) (aggregate.Rule, error) {
			return aggregate.NewBulyan(rf.f, o...)
		}),
	})
	registerRule(&ruleSpec{
		name:  "geomed",
		usage: "geometric median by smoothed Weiszfeld (RFA, Pillutla et al., 2022); --nu, --max-iter, --tol",
		build: robustRule("geomed", []string{"nu", "max-iter", "tol"}, func(o []aggregate.Option) (aggregate.Rule, error) {
			return aggregate.NewGeometricMedian(rf.nu, rf.maxIter, rf.tol, o...)
		}),
	})
	registerRule(&ruleSpec{
		name:  "centered-clip",
		usage: "centered clipping (Karimireddy et al., 2021); --tau, --iters, --center; ignores weights",
		build: robustRule("centered-clip", []string{"tau", "iters", "center"}, func(o []aggregate.Option) (aggregate.Rule, error) {
			var center *tensor.Set
			if rf.center != "" {
				// The center stays mapped until the process exits, as the inputs do.
				c, err := safetensors.Open(rf.center)
				if err != nil {
					return nil, err
				}
				center = c
			}
			return aggregate.NewCenteredClipping(rf.tau, rf.iters, center, o...)
		}),
	})
	for _, zero := range []bool{false, true} {
		name, usage := "norm-clip", "FedAvg of updates scaled to L2 norm <= bound; --clip-bound or --clip-quantile"
		if zero {
			name, usage = "norm-zero", "FedAvg with updates of L2 norm > bound zeroed; --clip-bound or --clip-quantile"
		}
		registerRule(&ruleSpec{
			name:  name,
			usage: usage,
			build: robustRule(name, []string{"clip-bound", "clip-quantile"}, func(o []aggregate.Option) (aggregate.Rule, error) {
				var b aggregate.ClipBound
				switch bound, q := rf.fs.Changed("clip-bound"), rf.fs.Changed("clip-quantile"); {
				case bound && q:
					return nil, fmt.Errorf("%w: --clip-bound and --clip-quantile: give one", aggregate.ErrOption)
				case bound:
					b = aggregate.FixedBound(rf.clipBound)
				case q:
					b = aggregate.QuantileBound(rf.clipQuantile)
				default:
					return nil, fmt.Errorf("%w: %s needs --clip-bound or --clip-quantile", aggregate.ErrOption, name)
				}
				if zero {
					return aggregate.NewNormZeroing(b, o...)
				}
				return aggregate.NewNormClipping(b, o...)
			}),
		})
	}
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
