package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wattagg/wattagg/internal/clitest"
	"github.com/wattagg/wattagg/server"
	"github.com/wattagg/wattagg/server/api"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// serveProcess starts `wattagg serve` on a loopback port as a child process and returns its
// HTTP URL; the test stops it with SIGTERM and checks that it exits 0.
func serveProcess(t *testing.T, cfg map[string]any) string {
	t.Helper()
	dir := t.TempDir()
	cfgPath, addrPath := filepath.Join(dir, "server.json"), filepath.Join(dir, "addr")
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfgPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "serve", "--config", cfgPath, "--addr-file", addrPath, "--no-meters", "--grace", "5s")
	cmd.Env = append(os.Environ(), clitest.MainEnv)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("wattagg serve after SIGTERM: %v\n%s", err, stderr.String())
			}
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			t.Errorf("wattagg serve did not stop on SIGTERM\n%s", stderr.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if b, err := os.ReadFile(addrPath); err == nil && len(b) > 0 {
			addr, _, _ := strings.Cut(string(b), "\n")
			return "http://" + strings.TrimSpace(addr)
		}
		select {
		case err := <-done:
			t.Fatalf("wattagg serve exited: %v\n%s", err, stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("wattagg serve did not write --addr-file\n%s", stderr.String())
		}
	}
}

