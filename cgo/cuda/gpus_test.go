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
// and they need a C++ compiler (the tests using them skip without one).

func TestMain(m *testing.M) {
	code := m.Run()
	closeGPUs()
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

func closeGPUs() {
	gpusMu.Lock()
	defer gpusMu.Unlock()
	for k, g := range opened {
		if err := g.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "closing %s: %v\n", k, err)
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
// the reasons, when there are none. Under the race detector only the last fake given runs (the
// pipeline fake where a test has both: it exercises the concurrent paths).
func gpus(t *testing.T, fakes ...fakeConfig) []gpuUnderTest {
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
				t.Logf("%s: %v", info.Name, err)
				continue
			}
			out = append(out, gpuUnderTest{strings.ReplaceAll(info.Name, ":", ""), g})
		}
	} else {
		t.Logf("no real GPU: %v", err)
	}
	if len(out) == 0 {
		t.Skip("no GPU, and no fake GPU (needs cgo and a C++ compiler)")
	}
	return out
}

func tryFake(t *testing.T, c fakeConfig) *GPU {
	if os.Getenv("WATTAGG_TEST_FAKECUDA") == "0" {
		return nil
	}
	lib, err := buildFake(c)
	if err != nil {
		t.Logf("%s: %v", c.name, err)
		return nil
	}
	g, err := openShared(c.name, func() (*GPU, error) {
		return Open(0, append([]Option{WithLibraryPath(lib)}, c.opts...)...)
	})
	if err != nil {
		if !errors.Is(err, ErrNoCgo) {
			t.Errorf("%s: %v", c.name, err)
		}
		return nil
	}
	return g
}

// fakeLibrary builds the fake for c, or skips t. WATTAGG_TEST_FAKECUDA=0 turns the fakes off (on
// a GPU machine, to test the real driver alone).
func fakeLibrary(t *testing.T, c fakeConfig) string {
	t.Helper()
	if os.Getenv("WATTAGG_TEST_FAKECUDA") == "0" {
		t.Skip("fake GPUs turned off by WATTAGG_TEST_FAKECUDA=0")
	}
	lib, err := buildFake(c)
	if err != nil {
		t.Skip(err)
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
	fmt.Fprintln(h, cxx, names)
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
	tmp := filepath.Join(gen, "libcuda.so.1")
	cmd := exec.Command(cxx, "-std=c++17", "-O2", "-g", "-fPIC", "-shared", "-pthread", "-ffp-contract=off",
		"-U_FORTIFY_SOURCE", "-Wall", "-Wno-unknown-pragmas", "-I", gen, "-I", fdir, "-I", kdir, "-o", tmp, filepath.Join(fdir, "fake.cpp"))
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building the fake driver: %v\n%s", err, out)
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
