package server_test

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/wattagg/wattagg/server"
	"github.com/wattagg/wattagg/server/servebench"
)

// TestServerProcess is not a test: the crash tests run the test binary again with
// WATTAGG_TEST_SERVER_CONFIG set, and this function serves that configuration until SIGTERM,
// or until it is killed.
func TestServerProcess(t *testing.T) {
	cfgPath := os.Getenv("WATTAGG_TEST_SERVER_CONFIG")
	if cfgPath == "" {
		t.Skip("the server process of the crash tests")
	}
	cfg, err := server.LoadConfig(cfgPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err = server.ListenAndServe(ctx, cfg, 10*time.Second, func(a, _ net.Addr) {
		writeAddr(os.Getenv("WATTAGG_TEST_SERVER_ADDR"), a)
	}, server.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, nil))))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// writeAddr publishes the listening address atomically (the parent polls for it).
func writeAddr(path string, a net.Addr) {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(a.String()+"\n"), 0o600); err == nil {
		os.Rename(tmp, path)
	}
}

// TestCrashKill9 kills the server process with SIGKILL at 5 random moments of a round of 16
// concurrent pushes, restarting it each time: every acknowledged update is in the final round
// exactly once, at the position its acknowledgement gave, and the model has the bits of the
// engine run over the acknowledged spool files in log order.
func TestCrashKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test")
	}
	dir := t.TempDir()
	seed := rand.Uint64()
	logPath := filepath.Join(dir, "server.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	start := func(cfgPath, addrFile string) (*exec.Cmd, error) {
		cmd := exec.Command(os.Args[0], "-test.run=^TestServerProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(), "WATTAGG_TEST_SERVER_CONFIG="+cfgPath, "WATTAGG_TEST_SERVER_ADDR="+addrFile)
		cmd.Stdout, cmd.Stderr = logf, logf
		return cmd, cmd.Start()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	res, err := servebench.Crash(ctx, servebench.CrashConfig{Dir: dir, Clients: 16, Params: 1 << 20, Kills: 5,
		Concurrency: 8, MaxKillWait: 30 * time.Millisecond, Seed: seed, Start: start, Log: t.Logf})
	if err != nil {
		b, _ := os.ReadFile(logPath)
		t.Fatalf("seed %d: %v\nserver log:\n%s", seed, err, b)
	}
	t.Logf("seed %d: %+v", seed, res)
	if res.Kills != 5 || res.Lost != 0 || res.Twice != 0 || res.Mismatched != 0 || res.Updates != 16 || !res.BitsEqual {
		t.Fatalf("seed %d: %+v", seed, res)
	}
}
