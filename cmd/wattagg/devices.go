package main

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/energy"
	"github.com/wattagg/wattagg/internal/sysinfo"
	"github.com/wattagg/wattagg/sched"
)

// devicesReport is what `wattagg devices --json` prints.
type devicesReport struct {
	Devices []device.Info `json:"devices"`
	// Host is the processor as this process gets it: the CPUs it may run on, their cores and
	// caches.
	Host   sysinfo.Host `json:"host"`
	GPUs   string       `json:"gpus"`
	Energy string       `json:"energy"`

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
			r.Host = sysinfo.Read()
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
		fmt.Fprintf(w, "%s: %s\n", d.Name, cmp.Or(d.Model, "model unknown"))
		if d.Kind == "cpu" && len(r.Host.CPUs) > 0 {
			printHost(w, r.Host, d.Workers)
		} else {
			printDeviceSizes(w, d)
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

// printHost prints the CPUs this process may run on and the caches serving them; what is
// unknown is said so, never printed as a number. Its notes are among the CPU device's.
func printHost(w io.Writer, h sysinfo.Host, workers int) {
	line := fmt.Sprintf("  cpus: %d", len(h.CPUs))
	if h.CPUsFrom == "sched_getaffinity" {
		line += fmt.Sprintf(" this process may run on (%s)", sysinfo.FormatCPUList(h.CPUs))
	} else {
		line += " (counted; the OS gives no list)"
	}
	if h.Cores > 0 {
		line += fmt.Sprintf(", %s", plural(h.Cores, "physical core"))
		if h.CoresFrom != "sysfs" {
			line += " (" + h.CoresFrom + ")"
		}
	} else {
		line += ", physical cores unknown"
	}
	fmt.Fprintf(w, "%s; %s\n", line, plural(workers, "worker"))
	if len(h.Caches) == 0 {
		fmt.Fprintln(w, "  caches: unknown")
		return
	}
	var parts []string
	for _, c := range h.Caches {
		p := c.Name() + " " + sizeIEC(c.Size)
		if c.Instances > 1 {
			p += fmt.Sprintf(" ×%d", c.Instances)
		}
		switch {
		case c.SharedBy > 1 && c.Instances > 1:
			p += fmt.Sprintf(" (each shared by %d CPUs)", c.SharedBy)
		case c.SharedBy > 1:
			p += fmt.Sprintf(" (shared by %d CPUs)", c.SharedBy)
		}
		parts = append(parts, p)
	}
	from := h.CachesFrom
	if from == "cpuid" {
		from = "cpuid, one core's"
	}
	fmt.Fprintf(w, "  caches (%s): %s\n", from, strings.Join(parts, ", "))
}

// plural is "1 worker", "2 workers".
func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// printDeviceSizes prints the cores and caches a device other than the CPU reports, those it
// knows.
func printDeviceSizes(w io.Writer, d device.Info) {
	if d.Cores > 0 {
		fmt.Fprintf(w, "  cores: %d physical, %d logical; %d workers\n", d.Cores, d.Threads, d.Workers)
	}
	var caches []string
	if d.CacheL2 > 0 {
		caches = append(caches, "L2 "+sizeIEC(int64(d.CacheL2)))
	}
	if d.CacheL3 > 0 {
		caches = append(caches, "L3 "+sizeIEC(int64(d.CacheL3)))
	}
	if len(caches) > 0 {
		fmt.Fprintf(w, "  cache: %s\n", strings.Join(caches, ", "))
	}
}

// sizeIEC writes a size in binary units, as caches are built: "32 KiB", "1.25 MiB".
func sizeIEC(b int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	v, i := float64(b), 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	return strconv.FormatFloat(v, 'g', 4, 64) + " " + units[i]
}
