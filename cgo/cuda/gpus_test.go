package cuda

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

// Tests run on every GPU this machine has (skipped, with Discover's reason, when there is none)
// and on fake GPUs: testdata/fakecuda is a libcuda.so.1 that runs the real kernel sources as C++
// on the CPU with strict driver contracts. Fakes make the package testable where no GPU is —
// the Go side, the pipeline and the kernels' logic — but say nothing of real hardware timing,
// and they need a C++ compiler.
//
// Two variables turn skips into failures, so that a run cannot pass without testing anything:
//
//   - CI=true (set by CI services): the fakes must build and load. Without a C++ compiler or cgo
//     the GPU tests fail instead of skipping.
//   - WATTAGG_REQUIRE_GPU=1 (set by the GPU check, gpu-check.sh): a real GPU must be found and
//     opened; a test that would skip for want of one fails, and the fakes are not required.

// requireGPU reports whether a real GPU must be tested (WATTAGG_REQUIRE_GPU=1).
func requireGPU() bool { return os.Getenv("WATTAGG_REQUIRE_GPU") == "1" }

// requireFakes reports whether the fake GPUs must be tested: under CI, unless a real GPU is.
func requireFakes() bool { return os.Getenv("CI") == "true" && !requireGPU() }

// skipUnlessRequired skips t, or fails it when what is missing is required.
func skipUnlessRequired(t *testing.T, required bool, why string, args ...any) {
	t.Helper()
	if required {
		t.Fatalf("required (CI=true or WATTAGG_REQUIRE_GPU=1), but "+why, args...)
	}
	t.Skipf(why, args...)
}

// skipNoCgo skips t when err says that this binary cannot call a driver (CGO_ENABLED=0), or
// fails it when the fakes are required.
func skipNoCgo(t *testing.T, err error) {
	t.Helper()
	if errors.Is(err, ErrNoCgo) {
		skipUnlessRequired(t, requireFakes() || requireGPU(), "%v", err)
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	if !closeGPUs() && code == 0 {
		code = 1
	}
	os.Exit(code)
}

// gpuUnderTest is a device the tests run on.
type gpuUnderTest struct {
	name string
	g    *GPU
}

var (
	gpusMu  sync.Mutex
	opened  = map[string]*GPU{}
	openErr = map[string]error{}
)

// openShared opens a GPU once per test binary (module loading JIT-compiles the PTX).
func openShared(key string, open func() (*GPU, error)) (*GPU, error) {
	gpusMu.Lock()
	defer gpusMu.Unlock()
	if g, ok := opened[key]; ok {
		return g, nil
	}
	if err, ok := openErr[key]; ok {
		return nil, err
	}
	g, err := open()
	if err != nil {
		openErr[key] = err
		return nil, err
	}
	opened[key] = g
	return g, nil
}

// closeGPUs closes the shared GPUs and reports whether every one closed cleanly and holds no
// buffer afterwards (the buffer accounting of buffers.go: nothing leaks past Close).
func closeGPUs() bool {
	gpusMu.Lock()
	defer gpusMu.Unlock()
	ok := true
	for k, g := range opened {
		if err := g.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "closing %s: %v\n", k, err)
			ok = false
		}
		if c := g.buffers(); total(c.device).n != 0 || total(c.pinned).n != 0 {
			fmt.Fprintf(os.Stderr, "%s still holds buffers after Close: %v\n", k, c)
			ok = false
		}
	}
	return ok
}

// checkReleased fails t if g holds buffers beyond its pipeline's (which it keeps between jobs):
// a test's residents, accumulators and page-locked buffers must all be freed by its end.
func checkReleased(t *testing.T, name string, g *GPU) {
	t.Helper()
	c := g.buffers()
	for u := range numUses {
		if u != usePipeline && (c.device[u].n != 0 || c.pinned[u].n != 0) {
			t.Errorf("%s: the test left buffers behind: %v", name, c)
			return
		}
	}
}

// fakeConfig is a fake GPU's environment (read by its cuInit) and the options to open it with.
type fakeConfig struct {
	name string
	env  map[string]string
	opts []Option
}

// The fakes the tests use. "fake" is a plain GPU; "fake-pipeline" makes every job run as many
// small slabs through a delayed, really asynchronous pipeline (a missing wait shows up as wrong
// results).
var (
	fakePlain    = fakeConfig{name: "fake", env: map[string]string{"FAKECUDA_SMS": "4"}}
	fakePipeline = fakeConfig{name: "fake-pipeline", env: map[string]string{"FAKECUDA_SMS": "2", "FAKECUDA_DELAY_US": "50"},
		opts: []Option{WithSlabBytes(1 << 20), WithStreams(3), WithStagingWorkers(3)}}
)

