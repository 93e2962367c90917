package cuda

import (
	"context"
	"fmt"
	"math"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/device/devicetest"
	"github.com/wattagg/wattagg/kernels"
	"github.com/wattagg/wattagg/tensor"
)

// Benchmarks run on real GPUs only (the fake's timings mean nothing). Each reports bytes/s with
// b.SetBytes = bytes read + written, beside the floors measured in the same process:
// device-to-device copy bandwidth for data already on the GPU, page-locked host-to-device
// bandwidth for data coming from the host.

func realGPU(tb testing.TB) *GPU {
	tb.Helper()
	infos, err := Discover()
	if err != nil {
		tb.Skipf("no GPU: %v", err)
	}
	g, err := openShared(infos[0].Name, func() (*GPU, error) { return Open(0) })
	if err != nil {
		tb.Skipf("%s: %v", infos[0].Name, err)
	}
	return g
}

// fill writes pseudo-random f32 values in [-1, 1) (xorshift, on all cores: content does not
// change the timings, but NaNs would stop a job).
func fill(b []byte, seed uint64) {
	f := unsafe.Slice((*float32)(unsafe.Pointer(unsafe.SliceData(b))), len(b)/4)
	var wg sync.WaitGroup
	per := (len(f) + runtime.NumCPU() - 1) / runtime.NumCPU()
	for lo := 0; lo < len(f); lo += per {
		wg.Add(1)
		go func(part []float32, s uint64) {
			defer wg.Done()
			s |= 1
			for j := range part {
				s ^= s << 13
				s ^= s >> 7
				s ^= s << 17
				part[j] = float32(int32(s>>32)) * 0x1p-31
			}
		}(f[lo:min(lo+per, len(f))], seed*0x9E3779B97F4A7C15+uint64(lo))
	}
	wg.Wait()
}

// timeOp runs f once to warm up, then iters times, and returns the mean seconds of one run.
func timeOp(iters int, f func() error) (float64, error) {
	if err := f(); err != nil {
		return 0, err
	}
	start := time.Now()
	for range iters {
		if err := f(); err != nil {
			return 0, err
		}
	}
	return time.Since(start).Seconds() / float64(iters), nil
}

// copyD2D times a device-to-device copy of n bytes.
func copyD2D(g *GPU, n int64, iters int) (float64, error) {
	src, err := g.drv.alloc(g.ctx, n)
	if err != nil {
		return 0, err
	}
	defer g.drv.free(g.ctx, src)
	dst, err := g.drv.alloc(g.ctx, n)
	if err != nil {
		return 0, err
	}
	defer g.drv.free(g.ctx, dst)
	return timeOp(iters, func() error {
		return g.onStream(context.Background(), func(_ *lane, s cuStream) error { return g.drv.d2d(g.ctx, dst, src, n, s) })
	})
}

// copyH2D times host-to-device copies of n bytes from page-locked memory, split over streams.
func copyH2D(g *GPU, n int64, streams, iters int) (float64, error) {
	host, err := g.AllocPinned(int(n))
	if err != nil {
		return 0, err
	}
	defer g.FreePinned(host)
	dev, err := g.drv.alloc(g.ctx, n)
	if err != nil {
		return 0, err
	}
	defer g.drv.free(g.ctx, dev)
	ln, err := g.lock(true)
	if err != nil {
		return 0, err
	}
	ln.mu.Unlock() // the streams exist; nothing else runs on them during a benchmark
	part := n / int64(streams)
	return timeOp(iters, func() error {
		for k := range streams {
			s := ln.slots[k].stream
			if err := g.drv.h2d(g.ctx, dev+uint64(int64(k)*part), unsafe.Pointer(&host[int64(k)*part]), part, s); err != nil {
				return err
			}
		}
		for k := range streams {
			if err := g.drv.syncStream(g.ctx, ln.slots[k].stream); err != nil {
				return err
			}
		}
		return nil
	})
}

// federation is N clients of P f32 parameters in three places: on the GPU, in page-locked host
// memory and in ordinary Go memory.
type federation struct {
	g        *GPU
	n, p     int
	fields   []device.AccField
	resident []*Resident
	pinned   [][]device.Span
	pageable [][]device.Span
	pinMem   [][]byte
}

