// Package clitest runs wattagg's commands as processes in tests, as a user runs them, and
// writes the small client updates they aggregate.
package clitest

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"testing"

	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// MainEnv is set in the environment of a test binary that is to act as its command: the
// package's TestMain calls main when it finds it (see Main).
const MainEnv = "WATTAGG_TEST_MAIN=1"

// Main runs main instead of the tests when the test binary was started by Run, so that tests
// see real exit statuses and stderr. Call it first in TestMain.
func Main(main func()) {
	if os.Getenv("WATTAGG_TEST_MAIN") == "1" {
		main()
		os.Exit(0)
	}
}

// Run runs the test binary itself as the command with args and returns stdout, stderr and the
// exit status; env is added to the environment.
func Run(t testing.TB, env []string, args ...string) (string, string, int) {
	t.Helper()
	return RunBinary(t, os.Args[0], append(env, MainEnv), args...)
}

// RunBinary runs exe with args and returns stdout, stderr and the exit status.
func RunBinary(t testing.TB, exe string, env []string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		code = exit.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return stdout.String(), stderr.String(), code
}

// WriteClient writes a two-tensor f32 client file: layer.weight [10, 100] with values
// base + j/1000 and layer.bias [7] of −base, with num_examples metadata unless it is "".
func WriteClient(t testing.TB, path string, base float32, numExamples string) {
	t.Helper()
	a := make([]float32, 1000)
	b := make([]float32, 7)
	for j := range a {
		a[j] = base + float32(j)/1000
	}
	for j := range b {
		b[j] = -base
	}
	ta, err := tensor.FromF32("layer.weight", []int{10, 100}, a)
	if err != nil {
		t.Fatal(err)
	}
	tb, err := tensor.FromF32("layer.bias", []int{7}, b)
	if err != nil {
		t.Fatal(err)
	}
	s, err := tensor.NewSet(ta, tb)
	if err != nil {
		t.Fatal(err)
	}
	if numExamples != "" {
		s.Metadata["num_examples"] = numExamples
	}
	if err := safetensors.WriteFile(path, s); err != nil {
		t.Fatal(err)
	}
}
