//go:build linux && cgo

package energy

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// The NVML the meters load is tested against testdata/fakenvml, a libnvidia-ml.so.1 built here
// with the C compiler, in three variants: a current driver, one without the energy counter
// call (before Volta), one without the power call.

var fakeBuilds sync.Map // variant -> *fakeBuild

type fakeBuild struct {
	once sync.Once
	path string
	err  error
}

// fakeNVMLLibrary compiles the fake for variant ("full", "noenergy", "nopower"), once per
// source and compiler, in the user cache directory.
func fakeNVMLLibrary(t *testing.T, variant string) string {
	t.Helper()
	v, _ := fakeBuilds.LoadOrStore(variant, &fakeBuild{})
	b := v.(*fakeBuild)
	b.once.Do(func() { b.path, b.err = compileFakeNVML(variant) })
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

func compileFakeNVML(variant string) (string, error) {
	cc := os.Getenv("CC")
	if cc == "" {
		cc = "gcc"
	}
	if _, err := exec.LookPath(cc); err != nil {
		return "", fmt.Errorf("no C compiler (%s) to build the fake NVML: %v", cc, err)
	}
	src, err := filepath.Abs("testdata/fakenvml/fake.c")
	if err != nil {
		return "", err
	}
	code, err := os.ReadFile(src)
	if err != nil {
		return "", err
	}
	defs := map[string][]string{"full": nil, "noenergy": {"-DWITHOUT_ENERGY"}, "nopower": {"-DWITHOUT_POWER"}}[variant]
	h := sha256.Sum256(fmt.Appendf(code, "\n%s %s %v", cc, variant, defs))
	base, err := os.UserCacheDir()
	if err != nil {
		base = os.TempDir()
	}
	// No -soname: the dynamic loader then tells the variants apart by path.
	dir := filepath.Join(base, "wattagg", "fakenvml-"+hex.EncodeToString(h[:8]), variant)
	lib := filepath.Join(dir, "libnvidia-ml.so.1")
	if _, err := os.Stat(lib); err == nil {
		return lib, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(dir, "build-*.so")
	if err != nil {
		return "", err
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	args := append([]string{"-O2", "-fPIC", "-shared", "-pthread", "-Wall", "-Wextra", "-Werror", "-o", tmp.Name()}, defs...)
	if out, err := exec.Command(cc, append(args, src)...).CombinedOutput(); err != nil {
		return "", fmt.Errorf("building the fake NVML: %v\n%s", err, out)
	}
	return lib, os.Rename(tmp.Name(), lib)
}

// fakeEnv sets the fake's environment for the test and returns its call log.
func fakeEnv(t *testing.T, gpus, initCode string) func() []string {
	t.Setenv("FAKENVML_GPUS", gpus)
	t.Setenv("FAKENVML_INIT", initCode)
	log := filepath.Join(t.TempDir(), "calls")
	t.Setenv("FAKENVML_LOG", log)
	return func() []string {
		b, _ := os.ReadFile(log)
		return strings.Fields(string(b))
	}
}

func count(calls []string, name string) int {
	n := 0
	for _, c := range calls {
		if c == name {
			n++
		}
	}
	return n
}

func TestNVMLMetersThroughTheLibrary(t *testing.T) {
	calls := fakeEnv(t, "NVIDIA H200=energy,Tesla P100=power", "0")
	c := &clock{t: time.Unix(1e9, 0)}
	ms, err := NewNVMLMeters(WithNVML(NVMLAt(fakeNVMLLibrary(t, "full"))), withClock(c))
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 2 || ms[0].Model() != "NVIDIA H200" || ms[0].Source() != SourceNVMLEnergy || ms[1].Model() != "Tesla P100" || ms[1].Source() != SourceNVMLPower {
		t.Fatalf("meters %+v %+v", ms[0], ms[1])
	}
	// The counter advances 1000 mJ a read; the power reads 150 W.
	a, _ := ms[0].Read()
	pa, _ := ms[1].Read()
	c.advance(2 * time.Second)
	b, err := ms[0].Read()
	if err != nil {
		t.Fatal(err)
	}
	pb, err := ms[1].Read()
	if err != nil {
		t.Fatal(err)
	}
	if e, p := Between(a, b), Between(pa, pb); !near(e.Joules, 1) || !near(p.Joules, 300) || !near(p.Watts, 150) || e.Resets != 0 {
		t.Fatalf("energy %+v, power %+v", e, p)
	}
	for _, m := range ms {
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
	}
	got := calls()
	if count(got, "nvmlInit_v2") != 1 || count(got, "nvmlShutdown") != 1 || got[len(got)-1] != "nvmlShutdown" ||
		count(got, "nvmlDeviceGetHandleByIndex_v2") != 2 || count(got, "nvmlDeviceGetName") != 2 {
		t.Fatalf("calls %v", got)
	}
}

func TestNVMLLibraryErrorsAreSentinels(t *testing.T) {
	lib := fakeNVMLLibrary(t, "full")
	for _, tc := range []struct {
		code string
		want error
		msg  string
	}{
		{"9", ErrUnavailable, "nvmlInit: the NVIDIA kernel driver is not loaded"},
		{"4", ErrNotReadable, "nvmlInit: Insufficient Permissions"},
		{"12", ErrUnavailable, "nvmlInit: libnvidia-ml.so.1 not found"},
		{"999", ErrUnavailable, "nvmlInit: Unknown Error"},
	} {
		calls := fakeEnv(t, "Fake GPU=energy", tc.code)
		_, err := NewNVMLMeters(WithNVML(NVMLAt(lib)))
		if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("init code %s: %v, want %v with %q", tc.code, err, tc.want, tc.msg)
		}
		if got := calls(); len(got) != 1 || got[0] != "nvmlInit_v2" {
			t.Errorf("init code %s: calls %v after a failed Init", tc.code, got)
		}
	}
	// No GPU: unavailable, and the library is shut down again.
	calls := fakeEnv(t, "", "0")
	if _, err := NewNVMLMeters(WithNVML(NVMLAt(lib))); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "no GPU") {
		t.Errorf("no GPU: %v", err)
	}
	if got := calls(); count(got, "nvmlShutdown") != 1 {
		t.Errorf("no GPU: calls %v", got)
	}
}

// After Shutdown no call reaches the library, whatever handles are left.
func TestNVMLNoCallAfterShutdown(t *testing.T) {
	calls := fakeEnv(t, "Fake GPU=energy", "0")
	lib := NVMLAt(fakeNVMLLibrary(t, "full"))
	if err := lib.Init(); err != nil {
		t.Fatal(err)
	}
	d, err := lib.Device(0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lib.Device(5); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "Invalid Argument") {
		t.Fatalf("device 5: %v", err)
	}
	if err := lib.Shutdown(); err != nil {
		t.Fatal(err)
	}
	before := len(calls())
	if _, err := d.TotalEnergy(); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("energy after shutdown: %v", err)
	}
	if _, err := d.Power(); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("power after shutdown: %v", err)
	}
	if _, err := lib.DeviceCount(); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("count after shutdown: %v", err)
	}
	if got := calls(); len(got) != before {
		t.Fatalf("calls after shutdown: %v", got[before:])
	}
}