func newFederation(g *GPU, n, p int) (*federation, error) {
	f := &federation{g: g, n: n, p: p, fields: []device.AccField{{Name: "w", Len: p, Acc: tensor.F32, Out: tensor.F32}}}
	for i := range n {
		b := tensor.AlignedBytes(4 * p)
		fill(b, uint64(i+1))
		f.pageable = append(f.pageable, []device.Span{{DType: tensor.F32, Data: b, Scale: 1}})
		pin, err := g.AllocPinned(4 * p)
		if err != nil {
			f.close()
			return nil, err
		}
		copy(pin, b)
		f.pinMem = append(f.pinMem, pin)
		f.pinned = append(f.pinned, []device.Span{{DType: tensor.F32, Data: pin, Scale: 1}})
		tt, _ := tensor.FromBytes("w", tensor.F32, []int{p}, b)
		set, _ := tensor.NewSet(tt)
		r, err := g.Upload(context.Background(), set)
		if err != nil {
			f.close()
			return nil, err
		}
		f.resident = append(f.resident, r)
	}
	return f, nil
}

func (f *federation) close() {
	for _, r := range f.resident {
		r.Close()
	}
	for _, p := range f.pinMem {
		f.g.FreePinned(p)
	}
}

func (f *federation) weights() []float64 {
	w := make([]float64, f.n)
	for i := range w {
		w[i] = 1 + float64(i%7)
	}
	return w
}

// fedAvgHost streams a weighted mean from host inputs into a host result.
func (f *federation) fedAvgHost(in [][]device.Span, out []byte) error {
	chunks, err := device.CutChunks(f.fields, []int64{0}, 4<<20)
	if err != nil {
		return err
	}
	o := &setOutput{dst: [][]byte{out}, fields: f.fields, chunks: chunks}
	_, err = f.g.WeightedSum(context.Background(), &device.SumJob{Fields: f.fields, Inputs: in, Weights: f.weights(), Scale: 1.0 / 64, Chunks: chunks, Output: o})
	return err
}

// result is one row of the table.
type result struct {
	name    string
	seconds float64
	bytes   float64 // read + written
	floor   string  // what it is compared with
	floorBW float64 // bytes/s of the floor (0: compared by time)
	floorS  float64 // seconds of the floor (time comparisons)
	target  string
}

