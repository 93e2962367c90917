package main

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/wattagg/wattagg/internal/cli"
	"github.com/wattagg/wattagg/server/client"
)

// newRoundCmd is `round`: what an admin does to the rounds of a running server, with the API's
// answers printed as JSON on stdout.
func newRoundCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "round",
		Short: "Show, open or close rounds of a wattagg server, or give a secure-sum round its recovery",
		Long: `round status shows a round's status (every round's without --round); open, close and
recovery need the admin token (--token-file). recovery gives a secure-sum round ("rule":
"secagg") the seeds of its unmasking round, a JSON file (wattagg serve --help, README: Secure-sum
rounds); a full round closes with it. Each prints the server's answer as JSON.`,
	}
	cmd.AddCommand(
		roundAction("status [--round N]", "Show round N's status, or every round's", false, roundOptional,
			func(cmd *cobra.Command, c *client.Client, round int, _ []string) (any, error) {
				if round == 0 {
					return c.Rounds(cmd.Context())
				}
				return c.Status(cmd.Context(), round)
			}),
		roundAction("open", "Open the next round (admin)", true, roundNone,
			func(cmd *cobra.Command, c *client.Client, _ int, _ []string) (any, error) {
				return c.OpenRound(cmd.Context())
			}),
		roundAction("close --round N", "Close round N now (admin)", true, roundRequired,
			func(cmd *cobra.Command, c *client.Client, round int, _ []string) (any, error) {
				return c.CloseRound(cmd.Context(), round)
			}),
		roundAction("recovery --round N FILE", "Give secure-sum round N its recovery from FILE (admin)", true, roundRequired,
			func(cmd *cobra.Command, c *client.Client, round int, args []string) (any, error) {
				if len(args) != 1 {
					return nil, usagef("recovery needs one FILE: the recovery's JSON")
				}
				rec, err := cli.ReadRecovery(args[0])
				if err != nil {
					return nil, err
				}
				return c.SetRecovery(cmd.Context(), round, rec)
			}),
	)
	return cmd
}

// roundFlag is whether a round subcommand takes --round.
type roundFlag int

const (
	roundNone roundFlag = iota
	roundOptional
	roundRequired
)

// roundAction is one round subcommand: its flags (--server, --token-file for an admin's,
// --round as rf says), the checks they need, and run's answer printed as indented JSON.
func roundAction(use, short string, admin bool, rf roundFlag, run func(*cobra.Command, *client.Client, int, []string) (any, error)) *cobra.Command {
	var cf clientFlags
	var round int
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		RunE: func(cmd *cobra.Command, args []string) error {
			if round < 0 || rf == roundRequired && round == 0 {
				return usagef("--round N is required (a round number)")
			}
			c, err := cf.client(admin)
			if err != nil {
				return err
			}
			out, err := run(cmd, c, round, args)
			if err != nil {
				return err
			}
			return printJSON(cmd.OutOrStdout(), out)
		},
	}
	cmd.Flags().StringVar(&cf.server, "server", "", "the server's URL, http://host:port or https://host:port")
	if admin {
		cmd.Flags().StringVar(&cf.tokenFile, "token-file", "", "a file holding the admin's bearer token (first line)")
	}
	if rf != roundNone {
		cmd.Flags().IntVar(&round, "round", 0, "the round")
	}
	return cmd
}

func printJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}
