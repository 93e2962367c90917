package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/sched"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// E2EConfig describes the end-to-end comparison with shared/floors/e2efloor.c.
type E2EConfig struct {
	Dir      string // where the inputs and outputs live (inputs are reused if present)
	Clients  int
	Params   int
	Workers  int
	Runs     int
	FloorSrc string // path of e2efloor.c; empty: look in ../shared/floors and shared/floors
	CLI      string // path of a wattagg binary to time as a whole process; empty: skip
	// Progress, if set, is told each step as it starts: done of total, and what.
	Progress func(done, total int, what string)
}

func (cfg *E2EConfig) step(done int, what string) {
	if cfg.Progress != nil {
		total := 8
		if cfg.CLI == "" {
			total -= 4
		}
		cfg.Progress(done, total, what)
	}
}

// floorResult is the JSON line e2efloor prints.
type floorResult struct {
	Seconds float64 `json:"seconds_median"`
	MapS    float64 `json:"map_s"`
	Compute float64 `json:"compute_s"`
	WriteS  float64 `json:"write_s"`
	GBps    float64 `json:"gbps"`
}

// E2E writes the federation, warms the page cache, and times the same job done by e2efloor (C,
// OpenMP; reading by mapping and by pread, the faster being the floor of the other rows), by
// wattagg in this process (map, aggregate, write durably), and by the wattagg CLI as a
// process. Bytes are counted as e2efloor counts them: (clients+1) x payload. Without
// e2efloor.c or gcc the floor rows are skipped, saying why.
func E2E(ctx context.Context, cfg E2EConfig, log io.Writer) ([]Row, error) {
	fed := Federation{Model: Flat(cfg.Params), Seed: 7}
	for range cfg.Clients {
		fed.Clients = append(fed.Clients, Client{DType: tensor.F32})
	}
	// Written afresh each time: the measurement needs the files cached as an upload leaves them.
	cfg.step(0, "writing the inputs")
	inputs, err := fed.Write(ctx, filepath.Join(cfg.Dir, "inputs"), nil)
	if err != nil {
		return nil, err
	}
	payload := int64(cfg.Params) * 4
	bytes := int64(cfg.Clients+1) * payload
	var rows []Row

	// e2efloor reads two ways (mapping, or pread into a reused buffer); which is faster depends
	// on the machine, and the yardstick is the faster one, measured here.
	floorGBps, floorName := 0.0, ""
	bin, err := buildFloor(ctx, cfg.FloorSrc, cfg.Dir)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		fmt.Fprintf(log, "e2efloor: skipped: %v\n", err)
		rows = append(rows, Row{Name: "e2efloor.c", Rule: "e2efloor", Skipped: err.Error()})
	}
	for _, mode := range []string{"mmap", "pread"} {
		if bin == "" {
			break
		}
		cfg.step(len(rows)+1, "e2efloor --read "+mode)
		if err := warm(inputs); err != nil {
			return nil, err
		}
		fr, err := runFloor(ctx, bin, mode, cfg, inputs)
		if err != nil {
			return nil, err
		}
		r := Row{Name: "e2efloor.c --read " + mode + " (OpenMP sum, write+fsync)", Rule: "e2efloor " + mode,
			Clients: cfg.Clients, DType: "f32", Bytes: bytes, Params: int64(cfg.Params),
			Note: fmt.Sprintf("map/read %.1f ms, compute %.1f ms, write %.1f ms", fr.MapS*1e3, fr.Compute*1e3, fr.WriteS*1e3)}
		r.set(fr.Seconds, 0)
		rows = append(rows, r)
		if r.GBps > floorGBps {
			floorGBps, floorName = r.GBps, "e2efloor.c --read "+mode
		}
	}

	dev, err := device.NewCPU(device.WithWorkers(cfg.Workers))
	if err != nil {
		return nil, err
	}
	out := filepath.Join(cfg.Dir, "out-wattagg.safetensors")
	cfg.step(3, "wattagg in-process")
	if err := warm(inputs); err != nil {
		return nil, err
	}
	var times []float64
	for range max(1, cfg.Runs) {
		start := time.Now()
		if err := aggregateFiles(ctx, out, inputs, dev); err != nil {
			return nil, err
		}
		times = append(times, time.Since(start).Seconds())
	}
	r := Row{Name: "wattagg in-process (open, fedavg, direct-I/O write+fsync)", Rule: "wattagg in-process",
		Clients: cfg.Clients, DType: "f32", Bytes: bytes, Params: int64(cfg.Params)}
	r.set(median(times), 0)
	rows = append(rows, r)

	// The CLI as a process: as it runs by default, streaming, and with each way of reading
	// forced (--read: the default chooses per file; these rows show what it chose between).
	for k, v := range []struct{ name, rule string }{
		{"", "wattagg aggregate"},
		{"--stream", "wattagg aggregate --stream"},
		{"--read map", "wattagg aggregate --read map"},
		{"--read copy", "wattagg aggregate --read copy"},
	} {
		if cfg.CLI == "" {
			break
		}
		cfg.step(4+k, v.rule)
		if err := warm(inputs); err != nil {
			return nil, err
		}
		times = times[:0]
		for range max(1, cfg.Runs) {
			// --device cpu as e2efloor: no GPU driver is initialised (tens of ms where one is installed).
			args := append([]string{"aggregate", "--progress", "never", "--device", "cpu", "--workers", fmt.Sprint(cfg.Workers), "-o", out}, strings.Fields(v.name)...)
			args = append(args, inputs...)
			start := time.Now()
			if b, err := exec.CommandContext(ctx, cfg.CLI, args...).CombinedOutput(); err != nil {
				return nil, fmt.Errorf("%s: %v: %s", cfg.CLI, err, b)
			}
			times = append(times, time.Since(start).Seconds())
		}
		name := "wattagg aggregate --device cpu (whole process)"
		if v.name != "" {
			name = "wattagg aggregate --device cpu " + v.name + " (whole process)"
		}
		r := Row{Name: name, Rule: v.rule, Clients: cfg.Clients, DType: "f32", Bytes: bytes, Params: int64(cfg.Params)}
		if v.name == "" {
			r.Note = autoReadNote()
		}
		r.set(median(times), 0)
		rows = append(rows, r)
	}
	if floorGBps > 0 {
		for i := range rows {
			if !strings.HasPrefix(rows[i].Name, "e2efloor") {
				rows[i].FloorGBps, rows[i].FloorName = floorGBps, floorName
				rows[i].Ratio = rows[i].GBps / floorGBps
			}
		}
	}
	return rows, nil
}