// TestGPUBenchTable measures the targets of issue 4 on the first GPU and prints them beside the
// floors measured in the same run: `make gpu-check` runs it on the GPU machine
// (WATTAGG_GPU_BENCH=1; WATTAGG_GPU_BENCH_PARAMS and _CLIENTS change the federation, default
// 64 clients of 16M parameters).
func TestGPUBenchTable(t *testing.T) {
	if os.Getenv("WATTAGG_GPU_BENCH") != "1" {
		t.Skip("set WATTAGG_GPU_BENCH=1 to measure (real GPU, several GiB of memory)")
	}
	g := realGPU(t)
	n, p := envInt("WATTAGG_GPU_BENCH_CLIENTS", 64), envInt("WATTAGG_GPU_BENCH_PARAMS", 16<<20)
	say := func(format string, a ...any) { fmt.Printf(format+"\n", a...) }
	info := g.Info()
	say("device: %s (%s), %s; %s", info.Name, info.Model, strings.Join(info.Features, ", "), strings.Join(info.Notes, "; "))

	free, _, err := g.MemInfo()
	if err != nil {
		t.Fatal(err)
	}
	copyBytes := float64(min(1<<30, free/4&^(1<<20-1)))
	d2d, err := copyD2D(g, int64(copyBytes), 20)
	if err != nil {
		t.Fatal(err)
	}
	d2dBW := 2 * copyBytes / d2d
	h2d1, err := copyH2D(g, int64(copyBytes), 1, 5)
	if err != nil {
		t.Fatal(err)
	}
	h2d2, err := copyH2D(g, int64(copyBytes), 2, 5)
	if err != nil {
		t.Fatal(err)
	}
	h2dBW := copyBytes / min(h2d1, h2d2)
	say("floor: device-to-device copy %.0f GB/s (read + written), page-locked host-to-device %.1f GB/s (1 stream %.1f, 2 streams %.1f)",
		d2dBW/1e9, h2dBW/1e9, copyBytes/h2d1/1e9, copyBytes/h2d2/1e9)

	start := time.Now()
	fed, err := newFederation(g, n, p)
	if err != nil {
		t.Fatal(err)
	}
	defer fed.close()
	say("federation: %d clients × %d f32 parameters (%.1f GiB) set up in %.1fs", n, p, float64(4*n*p)/(1<<30), time.Since(start).Seconds())

	in := float64(4 * n * p)
	var rows []result
	add := func(r result, err error) {
		if err != nil {
			t.Errorf("%s: %v", r.name, err)
			return
		}
		rows = append(rows, r)
	}
	out, err := g.NewResident([]ResidentField{{Name: "w", DType: tensor.F32, Shape: []int{p}}})
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	s, err := timeOp(10, func() error {
		_, err := g.WeightedSumResident(context.Background(), fed.fields, fed.resident, fed.weights(), 1.0/64, out)
		return err
	})
	add(result{name: "FedAvg, device-resident", seconds: s, bytes: in + 4*float64(p), floor: "D2D copy", floorBW: d2dBW, target: ">= 0.85"}, err)

	host := tensor.AlignedBytes(4 * p)
	s, err = timeOp(3, func() error { return fed.fedAvgHost(fed.pinned, host) })
	add(result{name: "FedAvg, streamed from page-locked host", seconds: s, bytes: in, floor: "pinned H2D", floorBW: h2dBW, target: ">= 0.80"}, err)
	s, err = timeOp(3, func() error { return fed.fedAvgHost(fed.pageable, host) })
	add(result{name: "FedAvg, streamed from pageable host", seconds: s, bytes: in, floor: "pinned H2D", floorBW: h2dBW, target: "(staged)"}, err)

	cpuGram, cpuGramN := cpuGramSeconds(fed, 1<<20)
	cpuMed, cpuMedN := cpuMedianSeconds(fed, 1<<18)
	scale := func(s float64, part int) float64 { return s * float64(p) / float64(part) }
	s, err = timeOp(3, func() error { _, _, err := g.GramResident(context.Background(), fed.resident); return err })
	add(result{name: "Gram (Krum distances), device-resident", seconds: s, bytes: in, floor: "CPU, 2 cores", floorS: scale(cpuGram, cpuGramN), target: "> 10x"}, err)
	s, err = timeOp(1, func() error { _, _, err := g.Gram(context.Background(), fed.fields, fed.pinned); return err })
	add(result{name: "Gram, streamed from page-locked host", seconds: s, bytes: in, floor: "CPU, 2 cores", floorS: scale(cpuGram, cpuGramN), target: "> 10x"}, err)
	s, err = timeOp(3, func() error { _, err := g.MedianResident(context.Background(), fed.resident, out); return err })
	add(result{name: "median, device-resident", seconds: s, bytes: in + 4*float64(p), floor: "CPU, 2 cores", floorS: scale(cpuMed, cpuMedN), target: "> 10x"}, err)
	s, err = timeOp(1, func() error {
		chunks, err := device.CutChunks(fed.fields, []int64{0}, 4<<20)
		if err != nil {
			return err
		}
		_, err = g.Median(context.Background(), fed.fields, fed.pinned, chunks, &setOutput{dst: [][]byte{host}, fields: fed.fields, chunks: chunks})
		return err
	})
	add(result{name: "median, streamed from page-locked host", seconds: s, bytes: in + 4*float64(p), floor: "CPU, 2 cores", floorS: scale(cpuMed, cpuMedN), target: "> 10x"}, err)

	say("")
	say("%-42s %10s %10s  %-14s %12s %8s  %s", "operation", "ms", "GB/s", "compared with", "floor", "ratio", "target")
	for _, r := range rows {
		bw := r.bytes / r.seconds
		if r.floorBW > 0 {
			say("%-42s %10.2f %10.1f  %-14s %9.1f GB/s %8.2f  %s", r.name, 1e3*r.seconds, bw/1e9, r.floor, r.floorBW/1e9, bw/r.floorBW, r.target)
		} else {
			say("%-42s %10.2f %10.1f  %-14s %10.0f ms %7.1fx  %s", r.name, 1e3*r.seconds, bw/1e9, r.floor, 1e3*r.floorS, r.floorS/r.seconds, r.target)
		}
	}
	say("CPU baselines: Gram with kernels.DotF32 (%s) over %d parameters, median with a sort per coordinate over %d, on 2 goroutines, scaled linearly to %d",
		kernels.Default().Name(), cpuGramN, cpuMedN, p)
}

func envInt(k string, def int) int {
	var v int
	if _, err := fmt.Sscan(os.Getenv(k), &v); err != nil || v <= 0 {
		return def
	}
	return v
}

