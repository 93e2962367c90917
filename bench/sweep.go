package bench

import (
	"context"
	"fmt"
	"runtime/debug"
	"slices"
	"strings"

	"github.com/wattagg/wattagg/tensor"
)

// SweepSizes are the points of the two sweeps a throughput plot needs: the client count at
// one model size, and the model size at one client count.
type SweepSizes struct {
	Clients      []int // client counts of the clients sweep
	ClientParams int   // the model size of the clients sweep
	Params       []int // model sizes of the params sweep
	ParamClients int   // the client count of the params sweep
}

// SweepPoint is one measurement of a sweep.
type SweepPoint struct {
	Sweep   string // SweepClients or SweepParams
	Clients int
	Params  int
}

// Points lists every point, the clients sweep first, each sweep in increasing size.
func (s SweepSizes) Points() []SweepPoint {
	var out []SweepPoint
	if s.ClientParams > 0 {
		for _, c := range s.Clients {
			out = append(out, SweepPoint{SweepClients, c, s.ClientParams})
		}
	}
	if s.ParamClients > 0 {
		for _, p := range s.Params {
			out = append(out, SweepPoint{SweepParams, s.ParamClients, p})
		}
	}
	return out
}

// Bytes is the memory the larger sweep's federation takes in dtype dt.
func (s SweepSizes) Bytes(dt tensor.DType) int64 {
	c := int64(slices.Max(append([]int{0}, s.Clients...))) * int64(s.ClientParams)
	p := int64(s.ParamClients) * int64(slices.Max(append([]int{0}, s.Params...)))
	return max(c, p) * int64(dt.Size())
}

// String is the sweep as a setting: "clients 8..128 at 4M, params 1M..64M at 8".
func (s SweepSizes) String() string {
	var parts []string
	if len(s.Clients) > 0 && s.ClientParams > 0 {
		parts = append(parts, fmt.Sprintf("clients %v at %s params", s.Clients, ParamsLabel(int64(s.ClientParams))))
	}
	if len(s.Params) > 0 && s.ParamClients > 0 {
		var ps []string
		for _, p := range s.Params {
			ps = append(ps, ParamsLabel(int64(p)))
		}
		parts = append(parts, fmt.Sprintf("params %v at %d clients", ps, s.ParamClients))
	}
	return strings.Join(parts, "; ")
}

// RunSweep calls measure at every point of s with updates in dtype dt. Each sweep's federation
// is generated once, at its largest size, and every point sees views of a prefix of it (the
// first clients, the first params coordinates), so a sweep costs one generation and the memory
// of its largest point; that memory is dropped before the next sweep.
func RunSweep(ctx context.Context, s SweepSizes, dt tensor.DType, measure func(SweepPoint, []*tensor.Set) error) error {
	points := s.Points()
	for _, sweep := range []string{SweepClients, SweepParams} {
		var clients, params int
		for _, p := range points {
			if p.Sweep == sweep {
				clients, params = max(clients, p.Clients), max(params, p.Params)
			}
		}
		if clients == 0 || params == 0 {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		// The previous sweep's federation is garbage now: return it before making the next, so
		// that the peak is one federation, not two (the heap would otherwise grow to twice the
		// live one before collecting).
		debug.FreeOSMemory()
		fed, err := InMemoryUpdates(clients, params, dt)
		if err != nil {
			return err
		}
		for _, p := range points {
			if p.Sweep != sweep {
				continue
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			updates, err := Prefix(fed, p.Clients, p.Params)
			if err != nil {
				return err
			}
			if err := measure(p, updates); err != nil {
				return err
			}
		}
	}
	debug.FreeOSMemory()
	return nil
}

// Prefix returns views (no copy) of the first params elements of the one tensor of each of
// the first clients updates, as InMemoryUpdates makes them.
func Prefix(updates []*tensor.Set, clients, params int) ([]*tensor.Set, error) {
	if clients < 1 || clients > len(updates) {
		return nil, fmt.Errorf("bench: %d clients of %d", clients, len(updates))
	}
	out := make([]*tensor.Set, clients)
	for k, u := range updates[:clients] {
		if u.Len() != 1 {
			return nil, fmt.Errorf("bench: %s holds %d tensors, want 1", u.Source, u.Len())
		}
		t := u.At(0)
		if params < 1 || params > t.Len() {
			return nil, fmt.Errorf("bench: %d params of %d", params, t.Len())
		}
		f := t.Field()
		es := f.DType.Size()
		v, err := tensor.FromBytes(f.Name, f.DType, []int{params}, t.Bytes()[:params*es])
		if err != nil {
			return nil, err
		}
		if out[k], err = tensor.NewSet(v); err != nil {
			return nil, err
		}
		out[k].Source = u.Source
	}
	return out, nil
}
