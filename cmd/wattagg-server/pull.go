package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/wattagg/wattagg/server/api"
	"github.com/wattagg/wattagg/server/client"
)

func newPullCmd() *cobra.Command {
	var cf clientFlags
	var round int
	var out string
	var wait bool
	cmd := &cobra.Command{
		Use:   "pull --server URL [--round N] -o FILE",
		Short: "Download a round's aggregated model from a wattagg server",
		Long: `pull downloads the model of round N (the latest model without --round) into FILE,
atomically: into a temporary file beside it, checked to be a valid .safetensors file, synced,
then renamed over FILE. A failed pull leaves FILE as it was. A round that failed or is still
open has no model (the server says which); with --wait, pull first waits for round N to end
(long polls of the server, no busy polling) and then downloads its model.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return usagef("-o FILE is required")
			}
			if round < 0 {
				return usagef("--round %d: want a round number", round)
			}
			if wait && round == 0 {
				return usagef("--wait needs --round N (the round to wait for)")
			}
			c, err := cf.client(false)
			if err != nil {
				return err
			}
			desc := "latest model"
			if round > 0 {
				desc = fmt.Sprintf("round %d", round)
			}
			if wait {
				st, err := c.WaitEnded(cmd.Context(), round)
				if err != nil {
					return fmt.Errorf("waiting for %s: %w", desc, err)
				}
				if st.State != api.StateClosed {
					return fmt.Errorf("pull %s: the round %s: %s", desc, st.State, st.Reason)
				}
			}
			bar := newProgress(cmd.ErrOrStderr(), cf.progress, desc)
			err = c.Pull(cmd.Context(), round, out, client.WithProgress(bar.Set))
			bar.Finish()
			if err != nil {
				return fmt.Errorf("pull %s: %w", desc, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s -> %s\n", desc, out)
			return nil
		},
	}
	cf.register(cmd, false)
	cmd.Flags().IntVar(&round, "round", 0, "the round whose model to download (default: the latest)")
	cmd.Flags().StringVarP(&out, "output", "o", "", "the file to write the model to")
	cmd.Flags().BoolVar(&wait, "wait", false, "wait for round --round to end, then download its model")
	return cmd
}
