package aggregate

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/energy"
	"github.com/wattagg/wattagg/sched"
	"github.com/wattagg/wattagg/tensor"
)

// placement is where a batch job ran and what it cost.
type placement struct {
	plan     *sched.Plan
	stats    []device.Stats // one per device that ran chunks
	energy   []energy.Measurement
	meterErr error // a meter that failed: the work stands, its joules are unknown
	learned  *sched.Learned
}

// workers is the goroutines of every device the round may use: the producers of output chunks.
func (r *Round) workers() int {
	n := 0
	for _, d := range r.cfg.devs {
		n += max(1, device.WorkersOf(d))
	}
	return n
}

// execute runs the job on the devices the planner chose (on the one device without a
// planner), one SumJob per device with its chunks and the same Output, concurrently, and reads
// the meters around it. The planner then learns from what the meters saw.
func (r *Round) execute(ctx context.Context, job *device.SumJob) (device.Stats, error) {
	pl := &placement{}
	r.acct.placed = pl
	pool := r.cfg.devs
	if r.cfg.planner != nil {
		p, err := r.cfg.planner.Plan(request(pool, job))
		if err != nil {
			return device.Stats{}, err
		}
		pl.plan = p
	}
	win, werr := energy.Start(r.cfg.meters...)
	var stats []device.Stats
	var err error
	if pl.plan == nil {
		var st device.Stats
		st, err = r.cfg.dev().WeightedSum(ctx, job)
		stats = []device.Stats{st}
	} else {
		stats, err = runShares(ctx, job, pool, pl.plan)
	}
	if werr == nil {
		pl.energy, werr = win.Stop()
	}
	pl.meterErr = werr
	pl.stats = stats
	var total device.Stats
	for _, s := range stats {
		total.Add(s)
	}
	if len(stats) == 1 {
		total.Device = stats[0].Device
	}
	if err != nil {
		return total, err
	}
	if pl.plan != nil && werr == nil && len(pl.energy) > 0 {
		secs := map[string]float64{}
		for _, s := range stats {
			secs[s.Device] = s.Seconds
		}
		l := r.cfg.planner.Observe(pl.plan, sched.Outcome{Energy: energy.Total(pl.energy), DeviceSeconds: secs})
		pl.learned = &l
	}
	return total, nil
}

// request describes the job to the planner.
func request(pool []device.Device, job *device.SumJob) sched.Request {
	in, out := map[tensor.DType]int64{}, map[tensor.DType]int64{}
	var elems int64
	for t, f := range job.Fields {
		elems += int64(f.Len)
		out[f.Out] += int64(f.Len)
		for _, x := range job.Inputs {
			in[x[t].DType] += int64(f.Len)
		}
	}
	req := sched.Request{
		Op:       sched.WeightedSum,
		Workload: sched.Workload{Clients: len(job.Inputs), Elements: elems, In: most(in), Out: most(out)},
		Chunks:   make([]int64, len(job.Chunks)),
	}
	for _, d := range pool {
		req.Devices = append(req.Devices, d.Name())
	}
	for c, ch := range job.Chunks {
		for _, p := range ch.Pieces {
			req.Chunks[c] += int64(p.Hi - p.Lo)
		}
	}
	return req
}

// most is the dtype with the most elements (F32 when none).
func most(n map[tensor.DType]int64) tensor.DType {
	best, bn := tensor.F32, int64(-1)
	for dt, k := range n {
		if k > bn || k == bn && dt < best {
			best, bn = dt, k
		}
	}
	return best
}

// runShares runs each share of the plan on its device, concurrently; the first error stops
// the others.
func runShares(ctx context.Context, job *device.SumJob, pool []device.Device, p *sched.Plan) ([]device.Stats, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	stats := make([]device.Stats, len(p.Shares)) // in plan order, whoever finishes first
	ran := make([]bool, len(p.Shares))
	devs := make([]device.Device, len(p.Shares))
	for k, sh := range p.Shares {
		for _, d := range pool {
			if d.Name() == sh.Device {
				devs[k] = d
			}
		}
		if devs[k] == nil && len(sh.Chunks) > 0 {
			return nil, fmt.Errorf("%w: the plan names device %q, which was not given", ErrOption, sh.Device)
		}
	}
	for k, sh := range p.Shares {
		if len(sh.Chunks) == 0 {
			continue
		}
		dev := devs[k]
		sub := *job
		sub.Chunks = make([]device.Chunk, len(sh.Chunks))
		for i, c := range sh.Chunks {
			sub.Chunks[i] = job.Chunks[c]
		}
		out := &subOutput{out: job.Output, idx: sh.Chunks}
		sub.Output = out
		ran[k] = true
		wg.Add(1)
		go func(k int, dev device.Device, rate float64) {
			defer wg.Done()
			st, err := runPaced(ctx, dev, &sub, out, rate)
			mu.Lock()
			defer mu.Unlock()
			stats[k] = st
			if err != nil && firstErr == nil {
				firstErr = err
				cancel()
			}
		}(k, dev, sh.Rate)
	}
	wg.Wait()
	var out []device.Stats
	for k, st := range stats {
		if ran[k] {
			out = append(out, st)
		}
	}
	return out, firstErr
}

// runPaced runs a job flat out, or at rate < 1 duty-cycled: batches of chunks at full speed,
// each followed by a rest, so that the device's average draw stays within its share of a power
// cap.
func runPaced(ctx context.Context, dev device.Device, job *device.SumJob, out *subOutput, rate float64) (device.Stats, error) {
	if rate >= 0.999 || len(job.Chunks) < 2 {
		return dev.WeightedSum(ctx, job)
	}
	const batches = 32
	start := time.Now()
	var total device.Stats
	chunks := job.Chunks
	per := max(1, (len(chunks)+batches-1)/batches)
	for lo := 0; lo < len(chunks); lo += per {
		hi := min(lo+per, len(chunks))
		part := *job
		part.Chunks = chunks[lo:hi]
		part.Output = &subOutput{out: out.out, idx: out.idx[lo:hi]}
		busy := time.Now()
		st, err := dev.WeightedSum(ctx, &part)
		total.Add(st)
		total.Device = st.Device
		if err != nil {
			return total, err
		}
		rest := time.Duration(float64(time.Since(busy)) * (1/rate - 1))
		t := time.NewTimer(rest)
		select {
		case <-ctx.Done():
			t.Stop()
			return total, ctx.Err()
		case <-t.C:
		}
	}
	total.Seconds = time.Since(start).Seconds()
	return total, nil
}

// subOutput is a job's Output seen through a subset of its chunks: chunk c of the sub-job is
// chunk idx[c] of the whole.
type subOutput struct {
	out device.Output
	idx []int
}

func (s *subOutput) Dest(c, p int) ([]byte, error) { return s.out.Dest(s.idx[c], p) }
func (s *subOutput) Done(c int) error              { return s.out.Done(s.idx[c]) }
