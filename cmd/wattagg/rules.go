package main

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/pflag"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/internal/cli"
)

// ruleSpec is one choice of `aggregate --rule`: the flags it reads and how to build it. Each
// family of rules registers its specs and flags from an init in its own file (rules_*.go), so
// families do not edit each other's code. --rule takes one name or a composition
// ("norm-clip,median", "dp-fixed,fedadam"): the rules run in order over the same chunks.
type ruleSpec struct {
	name   string
	usage  string   // one line for --help
	family string   // the flag family: "robust", "optim", "dp", "secagg"; "" for none
	takes  []string // the flags of its family it reads
	// build makes the rule from the flags; chain is every rule name of the composition.
	build func(chain []string) (aggregate.Rule, error)
}

var (
	ruleSpecs []*ruleSpec
	// familyFlags registers each family's flags once; familyNames lists them, so that a flag
	// of a family no rule of the composition belongs to is a usage error instead of ignored.
	familyFlags = map[string]func(*pflag.FlagSet){}
	familyNames = map[string][]string{}
)

func registerRule(s *ruleSpec) {
	if findRule(s.name) != nil {
		panic("wattagg: rule " + s.name + " registered twice")
	}
	ruleSpecs = append(ruleSpecs, s)
	slices.SortFunc(ruleSpecs, func(a, b *ruleSpec) int { return strings.Compare(a.name, b.name) })
}

// registerFamily declares a family's flags: names lists them, add registers them.
func registerFamily(family string, names []string, add func(*pflag.FlagSet)) {
	familyFlags[family] = add
	familyNames[family] = names
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

// registerRuleFlags registers every family's flags on fs, in a fixed order.
func registerRuleFlags(fs *pflag.FlagSet) {
	cmdFlags = fs
	for _, fam := range []string{"round", "robust", "optim", "dp", "secagg"} {
		if add := familyFlags[fam]; add != nil {
			add(fs)
		}
	}
}

// rulesHelp is the --rule section of `aggregate --help`.
func rulesHelp() string {
	var b strings.Builder
	b.WriteString("Rules (--rule NAME, or a composition such as norm-clip,median or dp-fixed,fedadam):\n")
	for _, s := range ruleSpecs {
		fmt.Fprintf(&b, "  %-16s %s\n", s.name, s.usage)
	}
	return b.String()
}

// buildRule builds --rule: one rule or a composition, after checking that every flag given
// belongs to a rule of it. It returns the rule and the round options its flags give.
func buildRule(arg string) (aggregate.Rule, []aggregate.Option, error) {
	names := strings.Split(arg, ",")
	var specs []*ruleSpec
	for _, n := range names {
		s := findRule(strings.TrimSpace(n))
		if s == nil {
			return nil, nil, usagef("unknown rule %q: available rules: %s", n, strings.Join(ruleNames(), ", "))
		}
		specs = append(specs, s)
	}
	for i := range names {
		names[i] = specs[i].name
	}
	if err := checkRuleFlags(arg, specs); err != nil {
		return nil, nil, err
	}
	var rules []aggregate.Rule
	for _, s := range specs {
		r, err := s.build(names)
		if err != nil {
			return nil, nil, buildError(s.name, err)
		}
		rules = append(rules, r)
	}
	rule, err := aggregate.Compose(rules...)
	if err != nil {
		return nil, nil, buildError(arg, err)
	}
	opts, err := roundFlagOptions(arg, rule)
	if err != nil {
		return nil, nil, err
	}
	if err := aggregate.CheckOptions(opts...); err != nil {
		return nil, nil, usagef("%v", err)
	}
	return rule, opts, nil
}

// roundFlagOptions are the round options rule flags give: the global model (--global) for
// rules that move one, the memory budget of the robust rules.
func roundFlagOptions(arg string, rule aggregate.Rule) ([]aggregate.Option, error) {
	var opts []aggregate.Option
	if rule.Requirements().Global {
		if !given("global") {
			return nil, usagef("--rule %s needs --global CURRENT.safetensors, the model the clients trained from: they send full models and the rule subtracts it", arg)
		}
		opts = append(opts, aggregate.WithGlobalFile(flagString("global")))
	}
	if given("memory-budget") {
		n, err := parseBytes(flagString("memory-budget"))
		if err != nil {
			return nil, usagef("--memory-budget: %v", err)
		}
		opts = append(opts, aggregate.WithMemoryBudget(n))
	}
	return opts, nil
}

// checkRuleFlags makes a usage error of a rule flag no rule of the composition reads.
func checkRuleFlags(arg string, specs []*ruleSpec) error {
	read := map[string]bool{}
	for _, s := range specs {
		for _, f := range s.takes {
			read[f] = true
		}
	}
	for _, fam := range []string{"round", "robust", "optim", "dp", "secagg"} {
		for _, f := range familyNames[fam] {
			if given(f) && !read[f] {
				return usagef("--%s does not apply to --rule %s", f, arg)
			}
		}
	}
	return nil
}

// cmdFlags is the aggregate command's flag set, read by the families' build functions.
var cmdFlags *pflag.FlagSet

// addFloat, addString and addInt register a flag unless a family registered it already
// (families that share a flag read one: --tau of centered clipping and the optimizers).
func addFloat(fs *pflag.FlagSet, name string, def float64, usage string) {
	if fs.Lookup(name) == nil {
		fs.Float64(name, def, usage)
	}
}

func addString(fs *pflag.FlagSet, name, usage string) {
	if fs.Lookup(name) == nil {
		fs.String(name, "", usage)
	}
}

func addInt(fs *pflag.FlagSet, name string, def int, usage string) {
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

// buildError makes an invalid parameter a usage error (exit status 2); other errors (a state
// file of another rule, a missing file) stay runtime errors (1).
func buildError(rule string, err error) error {
	var u cli.UsageError
	if errors.As(err, &u) {
		return err
	}
	if errors.Is(err, aggregate.ErrOption) {
		return usagef("--rule %s: %w", rule, err)
	}
	return err
}

func init() {
	registerRule(&ruleSpec{
		name:  "fedavg",
		usage: "weighted mean (McMahan et al., 2017); weights from --weights or num_examples",
		build: func([]string) (aggregate.Rule, error) { return aggregate.NewFedAvg(), nil },
	})
}