// aggregateFiles is what `wattagg aggregate` does: open in parallel (each file mapped or read
// as safetensors.ReadAuto chooses), reduce, write, and close the inputs while the result is
// synced.
func aggregateFiles(ctx context.Context, out string, paths []string, dev device.Device) error {
	sets, err := safetensors.OpenAll(paths)
	if err != nil {
		return err
	}
	rel := tensor.NewRelease(sets) // unmapped while the result is synced, as the CLI does
	defer rel.Wait()
	_, err = aggregate.WeightedMeanFile(ctx, out, sets, nil, aggregate.WithDevices(dev), aggregate.WithInputsDone(rel.Start))
	return err
}

// existingOrWrite reuses a federation written before in dir (same names and sizes) or writes it.
func existingOrWrite(ctx context.Context, fed *Federation, dir string) ([]string, error) {
	var paths []string
	for k := range fed.Clients {
		p := filepath.Join(dir, fmt.Sprintf("client-%03d.safetensors", k))
		h, err := safetensors.ReadHeader(p)
		if err != nil || h.Fields[0].Len() != int(fed.Model.Params()) || len(h.Fields) != len(fed.Model.Fields) {
			return fed.Write(ctx, dir, nil)
		}
		paths = append(paths, p)
	}
	return paths, nil
}

// warm reads every file once so that the comparison runs from the page cache, as the issue's
// figures assume. It is called right before each contender: the development VMs run DAMON
// proactive reclaim, which drops page-cache pages left untouched for about a minute.
func warm(paths []string) error {
	buf := make([]byte, 1<<20)
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		for {
			if _, err := f.Read(buf); err != nil {
				break
			}
		}
		f.Close()
	}
	return nil
}

func findFloorSrc(path string) (string, error) {
	candidates := []string{path}
	if path == "" {
		candidates = []string{"../shared/floors/e2efloor.c", "shared/floors/e2efloor.c", "../../shared/floors/e2efloor.c"}
	}
	for _, c := range candidates {
		if _, err := os.Stat(c); err == nil {
			return c, nil
		}
	}
	return "", fmt.Errorf("e2efloor.c not found (tried %v); pass its path", candidates)
}

// buildFloor finds e2efloor.c (at path, or in the usual places when path is empty) and
// compiles it into dir as its comment says.
func buildFloor(ctx context.Context, path, dir string) (string, error) {
	src, err := findFloorSrc(path)
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "e2efloor")
	if b, err := exec.CommandContext(ctx, "gcc", "-O3", "-march=native", "-fopenmp", "-o", bin, src).CombinedOutput(); err != nil {
		return "", fmt.Errorf("building %s: %v: %s", src, err, b)
	}
	return bin, nil
}

func runFloor(ctx context.Context, bin, mode string, cfg E2EConfig, inputs []string) (floorResult, error) {
	args := append([]string{"--read", mode, "--threads", fmt.Sprint(cfg.Workers), "--runs", fmt.Sprint(max(1, cfg.Runs)),
		"-o", filepath.Join(cfg.Dir, "out-floor.bin")}, inputs...)
	b, err := exec.CommandContext(ctx, bin, args...).Output()
	if err != nil {
		return floorResult{}, fmt.Errorf("%s: %v", bin, err)
	}
	var fr floorResult
	if err := json.Unmarshal(b, &fr); err != nil {
		return floorResult{}, fmt.Errorf("%s printed %q: %v", bin, b, err)
	}
	return fr, nil
}

// autoReadNote says how the default (--read auto) reads files in large folios: as the profile
// the CLI loads says (`wattagg calibrate` measures it), or by the probe's race.
func autoReadNote() string {
	path, err := sched.DefaultProfilePath()
	if err != nil {
		return "--read auto: the probe's race (no profile)"
	}
	p, err := sched.LoadProfile(path)
	if err != nil || p.Read == nil {
		return "--read auto: the probe's race (the profile has no read: wattagg calibrate measures it)"
	}
	return fmt.Sprintf("--read auto: files in large folios %s, as calibrated (mapped %.1f ms, copied %.1f ms)",
		p.Read.Chosen(), p.Read.MapSec*1e3, p.Read.CopySec*1e3)
}
