package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/wattagg/wattagg/device"
)

// devicesReport is what `wattagg devices --json` prints.
type devicesReport struct {
	Devices []device.Info `json:"devices"`
	GPUs    string        `json:"gpus"`
	Energy  string        `json:"energy"`
}

func newDevicesCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "devices",
		Short: "List the devices wattagg can run on and the kernels it selected",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cpu, err := device.NewCPU()
			if err != nil {
				return err
			}
			r := devicesReport{
				Devices: []device.Info{cpu.Info()},
				GPUs:    "none: this build has no GPU device yet",
				Energy:  "none: energy metering (RAPL, NVML) is not in this build yet",
			}
			if asJSON {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(r)
			}
			printDevices(cmd.OutOrStdout(), r)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return cmd
}

func printDevices(w io.Writer, r devicesReport) {
	for _, d := range r.Devices {
		fmt.Fprintf(w, "%s: %s\n", d.Name, d.Model)
		if d.Cores > 0 {
			fmt.Fprintf(w, "  cores: %d physical, %d logical; %d workers\n", d.Cores, d.Threads, d.Workers)
		}
		if d.CacheL2 > 0 || d.CacheL3 > 0 {
			fmt.Fprintf(w, "  cache: L2 %s per core, L3 %s\n", human(float64(d.CacheL2), "B"), human(float64(d.CacheL3), "B"))
		}
		features := "none"
		if len(d.Features) > 0 {
			features = strings.Join(d.Features, " ")
		}
		fmt.Fprintf(w, "  kernels: %s (features used: %s)\n", d.Kernels, features)
		for _, n := range d.Notes {
			fmt.Fprintf(w, "  note: %s\n", n)
		}
	}
	fmt.Fprintf(w, "gpus: %s\n", r.GPUs)
	fmt.Fprintf(w, "energy: %s\n", r.Energy)
}
