package device

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// Backend is a kind of device other than the CPU (a GPU vendor API), registered by its package
// at init so that the CLI and the planner can find devices by name without importing cgo code
// they may not need.
type Backend struct {
	Kind string // the name prefix: "cuda" for "cuda:0"
	// Discover lists the devices present. When there are none it returns an error saying why
	// (no driver, no GPU, built without cgo), for `wattagg devices` to show.
	Discover func() ([]Info, error)
	// Open opens device index.
	Open func(index int) (Device, error)
}

var (
	backendsMu sync.Mutex
	backends   []Backend
)

// Register adds a backend. It panics on a duplicate kind: that is a programming error.
func Register(b Backend) {
	backendsMu.Lock()
	defer backendsMu.Unlock()
	if b.Kind == "cpu" || slices.ContainsFunc(backends, func(o Backend) bool { return o.Kind == b.Kind }) {
		panic("device: backend " + b.Kind + " registered twice")
	}
	backends = append(backends, b)
}

// Found is what Discover says of one backend.
type Found struct {
	Kind    string `json:"kind"`
	Devices []Info `json:"devices,omitempty"`
	Reason  string `json:"reason,omitempty"` // why there are none
}

// Discover lists the registered backends and their devices (the CPU is always present and not
// listed here).
func Discover() []Found {
	backendsMu.Lock()
	bs := slices.Clone(backends)
	backendsMu.Unlock()
	var out []Found
	for _, b := range bs {
		infos, err := b.Discover()
		f := Found{Kind: b.Kind, Devices: infos}
		if err != nil {
			f.Reason = err.Error()
		}
		out = append(out, f)
	}
	return out
}

// Open opens a device by name: "cpu", or KIND:INDEX of a registered backend ("cuda:0").
func Open(name string, cpuOpts ...CPUOption) (Device, error) {
	if name == "cpu" {
		return NewCPU(cpuOpts...)
	}
	kind, idx, ok := strings.Cut(name, ":")
	i, err := strconv.Atoi(idx)
	if !ok || err != nil || i < 0 {
		return nil, fmt.Errorf("%w: device %q: want cpu or KIND:INDEX (e.g. cuda:0)", ErrUnsupported, name)
	}
	backendsMu.Lock()
	k := slices.IndexFunc(backends, func(b Backend) bool { return b.Kind == kind })
	var b Backend
	if k >= 0 {
		b = backends[k]
	}
	backendsMu.Unlock()
	if k < 0 {
		return nil, fmt.Errorf("%w: device %q: no %s backend in this build", ErrUnsupported, name, kind)
	}
	return b.Open(i)
}
