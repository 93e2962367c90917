package cuda

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wattagg/wattagg/tensor/safetensors"
)

// `wattagg aggregate --device cuda:0` on a fake GPU: the CLI loads libcuda.so.1 with dlopen, so
// LD_LIBRARY_PATH pointing at a fake's directory makes it the driver, and FAKECUDA_LAUNCH_LOG
// lists the kernels the process launched. The median must run its order statistic on the GPU
// (device.Robust), FedAdam its weighted sum and every optimizer step (device.Optimizer, called
// from the sum's Output), and both write the CPU's file byte for byte.
func TestCLIOnFakeGPU(t *testing.T) {
	if raceEnabled {
		t.Skip("runs the CLI as a subprocess: nothing for the race detector")
	}
	if testing.Short() {
		t.Skip("builds the CLI")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go tool to build the CLI: %v", err)
	}
	lib := fakeLibrary(t, fakeConfig{name: "fake-cli"})
	dir := t.TempDir()
	bin := filepath.Join(dir, "wattagg")
	build := exec.Command(goTool, "build", "-o", bin, "./cmd/wattagg")
	build.Dir = filepath.Join("..", "..")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the CLI: %v\n%s", err, out)
	}
	clients := filepath.Join(dir, "clients")
	if err := os.Mkdir(clients, 0o755); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(66, 67))
	for i, u := range ruleUpdates(r, 7, 0.2) {
		if err := safetensors.WriteFile(filepath.Join(clients, fmt.Sprintf("c%d.safetensors", i)), u); err != nil {
			t.Fatal(err)
		}
	}
	global := filepath.Join(dir, "global.safetensors")
	if err := safetensors.WriteFile(global, ruleUpdates(r, 1, 0)[0]); err != nil {
		t.Fatal(err)
	}
	run := func(t *testing.T, dev, log string, args ...string) (devices []string) {
		t.Helper()
		out := filepath.Join(dir, dev+".safetensors")
		cmd := exec.Command(bin, append(append([]string{"aggregate", "--device", dev, "--json", "-o", out}, args...), clients)...)
		cmd.Env = append(os.Environ(), EnvLibrary+"="+lib, "WATTAGG_PROFILE="+filepath.Join(dir, "profile.json"),
			"FAKECUDA_LAUNCH_LOG="+log)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("wattagg aggregate --device %s %v: %v\n%s", dev, args, err, stderr.String())
		}
		var rep struct {
			Devices []struct {
				Device string `json:"device"`
			} `json:"devices"`
		}
		if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
			t.Fatalf("report: %v\n%s", err, stdout.String())
		}
		for _, d := range rep.Devices {
			devices = append(devices, d.Device)
		}
		return devices
	}
	for _, tc := range []struct {
		rule    string
		args    []string
		kernels []string
	}{
		{"median", []string{"--rule", "median"}, []string{"wa_select_r8"}},
		{"fedadam", []string{"--rule", "fedadam", "--global", global}, []string{"wa_acc_f64_f32"}}, // the step stays on the host
	} {
		t.Run(tc.rule, func(t *testing.T) {
			log := filepath.Join(dir, tc.rule+".launches")
			if devs := run(t, "cuda:0", log, tc.args...); len(devs) != 1 || devs[0] != "cuda:0" {
				t.Fatalf("report devices %v, want cuda:0", devs)
			}
			launched, err := os.ReadFile(log)
			if err != nil {
				t.Fatalf("no kernel launched: %v", err)
			}
			for _, k := range tc.kernels {
				if !strings.Contains(string(launched), k+"\n") {
					t.Fatalf("the CLI launched no %s on the GPU; it launched:\n%s", k, launched)
				}
			}
			if devs := run(t, "cpu", filepath.Join(dir, "cpu.launches"), tc.args...); len(devs) != 1 || devs[0] != "cpu" {
				t.Fatalf("report devices %v, want cpu", devs)
			}
			gpu, err := safetensors.Open(filepath.Join(dir, "cuda:0.safetensors"))
			if err != nil {
				t.Fatal(err)
			}
			defer gpu.Close()
			cpu, err := safetensors.Open(filepath.Join(dir, "cpu.safetensors"))
			if err != nil {
				t.Fatal(err)
			}
			defer cpu.Close()
			sameSets(t, gpu, cpu, 0)
		})
	}
}
