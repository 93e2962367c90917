package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/wattagg/wattagg/server/servebench"
)

func newBenchServeCmd() *cobra.Command {
	b := benchServe{c: servebench.Config{Clients: 64, Params: 25_000_000, SmallClients: 1000, SmallParams: 1_000_000, SmallStreams: 64,
		Kills: 20, CrashClients: 64, CrashParams: 1_000_000}}
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
		RunE: func(cmd *cobra.Command, _ []string) error { return b.run(cmd) },
	}
	b.register(cmd)
	return cmd
}

// benchServe is bench serve: the benchmark's configuration, which most flags set, and the
// flags beside it.
type benchServe struct {
	c           servebench.Config
	dir, only   string
	serverFlags []string
	asJSON      bool
}

// register adds bench serve's flags to cmd, the configuration's defaults theirs.
func (b *benchServe) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&b.dir, "dir", "", "scratch directory (default: a temporary directory, removed after)")
	f.IntVar(&b.c.WeightMax, "weight-max", 0, "ingest: weigh the HTTP clients by example counts spread over [1, N] instead of 1 each (exact sums grow with the weights: the RSS row shows what the running sums then hold)")
	f.StringVar(&b.c.Sum, "sum", "", "round.sum of the server's rounds: auto (the server's default: exact for fedavg), exact, float, or one-limb (exact, round.exact {bound 16, max_weight 2^20, one_limb}: an 8-byte accumulator)")
	f.StringArrayVar(&b.serverFlags, "server-flag", nil, "a flag for the server under test, repeatable (--server-flag=--gc-headroom=0 --server-flag=--procs=2): its settings compared in one binary")
	f.StringVar(&b.only, "only", "", "comma-separated rows to run: ingest, flight, small, crash (default: all)")
	f.BoolVar(&b.asJSON, "json", false, "print the rows as JSON")
	f.IntVar(&b.c.Clients, "clients", b.c.Clients, "ingest: concurrent clients")
	f.IntVar(&b.c.Params, "params", b.c.Params, "ingest: f32 parameters per update")
	f.IntVar(&b.c.SmallClients, "small-clients", b.c.SmallClients, "small: clients")
	f.IntVar(&b.c.SmallParams, "small-params", b.c.SmallParams, "small: f32 parameters per update")
	f.IntVar(&b.c.SmallStreams, "small-streams", b.c.SmallStreams, "small: clients pushing at once")
	f.IntVar(&b.c.Kills, "kills", b.c.Kills, "crash: SIGKILLs")
	f.IntVar(&b.c.CrashClients, "crash-clients", b.c.CrashClients, "crash: clients in the round")
	f.IntVar(&b.c.CrashParams, "crash-params", b.c.CrashParams, "crash: f32 parameters per update")
}

// run is bench serve: it makes the scratch directory and the server's log in it, runs the rows
// and prints what they measured, even when one failed.
func (b *benchServe) run(cmd *cobra.Command) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	remove, err := b.scratchDir()
	if err != nil {
		return err
	}
	defer remove()
	logPath := filepath.Join(b.dir, "server.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logf.Close()
	b.configure(cmd, exe, logf)
	res, err := servebench.Run(cmd.Context(), b.c)
	if res != nil {
		b.print(cmd.OutOrStdout(), res)
	}
	if err != nil {
		return fmt.Errorf("%w (server log: %s)", err, logPath)
	}
	return nil
}

// scratchDir makes --dir, or a temporary directory (then --dir's value) when it is unset;
// remove deletes the temporary one, and leaves a --dir given.
func (b *benchServe) scratchDir() (remove func(), err error) {
	if b.dir == "" {
		if b.dir, err = os.MkdirTemp("", "wattagg-bench-serve-"); err != nil {
			return nil, err
		}
		dir := b.dir
		return func() { os.RemoveAll(dir) }, nil
	}
	return func() {}, os.MkdirAll(b.dir, 0o700)
}

// configure completes the benchmark's configuration: the scratch directory, a Start that
// runs this binary (exe) as the server, its output into logf, the rows of --only, and
// progress on the command's stderr.
func (b *benchServe) configure(cmd *cobra.Command, exe string, logf *os.File) {
	b.c.Dir = b.dir
	b.c.Start = func(cfgPath, addrFile string) (*exec.Cmd, error) {
		args := append([]string{"serve", "--config", cfgPath, "--addr-file", addrFile}, b.serverFlags...)
		sc := exec.Command(exe, args...)
		sc.Stdout, sc.Stderr = logf, logf
		return sc, sc.Start()
	}
	if b.only != "" {
		b.c.Only = strings.Split(b.only, ",")
	}
	b.c.Log = func(format string, args ...any) { fmt.Fprintf(cmd.ErrOrStderr(), format+"\n", args...) }
}

// print writes the rows of res to w: as indented JSON with --json, else as a table.
func (b *benchServe) print(w io.Writer, res *servebench.Result) {
	if b.asJSON {
		_ = printJSON(w, res)
	} else {
		res.Print(w)
	}
}
