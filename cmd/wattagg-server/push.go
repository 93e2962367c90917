package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/wattagg/wattagg/server/client"
)

// clientFlags are the connection flags of push and pull.
type clientFlags struct {
	server, tokenFile, progress string
}

func (f *clientFlags) register(cmd *cobra.Command, needToken bool) {
	cmd.Flags().StringVar(&f.server, "server", "", "the server's URL, http://host:port or https://host:port")
	usage := "a file holding the client's bearer token (first line)"
	if !needToken {
		usage += "; optional"
	}
	cmd.Flags().StringVar(&f.tokenFile, "token-file", "", usage)
	cmd.Flags().StringVar(&f.progress, "progress", "auto", "progress bar on stderr: auto (when stderr is a terminal), always, never")
}

// client makes the API client of the flags.
func (f *clientFlags) client(needToken bool) (*client.Client, error) {
	if f.server == "" {
		return nil, usagef("--server URL is required")
	}
	var opts []client.Option
	switch {
	case f.tokenFile != "":
		b, err := os.ReadFile(f.tokenFile)
		if err != nil {
			return nil, err
		}
		tok, _, _ := strings.Cut(string(b), "\n")
		tok = strings.TrimSpace(tok)
		if tok == "" {
			return nil, usagef("--token-file %s is empty", f.tokenFile)
		}
		opts = append(opts, client.WithToken(tok))
	case needToken:
		return nil, usagef("--token-file FILE is required (the client's bearer token)")
	}
	c, err := client.New(f.server, opts...)
	if err != nil {
		return nil, usagef("%v", err)
	}
	return c, nil
}

func newPushCmd() *cobra.Command {
	var cf clientFlags
	var round int
	var weight float64
	cmd := &cobra.Command{
		Use:   "push --server URL --token-file F --round N FILE",
		Short: "Send this client's update (a .safetensors file) for a round to a wattagg server",
		Long: `push sends FILE as this client's update for round N and prints the server's acknowledgement
(JSON) once the update is durable on the server. The token decides which client you are; the
server refuses a bad update before reading its body (unknown round, closed round, wrong tensors or
dtypes) and names what is wrong. A retry of the same file is safe: it gets the same
acknowledgement. A different second update for the same round is refused (409).

The weight is --weight, else the file's num_examples metadata, else 1.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if round < 1 {
				return usagef("--round N is required (1, 2, ...)")
			}
			c, err := cf.client(true)
			if err != nil {
				return err
			}
			fi, err := os.Stat(args[0])
			if err != nil {
				return err
			}
			bar := newProgress(cmd.ErrOrStderr(), cf.progress, fmt.Sprintf("round %d", round))
			opts := []client.Option{client.WithProgress(bar.Set)}
			if cmd.Flags().Changed("weight") {
				opts = append(opts, client.WithWeight(weight))
			}
			ack, err := c.PushFile(cmd.Context(), round, args[0], opts...)
			bar.Finish()
			if err != nil {
				return fmt.Errorf("push %s (%d bytes) to round %d: %w", args[0], fi.Size(), round, err)
			}
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetIndent("", "  ")
			return enc.Encode(ack)
		},
	}
	cf.register(cmd, true)
	cmd.Flags().IntVar(&round, "round", 0, "the round the update is for")
	cmd.Flags().Float64Var(&weight, "weight", 0, "the update's weight (default: its num_examples metadata, else 1)")
	return cmd
}