// gpus returns the GPUs a test runs on: the fakes given and every real GPU; it skips t, with
// the reasons, when there are none (or fails it: see requireGPU and requireFakes). Under the race
// detector only the last fake given runs (the pipeline fake where a test has both: it exercises
// the concurrent paths). After the test it checks that the test freed what it allocated.
func gpus(t *testing.T, fakes ...fakeConfig) []gpuUnderTest {
	t.Helper()
	if raceEnabled && len(fakes) > 1 {
		fakes = fakes[len(fakes)-1:]
	}
	var out []gpuUnderTest
	for _, c := range fakes {
		if g := tryFake(t, c); g != nil {
			out = append(out, gpuUnderTest{c.name, g})
		}
	}
	if infos, err := Discover(); err == nil {
		for i, info := range infos {
			g, err := openShared(info.Name, func() (*GPU, error) { return Open(i) })
			if err != nil {
				if requireGPU() {
					t.Fatalf("WATTAGG_REQUIRE_GPU=1, but %s does not open: %v", info.Name, err)
				}
				t.Logf("%s: %v", info.Name, err)
				continue
			}
			out = append(out, gpuUnderTest{strings.ReplaceAll(info.Name, ":", ""), g})
		}
	} else if requireGPU() {
		t.Fatalf("WATTAGG_REQUIRE_GPU=1, but there is no GPU: %v", err)
	} else {
		t.Logf("no real GPU: %v", err)
	}
	if len(out) == 0 {
		t.Skip("no GPU, and no fake GPU (needs cgo and a C++ compiler)")
	}
	t.Cleanup(func() {
		for _, d := range out {
			checkReleased(t, d.name, d.g)
		}
	})
	return out
}

// tryFake opens the fake c, or returns nil: when the fakes are turned off
// (WATTAGG_TEST_FAKECUDA=0), or cannot be built or loaded (no C++ compiler, no cgo), which fails
// t under CI.
func tryFake(t *testing.T, c fakeConfig) *GPU {
	t.Helper()
	if os.Getenv("WATTAGG_TEST_FAKECUDA") == "0" {
		if requireFakes() {
			t.Fatalf("CI=true, but the fake GPUs are turned off by WATTAGG_TEST_FAKECUDA=0")
		}
		return nil
	}
	lib, err := buildFake(c)
	if err != nil {
		if requireFakes() {
			t.Fatalf("CI=true, but the fake GPU %s does not build: %v", c.name, err)
		}
		t.Logf("%s: %v", c.name, err)
		return nil
	}
	g, err := openShared(c.name, func() (*GPU, error) {
		return Open(0, append([]Option{WithLibraryPath(lib)}, c.opts...)...)
	})
	if err != nil {
		if !errors.Is(err, ErrNoCgo) || requireFakes() {
			t.Errorf("%s: %v", c.name, err)
		}
		return nil
	}
	return g
}

// fakeLibrary builds the fake for c, or skips t (fails it under CI). WATTAGG_TEST_FAKECUDA=0
// turns the fakes off (on a GPU machine, to test the real driver alone).
func fakeLibrary(t *testing.T, c fakeConfig) string {
	t.Helper()
	if os.Getenv("WATTAGG_TEST_FAKECUDA") == "0" {
		skipUnlessRequired(t, requireFakes(), "fake GPUs turned off by WATTAGG_TEST_FAKECUDA=0")
	}
	lib, err := buildFake(c)
	if err != nil {
		skipUnlessRequired(t, requireFakes(), "%v", err)
	}
	return lib
}

var (
	fakeOnce  sync.Once
	fakeBuilt string
	fakeErr   error
	fakeCopy  = map[string]string{}
)

