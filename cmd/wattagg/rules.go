package main

import (
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/pflag"

	"github.com/wattagg/wattagg/aggregate"
)

// ruleSpec is one choice of `aggregate --rule`: its own flags and how to build it. Each family
// of rules registers its specs from an init in its own file (rules_*.go), so families do not
// edit each other's code.
type ruleSpec struct {
	name  string
	usage string // one line for --help
	// flags registers the rule's own flags (nil if none). Rules of one family that share a
	// parameter register it once, from one spec.
	flags func(fs *pflag.FlagSet)
	// build makes the rule from the common options (device, dtypes, progress).
	build func(common []aggregate.Option) (aggregate.Rule, error)
	// stream says whether --stream (a running sum, one file at a time) can compute it.
	stream bool
}

var ruleSpecs []*ruleSpec

func registerRule(s *ruleSpec) {
	if findRule(s.name) != nil {
		panic("wattagg: rule " + s.name + " registered twice")
	}
	ruleSpecs = append(ruleSpecs, s)
	slices.SortFunc(ruleSpecs, func(a, b *ruleSpec) int { return strings.Compare(a.name, b.name) })
}

func findRule(name string) *ruleSpec {
	for _, s := range ruleSpecs {
		if s.name == name {
			return s
		}
	}
	return nil
}

func ruleNames() []string {
	var names []string
	for _, s := range ruleSpecs {
		names = append(names, s.name)
	}
	return names
}

// rulesHelp is the --rule section of `aggregate --help`.
func rulesHelp() string {
	var b strings.Builder
	b.WriteString("Rules (--rule):\n")
	for _, s := range ruleSpecs {
		fmt.Fprintf(&b, "  %-16s %s\n", s.name, s.usage)
	}
	return b.String()
}

func init() {
	registerRule(&ruleSpec{
		name:   "fedavg",
		usage:  "weighted mean (McMahan et al., 2017); weights from --weights or num_examples",
		build:  func(common []aggregate.Option) (aggregate.Rule, error) { return aggregate.NewFedAvg(common...) },
		stream: true,
	})
}
