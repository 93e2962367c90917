package bench

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/wattagg/wattagg/device"
)

// Machine names the machine a report was measured on: what a reader needs to know before
// comparing two reports (figures of two machines, or of two builds, differ for those reasons).
type Machine struct {
	CPU         string   `json:"cpu"`
	Cores       int      `json:"cores,omitempty"`
	Threads     int      `json:"threads,omitempty"`
	Workers     int      `json:"workers"`
	Kernels     string   `json:"kernels"`                // the CPU kernel variant in use (avx2, avx512, generic)
	KernelsNote string   `json:"kernels_note,omitempty"` // per kernel family, where they differ
	Features    []string `json:"features,omitempty"`     // the CPU features the kernels may use
	GOAMD64     string   `json:"goamd64,omitempty"`
	GOOS        string   `json:"goos"`
	GOARCH      string   `json:"goarch"`
	GoVersion   string   `json:"go_version"`
	MemoryBytes int64    `json:"memory_bytes,omitempty"`
	GPUs        []string `json:"gpus,omitempty"`
	Meter       string   `json:"meter,omitempty"` // where joules come from, when the suite meters
}

// DescribeMachine describes the machine from its CPU device and the build.
func DescribeMachine(cpu device.Device) Machine {
	info := cpu.Info()
	m := Machine{CPU: strings.TrimSpace(info.Model), Cores: info.Cores, Threads: info.Threads, Workers: info.Workers,
		Kernels: info.Kernels, Features: info.Features, GOOS: runtime.GOOS, GOARCH: runtime.GOARCH,
		GoVersion: runtime.Version(), MemoryBytes: info.MemBytes}
	for _, n := range info.Notes {
		if v, ok := strings.CutPrefix(n, "kernels: "); ok {
			m.KernelsNote = v
		}
	}
	if m.CPU == "" {
		m.CPU = "unknown CPU"
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "GOAMD64" {
				m.GOAMD64 = s.Value
			}
		}
	}
	return m
}

// String is the one line that plot titles and Markdown headers name the machine with.
func (m Machine) String() string {
	parts := []string{m.CPU}
	switch {
	case m.Cores > 0 && m.Threads > 0:
		parts = append(parts, fmt.Sprintf("%d cores / %d threads", m.Cores, m.Threads))
	case m.Threads > 0:
		parts = append(parts, fmt.Sprintf("%d threads", m.Threads))
	}
	parts = append(parts, fmt.Sprintf("%d workers", m.Workers), m.Kernels+" kernels")
	if m.GOAMD64 != "" {
		parts = append(parts, "GOAMD64="+m.GOAMD64)
	}
	if len(m.GPUs) > 0 {
		parts = append(parts, strings.Join(m.GPUs, ", "))
	}
	return strings.Join(parts, ", ")
}
