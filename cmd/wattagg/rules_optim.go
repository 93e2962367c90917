package main

import (
	"errors"
	"strconv"

	"github.com/spf13/pflag"

	"github.com/wattagg/wattagg/aggregate"
)

// The server optimizers (FedAvgM, FedAdagrad, FedAdam, FedYogi) and the flags they share with
// the private means (rules_dp.go): --global and --state.
//
// How the CLI gets the current global model: clients send full models (as Flower's strategies
// take them, and as --rule fedavg averages them), and --global names the model they trained
// from; the rule computes the delta itself (weighted mean of the models - global). A client
// file marked as a delta (metadata wattagg.update=delta) is refused, so that a delta is never
// taken for a model. The new global model goes to -o; --state keeps the optimizer's moments
// between rounds (created at round 1, replaced atomically after the model on every successful
// round, untouched on failure).

// Flag names of the families, so that a flag of one family given to a rule of another is a
// usage error instead of being ignored.
var (
	roundFlagNames  = []string{"global", "state"}
	optimFlagNames  = []string{"server-lr", "beta1", "beta2", "tau"}
	dpFlagNames     = []string{"clip", "noise-multiplier", "sampling-rate", "delta", "target-quantile", "clip-lr", "clipped-count-stddev", "expected-clients", "insecure-seed"}
	secaggFlagNames = []string{"secagg-bits", "secagg-range", "secagg-recovery"}
)

// cmdFlags is the aggregate command's flag set, kept by the families' flag registration so that
// their build functions can read what was given.
var cmdFlags *pflag.FlagSet

// Flags are registered only if no other family registered the same name: families that share
// a flag (--global, --state; --tau with centered clipping) read one flag, and whichever family
// registers first gives it its help text.

func addFloat(fs *pflag.FlagSet, name string, def float64, usage string) {
	cmdFlags = fs
	if fs.Lookup(name) == nil {
		fs.Float64(name, def, usage)
	}
}

func addString(fs *pflag.FlagSet, name, usage string) {
	cmdFlags = fs
	if fs.Lookup(name) == nil {
		fs.String(name, "", usage)
	}
}

func addInt(fs *pflag.FlagSet, name string, def int, usage string) {
	cmdFlags = fs
	if fs.Lookup(name) == nil {
		fs.Int(name, def, usage)
	}
}

// given reports whether flag name was set on the command line.
func given(name string) bool { return cmdFlags != nil && cmdFlags.Changed(name) }

func flagString(name string) string {
	if cmdFlags == nil {
		return ""
	}
	if f := cmdFlags.Lookup(name); f != nil {
		return f.Value.String()
	}
	return ""
}

func flagFloat(name string) (float64, error) {
	v, err := strconv.ParseFloat(flagString(name), 64)
	if err != nil {
		return 0, usagef("--%s %q is not a number", name, flagString(name))
	}
	return v, nil
}

func flagInt(name string) (int, error) {
	v, err := strconv.Atoi(flagString(name))
	if err != nil {
		return 0, usagef("--%s %q is not an integer", name, flagString(name))
	}
	return v, nil
}

// rejectFlags makes a usage error of any flag of others given to rule.
func rejectFlags(rule string, others ...[]string) error {
	for _, names := range others {
		for _, n := range names {
			if given(n) {
				return usagef("--%s does not apply to --rule %s", n, rule)
			}
		}
	}
	return nil
}

// buildError makes an invalid parameter a usage error (exit status 2); other errors (a state
// file of another rule, a missing file) stay runtime errors (1).
func buildError(rule string, err error) error {
	if errors.Is(err, aggregate.ErrOption) {
		return usagef("--rule %s: %w", rule, err)
	}
	return err
}

// roundOptions are --global and --state, common to the optimizers and the private means.
func roundOptions(rule string, common []aggregate.Option) ([]aggregate.RoundOption, error) {
	if !given("global") {
		return nil, usagef("--rule %s needs --global CURRENT.safetensors, the model the clients trained from: they send full models and the rule subtracts it", rule)
	}
	opts := []aggregate.RoundOption{aggregate.WithGlobalFile(flagString("global")), aggregate.WithRuleOptions(common...)}
	if given("state") {
		opts = append(opts, aggregate.WithStateFile(flagString("state")))
	}
	return opts, nil
}

func registerRoundFlags(fs *pflag.FlagSet) {
	addString(fs, "global", "server optimizers, dp-*: the current global model (f32) the clients trained from")
	addString(fs, "state", "server optimizers, dp-*: state file kept between rounds (created if missing, replaced after each round)")
}

func registerOptimFlags(fs *pflag.FlagSet) {
	registerRoundFlags(fs)
	addFloat(fs, "server-lr", 0, "server optimizers: server learning rate (default 1 for fedavgm, 0.1 for fedadagrad and fedadam, 0.01 for fedyogi)")
	addFloat(fs, "beta1", 0, "server optimizers: first-moment decay in [0,1), the momentum of fedavgm (default 0.9)")
	addFloat(fs, "beta2", 0, "fedadam, fedyogi: second-moment decay in [0,1) (default 0.99)")
}

// registerTau registers --tau (τ > 0, the adaptivity of FedAdagrad, FedAdam, FedYogi; default
// 1e-3) unless centered clipping already did: it is registered from the secagg spec, which
// comes after the robust rules' in the sorted registry, so that their registration never finds
// it taken.
func registerTau(fs *pflag.FlagSet) {
	addFloat(fs, "tau", 0, "fedadagrad, fedadam, fedyogi: adaptivity τ > 0 (default 1e-3)")
}

func optimRule(name string) func(common []aggregate.Option) (aggregate.Rule, error) {
	return func(common []aggregate.Option) (aggregate.Rule, error) {
		if err := rejectFlags(name, dpFlagNames, secaggFlagNames); err != nil {
			return nil, err
		}
		opts, err := roundOptions(name, common)
		if err != nil {
			return nil, err
		}
		for _, f := range []struct {
			flag string
			opt  func(float64) aggregate.RoundOption
		}{
			{"server-lr", aggregate.WithServerLR}, {"beta1", aggregate.WithBeta1},
			{"beta2", aggregate.WithBeta2}, {"tau", aggregate.WithTau},
		} {
			if !given(f.flag) {
				continue
			}
			v, err := flagFloat(f.flag)
			if err != nil {
				return nil, err
			}
			opts = append(opts, f.opt(v))
		}
		r, err := aggregate.NewServerOptimizer(name, opts...)
		if err != nil {
			return nil, buildError(name, err)
		}
		return r, nil
	}
}

func init() {
	for _, r := range []struct{ name, usage string }{
		{"fedadagrad", "server FedAdagrad on the mean delta (Reddi et al., 2021); --global, --state, --server-lr, --beta1, --tau"},
		{"fedadam", "server FedAdam on the mean delta (Reddi et al., 2021); --global, --state, --server-lr, --beta1, --beta2, --tau"},
		{"fedavgm", "server momentum on the mean delta (FedAvgM); --global, --state, --server-lr, --beta1 (momentum)"},
		{"fedyogi", "server FedYogi on the mean delta (Reddi et al., 2021); --global, --state, --server-lr, --beta1, --beta2, --tau"},
	} {
		spec := &ruleSpec{name: r.name, usage: r.usage, build: optimRule(r.name)}
		if r.name == "fedadagrad" { // the family's flags, once
			spec.flags = registerOptimFlags
		}
		registerRule(spec)
	}
}
