package main

import (
	"fmt"
	"os"
	"strconv"

	"github.com/spf13/pflag"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/aggregate/dp"
)

// The private means: central differential privacy with fixed (dp-fixed) or adaptive
// (dp-adaptive) clipping. They take full client models and --global as the server optimizers
// do; --state (--privacy-state when composed with a server optimizer, whose state --state is)
// keeps the privacy accountant (and the adaptive bound) between rounds, so that the reported ε
// covers every round run with that state. The state is recorded before the noised model is
// released.

var dpFlagNames = []string{"clip", "noise-multiplier", "sampling-rate", "delta", "target-quantile", "clip-lr",
	"clipped-count-stddev", "expected-clients", "insecure-seed"}

func registerDPFlags(fs *pflag.FlagSet) {
	addFloat(fs, "clip", 0, "dp-*: L2 bound each client's delta is clipped to (dp-adaptive: the initial bound, default 0.1)")
	addFloat(fs, "noise-multiplier", 0, "dp-*: noise standard deviation in units of the clipping bound (required)")
	addFloat(fs, "sampling-rate", 0, "dp-*: probability a client takes part in a round, in (0,1] (default 1: no amplification)")
	addFloat(fs, "delta", 0, "dp-*: δ the accountant reports ε for, in (0,1) (default 1e-5)")
	addFloat(fs, "target-quantile", 0, "dp-adaptive: fraction of clients to leave unclipped, in (0,1) (default 0.5)")
	addFloat(fs, "clip-lr", 0, "dp-adaptive: learning rate of the bound's geometric update (default 0.2)")
	addFloat(fs, "clipped-count-stddev", 0, "dp-adaptive: noise on the unclipped count (default expected clients/20)")
	addInt(fs, "expected-clients", 0, "dp-*: divide by this expected client count (DP-FedAvg's fixed denominator) instead of the clients received")
	addString(fs, "insecure-seed", "INSECURE: make the noise reproducible from this integer seed (experiments only: no privacy)")
}

func dpRule(name string) func([]string) (aggregate.Rule, error) {
	return func(chain []string) (aggregate.Rule, error) {
		var opts []dp.Option
		switch {
		case given("privacy-state"):
			opts = append(opts, dp.WithStateFile(flagString("privacy-state")))
		case given("state") && !optimizerIn(chain):
			opts = append(opts, dp.WithStateFile(flagString("state")))
		case given("state"):
			return nil, usagef("--rule %s composed with a server optimizer: --state is the optimizer's; give the privacy state with --privacy-state", name)
		}
		for _, f := range []struct {
			flag string
			opt  func(float64) dp.Option
		}{
			{"clip", dp.WithClipBound}, {"noise-multiplier", dp.WithNoiseMultiplier},
			{"sampling-rate", dp.WithSamplingRate}, {"delta", dp.WithTargetDelta},
			{"target-quantile", dp.WithTargetQuantile}, {"clip-lr", dp.WithClipLearningRate},
			{"clipped-count-stddev", dp.WithClippedCountStddev},
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
		if given("expected-clients") {
			n, err := flagInt("expected-clients")
			if err != nil {
				return nil, err
			}
			opts = append(opts, dp.WithExpectedClients(n))
		}
		if given("insecure-seed") {
			seed, err := strconv.ParseUint(flagString("insecure-seed"), 10, 64)
			if err != nil {
				return nil, usagef("--insecure-seed %q: want a non-negative integer", flagString("insecure-seed"))
			}
			fmt.Fprintln(os.Stderr, "wattagg: warning: --insecure-seed makes the noise reproducible: this round is NOT differentially private")
			opts = append(opts, dp.WithInsecureNoiseSeed(seed))
		}
		return dp.New(name, opts...)
	}
}

func init() {
	registerFamily("dp", dpFlagNames, registerDPFlags)
	takes := append([]string{"global", "state", "privacy-state"}, dpFlagNames...)
	registerRule(&ruleSpec{
		name:   "dp-adaptive",
		usage:  "DP mean with adaptive clipping (Andrew et al., 2021); --global, --noise-multiplier, --target-quantile, --state",
		family: "dp", takes: takes, build: dpRule("dp-adaptive"),
	})
	registerRule(&ruleSpec{
		name:   "dp-fixed",
		usage:  "DP mean with fixed clipping (DP-FedAvg, McMahan et al., 2018); --global, --clip, --noise-multiplier, --state",
		family: "dp", takes: takes, build: dpRule("dp-fixed"),
	})
}
