package kernels

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
)

// The kernel registry, shaped like Go's crypto/internal/impl: each kernel family (core:
// accumulate, store, scale, reductions and scans; robust: sorting networks and Gram tiles;
// optim: optimizer steps and mod-sum; exact: order-independent sums) registers its
// implementations with register, and an Impl bundles one table of every family. Callers that
// own a device hold the Impl it runs (device.WithKernels); the package-level functions run
// Default(). Tests run once per Impl.

// ErrNoImpl is returned by Lookup for a name that is unknown, or that this CPU or build cannot
// run.
var ErrNoImpl = errors.New("kernels: no such implementation")

// implRank lists every implementation name, best first. A family that has no table of some name
// runs its best available table ranked below it. On amd64 every family now has avx512, avx2 and
// generic tables (an avx512 table may still call AVX2 code where that is faster: the robust
// Gram below 64 inputs), so the rule serves a family that gains a name later.
var implRank = []string{"avx512", "avx2", "generic"}

// implFeatures are the CPU features that the tables of each name use.
var implFeatures = map[string][]string{
	"avx512": {"avx512f", "avx512bw", "avx512vl", "avx512dq"},
	"avx2":   {"avx2", "fma3", "f16c"},
}

// family is the set of registered tables of one kernel family.
type family[T any] struct {
	name    string
	entries []familyEntry[T]
}

type familyEntry[T any] struct {
	name      string
	available bool
	table     *T
}

var (
	coreFamily   = &family[coreKernels]{name: "core"}
	robustFamily = &family[robustKernels]{name: "robust"}
	optimFamily  = &family[optimKernels]{name: "optim"}
	exactFamily  = &family[exactKernels]{name: "exact"}
)

// register adds table as the implementation name of family f; available says whether this CPU
// and build can run it. Families register from package variable initialisers, which all run
// before the init function that builds the Impls. The result is only there to be assigned.
func register[T any](f *family[T], name string, available bool, table *T) bool {
	if !slices.Contains(implRank, name) {
		panic("kernels: register " + f.name + "/" + name + ": name not in implRank")
	}
	if slices.ContainsFunc(f.entries, func(e familyEntry[T]) bool { return e.name == name }) {
		panic("kernels: register " + f.name + "/" + name + " twice")
	}
	f.entries = append(f.entries, familyEntry[T]{name, available, table})
	return true
}

// has reports whether f has an available table called name.
func (f *family[T]) has(name string) bool {
	return slices.ContainsFunc(f.entries, func(e familyEntry[T]) bool { return e.name == name && e.available })
}

// pick returns the available table of f that an Impl called name runs: its own, else the best
// one ranked below it, and that table's name.
func (f *family[T]) pick(name string) (*T, string) {
	for _, n := range implRank[slices.Index(implRank, name):] {
		for _, e := range f.entries {
			if e.name == n && e.available {
				return e.table, n
			}
		}
	}
	panic("kernels: family " + f.name + " has no generic table")
}

// Impl is one implementation of every kernel: a table of each family. Its methods are the
// package-level kernels (same contracts, same bits: every Impl's results equal the generic
// one's), run by this implementation. An Impl is immutable and safe for concurrent use.
type Impl struct {
	name   string
	core   *coreKernels
	robust *robustKernels
	optim  *optimKernels
	exact  *exactKernels
	// runs names the table each family runs, in the order core, robust, optim, exact.
	runs [4]string
}

// Name is the implementation's name: "avx512", "avx2" or "generic".
func (k *Impl) Name() string { return k.name }

// Description says what each family runs, for example
// "core avx512, robust avx512, optim avx512, exact avx512"; a family that runs a table ranked
// below the Impl's name says so: "robust avx2 (no avx512 tables)".
func (k *Impl) Description() string {
	var parts []string
	for i, f := range []string{coreFamily.name, robustFamily.name, optimFamily.name, exactFamily.name} {
		p := f + " " + k.runs[i]
		if k.runs[i] != k.name {
			p += " (no " + k.name + " tables)"
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, ", ")
}

// Features lists the CPU features the implementation's tables use (none for generic).
func (k *Impl) Features() []string {
	var fs []string
	for _, n := range implRank {
		if slices.Contains(k.runs[:], n) {
			fs = append(fs, implFeatures[n]...)
		}
	}
	return fs
}

func (k *Impl) String() string { return k.name }

var (
	impls []*Impl // available, best first
	def   *Impl
)

func init() {
	for _, name := range implRank {
		if !coreFamily.has(name) && !robustFamily.has(name) && !optimFamily.has(name) && !exactFamily.has(name) && name != "generic" {
			continue
		}
		k := &Impl{name: name}
		k.core, k.runs[0] = coreFamily.pick(name)
		k.robust, k.runs[1] = robustFamily.pick(name)
		k.optim, k.runs[2] = optimFamily.pick(name)
		k.exact, k.runs[3] = exactFamily.pick(name)
		impls = append(impls, k)
	}
	def = chooseDefault(impls)
	if v := os.Getenv("WATTAGG_KERNELS"); v != "" {
		k, err := Lookup(v)
		if err != nil {
			fmt.Fprintf(os.Stderr, "wattagg: WATTAGG_KERNELS: %v; using %s\n", err, def.name)
		} else {
			def = k
		}
	}
}

// chooseDefault picks the implementation that callers without a device (and devices without
// WithKernels) run: the first of avail, avx512 where the CPU has it. That is a measured choice,
// not a rank. On the Zen 4 of the development machines, which executes 512-bit operations as two
// 256-bit halves (median thread CPU time of alternating avx512/avx2 runs on the same data,
// avx2 time / avx512 time, two runs): the FedAvg-shaped walk (32 inputs of 4Mi elements from
// DRAM, blocks of 32Ki) 0.99-1.07 f32 into f32, 1.11 bf16 into f32, 1.12-1.17 f32 into f64,
// 1.08-1.10 bf16 into f64; accumulation of bf16, f16 and i8 inputs in L2 1.11-1.22 (f16 into
// f32 1.00); 16-bit stores 1.14-1.27; optimizer steps 1.02-1.29; the scans 1.00 in L2 and
// 0.87-1.05 from DRAM (the noise between runs is about 10%). The one clear loss is f32 into f64
// on L2-resident data (0.73), whose DRAM walk is the 1.12-1.17 gain above. The kernels that
// would have been slower in 512-bit form (DRAM streams read 20% slower through zmm loads) use
// 256-bit loads in the avx512 tables; see kernels/_gen/avx512.go.
func chooseDefault(avail []*Impl) *Impl { return avail[0] }

// Impls lists the implementations this CPU and build can run, best first; generic is always
// last. Tests and benchmarks run once per element.
func Impls() []*Impl { return slices.Clone(impls) }

// Lookup returns the implementation called name. The error wraps ErrNoImpl when this CPU or
// build cannot run it.
func Lookup(name string) (*Impl, error) {
	for _, k := range impls {
		if k.name == name {
			return k, nil
		}
	}
	names := make([]string, len(impls))
	for i, k := range impls {
		names[i] = k.name
	}
	return nil, fmt.Errorf("%w: %q (this CPU and build have %s)", ErrNoImpl, name, strings.Join(names, ", "))
}

// Default is the implementation the package-level functions run: the one WATTAGG_KERNELS names
// (read once, at start-up), else the fastest available on this CPU.
func Default() *Impl { return def }
