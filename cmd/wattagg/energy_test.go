package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/energy"
	"github.com/wattagg/wattagg/sched"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// The CLI's tests must not write the user's profile: they share one in the temp dir (the
// subprocesses of the tests inherit the variable).
func init() {
	if os.Getenv(sched.EnvProfile) == "" {
		os.Setenv(sched.EnvProfile, filepath.Join(os.TempDir(), "wattagg-cli-test-profile.json"))
	}
	// Under -race every subprocess would sleep a second at exit (the race runtime's default
	// atexit_sleep_ms).
	if os.Getenv("GORACE") == "" {
		os.Setenv("GORACE", "atexit_sleep_ms=0")
	}
}

func TestDevicesSaysRAPLIsAbsentAndWhichEstimate(t *testing.T) {
	t.Setenv(energy.EnvSysfs, t.TempDir()) // no powercap, whatever this machine has
	t.Setenv(sched.EnvProfile, filepath.Join(t.TempDir(), "none.json"))
	stdout, stderr, code := wattagg(t, "devices", "--cpu-tdp", "20")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{"rapl: absent", "class/powercap does not exist", "ESTIMATED", "W = 6 + (20 − 6)·u", "TDP 20 W (option)",
		"meter estimate:cpu (cpu): source=estimate", "nvml:", "profile: none", "run wattagg calibrate"} {
		if !strings.Contains(stdout, want) {
			t.Fatalf("devices output lacks %q:\n%s", want, stdout)
		}
	}
	stdout, _, code = wattagg(t, "devices", "--json")
	var r devicesReport
	if code != 0 || json.Unmarshal([]byte(stdout), &r) != nil || r.RAPL.Used || len(r.Meters) == 0 || r.Meters[0].Source != energy.SourceEstimate {
		t.Fatalf("devices --json: exit %d, %+v", code, r)
	}
	_, stderr, code = wattagg(t, "devices", "--cpu-tdp", "-3")
	checkFailure(t, stderr, code, 2, "--cpu-tdp -3")
}

func TestCalibrateQuickThenAggregatePlansAndMeters(t *testing.T) {
	dir := t.TempDir()
	profile := filepath.Join(dir, "profile.json")
	t.Setenv(sched.EnvProfile, profile)
	stdout, stderr, code := wattagg(t, "calibrate", "--quick")
	if code != 0 || !strings.Contains(stdout, "weighted-sum/f32") || !strings.Contains(stdout, profile) ||
		!regexp.MustCompile(`reads: files cached in large folios are (mapped|copied) \(4 files of 16 MiB: mapped [0-9.]+ ms, copied [0-9.]+ ms\)`).MatchString(stdout) {
		t.Fatalf("calibrate: exit %d\n%s\n%s", code, stdout, stderr)
	}
	prof, err := sched.LoadProfile(profile)
	if err != nil {
		t.Fatal(err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "wattagg-read-*")); prof.Read == nil || len(left) != 0 {
		t.Fatalf("read: %+v; left behind: %v", prof.Read, left)
	}
	// --read auto takes the measured choice for files in large folios; without one, the race.
	for _, c := range []struct {
		read *sched.ReadProfile
		want safetensors.ReadMode
	}{{&sched.ReadProfile{LargeFolios: "copy"}, safetensors.ReadCopy}, {&sched.ReadProfile{LargeFolios: "map"}, safetensors.ReadMap},
		{nil, safetensors.ReadAuto}, {&sched.ReadProfile{LargeFolios: "direct"}, safetensors.ReadAuto}} {
		p := *prof
		p.Read = c.read
		if got := (&energyRun{profile: &p}).largeFolioRead(energyFlags{}); got != c.want {
			t.Fatalf("read %+v: %s, want %s", c.read, got, c.want)
		}
	}
	writeClient(t, filepath.Join(dir, "a.safetensors"), 1, "100")
	writeClient(t, filepath.Join(dir, "b.safetensors"), 2, "300")
	out := filepath.Join(dir, "out.safetensors")
	in := []string{filepath.Join(dir, "a.safetensors"), filepath.Join(dir, "b.safetensors")}
	stdout, stderr, code = wattagg(t, append([]string{"aggregate", "--json", "--policy", "min-time", "--deadline", "1s", "--power-cap", "500", "-o", out}, in...)...)
	if code != 0 {
		t.Fatalf("aggregate: exit %d: %s", code, stderr)
	}
	var rep aggregate.Report
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Plan == nil || rep.Plan.Policy != sched.MinTime || rep.Plan.DeadlineS != 1 || rep.Plan.PowerCapW != 500 || rep.PredictedJoules == nil {
		t.Fatalf("plan %+v", rep.Plan)
	}
	if rep.Joules == nil || rep.JoulesSource == "" || rep.JoulesPerParam == nil || len(rep.Energy) == 0 || rep.Energy[0].Source == "" {
		t.Fatalf("energy: joules %v source %q energy %+v reason %q", rep.Joules, rep.JoulesSource, rep.Energy, rep.JoulesReason)
	}
	stdout, _, code = wattagg(t, append([]string{"aggregate", "--device", "cpu", "-o", out}, in...)...)
	if code != 0 || !strings.Contains(stdout, "energy: ") || !regexp.MustCompile(`J (measured by \S+|estimated)`).MatchString(stdout) || !strings.Contains(stdout, "plan: min-energy: cpu alone") {
		t.Fatalf("aggregate text: exit %d\n%s", code, stdout)
	}
	// Streaming meters every Add; it has one device and no plan.
	stdout, _, code = wattagg(t, append([]string{"aggregate", "--stream", "--json", "-o", out}, in...)...)
	rep = aggregate.Report{}
	if code != 0 || json.Unmarshal([]byte(stdout), &rep) != nil || rep.Joules == nil || rep.Plan != nil {
		t.Fatalf("stream: exit %d, %+v", code, rep)
	}
}

func TestAggregateRejectsBadEnergyFlags(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a.safetensors")
	writeClient(t, a, 1, "")
	out := filepath.Join(dir, "out.safetensors")
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"--policy", "fastest"}, `--policy "fastest"`},
		{[]string{"--power-cap", "-5"}, "--power-cap -5"},
		{[]string{"--deadline", "-1s"}, "--deadline -1s"},
		{[]string{"--deadline", "soon"}, "invalid argument"},
		{[]string{"--device", "cuda:7"}, `unknown device "cuda:7": `},
		{[]string{"--device", "rocm:0"}, `unknown device "rocm:0": no rocm backend in this build; available devices: cpu`},
		{[]string{"--device", "gpu"}, `unknown device "gpu"`},
		{[]string{"--cpu-tdp", "-1"}, "--cpu-tdp -1"},
		{[]string{"--cpu-idle", "50", "--cpu-tdp", "10"}, "--cpu-idle 50 W exceeds --cpu-tdp 10 W"},
	} {
		_, stderr, code := wattagg(t, append(append([]string{"aggregate", "-o", out}, tc.args...), a)...)
		checkFailure(t, stderr, code, 2, tc.msg)
		if _, err := os.Stat(out); !os.IsNotExist(err) {
			t.Fatal("output written")
		}
	}
}

func TestBenchEnergyComparesPolicies(t *testing.T) {
	stdout, stderr, code := wattagg(t, "bench", "energy", "--clients", "2", "--params", "65536", "--runs", "2")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{"always-cpu", "always-gpu", "planner min-energy", "planner min-time", "planner min-edp", "predicted J", "measured J"} {
		if !strings.Contains(stdout, want) {
			t.Fatalf("bench energy lacks %q:\n%s", want, stdout)
		}
	}
	fmt.Println(stdout)
}
