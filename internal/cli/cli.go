// Package cli is what wattagg's two binaries share: usage errors and their exit status, the way
// a command line runs, the progress bar, and the hand-over of a command to the sibling binary.
//
// wattagg itself holds the commands of an aggregation node (aggregate, convert, devices,
// calibrate, demo, bench); the server and its clients (serve, push, pull, bench serve) are
// wattagg-server, which `wattagg serve ...` runs in its place. The split keeps gRPC, Arrow
// Flight, protobuf and the Prometheus client out of the aggregation's start-up: their package
// initialisers and the larger binary cost 2-3 ms of every `wattagg aggregate` (README: design
// notes).
package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// UsageError marks an error in how a command was called: exit status 2.
type UsageError struct{ Err error }

func (u UsageError) Error() string { return u.Err.Error() }
func (u UsageError) Unwrap() error { return u.Err }

// Usagef formats a UsageError.
func Usagef(format string, args ...any) error { return UsageError{fmt.Errorf(format, args...)} }

// Setup makes root's errors wattagg's: printed once by Main, flag errors as usage errors.
func Setup(root *cobra.Command) {
	root.SilenceUsage, root.SilenceErrors = true, true
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return UsageError{fmt.Errorf("%w (see wattagg %s --help)", err, c.Name())}
	})
}

// Main runs root (made with Setup) under a context that SIGINT and SIGTERM cancel, prints a
// failure as one line "wattagg: ..." on stderr and exits 1, or 2 for a UsageError.
func Main(root *cobra.Command) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := root.ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "wattagg:", err)
		var u UsageError
		if errors.As(err, &u) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}
