// Command wattagg-server is wattagg's aggregation server and its clients: `wattagg serve`,
// `wattagg push`, `wattagg pull`, `wattagg round` and `wattagg bench serve` run it in their place. It is a
// binary of its own so that gRPC, Arrow Flight and the Prometheus client stay out of the
// start-up of `wattagg aggregate` (internal/cli).
//
//	wattagg-server serve --config server.json
//	wattagg-server push --server URL --token-file T --round 1 update.safetensors
//	wattagg-server pull --server URL --round 1 -o global.safetensors
//	wattagg-server round close --server URL --token-file admin.token --round 1
//	wattagg-server bench serve
package main

import (
	"github.com/spf13/cobra"

	"github.com/wattagg/wattagg/internal/cli"
)

// usagef is an error in how the command was called (exit status 2).
var usagef = cli.Usagef

// newProgress is the byte progress bar of push and pull.
var newProgress = cli.NewProgress

func main() { cli.Main(newRoot()) }

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "wattagg-server",
		Short: "wattagg's aggregation server and its clients (what wattagg serve, push and pull run)",
	}
	cli.Setup(root)
	bench := &cobra.Command{Use: "bench", Short: "Measure the server"}
	bench.AddCommand(newBenchServeCmd())
	root.AddCommand(newServeCmd(), newPushCmd(), newPullCmd(), newRoundCmd(), bench)
	return root
}
