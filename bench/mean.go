package bench

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
)

// Row is one measured figure beside its floor.
type Row struct {
	Name      string  `json:"name"`
	Seconds   float64 `json:"seconds"` // median of the runs
	Bytes     int64   `json:"bytes"`   // counted bytes: read + written
	GBps      float64 `json:"gb_per_s"`
	Params    int64   `json:"params"`
	ParamsPS  float64 `json:"params_per_s"`
	FloorGBps float64 `json:"floor_gb_per_s,omitempty"`
	Ratio     float64 `json:"ratio_to_floor,omitempty"`
	Note      string  `json:"note,omitempty"`
}

func (r *Row) set(seconds float64, floor float64) {
	r.Seconds = seconds
	r.GBps = float64(r.Bytes) / seconds / 1e9
	r.ParamsPS = float64(r.Params) / seconds
	if floor > 0 {
		r.FloorGBps = floor / 1e9
		r.Ratio = r.GBps / r.FloorGBps
	}
}

// InMemoryUpdates builds clients updates of one f32/bf16/f16 vector of params elements in
// aligned, pre-touched memory, with values from a Federation.
func InMemoryUpdates(clients, params int, dt tensor.DType) ([]*tensor.Set, error) {
	fed := Federation{Model: Flat(params), Seed: 1}
	sets := make([]*tensor.Set, clients)
	for k := range sets {
		t, err := tensor.New("w", dt, params)
		if err != nil {
			return nil, err
		}
		b := t.Bytes()
		for j := range params {
			if err := encode(b, j, dt, fed.Value(k, int64(j))); err != nil {
				return nil, err
			}
		}
		if sets[k], err = tensor.NewSet(t); err != nil {
			return nil, err
		}
		sets[k].Source = fmt.Sprintf("client-%03d", k)
	}
	return sets, nil
}

// WeightedMean measures aggregate.WeightedMean on in-memory updates with a reused output (the
// steady state of a server), median of runs, beside the read floor of the same memory.
func WeightedMean(ctx context.Context, updates []*tensor.Set, dev device.Device, runs int, opts ...aggregate.Option) (Row, error) {
	dst, _, err := aggregate.WeightedMean(ctx, updates, nil, append(opts, aggregate.WithDevices(dev))...)
	if err != nil {
		return Row{}, err
	}
	opts = append(opts, aggregate.WithDevices(dev), aggregate.WithOutput(dst))
	times := make([]float64, 0, runs)
	var rep *aggregate.Report
	for range max(1, runs) {
		start := time.Now()
		if _, rep, err = aggregate.WeightedMean(ctx, updates, nil, opts...); err != nil {
			return Row{}, err
		}
		times = append(times, time.Since(start).Seconds())
	}
	bufs := make([][]byte, 0, len(updates))
	for _, u := range updates {
		for _, t := range u.Tensors() {
			bufs = append(bufs, t.Bytes())
		}
	}
	floor := ReadFloor(bufs, max(1, dev.Info().Workers), 3)
	row := Row{
		Name:   fmt.Sprintf("fedavg %d x %s %s", len(updates), human(rep.Params), rep.InDTypes[0]),
		Bytes:  rep.BytesRead + rep.BytesWritten,
		Params: rep.Params,
		Note:   fmt.Sprintf("acc %s, %d workers", rep.AccDType, dev.Info().Workers),
	}
	row.set(median(times), floor)
	return row, nil
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func human(n int64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.3gG", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.3gM", float64(n)/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.3gk", float64(n)/1e3)
	}
	return fmt.Sprint(n)
}
