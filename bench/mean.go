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
	rows, _, err := WeightedMeans(ctx, []MeanCase{{Updates: updates, Options: opts}}, dev, runs)
	if err != nil {
		return Row{}, err
	}
	return rows[0], nil
}

// MeanCase is one set of updates WeightedMeans measures, with its options.
type MeanCase struct {
	Updates []*tensor.Set
	Options []aggregate.Option
}

// WeightedMeans is WeightedMean for several cases (the same model in several dtypes, say)
// measured in interleaved runs: run r of every case, then its read floor, before run r+1 of
// any. On a machine whose memory bandwidth drifts (other tenants of a VM: the read floor here
// moves between 27 and 46 GB/s from one minute to the next), cases measured one after the
// other compare the drift as much as the cases; interleaved, the drift falls on all of them
// alike. It returns a row per case (median time, best floor) and every run's time:
// times[k][r] is case k's run r.
func WeightedMeans(ctx context.Context, cases []MeanCase, dev device.Device, runs int) ([]Row, [][]float64, error) {
	type state struct {
		opts   []aggregate.Option
		bufs   [][]byte
		rep    *aggregate.Report
		floors []float64
	}
	st := make([]state, len(cases))
	workers := max(1, dev.Info().Workers)
	for k, c := range cases {
		dst, _, err := aggregate.WeightedMean(ctx, c.Updates, nil, append(slices.Clone(c.Options), aggregate.WithDevices(dev))...)
		if err != nil {
			return nil, nil, err
		}
		st[k].opts = append(slices.Clone(c.Options), aggregate.WithDevices(dev), aggregate.WithOutput(dst))
		for _, u := range c.Updates {
			for _, t := range u.Tensors() {
				st[k].bufs = append(st[k].bufs, t.Bytes())
			}
		}
	}
	times := make([][]float64, len(cases))
	for range max(1, runs) {
		for k, c := range cases {
			start := time.Now()
			_, rep, err := aggregate.WeightedMean(ctx, c.Updates, nil, st[k].opts...)
			if err != nil {
				return nil, nil, err
			}
			times[k] = append(times[k], time.Since(start).Seconds())
			st[k].rep = rep
			st[k].floors = append(st[k].floors, ReadFloor(st[k].bufs, workers, (3+runs-1)/max(1, runs)))
		}
	}
	rows := make([]Row, len(cases))
	for k, c := range cases {
		rows[k] = meanRow(c.Updates, st[k].rep, dev, median(times[k]), slices.Max(st[k].floors))
	}
	return rows, times, nil
}

// meanRow is the row of a WeightedMean measurement: seconds the median run, floor the read
// bandwidth.
func meanRow(updates []*tensor.Set, rep *aggregate.Report, dev device.Device, seconds, floor float64) Row {
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
	row.set(seconds, floor)
	return row
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