// A driver without nvmlDeviceGetTotalEnergyConsumption is metered by its power; one without a
// function every meter needs is unavailable, said so by name.
func TestNVMLOlderDrivers(t *testing.T) {
	fakeEnv(t, "Fake GPU=energy", "0")
	ms, err := NewNVMLMeters(WithNVML(NVMLAt(fakeNVMLLibrary(t, "noenergy"))))
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 || ms[0].Source() != SourceNVMLPower {
		t.Fatalf("meters %+v", ms)
	}
	if _, err := ms[0].dev.TotalEnergy(); !errors.Is(err, ErrNotSupported) || !strings.Contains(err.Error(), "no nvmlDeviceGetTotalEnergyConsumption") {
		t.Fatalf("energy: %v", err)
	}
	if err := ms[0].Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := NewNVMLMeters(WithNVML(NVMLAt(fakeNVMLLibrary(t, "nopower")))); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "lacks nvmlDeviceGetPowerUsage") {
		t.Fatalf("no power call: %v", err)
	}
}

// Without a library at the path, or without a driver here, NVML is unavailable, not fatal. On
// a machine with a driver the real library is read.
func TestNVMLLibraryAbsentOrReal(t *testing.T) {
	if err := NVMLAt(filepath.Join(t.TempDir(), "libnvidia-ml.so.1")).Init(); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "not found (no NVIDIA driver installed)") {
		t.Fatalf("no library: %v", err)
	}
	lib := DefaultNVML()
	if err := lib.Init(); err != nil {
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("default library: %v", err)
		}
		t.Skipf("no NVIDIA driver here: %v", err)
	}
	defer lib.Shutdown()
	n, err := lib.DeviceCount()
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		d, err := lib.Device(i)
		if err != nil {
			t.Fatal(err)
		}
		name, err := d.Name()
		if err != nil || name == "" {
			t.Fatalf("gpu %d: name %q, %v", i, name, err)
		}
		mw, err := d.Power()
		if err != nil || mw == 0 || mw > 2e6 {
			t.Fatalf("gpu %d (%s): power %d mW, %v", i, name, mw, err)
		}
		mj, err := d.TotalEnergy()
		if err != nil && !errors.Is(err, ErrNotSupported) {
			t.Fatalf("gpu %d (%s): energy %v", i, name, err)
		}
		t.Logf("gpu %d: %s, %.1f W, energy counter %d mJ (%v)", i, name, float64(mw)/1e3, mj, err)
	}
}
