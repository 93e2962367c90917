package main

import (
	"slices"

	"github.com/spf13/pflag"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/aggregate/optim"
)

// The server optimizers (FedAvgM, FedAdagrad, FedAdam, FedYogi) and the round flags they share
// with the private means (rules_dp.go): --global, --state.
//
// How the CLI gets the current global model: clients send full models (as Flower's strategies
// take them, and as --rule fedavg averages them), and --global names the model they trained
// from; the rule computes the delta itself (weighted mean of the models - global). A client
// file marked as a delta (metadata wattagg.update=delta) is refused, so that a delta is never
// taken for a model. The new global model goes to -o; --state keeps the optimizer's moments
// between rounds (created at round 1, replaced together with the model as one unit on every
// successful round, untouched on failure).

var (
	roundFlagNames = []string{"global", "state", "privacy-state"}
	optimFlagNames = []string{"server-lr", "beta1", "beta2", "tau"}
)

func registerRoundFlags(fs *pflag.FlagSet) {
	addString(fs, "global", "server optimizers, dp-*: the current global model (f32) the clients trained from")
	addString(fs, "state", "server optimizers, dp-*: state file kept between rounds (created if missing, replaced with the model)")
	addString(fs, "privacy-state", "dp-* composed with a server optimizer (dp-fixed,fedadam): the privacy state file (--state is the optimizer's)")
}

func registerOptimFlags(fs *pflag.FlagSet) {
	addFloat(fs, "server-lr", 0, "server optimizers: server learning rate (default 1 for fedavgm, 0.1 for fedadagrad and fedadam, 0.01 for fedyogi)")
	addFloat(fs, "beta1", 0, "server optimizers: first-moment decay in [0,1), the momentum of fedavgm (default 0.9)")
	addFloat(fs, "beta2", 0, "fedadam, fedyogi: second-moment decay in [0,1) (default 0.99)")
	addFloat(fs, "tau", 0, "fedadagrad, fedadam, fedyogi: adaptivity τ > 0 (default 1e-3)")
}

// optimizerIn reports whether a composition holds a server optimizer.
func optimizerIn(chain []string) bool {
	return slices.ContainsFunc(chain, func(n string) bool { return slices.Contains(optim.Names(), n) })
}

func optimRule(name string) func([]string) (aggregate.Rule, error) {
	return func([]string) (aggregate.Rule, error) {
		var opts []optim.Option
		if given("state") {
			opts = append(opts, optim.WithStateFile(flagString("state")))
		}
		for _, f := range []struct {
			flag string
			opt  func(float64) optim.Option
		}{
			{"server-lr", optim.WithServerLR}, {"beta1", optim.WithBeta1},
			{"beta2", optim.WithBeta2}, {"tau", optim.WithTau},
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
		return optim.New(name, opts...)
	}
}

func init() {
	registerFamily("round", roundFlagNames, registerRoundFlags)
	registerFamily("optim", optimFlagNames, registerOptimFlags)
	takes := []string{"global", "state", "server-lr", "beta1", "beta2", "tau"}
	for _, r := range []struct{ name, usage string }{
		{"fedadagrad", "server FedAdagrad on the mean delta (Reddi et al., 2021); --global, --state, --server-lr, --beta1, --tau"},
		{"fedadam", "server FedAdam on the mean delta (Reddi et al., 2021); --global, --state, --server-lr, --beta1, --beta2, --tau"},
		{"fedavgm", "server momentum on the mean delta (FedAvgM); --global, --state, --server-lr, --beta1 (momentum)"},
		{"fedyogi", "server FedYogi on the mean delta (Reddi et al., 2021); --global, --state, --server-lr, --beta1, --beta2, --tau"},
	} {
		registerRule(&ruleSpec{name: r.name, usage: r.usage, family: "optim", takes: takes, build: optimRule(r.name)})
	}
}
