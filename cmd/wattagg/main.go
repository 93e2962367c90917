// Command wattagg aggregates federated-learning model updates at the speed of the hardware and
// says what each round cost.
//
//	wattagg aggregate -o global.safetensors clients/*.safetensors
//	wattagg devices
//	wattagg demo
//	wattagg bench floor|mean|e2e|stream
//	wattagg serve --config server.json   (runs wattagg-server)
//
// Run `wattagg help COMMAND` for the flags of each command.
package main

import (
	"os"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/wattagg/wattagg/internal/cli"

	// The CUDA backend registers itself: `--device cuda:0`, and GPUs in `wattagg devices`. It
	// loads the driver with dlopen only when a GPU is asked for, so it costs nothing elsewhere.
	_ "github.com/wattagg/wattagg/cgo/cuda"
)

// usagef is an error in how the command was called (exit status 2).
var usagef = cli.Usagef

func main() {
	setGC()
	cli.Main(newRoot())
}

// setGC sets gcPercent unless $GOGC says otherwise.
func setGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
}

// gcPercent is wattagg's GOGC unless the environment sets one. A run's large buffers are pooled
// Go memory, made once and live to the end, and its garbage is small; at the default (100) the
// first pooled buffer (the output ring, 6 MiB) set off a collection that cost `wattagg
// aggregate` of 32 × 4M f32 9 ms of its 0.12 s on the Zen 5 VM (median of 21 alternating runs:
// 128.2 ms at GOGC=100, 119.6 at 400, 117.7 with no collector). The server keeps the default:
// it runs for days, under a memory budget.
const gcPercent = 400

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "wattagg",
		Short: "Aggregate federated model updates at memory speed, and say what it cost",
		Long: `wattagg aggregates federated-learning model updates (.safetensors files) with FedAvg on
every core, using AVX2 kernels that run at the speed of memory, and reports time, bytes,
throughput and energy for each round.`,
	}
	cli.Setup(root)
	root.AddCommand(newAggregateCmd(), newDevicesCmd(), newDemoCmd(), newBenchCmd())
	root.AddCommand(newCalibrateCmd(), newConvertCmd())
	addServerCommands(root)
	return root
}

// addServerCommands adds serve, push, pull, round and bench serve: each hands its command line to the
// wattagg-server binary (internal/cli: why two binaries), which replaces this process.
func addServerCommands(root *cobra.Command) {
	root.AddCommand(
		serverCmd("serve --config FILE", "Run the aggregation server (HTTP and Arrow Flight; wattagg-server serve)", "serve"),
		serverCmd("push FILE", "Push an update to a round of wattagg serve (wattagg-server push)", "push"),
		serverCmd("pull -o FILE", "Pull the model of a closed round from wattagg serve (wattagg-server pull)", "pull"),
		serverCmd("round status|open|close|recovery", "Show, open or close rounds of wattagg serve; a secure-sum round's recovery (wattagg-server round)", "round"),
	)
	for _, c := range root.Commands() {
		if c.Name() == "bench" {
			c.AddCommand(serverCmd("serve", "Measure the server on loopback (wattagg-server bench serve)", "bench", "serve"))
		}
	}
}

// serverCmd is a command that runs `wattagg-server path... args...` in this process's place,
// flags and --help included.
func serverCmd(use, short string, path ...string) *cobra.Command {
	return &cobra.Command{
		Use:                use,
		Short:              short,
		DisableFlagParsing: true,
		RunE: func(_ *cobra.Command, args []string) error {
			return cli.RunSibling(cli.ServerBinary, cli.ServerEnv, append(path, args...))
		},
	}
}
