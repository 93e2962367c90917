package main

import (
	"bufio"
	"cmp"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/energy"
	"github.com/wattagg/wattagg/internal/headroom"
	"github.com/wattagg/wattagg/server"
)

func newServeCmd() *cobra.Command {
	var f serveFlags
	cmd := &cobra.Command{
		Use:   "serve --config FILE",
		Short: "Run the aggregation server: clients push updates over HTTP, rounds close into models",
		Long: `serve runs rounds of the configured rule over updates that clients push with HTTP PUT
(.safetensors bodies, bearer tokens, optional TLS and mutual TLS). Each update is checked from its
header before its body is read, streamed to a checksummed spool file, and acknowledged only once
durable (fdatasync and a group-committed acknowledgement log). After a crash the open round
resumes from its log: every acknowledged update exactly once, the same bits.

The configuration is a JSON file:

  {
    "listen": "127.0.0.1:8443",
    "data_dir": "/var/lib/wattagg",
    "tls": {"cert_file": "server.pem", "key_file": "server.key", "client_ca_file": "clients-ca.pem"},
    "admin_token_sha256": "<wattagg serve hash-token>",
    "clients": [{"id": "site-a", "token_sha256": "<hash>", "cert_cn": "site-a"}],
    "round": {"rule": "fedavg", "params": {}, "min_clients": 2, "max_clients": 64,
              "quorum": 48, "deadline": "10m", "initial_global": "global.safetensors"},
    "limits": {"max_update_bytes": 8589934592, "max_streams": 64, "idle_timeout": "30s"}
  }

Rules: fedavg, median, trimmed-mean (beta), krum and multi-krum (f, m), bulyan (f),
geomed (nu, max_iter, tol), centered-clip (tau, iters), norm-clip and norm-zero (clip_bound or
clip_quantile), fedavgm, fedadagrad, fedadam, fedyogi (server_lr, beta1, beta2, tau),
dp-fixed and dp-adaptive (clip, noise_multiplier, sampling_rate, delta, target_quantile, clip_lr,
clipped_count_stddev, expected_clients), secagg (bits, range: a secure sum of masked u32
updates, unmasked with the recovery an admin PUTs to /v1/rounds/{n}/recovery once the updates
are in), and compositions such as "norm-clip,median".
"model_range": [lo, hi] makes every round own only those coordinates of the model (its tensors
sorted by name, concatenated): clients push whole updates, the round's model is its part.

Sums: "sum": "auto" (the default) sums exactly wherever the rule allows (fedavg, the server
optimizers, dp-*, norm-clip with clip_bound): a round's model is then the same bits whatever
order its updates arrived in. "exact": {"bound": 65536, "max_weight": 1099511627776,
"tensor_bounds": {"name": bound}, "one_limb": true} sets the range (an update beyond it gets 400
out_of_range) and, with one_limb, keeps the sums in 8 bytes per parameter instead of 16 on a
grid 2^40 coarser (for a tight bound and max_weight);
"sum": "float" sums in arrival order and takes f64 updates.

Arrow Flight ("flight_listen"): DoPut of an update (tensor/arrowio's chunk schema; descriptor
path ["rounds", "N"]; metadata authorization: Bearer TOKEN and x-wattagg-weight), DoGet of a model
(ticket "rounds/N" or "latest"), ListFlights, DoAction status/close/open/recovery.

HTTP API: PUT /v1/rounds/{n}/update, GET /v1/rounds/{n}/model, GET /v1/model, GET /v1/rounds,
GET /v1/rounds/{n}, POST /v1/rounds/{n}/close, POST /v1/rounds and PUT /v1/rounds/{n}/recovery
(admin), GET /metrics,
GET / (status page), GET /healthz. SIGINT or SIGTERM stops the server gracefully.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return f.run(cmd) },
	}
	f.register(cmd)
	cmd.AddCommand(newHashTokenCmd())
	return cmd
}

// serveFlags are serve's flags.
type serveFlags struct {
	cfgPath, addrFile string
	grace             time.Duration
	noMeters          bool
	procs, gcHeadroom int
}

// register adds serve's flags to cmd.
func (f *serveFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.cfgPath, "config", "", "the server's JSON configuration file")
	cmd.Flags().StringVar(&f.addrFile, "addr-file", "", "write the addresses the server listens on to this file once it serves, HTTP then Flight, one a line (for ports :0)")
	cmd.Flags().DurationVar(&f.grace, "grace", 30*time.Second, "on SIGTERM, how long requests in progress may take to finish")
	cmd.Flags().BoolVar(&f.noMeters, "no-meters", false, "do not meter rounds (reports say why joules are null)")
	cmd.Flags().IntVar(&f.procs, "procs", 0, fmt.Sprintf("Go scheduler threads (GOMAXPROCS); 0: %d × the CPUs, unless the GOMAXPROCS environment variable is set. Kernels keep one worker per CPU", procsPerCPU))
	cmd.Flags().IntVar(&f.gcHeadroom, "gc-headroom", defaultGCHeadroom, "MiB of garbage the Go collector may leave before it runs, whatever the size of the live heap (a soft memory limit kept at live + this after each collection; 0: Go's own pacing, which lets garbage grow as large as the live heap, the round's sums included; a GOMEMLIMIT in the environment wins)")
}

// run is serve: it loads the configuration, sets up the logger, the scheduler, the collector's
// headroom and the meters, and serves until the command's context ends.
func (f *serveFlags) run(cmd *cobra.Command) error {
	cfg, err := f.loadConfig()
	if err != nil {
		return err
	}
	logger, err := newServerLogger(cmd.ErrOrStderr(), cfg.LogLevel)
	if err != nil {
		return err
	}
	cpus, cpu, err := f.kernelCPU()
	if err != nil {
		return err
	}
	stop, err := f.keepHeadroom()
	if err != nil {
		return err
	}
	defer stop()
	f.logScheduler(logger, cpus)
	opts := []server.Option{server.WithLogger(logger), server.WithEngineOptions(aggregate.WithDevices(cpu))}
	if !f.noMeters {
		inv, err := discoverMeters(logger)
		if err != nil {
			return err
		}
		defer inv.Close()
		opts = append(opts, server.WithMeters(inv.Meters()...))
	}
	return server.ListenAndServe(cmd.Context(), cfg, f.grace, f.publishAddrs(logger), opts...)
}

// loadConfig reads the configuration file of --config, which serve needs.
func (f *serveFlags) loadConfig() (*server.Config, error) {
	if f.cfgPath == "" {
		return nil, usagef("serve needs --config FILE (see wattagg serve --help)")
	}
	return server.LoadConfig(f.cfgPath)
}

// newServerLogger is the server's JSON logger on w, at the configuration's log_level (info
// when unset).
func newServerLogger(w io.Writer, logLevel string) (*slog.Logger, error) {
	level := slog.LevelInfo
	if err := level.UnmarshalText([]byte(cmp.Or(logLevel, "info"))); err != nil {
		return nil, fmt.Errorf("%w: log_level %q", server.ErrConfig, logLevel)
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})), nil
}

// kernelCPU sets the scheduler's threads as --procs says (schedulerProcs) and makes the
// kernels' CPU device, one worker per CPU; cpus is that number of workers.
func (f *serveFlags) kernelCPU() (cpus int, cpu *device.CPU, err error) {
	if f.procs < 0 {
		return 0, nil, usagef("--procs %d: want a positive number of threads, or 0 for the default", f.procs)
	}
	cpus = schedulerProcs(f.procs)
	cpu, err = device.NewCPU(device.WithWorkers(cpus))
	return cpus, cpu, err
}

// keepHeadroom keeps --gc-headroom MiB of garbage for the collector (headroom.Keep) and
// returns what stops it.
func (f *serveFlags) keepHeadroom() (stop func(), err error) {
	if f.gcHeadroom < 0 {
		return nil, usagef("--gc-headroom %d: want MiB of garbage, or 0 for Go's own pacing", f.gcHeadroom)
	}
	return headroom.Keep(uint64(f.gcHeadroom) << 20), nil
}

// logScheduler logs the scheduler's settings: its threads, the kernels' cpus workers and the
// collector's headroom.
func (f *serveFlags) logScheduler(logger *slog.Logger, cpus int) {
	logger.Info("scheduler", "gomaxprocs", runtime.GOMAXPROCS(0), "kernel_workers", cpus, "gc_headroom_mib", f.gcHeadroom,
		"gomemlimit_env", os.Getenv("GOMEMLIMIT") != "")
}

// discoverMeters finds the host's energy meters and logs what it found; the caller closes the
// inventory once the server is done.
func discoverMeters(logger *slog.Logger) (*energy.Inventory, error) {
	inv, err := energy.Discover()
	if err != nil {
		return nil, err
	}
	logger.Info("energy meters", "rapl", inv.RAPL.Detail, "nvml", inv.NVML.Detail, "cpu_estimate", inv.CPUEstimate)
	return inv, nil
}

// publishAddrs is what the server calls once it serves: it writes the addresses to --addr-file,
// when set, and logs an error it could not.
func (f *serveFlags) publishAddrs(logger *slog.Logger) func(a, flight net.Addr) {
	return func(a, flight net.Addr) {
		if f.addrFile != "" {
			if err := writeAddrFile(f.addrFile, a, flight); err != nil {
				logger.Error("writing --addr-file", "err", err)
			}
		}
	}
}

// defaultGCHeadroom is --gc-headroom's default, in MiB. A round's running sums are one large live
// buffer (8 or 16 bytes per parameter), and Go's pacing (GOGC=100) lets the heap
// grow to twice what was live at the last collection: the garbage an ingest makes (gRPC's and
// the decoders' small allocations, 10–13 MiB/s at 1 GB/s of Flight) was allowed to pile up to
// the size of the sums. Measured (64 Flight clients × 25M f32, one-limb sums, the staging
// buffers shared: stages in server/direct.go): the server's peak RSS 406–417 MiB with Go's
// pacing, 379–388 with 64 MiB of headroom, 361–368 with 32, and the rate no lower (1.31–1.37
// GB/s against Go's pacing's 1.15–1.23, alternating); a collection then runs every two or three
// seconds, marking a heap of buffers that hold no pointers.
const defaultGCHeadroom = 32

// procsPerCPU is the server's scheduler threads per CPU. Spool files are written with O_DIRECT,
// and such a pwrite keeps its thread, and the scheduler's P with it, until the disk has the
// data (a trace of the Flight ingest had one thread in pwrite at any moment on average): with
// one P per CPU, a 2-CPU server then ran its network and its adds on what was left. Measured
// with 64 clients × 25M f32 (`bench serve`, only the server's GOMAXPROCS changed, alternating):
// HTTP 1.07, 1.26 GB/s with 2 against 1.37, 1.37 with 8; Flight 0.79, 0.84 against 1.06, 1.17;
// then 4 against 8: HTTP 1.32, 1.27 / 1.37, 1.24, Flight 1.16, 0.99 / 1.19, 1.00 GB/s, peak RSS
// 10 MiB less with 4.
const procsPerCPU = 4

// schedulerProcs sets GOMAXPROCS for the server (procs if positive; else procsPerCPU × the
// CPUs unless the environment sets GOMAXPROCS) and returns the CPUs, the kernels' workers.
func schedulerProcs(procs int) (cpus int) {
	cpus = min(runtime.GOMAXPROCS(0), runtime.NumCPU())
	switch {
	case procs > 0:
		runtime.GOMAXPROCS(procs)
	case os.Getenv("GOMAXPROCS") == "":
		runtime.GOMAXPROCS(procsPerCPU * cpus)
	}
	return cpus
}

// writeAddrFile publishes the listening addresses atomically: the HTTP API's on the first
// line, Arrow Flight's (when served) on the second.
func writeAddrFile(path string, a, flight net.Addr) error {
	text := a.String() + "\n"
	if flight != nil {
		text += flight.String() + "\n"
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(text), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func newHashTokenCmd() *cobra.Command {
	var generate bool
	cmd := &cobra.Command{
		Use:   "hash-token",
		Short: "Print the SHA-256 of a token read from stdin, as the configuration stores it",
		Long: `hash-token reads a token from the first line of stdin and prints its hex SHA-256, the value
of a client's token_sha256 (or of admin_token_sha256) in the server's configuration. The server
keeps only hashes: tokens must be random secrets (--new makes one: 32 random bytes, hex).

  wattagg serve hash-token --new          # prints "TOKEN HASH": give TOKEN to the client, HASH to the config
  echo -n "$TOKEN" | wattagg serve hash-token`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if generate {
				var b [32]byte
				if _, err := rand.Read(b[:]); err != nil {
					return err
				}
				tok := hex.EncodeToString(b[:])
				fmt.Fprintln(cmd.OutOrStdout(), tok, server.HashToken(tok))
				return nil
			}
			line, err := bufio.NewReader(io.LimitReader(cmd.InOrStdin(), 1<<16)).ReadString('\n')
			if err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			tok := strings.TrimRight(line, "\r\n")
			if tok == "" {
				return usagef("hash-token: no token on stdin (or use --new)")
			}
			fmt.Fprintln(cmd.OutOrStdout(), server.HashToken(tok))
			return nil
		},
	}
	cmd.Flags().BoolVar(&generate, "new", false, "make a random token and print it with its hash")
	return cmd
}
