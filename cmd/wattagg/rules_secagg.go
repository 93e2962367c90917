package main

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strconv"

	"github.com/spf13/pflag"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/aggregate/secagg"
)

var secaggFlagNames = []string{"secagg-bits", "secagg-range", "secagg-recovery"}

// The server side of mask-based secure aggregation: the inputs are clients' masked, quantised
// u32 files; the output is the f32 mean of what they quantised. --secagg-recovery gives the
// seeds revealed in the unmasking round, as JSON:
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

// recoveryFile is the JSON form of secagg.Recovery.
type recoveryFile struct {
	Clients     []int                        `json:"clients"`
	Self        map[string]string            `json:"self"`
	Dropped     map[string]map[string]string `json:"dropped"`
	NoSelfMasks bool                         `json:"no_self_masks"`
}

func readRecovery(path string) (*secagg.Recovery, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var f recoveryFile
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	seed := func(what, h string) (secagg.Seed, error) {
		var s secagg.Seed
		b, err := hex.DecodeString(h)
		if err != nil || len(b) != len(s) {
			return s, fmt.Errorf("%s: %s: want 64 hex digits (32 bytes)", path, what)
		}
		copy(s[:], b)
		return s, nil
	}
	id := func(what, v string) (int, error) {
		n, err := strconv.Atoi(v)
		if err != nil {
			return 0, fmt.Errorf("%s: %s %q is not a client ID", path, what, v)
		}
		return n, nil
	}
	r := &secagg.Recovery{Clients: f.Clients, Self: map[int]secagg.Seed{}, Dropped: map[int]map[int]secagg.Seed{}, NoSelfMasks: f.NoSelfMasks}
	for k, v := range f.Self {
		i, err := id("self", k)
		if err != nil {
			return nil, err
		}
		if r.Self[i], err = seed("self seed of client "+k, v); err != nil {
			return nil, err
		}
	}
	for k, m := range f.Dropped {
		d, err := id("dropped", k)
		if err != nil {
			return nil, err
		}
		r.Dropped[d] = map[int]secagg.Seed{}
		for k2, v := range m {
			i, err := id("survivor", k2)
			if err != nil {
				return nil, err
			}
			if r.Dropped[d][i], err = seed(fmt.Sprintf("seed of clients %d and %d", d, i), v); err != nil {
				return nil, err
			}
		}
	}
	return r, nil
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
		rec, err := readRecovery(flagString("secagg-recovery"))
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
