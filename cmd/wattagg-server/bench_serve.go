package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/wattagg/wattagg/server/servebench"
)

func newBenchServeCmd() *cobra.Command {
	c := servebench.Config{Clients: 64, Params: 25_000_000, SmallClients: 1000, SmallParams: 1_000_000, SmallStreams: 64,
		Kills: 20, CrashClients: 64, CrashParams: 1_000_000}
	var dir, only string
	var serverFlags []string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Measure the server on loopback: ingest against TCP and disk floors, RSS, small clients, SIGKILL crashes",
		Long: `bench serve runs this binary's server (wattagg serve) as a child process on 127.0.0.1 and measures:

  ingest  --clients clients push a --params f32 update each over HTTP at once, durably; against
          the same bytes over as many plain TCP streams into a discarding reader and the disk's
          durable write rate for the same files (the floor: the smaller), and beside it the two
          at once (each stream written durably as it arrives); the server's peak RSS against
          1.3 × model + streams × 2 chunks + 128 MiB; and what checkpointing the accumulator
          per group commit (design B) would write instead
  flight  the ingest row over Arrow Flight DoPut
  small   --small-clients clients of a --small-params model, --small-streams at a time:
          updates per second and p99 time from last byte to acknowledgement
  crash   --kills SIGKILLs at random moments of a --crash-clients round: acknowledged
          updates lost, counted twice, and the final bits against the engine alone

Run it alone (flock /tmp/wattagg-bench.lock wattagg bench serve): it needs about 7 GB of disk
under --dir for the default ingest row.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			if dir == "" {
				if dir, err = os.MkdirTemp("", "wattagg-bench-serve-"); err != nil {
					return err
				}
				defer os.RemoveAll(dir)
			} else if err := os.MkdirAll(dir, 0o700); err != nil {
				return err
			}
			logPath := filepath.Join(dir, "server.log")
			logf, err := os.Create(logPath)
			if err != nil {
				return err
			}
			defer logf.Close()
			c.Dir = dir
			c.Start = func(cfgPath, addrFile string) (*exec.Cmd, error) {
				args := append([]string{"serve", "--config", cfgPath, "--addr-file", addrFile}, serverFlags...)
				sc := exec.Command(exe, args...)
				sc.Stdout, sc.Stderr = logf, logf
				return sc, sc.Start()
			}
			if only != "" {
				c.Only = strings.Split(only, ",")
			}
			c.Log = func(format string, args ...any) { fmt.Fprintf(cmd.ErrOrStderr(), format+"\n", args...) }
			res, err := servebench.Run(cmd.Context(), c)
			if res != nil {
				if asJSON {
					enc := json.NewEncoder(cmd.OutOrStdout())
					enc.SetIndent("", "  ")
					_ = enc.Encode(res)
				} else {
					res.Print(cmd.OutOrStdout())
				}
			}
			if err != nil {
				return fmt.Errorf("%w (server log: %s)", err, logPath)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "", "scratch directory (default: a temporary directory, removed after)")
	f.IntVar(&c.WeightMax, "weight-max", 0, "ingest: weigh the HTTP clients by example counts spread over [1, N] instead of 1 each (exact sums grow with the weights: the RSS row shows what the running sums then hold)")
	f.StringVar(&c.Sum, "sum", "", "round.sum of the server's rounds: auto (the server's default: exact for fedavg), exact, float, or one-limb (exact, round.exact {bound 16, max_weight 2^20, one_limb}: an 8-byte accumulator)")
	f.StringArrayVar(&serverFlags, "server-flag", nil, "a flag for the server under test, repeatable (--server-flag=--gc-headroom=0 --server-flag=--procs=2): its settings compared in one binary")
	f.StringVar(&only, "only", "", "comma-separated rows to run: ingest, flight, small, crash (default: all)")
	f.BoolVar(&asJSON, "json", false, "print the rows as JSON")
	f.IntVar(&c.Clients, "clients", c.Clients, "ingest: concurrent clients")
	f.IntVar(&c.Params, "params", c.Params, "ingest: f32 parameters per update")
	f.IntVar(&c.SmallClients, "small-clients", c.SmallClients, "small: clients")
	f.IntVar(&c.SmallParams, "small-params", c.SmallParams, "small: f32 parameters per update")
	f.IntVar(&c.SmallStreams, "small-streams", c.SmallStreams, "small: clients pushing at once")
	f.IntVar(&c.Kills, "kills", c.Kills, "crash: SIGKILLs")
	f.IntVar(&c.CrashClients, "crash-clients", c.CrashClients, "crash: clients in the round")
	f.IntVar(&c.CrashParams, "crash-params", c.CrashParams, "crash: f32 parameters per update")
	return cmd
}
