package bench

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
)

// Row is one measured figure beside its floor.
type Row struct {
	Name      string  `json:"name"`
	Rule      string  `json:"rule,omitempty"`
	Clients   int     `json:"clients,omitempty"`
	DType     string  `json:"dtype,omitempty"`
	Seconds   float64 `json:"seconds"` // median of the runs
	Bytes     int64   `json:"bytes"`   // counted bytes: read + written
	GBps      float64 `json:"gb_per_s"`
	Params    int64   `json:"params"`
	ParamsPS  float64 `json:"params_per_s"`
	FloorGBps float64 `json:"floor_gb_per_s,omitempty"`
	Ratio     float64 `json:"ratio_to_floor,omitempty"`
	FloorName string  `json:"floor_name,omitempty"` // what bounds it: "read bandwidth / 2 passes"
	Note      string  `json:"note,omitempty"`
	Skipped   string  `json:"skipped,omitempty"`  // why it was not measured here
	IsFloor   bool    `json:"is_floor,omitempty"` // the row is a floor itself
}

// Result is r as a report's result, in GB/s, along sweep ("" for a main row).
func (r Row) Result(sweep string) Result {
	return Result{Name: r.Name, Sweep: sweep, Rule: r.Rule, Clients: r.Clients, Params: r.Params, DType: r.DType,
		Value: r.GBps, Unit: "GB/s", Floor: r.FloorGBps, FloorName: r.FloorName, Ratio: r.Ratio,
		Seconds: r.Seconds, ParamsPerSecond: r.ParamsPS, Note: r.Note, Skipped: r.Skipped, IsFloor: r.IsFloor}
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
// aligned, pre-touched memory, with values from a Federation, on all cores.
func InMemoryUpdates(clients, params int, dt tensor.DType) ([]*tensor.Set, error) {
	fed := Federation{Model: Flat(params), Seed: 1}
	sets := make([]*tensor.Set, clients)
	errs := make([]error, clients)
	var wg sync.WaitGroup
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	for k := range sets {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			sets[k], errs[k] = inMemoryUpdate(&fed, k, params, dt)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return sets, nil
}

func inMemoryUpdate(fed *Federation, k, params int, dt tensor.DType) (*tensor.Set, error) {
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
	s, err := tensor.NewSet(t)
	if err != nil {
		return nil, err
	}
	s.Source = fmt.Sprintf("client-%03d", k)
	return s, nil
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
		Name:      fmt.Sprintf("fedavg %d x %s %s", len(updates), ParamsLabel(rep.Params), rep.InDTypes[0]),
		Rule:      "fedavg",
		Clients:   len(updates),
		DType:     rep.InDTypes[0],
		Bytes:     rep.BytesRead + rep.BytesWritten,
		Params:    rep.Params,
		FloorName: "read bandwidth",
		Note:      fmt.Sprintf("acc %s, %d workers", rep.AccDType, dev.Info().Workers),
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
