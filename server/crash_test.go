package server_test

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wattagg/wattagg/aggregate/secagg"
	"github.com/wattagg/wattagg/server"
	"github.com/wattagg/wattagg/server/api"
	"github.com/wattagg/wattagg/server/client"
	"github.com/wattagg/wattagg/server/servebench"
	"github.com/wattagg/wattagg/tensor/safetensors"
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

// TestCrashKill9 kills the server process with SIGKILL at random moments of a round of
// concurrent pushes, restarting it each time: every acknowledged update is in the final round
// exactly once, at the position its acknowledgement gave, and the model has the bits of the
// engine run over the acknowledged spool files in log order. Twice: with the default exact sums
// (16 clients, 5 kills) and with one-limb sums (8 clients, 3 kills), whose setting the restarts
// read back from the round's own file.
func TestCrashKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test")
	}
	for _, c := range []struct {
		sum            string
		clients, kills int
	}{{"", 16, 5}, {servebench.SumOneLimb, 8, 3}} {
		t.Run("sum="+c.sum, func(t *testing.T) { crashKill9(t, c.sum, c.clients, c.kills) })
	}
}

func crashKill9(t *testing.T, sum string, clients, kills int) {
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
	res, err := servebench.Crash(ctx, servebench.CrashConfig{Dir: dir, Clients: clients, Params: 1 << 20, Kills: kills,
		Concurrency: 8, MaxKillWait: 30 * time.Millisecond, Seed: seed, Start: start, Log: t.Logf, Sum: sum})
	if err != nil {
		b, _ := os.ReadFile(logPath)
		t.Fatalf("seed %d: %v\nserver log:\n%s", seed, err, b)
	}
	t.Logf("seed %d: %+v", seed, res)
	if res.Kills != kills || res.Lost != 0 || res.Twice != 0 || res.Mismatched != 0 || res.Updates != clients || !res.BitsEqual {
		t.Fatalf("seed %d: %+v", seed, res)
	}
}

// TestSecureSumRecoverySurvivesKill9 kills a server process with SIGKILL right after it
// acknowledged a secure-sum round's recovery, restarts it and closes the round: the recovery
// and the three masked updates acknowledged before it unmask into the mean of what the
// survivors quantised (one of four clients dropped out).
func TestSecureSumRecoverySurvivesKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test")
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin := fmt.Sprintf("admin-%x", rand.Uint64())
	tokens := make([]string, 4)
	var clients []string
	for k := range tokens {
		tokens[k] = fmt.Sprintf("token-%d-%x", k, rand.Uint64())
		clients = append(clients, fmt.Sprintf(`{"id": "c%d", "token_sha256": %q}`, k, server.HashToken(tokens[k])))
	}
	cfgPath := filepath.Join(dir, "config.json")
	cfg := fmt.Sprintf(`{"listen": "127.0.0.1:0", "data_dir": %q, "admin_token_sha256": %q, "clients": [%s],
		"round": {"rule": "secagg", "params": {"bits": 16, "range": 1}}}`,
		filepath.Join(dir, "data"), server.HashToken(admin), strings.Join(clients, ", "))
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "server.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	// start runs the server process and returns it and its URL.
	start := func() (*exec.Cmd, string) {
		t.Helper()
		addrFile := filepath.Join(dir, "addr")
		os.Remove(addrFile)
		cmd := exec.Command(os.Args[0], "-test.run=^TestServerProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(), "WATTAGG_TEST_SERVER_CONFIG="+cfgPath, "WATTAGG_TEST_SERVER_ADDR="+addrFile)
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		for {
			if b, err := os.ReadFile(addrFile); err == nil && strings.HasSuffix(string(b), "\n") {
				return cmd, "http://" + strings.Fields(string(b))[0]
			}
			if ctx.Err() != nil {
				cmd.Process.Kill()
				t.Fatal("the server did not start")
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	cmd, url := start()

	r := rand.NewChaCha8([32]byte{7})
	self, pairs := server.SecaggSeeds(r, 4)
	q, err := secagg.NewQuantizer(16, 1)
	if err != nil {
		t.Fatal(err)
	}
	values := func(k int) []float32 {
		v := make([]float32, 513)
		for j := range v {
			v[j] = float32(math.Cos(float64(j+k))) * 0.9
		}
		return v
	}
	rec := &secagg.Recovery{Clients: []int{0, 1, 2, 3}, Self: map[int]secagg.Seed{}, Dropped: map[int]map[int]secagg.Seed{2: {}}}
	for _, k := range []int{0, 1, 3} { // client 2 drops out
		u := server.MaskedUpdate(t, q, r, &secagg.Client{ID: k, Self: &self[k], Pairs: pairs[k]}, values(k))
		c, err := client.New(url, client.WithToken(tokens[k]))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.PushSet(ctx, 1, u); err != nil {
			t.Fatal(err)
		}
		rec.Self[k], rec.Dropped[2][k] = self[k], pairs[2][k]
	}
	ac, err := client.New(url, client.WithToken(admin))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ac.SetRecovery(ctx, 1, rec); err != nil {
		t.Fatal(err)
	}
	cmd.Process.Kill() // SIGKILL: no shutdown
	cmd.Wait()

	cmd, url = start()
	defer func() { cmd.Process.Signal(os.Interrupt); cmd.Wait() }()
	ac, err = client.New(url, client.WithToken(admin))
	if err != nil {
		t.Fatal(err)
	}
	st, err := ac.CloseRound(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != api.StateClosed || st.Clients != 3 {
		t.Fatalf("after the restart: %+v", st)
	}
	out := filepath.Join(dir, "model.safetensors")
	if err := ac.Pull(ctx, 1, out); err != nil {
		t.Fatal(err)
	}
	model, err := safetensors.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer model.Close()
	got, err := model.At(0).F32()
	if err != nil {
		t.Fatal(err)
	}
	step := 2.0 / float64(uint64(1)<<16-1)
	for j, g := range got {
		var want float64
		for _, k := range []int{0, 1, 3} {
			want += float64(values(k)[j])
		}
		want /= 3
		if math.Abs(float64(g)-want) > step+1e-7 {
			t.Fatalf("w[%d] = %v, mean of the survivors' values %v (step %v)", j, g, want, step)
		}
	}
}
