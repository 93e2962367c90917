// Command wattagg aggregates federated-learning model updates at the speed of the hardware and
// says what each round cost.
//
//	wattagg aggregate -o global.safetensors clients/*.safetensors
//	wattagg devices
//	wattagg demo
//	wattagg bench floor|mean|e2e|stream
//
// Run `wattagg help COMMAND` for the flags of each command.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	// The CUDA backend registers itself: `--device cuda:0`, and GPUs in `wattagg devices`. It
	// loads the driver with dlopen only when a GPU is asked for, so it costs nothing elsewhere.
	_ "github.com/wattagg/wattagg/cgo/cuda"
)

// usageError marks errors in how the command was called (exit status 2).
type usageError struct{ error }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRoot().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "wattagg:", err)
		var u usageError
		if errors.As(err, &u) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "wattagg",
		Short: "Aggregate federated model updates at memory speed, and say what it cost",
		Long: `wattagg aggregates federated-learning model updates (.safetensors files) with FedAvg on
every core, using AVX2 kernels that run at the speed of memory, and reports time, bytes,
throughput and energy for each round.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageError{fmt.Errorf("%w (see wattagg %s --help)", err, c.Name())}
	})
	root.AddCommand(newAggregateCmd(), newDevicesCmd(), newDemoCmd(), newBenchCmd())
	root.AddCommand(newCalibrateCmd(), newConvertCmd())
	addServerCommands(root) // serve, push, pull, bench serve (serve.go)
	return root
}