// buildFake compiles testdata/fakecuda with the kernel sources (once, cached by source hash in
// the user cache directory) and returns a copy of the library for config c: each copy is loaded
// separately, with c.env in force when its cuInit reads it.
func buildFake(c fakeConfig) (string, error) {
	fakeOnce.Do(func() { fakeBuilt, fakeErr = compileFake() })
	if fakeErr != nil {
		return "", fakeErr
	}
	gpusMu.Lock()
	defer gpusMu.Unlock()
	if p, ok := fakeCopy[c.name]; ok {
		return p, nil
	}
	dir := filepath.Join(filepath.Dir(fakeBuilt), c.name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	p := filepath.Join(dir, "libcuda.so.1")
	if err := copyFile(p, fakeBuilt); err != nil {
		return "", err
	}
	// The driver is loaded (and reads its environment) on the first Discover or Open of p.
	for k, v := range c.env {
		old, had := os.LookupEnv(k)
		os.Setenv(k, v)
		defer func() {
			if had {
				os.Setenv(k, old)
			} else {
				os.Unsetenv(k)
			}
		}()
	}
	if _, err := loadDriver(p); err != nil && !errors.Is(err, ErrNoDevice) {
		return "", err
	}
	fakeCopy[c.name] = p
	return p, nil
}

func copyFile(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

// fakeCompileFlags compile the fake and the kernel sources: GPU arithmetic (no contraction of
// a*b+c into an FMA), misaligned loads and stores reported (see fake.cpp).
var fakeCompileFlags = []string{"-std=c++17", "-O2", "-g", "-fPIC", "-pthread", "-ffp-contract=off", "-U_FORTIFY_SOURCE",
	"-Wall", "-Wno-unknown-pragmas", "-fsanitize=alignment"}

func compileFake() (string, error) {
	cxx := os.Getenv("CXX")
	if cxx == "" {
		cxx = "g++"
	}
	if _, err := exec.LookPath(cxx); err != nil {
		return "", fmt.Errorf("no C++ compiler (%s) to build the fake driver: %v", cxx, err)
	}
	kdir, err := filepath.Abs("../../kernels/cuda")
	if err != nil {
		return "", err
	}
	fdir, err := filepath.Abs("testdata/fakecuda")
	if err != nil {
		return "", err
	}
	cus, err := filepath.Glob(filepath.Join(kdir, "*.cu"))
	if err != nil {
		return "", err
	}
	srcs := append(slices.Clone(cus), filepath.Join(kdir, "common.cuh"), filepath.Join(fdir, "fake.cpp"), filepath.Join(fdir, "sim.h"))
	h := sha256.New()
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range kernelModules {
			if !yield(n) {
				return
			}
		}
	})
	fmt.Fprintln(h, cxx, fakeCompileFlags, names)
	for _, s := range srcs {
		b, err := os.ReadFile(s)
		if err != nil {
			return "", err
		}
		h.Write(b)
	}
	name := "fakecuda-" + hex.EncodeToString(h.Sum(nil))[:16]
	var dir string
	for _, base := range []func() (string, error){os.UserCacheDir, func() (string, error) { return os.TempDir(), nil }} {
		b, err := base()
		if err != nil {
			continue
		}
		dir = filepath.Join(b, "wattagg", name)
		if err = os.MkdirAll(dir, 0o755); err == nil {
			break
		}
		dir = ""
	}
	if dir == "" {
		return "", fmt.Errorf("no writable directory to build the fake driver in")
	}
	lib := filepath.Join(dir, "libcuda.so.1")
	if _, err := os.Stat(lib); err == nil {
		return lib, nil
	}
	gen, err := os.MkdirTemp(dir, "build")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(gen)
	var inc, reg strings.Builder
	for _, cu := range cus {
		fmt.Fprintf(&inc, "#include %q\n", cu)
	}
	for _, n := range names {
		fmt.Fprintf(&reg, "WA_REGISTER(%s)\n", n)
	}
	if err := os.WriteFile(filepath.Join(gen, "kernels.inc"), []byte(inc.String()), 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(gen, "registry.inc"), []byte(reg.String()), 0o644); err != nil {
		return "", err
	}
	// Compiled with the alignment sanitizer, whose reports fake.cpp handles itself (a misaligned
	// access in a kernel fails its launch as on a GPU), and linked without its runtime.
	obj, tmp := filepath.Join(gen, "fake.o"), filepath.Join(gen, "libcuda.so.1")
	for _, args := range [][]string{
		append(slices.Clone(fakeCompileFlags), "-c", "-I", gen, "-I", fdir, "-I", kdir, "-o", obj, filepath.Join(fdir, "fake.cpp")),
		{"-shared", "-pthread", "-o", tmp, obj},
	} {
		if out, err := exec.Command(cxx, args...).CombinedOutput(); err != nil {
			return "", fmt.Errorf("building the fake driver: %s %s: %v\n%s", cxx, strings.Join(args, " "), err, out)
		}
	}
	if err := os.Rename(tmp, lib); err != nil {
		return "", err
	}
	// Builds of older sources are of no further use.
	if old, err := filepath.Glob(filepath.Join(filepath.Dir(dir), "fakecuda-*")); err == nil {
		for _, o := range old {
			if o != dir {
				os.RemoveAll(o)
			}
		}
	}
	return lib, nil
}
