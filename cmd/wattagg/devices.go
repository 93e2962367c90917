package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/energy"
	"github.com/wattagg/wattagg/sched"
)

// devicesReport is what `wattagg devices --json` prints.
type devicesReport struct {
	Devices []device.Info `json:"devices"`
	GPUs    string        `json:"gpus"`
	Energy  string        `json:"energy"`

	// Meters, counters and the calibration profile (energy.go).
	Meters      []meterInfo    `json:"meters"`
	RAPL        energy.Status  `json:"rapl"`
	NVML        energy.Status  `json:"nvml"`
	Backends    []device.Found `json:"backends,omitempty"`
	Notes       []string       `json:"notes,omitempty"`
	ProfilePath string         `json:"profile_path"`
	Profile     *sched.Profile `json:"profile"`
	ProfileNote string         `json:"profile_note,omitempty"`
}

// meterInfo is one meter and what it covers.
type meterInfo struct {
	Device string `json:"device,omitempty"` // the device it covers; empty: none
	energy.Provenance
}

func newDevicesCmd() *cobra.Command {
	var asJSON bool
	var ef energyFlags
	cmd := &cobra.Command{
		Use:   "devices",
		Short: "List the devices, their energy meters and their calibration profile",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			m, err := ef.openMachine(nil)
			if err != nil {
				return err
			}
			defer m.Close()
			r, err := describeMachine(m, ef)
			if err != nil {
				return err
			}
			if asJSON {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(r)
			}
			printDevices(cmd.OutOrStdout(), r)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	ef.register(cmd.Flags())
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
	printMeters(w, r)
}