// TestServePushPull runs the three server commands as a user does: `wattagg serve` in its own
// process, two clients' `wattagg push`, then `wattagg pull` of the round's model, which must be
// the weighted mean (within one f32 ulp of a float64 reference: the server sums exactly). Bad
// pushes and pulls exit non-zero with one line saying what is wrong, and leave the round as it
// was.
func TestServePushPull(t *testing.T) {
	dir := t.TempDir()
	tokens := []string{"token-client-a-3f9c1e", "token-client-b-77d02a"}
	var clients []map[string]string
	for k, id := range []string{"a", "b"} {
		clients = append(clients, map[string]string{"id": id, "token_sha256": server.HashToken(tokens[k])})
		if err := os.WriteFile(filepath.Join(dir, id+".token"), []byte(tokens[k]+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "bad.token"), []byte("not-a-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	url := serveProcess(t, map[string]any{"listen": "127.0.0.1:0", "data_dir": filepath.Join(dir, "data"),
		"clients": clients, "round": map[string]any{"rule": "fedavg"}})
	writeClient(t, filepath.Join(dir, "a.safetensors"), 1, "")
	writeClient(t, filepath.Join(dir, "a2.safetensors"), 5, "")
	writeClient(t, filepath.Join(dir, "b.safetensors"), 3, "300")
	push := func(token, file string, extra ...string) (string, string, int) {
		args := append([]string{"push", "--server", url, "--token-file", filepath.Join(dir, token), "--round", "1", "--progress", "never"}, extra...)
		return wattagg(t, append(args, filepath.Join(dir, file))...)
	}
	oneLine := func(stderr, want string) {
		t.Helper()
		if s := strings.TrimSpace(stderr); strings.Contains(s, "\n") || !strings.Contains(s, want) {
			t.Fatalf("stderr %q: want one line containing %q", stderr, want)
		}
	}

	_, stderr, code := wattagg(t, "push", "--server", url, "--token-file", filepath.Join(dir, "a.token"), filepath.Join(dir, "a.safetensors"))
	if code != 2 {
		t.Fatalf("push without --round: exit %d, want 2: %s", code, stderr)
	}
	oneLine(stderr, "--round N is required")

	_, stderr, code = push("bad.token", "a.safetensors")
	if code != 1 {
		t.Fatalf("push with a bad token: exit %d, want 1: %s", code, stderr)
	}
	oneLine(stderr, "401")

	stdout, stderr, code := push("a.token", "a.safetensors", "--weight", "100")
	var ack api.Ack
	if code != 0 || json.Unmarshal([]byte(stdout), &ack) != nil || ack.Client != "a" || ack.Round != 1 || ack.Weight != 100 {
		t.Fatalf("push a: exit %d, ack %q: %s", code, stdout, stderr)
	}
	// The same bytes again are acknowledged the same; another update from a is refused.
	stdout, _, code = push("a.token", "a.safetensors", "--weight", "100")
	var again api.Ack
	if code != 0 || json.Unmarshal([]byte(stdout), &again) != nil || again.Digest != ack.Digest || again.Seq != ack.Seq {
		t.Fatalf("retry of a: exit %d, ack %q", code, stdout)
	}
	_, stderr, code = push("a.token", "a2.safetensors", "--weight", "100")
	if code != 1 {
		t.Fatalf("a second update from a: exit %d, want 1: %s", code, stderr)
	}
	oneLine(stderr, "409")

	_, stderr, code = wattagg(t, "pull", "--server", url, "--round", "1", "--progress", "never", "-o", filepath.Join(dir, "early.safetensors"))
	if code != 1 {
		t.Fatalf("pull of an open round: exit %d, want 1: %s", code, stderr)
	}
	oneLine(stderr, "round 1")
	if _, err := os.Stat(filepath.Join(dir, "early.safetensors")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a failed pull left a file: %v", err)
	}

	// b's file carries num_examples, but a's weight was given: a round weighs every update the
	// same way.
	_, stderr, code = push("b.token", "b.safetensors")
	if code != 1 {
		t.Fatalf("push b weighted by num_examples after a given weight: exit %d, want 1: %s", code, stderr)
	}
	oneLine(stderr, "weight every update of a round the same way")
	_, stderr, code = wattagg(t, "pull", "--server", url, "--wait", "--progress", "never", "-o", filepath.Join(dir, "x.safetensors"))
	if code != 2 {
		t.Fatalf("pull --wait without --round: exit %d, want 2: %s", code, stderr)
	}
	oneLine(stderr, "--wait needs --round N")
	// A pull --wait started while the round is open returns its model once b's update closes it.
	out := filepath.Join(dir, "model.safetensors")
	pulled := make(chan string, 1)
	go func() {
		_, stderr, code := wattagg(t, "pull", "--server", url, "--round", "1", "--wait", "--progress", "never", "-o", out)
		pulled <- fmt.Sprintf("exit %d: %s", code, stderr)
	}()
	if _, stderr, code = push("b.token", "b.safetensors", "--weight", "300"); code != 0 {
		t.Fatalf("push b: exit %d: %s", code, stderr)
	}
	select {
	case res := <-pulled:
		if res != "exit 0: " {
			t.Fatalf("pull --wait of round 1: %s", res)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("pull --wait did not return after the round closed")
	}
	m, err := safetensors.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for i, want := range map[string]func(j int) float64{
		"layer.weight": func(j int) float64 {
			a, b := float64(float32(1+float32(j)/1000)), float64(float32(3+float32(j)/1000))
			return (100*a + 300*b) / 400
		},
		"layer.bias": func(int) float64 { return (100*-1 + 300*-3) / 400.0 },
	} {
		x, ok := m.Tensor(i)
		if !ok {
			t.Fatalf("model has no tensor %s", i)
		}
		got, err := x.F32()
		if err != nil {
			t.Fatal(err)
		}
		for j, g := range got {
			w := want(j)
			ulp := float64(math.Nextafter32(float32(math.Abs(w)), float32(math.Inf(1))) - float32(math.Abs(w)))
			if math.Abs(float64(g)-w) > ulp {
				t.Fatalf("%s[%d] = %v, want %v within one ulp", i, j, g, w)
			}
		}
	}
	_, stderr, code = wattagg(t, "pull", "--server", url, "--round", "9", "--progress", "never", "-o", filepath.Join(dir, "none.safetensors"))
	if code != 1 {
		t.Fatalf("pull of an unknown round: exit %d, want 1: %s", code, stderr)
	}
	oneLine(stderr, "round 9")
}

// TestRoundCommands runs an admin's round commands against a server process: status, close
// (refused without the admin token), open, and a recovery refused by a round that is no secure
// sum, each answer JSON on stdout and each refusal one line with the right exit status.
func TestRoundCommands(t *testing.T) {
	dir := t.TempDir()
	admin := "admin-token-5d1e07"
	adminFile := filepath.Join(dir, "admin.token")
	if err := os.WriteFile(adminFile, []byte(admin+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	url := serveProcess(t, map[string]any{"listen": "127.0.0.1:0", "data_dir": filepath.Join(dir, "data"),
		"admin_token_sha256": server.HashToken(admin),
		"clients":            []map[string]string{{"id": "a", "token_sha256": server.HashToken("token-a-0192")}},
		"round":              map[string]any{"rule": "fedavg", "manual_next": true}})
	stdout, stderr, code := wattagg(t, "round", "status", "--server", url, "--round", "1")
	var st api.Round
	if code != 0 || json.Unmarshal([]byte(stdout), &st) != nil || st.Round != 1 || st.State != api.StateOpen {
		t.Fatalf("status: exit %d, %q: %s", code, stdout, stderr)
	}
	if _, stderr, code = wattagg(t, "round", "close", "--server", url); code != 2 || !strings.Contains(stderr, "--round N is required") {
		t.Fatalf("close without --round: exit %d: %s", code, stderr)
	}
	if _, stderr, code = wattagg(t, "round", "close", "--server", url, "--round", "1"); code != 2 || !strings.Contains(stderr, "--token-file FILE is required") {
		t.Fatalf("close without the admin token: exit %d: %s", code, stderr)
	}
	if _, stderr, code = wattagg(t, "round", "close", "--server", url, "--round", "1", "--token-file", adminFile); code != 1 || !strings.Contains(stderr, "min_clients is 1") {
		t.Fatalf("close of an empty round: exit %d: %s", code, stderr)
	}
	rec := filepath.Join(dir, "recovery.json")
	if err := os.WriteFile(rec, []byte(`{"clients": [0], "no_self_masks": true}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code = wattagg(t, "round", "recovery", "--server", url, "--round", "1", "--token-file", adminFile, rec); code != 1 || !strings.Contains(stderr, "takes no recovery") {
		t.Fatalf("recovery of a fedavg round: exit %d: %s", code, stderr)
	}
	writeClient(t, filepath.Join(dir, "a.safetensors"), 1, "")
	if err := os.WriteFile(filepath.Join(dir, "a.token"), []byte("token-a-0192\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code = wattagg(t, "push", "--server", url, "--token-file", filepath.Join(dir, "a.token"), "--round", "1", "--progress", "never", filepath.Join(dir, "a.safetensors")); code != 0 {
		t.Fatalf("push: exit %d: %s", code, stderr)
	}
	// manual_next: the full round closes (on the committer's own time, after the push's
	// acknowledgement), and the next opens only when asked.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		stdout, stderr, code = wattagg(t, "round", "status", "--server", url, "--round", "1")
		if code != 0 || json.Unmarshal([]byte(stdout), &st) != nil {
			t.Fatalf("status after the push: exit %d, %q: %s", code, stdout, stderr)
		}
		if st.State == api.StateClosed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("round 1 is %s 10 s after its last client's push, want closed", st.State)
		}
	}
	if stdout, stderr, code = wattagg(t, "round", "open", "--server", url, "--token-file", adminFile); code != 0 || json.Unmarshal([]byte(stdout), &st) != nil || st.Round != 2 {
		t.Fatalf("open: exit %d, %q: %s", code, stdout, stderr)
	}
	var all api.Rounds
	if stdout, stderr, code = wattagg(t, "round", "status", "--server", url); code != 0 || json.Unmarshal([]byte(stdout), &all) != nil || len(all.Rounds) != 2 || all.Rounds[0].State != api.StateClosed {
		t.Fatalf("status of every round: exit %d, %q: %s", code, stdout, stderr)
	}
}

// The server's scheduler threads: --procs when given, procsPerCPU × the CPUs by default, the
// environment's GOMAXPROCS when set; the kernels keep one worker per CPU in every case.
func TestSchedulerProcs(t *testing.T) {
	orig := runtime.GOMAXPROCS(0)
	defer runtime.GOMAXPROCS(orig)
	cpus := min(orig, runtime.NumCPU())
	t.Setenv("GOMAXPROCS", "")
	if got := schedulerProcs(3); got != cpus || runtime.GOMAXPROCS(0) != 3 {
		t.Fatalf("--procs 3: %d kernel workers, GOMAXPROCS %d", got, runtime.GOMAXPROCS(0))
	}
	runtime.GOMAXPROCS(orig)
	if got := schedulerProcs(0); got != cpus || runtime.GOMAXPROCS(0) != procsPerCPU*cpus {
		t.Fatalf("default: %d kernel workers, GOMAXPROCS %d, want %d", got, runtime.GOMAXPROCS(0), procsPerCPU*cpus)
	}
	runtime.GOMAXPROCS(orig)
	t.Setenv("GOMAXPROCS", fmt.Sprint(orig))
	if got := schedulerProcs(0); got != cpus || runtime.GOMAXPROCS(0) != orig {
		t.Fatalf("GOMAXPROCS set: %d kernel workers, GOMAXPROCS %d, want it left at %d", got, runtime.GOMAXPROCS(0), orig)
	}
}

// A negative --gc-headroom is a usage error (exit 2, one line naming the flag), refused before
// the server starts.
func TestServeGCHeadroomFlag(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "server.json")
	b, err := json.Marshal(map[string]any{"listen": "127.0.0.1:0", "data_dir": filepath.Join(dir, "data"),
		"clients": []map[string]string{{"id": "a", "token_sha256": server.HashToken("token-a-5e1f0c")}}, "round": map[string]any{"rule": "fedavg"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg, b, 0o600); err != nil {
		t.Fatal(err)
	}
	_, stderr, code := wattagg(t, "serve", "--config", cfg, "--no-meters", "--gc-headroom", "-1")
	if s := strings.TrimSpace(stderr); code != 2 || strings.Contains(s, "\n") || !strings.Contains(s, "--gc-headroom -1") {
		t.Fatalf("--gc-headroom -1: exit %d, stderr %q: want 2 and one line naming the flag", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "data")); err == nil {
		t.Error("the server made its data directory before refusing the flag")
	}
}

// A running `wattagg serve` keeps the collector's headroom: the memory limit it shows on
// /metrics is its live memory plus 32 MiB, not Go's default (no limit: math.MaxInt64).
func TestServeKeepsGCHeadroom(t *testing.T) {
	t.Setenv("GOMEMLIMIT", "") // a limit in the environment would win, as documented
	dir := t.TempDir()
	url := serveProcess(t, map[string]any{"listen": "127.0.0.1:0", "data_dir": filepath.Join(dir, "data"),
		"clients": []map[string]string{{"id": "a", "token_sha256": server.HashToken("token-a-5e1f0c")}}, "round": map[string]any{"rule": "fedavg"}})
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "go_gc_gomemlimit_bytes "); ok {
			limit, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			if limit < 32<<20 || limit > 1<<30 {
				t.Fatalf("the server's memory limit is %.0f bytes: want its live memory plus the 32 MiB headroom", limit)
			}
			return
		}
	}
	t.Fatalf("/metrics has no go_gc_gomemlimit_bytes:\n%s", b)
}
