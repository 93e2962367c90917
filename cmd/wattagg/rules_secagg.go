package main

import (
	"github.com/spf13/pflag"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/aggregate/secagg"
	"github.com/wattagg/wattagg/internal/cli"
)

var secaggFlagNames = []string{"secagg-bits", "secagg-range", "secagg-recovery"}

// The server side of mask-based secure aggregation: the inputs are clients' masked, quantised
// u32 files; the output is the f32 mean of what they quantised. --secagg-recovery gives the
// seeds revealed in the unmasking round, as JSON (secagg.Recovery's form):
//
//	{"clients": [0, 1, 2, 3],                        every client sent masks
//	 "self": {"0": "<64 hex digits>", ...},           self-mask seeds of the survivors
//	 "dropped": {"3": {"0": "<hex>", ...}},           seeds each dropped client shared with them
//	 "no_self_masks": false}
//
// Key agreement and secret sharing, which produce these seeds, are not wattagg's business.

func registerSecAggFlags(fs *pflag.FlagSet) {
	addInt(fs, "secagg-bits", 16, "secagg: bit width the clients quantised with (1-32; clients x 2^bits must fit 32 bits)")
	addFloat(fs, "secagg-range", 1, "secagg: clipping range c: clients quantised values in [-c, c]")
	addString(fs, "secagg-recovery", "secagg: JSON file of the seeds revealed to unmask survivors and dropped clients")
}

func secaggRule([]string) (aggregate.Rule, error) {
	bits, err := flagInt("secagg-bits")
	if err != nil {
		return nil, err
	}
	c, err := flagFloat("secagg-range")
	if err != nil {
		return nil, err
	}
	opts := []secagg.Option{secagg.WithBits(bits), secagg.WithRange(c)}
	if given("secagg-recovery") {
		rec, err := cli.ReadRecovery(flagString("secagg-recovery"))
		if err != nil {
			return nil, err
		}
		opts = append(opts, secagg.WithRecovery(rec))
	}
	return secagg.New(opts...)
}

func init() {
	registerFamily("secagg", secaggFlagNames, registerSecAggFlags)
	registerRule(&ruleSpec{
		name:   "secagg",
		usage:  "mean of masked, quantised u32 updates (Bonawitz et al., 2017); --secagg-bits, --secagg-range, --secagg-recovery",
		family: "secagg", takes: secaggFlagNames, build: secaggRule,
	})
}