// cpuGramSeconds times the pairwise dot products of the first part parameters of every client
// on 2 goroutines with the CPU kernels (the 2-core CPU path of issue 4).
func cpuGramSeconds(f *federation, part int) (float64, int) {
	part = min(part, f.p)
	type pair struct{ a, b int }
	var pairs []pair
	for a := range f.n {
		for b := a; b < f.n; b++ {
			pairs = append(pairs, pair{a, b})
		}
	}
	start := time.Now()
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := w; k < len(pairs); k += 2 {
				p := pairs[k]
				kernels.DotF32(f.pageable[p.a][0].Data[:4*part], f.pageable[p.b][0].Data[:4*part])
			}
		}()
	}
	wg.Wait()
	return time.Since(start).Seconds(), part
}

// cpuMedianSeconds times the coordinate-wise median of the first part parameters on 2
// goroutines: gather each coordinate's values, sort them, average the middle two.
func cpuMedianSeconds(f *federation, part int) (float64, int) {
	part = min(part, f.p)
	vals := make([][]float32, f.n)
	for i := range vals {
		vals[i] = unsafe.Slice((*float32)(unsafe.Pointer(unsafe.SliceData(f.pageable[i][0].Data))), part)
	}
	out := make([]float32, part)
	start := time.Now()
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			col := make([]float32, f.n)
			for j := w; j < part; j += 2 {
				for i := range col {
					col[i] = vals[i][j]
				}
				slices.Sort(col)
				out[j] = 0.5 * (col[f.n/2-1] + col[f.n/2])
			}
		}()
	}
	wg.Wait()
	return time.Since(start).Seconds(), part
}

// Go benchmarks (go test -bench, real GPU): the same operations at a size set by -benchtime.

func BenchmarkCopy(b *testing.B) {
	g := realGPU(b)
	const n = 256 << 20
	b.Run("d2d", func(b *testing.B) {
		b.SetBytes(2 * n)
		for b.Loop() {
			if _, err := copyD2D(g, n, 1); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("h2d-pinned", func(b *testing.B) {
		b.SetBytes(n)
		for b.Loop() {
			if _, err := copyH2D(g, n, 2, 1); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkFedAvg(b *testing.B) {
	g := realGPU(b)
	fed, err := newFederation(g, 16, 4<<20)
	if err != nil {
		b.Fatal(err)
	}
	defer fed.close()
	out, err := g.NewResident([]ResidentField{{Name: "w", DType: tensor.F32, Shape: []int{fed.p}}})
	if err != nil {
		b.Fatal(err)
	}
	defer out.Close()
	host := tensor.AlignedBytes(4 * fed.p)
	in := int64(4 * fed.n * fed.p)
	b.Run("resident", func(b *testing.B) {
		b.SetBytes(in + int64(4*fed.p))
		for b.Loop() {
			if _, err := g.WeightedSumResident(context.Background(), fed.fields, fed.resident, fed.weights(), 1, out); err != nil {
				b.Fatal(err)
			}
		}
	})
	for name, src := range map[string][][]device.Span{"pinned": fed.pinned, "pageable": fed.pageable} {
		b.Run(name, func(b *testing.B) {
			b.SetBytes(in + int64(4*fed.p))
			for b.Loop() {
				if err := fed.fedAvgHost(src, host); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkRobust(b *testing.B) {
	g := realGPU(b)
	fed, err := newFederation(g, 64, 1<<20)
	if err != nil {
		b.Fatal(err)
	}
	defer fed.close()
	out, err := g.NewResident([]ResidentField{{Name: "w", DType: tensor.F32, Shape: []int{fed.p}}})
	if err != nil {
		b.Fatal(err)
	}
	defer out.Close()
	b.Run("gram", func(b *testing.B) {
		b.SetBytes(int64(4 * fed.n * fed.p))
		for b.Loop() {
			if _, _, err := g.GramResident(context.Background(), fed.resident); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("median", func(b *testing.B) {
		b.SetBytes(int64(4 * (fed.n + 1) * fed.p))
		for b.Loop() {
			if _, err := g.MedianResident(context.Background(), fed.resident, out); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("trimmed-mean", func(b *testing.B) {
		b.SetBytes(int64(4 * (fed.n + 1) * fed.p))
		for b.Loop() {
			if _, err := g.TrimmedMeanResident(context.Background(), fed.resident, 6, out); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// The benchmarks' federation holds no NaN: fill's values are finite.
func TestFillIsFinite(t *testing.T) {
	b := tensor.AlignedBytes(4 << 12)
	fill(b, 3)
	sp := device.Span{DType: tensor.F32, Data: b}
	for j, v := range devicetest.Values(sp) {
		if math.IsNaN(v) || math.IsInf(v, 0) || v < -1 || v >= 1 {
			t.Fatalf("fill: element %d = %v", j, v)
		}
	}
}
