package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wattagg/wattagg/server/api"
)

// readmePython is the README's requests client (section "Python clients (requests)"): its
// push and pull functions, without the lines that need the safetensors package and a real host.
func readmePython(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(b), "### Python clients (requests)\n\n```python\n")
	if !ok {
		t.Fatal("README: no \"Python clients (requests)\" code block")
	}
	code, _, ok := strings.Cut(sec, "```")
	if !ok {
		t.Fatal("README: the Python block does not end")
	}
	var keep []string
	for _, line := range strings.Split(code, "\n") {
		if strings.HasPrefix(line, "from safetensors") || strings.HasPrefix(line, "save_file(") || strings.HasPrefix(line, "print(push(") {
			continue
		}
		keep = append(keep, line)
	}
	return strings.Join(keep, "\n")
}

// python3WithRequests is an interpreter that imports requests (Debian's python3-requests,
// which .ci/run installs); the test fails without one under CI=true and skips elsewhere.
func python3WithRequests(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"/usr/bin/python3", "python3"} {
		if exec.Command(p, "-c", "import requests").Run() == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("no python3 with requests (apt-get install python3-requests; .ci/run does)")
	}
	t.Skip("no python3 with requests")
	return ""
}

// TestPythonRequestsClient runs the README's Python client against a server on loopback: two
// pushes acknowledged, a bad token refused with the server's code word, and the pulled model
// the server's bytes.
func TestPythonRequestsClient(t *testing.T) {
	py := python3WithRequests(t)
	cfg, tokens, admin := testConfig(t, 2)
	ts := startServer(t, cfg, tokens, admin)
	dir := t.TempDir()
	var files []string
	for k := range 2 {
		p := filepath.Join(dir, "u"+string(rune('0'+k))+".safetensors")
		body := encode(t, f32Set(t, [][]int{{3, 4}, {5}}, func(tn, i int) float32 { return float32(k*10 + tn + i) }), nil)
		if err := os.WriteFile(p, body, 0o600); err != nil {
			t.Fatal(err)
		}
		files = append(files, p)
	}
	run := func(script string, args ...string) (string, string, error) {
		cmd := exec.Command(py, append([]string{"-c", readmePython(t) + "\n" + script}, args...)...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		return stdout.String(), stderr.String(), err
	}

	_, stderr, err := run(`import sys
try:
    push(sys.argv[1], "wrong-token", 1, sys.argv[2])
except RuntimeError as e:
    print(e, file=sys.stderr); sys.exit(3)`, ts.url, files[0])
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 3 || strings.TrimSpace(stderr) != "401 unauthorized: not authenticated: the token is not valid" {
		t.Fatalf("push with a wrong token: %v, stderr %q", err, stderr)
	}

	stdout, stderr, err := run(`import sys, json
for i, (token, path) in enumerate(zip(sys.argv[2::2], sys.argv[3::2])):
    print(json.dumps(push(sys.argv[1], token, 1, path, weight=i + 1)))`,
		ts.url, tokens["c0"], files[0], tokens["c1"], files[1])
	if err != nil {
		t.Fatalf("pushes: %v\n%s", err, stderr)
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	for k, line := range lines {
		var ack api.Ack
		if err := json.Unmarshal([]byte(line), &ack); err != nil || ack.Round != 1 || ack.Weight != float64(k+1) {
			t.Fatalf("ack %d: %q (%v)", k, line, err)
		}
	}
	if len(lines) != 2 {
		t.Fatalf("acks: %q", stdout)
	}
	ts.waitState(t, 1, api.StateClosed)

	out := filepath.Join(dir, "model.safetensors")
	if _, stderr, err := run(`import sys
pull(sys.argv[1], sys.argv[2], 1)
pull(sys.argv[1], sys.argv[2] + ".latest")`, ts.url, out); err != nil {
		t.Fatalf("pull: %v\n%s", err, stderr)
	}
	p, err := ts.ModelPath(1)
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{out, out + ".latest"} {
		got, err := os.ReadFile(f)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: %d bytes (%v), want the server's %d-byte model", f, len(got), err, len(want))
		}
	}
}
