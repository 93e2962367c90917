package kernels

import (
	"errors"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/klauspost/cpuid/v2"
)

// forImpls runs f once per implementation available on this CPU and build, as subtest
// <name>. Every kernel test compares k with the generic implementation (refImpl), so with
// only the generic one the tests still run the reference against itself (and the float64
// oracles).
func forImpls(t *testing.T, f func(t *testing.T, k *Impl)) {
	t.Helper()
	for _, k := range Impls() {
		t.Run(k.Name(), func(t *testing.T) { f(t, k) })
	}
}

// refImpl is the generic implementation, the reference of the differential tests.
func refImpl() *Impl {
	all := Impls()
	return all[len(all)-1]
}

func TestImpls(t *testing.T) {
	all := Impls()
	var names []string
	for _, k := range all {
		names = append(names, k.Name())
	}
	if names[len(names)-1] != "generic" || refImpl().core != &coreGeneric ||
		refImpl().robust != &robustGeneric || refImpl().optim != &optimGeneric || refImpl().exact != &exactGeneric {
		t.Errorf("Impls() = %v, want generic last, running the generic tables", names)
	}
	wantAVX2 := asmBuild && cpuid.CPU.Supports(cpuid.AVX2, cpuid.FMA3, cpuid.F16C)
	if got := slices.Contains(names, "avx2"); got != wantAVX2 {
		t.Errorf("Impls() = %v: avx2 present = %v, want %v (asmBuild %v)", names, got, wantAVX2, asmBuild)
	}
	wantAVX512 := wantAVX2 && cpuid.CPU.Supports(cpuid.AVX512F, cpuid.AVX512BW, cpuid.AVX512VL, cpuid.AVX512DQ)
	if got := slices.Contains(names, "avx512"); got != wantAVX512 {
		t.Errorf("Impls() = %v: avx512 present = %v, want %v", names, got, wantAVX512)
	}
	// Best first: in the order of implRank.
	if !slices.IsSortedFunc(names, func(a, b string) int {
		return slices.Index(implRank, a) - slices.Index(implRank, b)
	}) {
		t.Errorf("Impls() = %v, not in the order of %v", names, implRank)
	}
	for _, k := range all {
		if k.core == nil || k.robust == nil || k.optim == nil || k.exact == nil {
			t.Fatalf("%s: a family has no table", k.Name())
		}
		// Each family runs its own table of that name when it has one.
		for i, n := range []string{k.core.name, k.robust.name, k.optim.name, k.exact.name} {
			if n != k.runs[i] {
				t.Errorf("%s: family %d runs table %q, recorded as %q", k.Name(), i, n, k.runs[i])
			}
		}
		if k.Name() == "avx2" && k.runs != [4]string{"avx2", "avx2", "avx2", "avx2"} {
			t.Errorf("avx2 runs %s", k.Description())
		}
		if k.Name() == "avx512" && k.runs != [4]string{"avx512", "avx512", "avx512", "avx512"} {
			t.Errorf("avx512 runs %s", k.Description())
		}
		if got, err := Lookup(k.Name()); err != nil || got != k {
			t.Errorf("Lookup(%q) = %v, %v", k.Name(), got, err)
		}
		if d := k.Description(); !strings.Contains(d, "core "+k.core.name) || !strings.Contains(d, "optim "+k.optim.name) {
			t.Errorf("%s: description %q", k.Name(), d)
		}
		if (k.Name() == "generic") != (len(k.Features()) == 0) {
			t.Errorf("%s: features %v", k.Name(), k.Features())
		}
	}
	// The default is the best one unless the environment chose.
	if os.Getenv("WATTAGG_KERNELS") == "" && Default() != chooseDefault(all) {
		t.Errorf("Default() = %s at start-up, want %s", Default(), chooseDefault(all))
	}
	for _, bad := range []string{"nope", "", "AVX2"} {
		if k, err := Lookup(bad); !errors.Is(err, ErrNoImpl) || k != nil {
			t.Errorf("Lookup(%q) = %v, %v; want ErrNoImpl", bad, k, err)
		}
	}
}
