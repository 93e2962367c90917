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
	inputs, err := writeE2EInputs(ctx, cfg)
	if err != nil {
		return nil, err
	}
	payload := int64(cfg.Params) * 4
	e := &e2eRun{ctx: ctx, cfg: cfg, log: log, inputs: inputs, bytes: int64(cfg.Clients+1) * payload}
	if err := e.timeFloors(); err != nil {
		return nil, err
	}
	if err := e.timeInProcess(); err != nil {
		return nil, err
	}
	if err := e.timeCLI(); err != nil {
		return nil, err
	}
	e.relateToFloor()
	return e.rows, nil
}

// writeE2EInputs writes the federation of cfg into cfg.Dir/inputs: one f32 vector per client.
func writeE2EInputs(ctx context.Context, cfg E2EConfig) ([]string, error) {
	fed := Federation{Model: Flat(cfg.Params), Seed: 7}
	for range cfg.Clients {
		fed.Clients = append(fed.Clients, Client{DType: tensor.F32})
	}
	// Written afresh each time: the measurement needs the files cached as an upload leaves them.
	cfg.step(0, "writing the inputs")
	return fed.Write(ctx, filepath.Join(cfg.Dir, "inputs"), nil)
}

// e2eRun is the state E2E's steps share: the inputs, the bytes each job counts, the rows so
// far, and the fastest e2efloor.
type e2eRun struct {
	ctx       context.Context
	cfg       E2EConfig
	log       io.Writer
	inputs    []string
	bytes     int64
	rows      []Row
	floorGBps float64
	floorName string
}

// row is a row of the job on the inputs, to be timed.
func (e *e2eRun) row(name, rule string) Row {
	return Row{Name: name, Rule: rule, Clients: e.cfg.Clients, DType: "f32", Bytes: e.bytes, Params: int64(e.cfg.Params)}
}

// begin tells the progress that step done, what, starts, and warms the inputs for it.
func (e *e2eRun) begin(done int, what string) error {
	e.cfg.step(done, what)
	return warm(e.inputs)
}

// timeRuns runs run max(1, cfg.Runs) times and returns each run's seconds.
func (e *e2eRun) timeRuns(run func() error) ([]float64, error) {
	var times []float64
	for range max(1, e.cfg.Runs) {
		start := time.Now()
		if err := run(); err != nil {
			return nil, err
		}
		times = append(times, time.Since(start).Seconds())
	}
	return times, nil
}

// timeFloors builds e2efloor and times it reading each way, or adds a skipped row saying why
// it could not be built.
func (e *e2eRun) timeFloors() error {
	// e2efloor reads two ways (mapping, or pread into a reused buffer); which is faster depends
	// on the machine, and the yardstick is the faster one, measured here.
	bin, err := buildFloor(e.ctx, e.cfg.FloorSrc, e.cfg.Dir)
	if err != nil {
		if e.ctx.Err() != nil {
			return e.ctx.Err()
		}
		fmt.Fprintf(e.log, "e2efloor: skipped: %v\n", err)
		e.rows = append(e.rows, Row{Name: "e2efloor.c", Rule: "e2efloor", Skipped: err.Error()})
		return nil
	}
	for _, mode := range []string{"mmap", "pread"} {
		if err := e.timeFloor(bin, mode); err != nil {
			return err
		}
	}
	return nil
}

// timeFloor times e2efloor reading by mode, adds its row, and keeps it as the floor if it is the
// fastest so far.
func (e *e2eRun) timeFloor(bin, mode string) error {
	if err := e.begin(len(e.rows)+1, "e2efloor --read "+mode); err != nil {
		return err
	}
	fr, err := runFloor(e.ctx, bin, mode, e.cfg, e.inputs)
	if err != nil {
		return err
	}
	r := e.row("e2efloor.c --read "+mode+" (OpenMP sum, write+fsync)", "e2efloor "+mode)
	r.Note = fmt.Sprintf("map/read %.1f ms, compute %.1f ms, write %.1f ms", fr.MapS*1e3, fr.Compute*1e3, fr.WriteS*1e3)
	r.set(fr.Seconds, 0)
	e.rows = append(e.rows, r)
	if r.GBps > e.floorGBps {
		e.floorGBps, e.floorName = r.GBps, "e2efloor.c --read "+mode
	}
	return nil
}

// out is where wattagg writes the result.
func (e *e2eRun) out() string { return filepath.Join(e.cfg.Dir, "out-wattagg.safetensors") }

// timeInProcess times wattagg in this process, as aggregateFiles does the job, and adds its row.
func (e *e2eRun) timeInProcess() error {
	dev, err := device.NewCPU(device.WithWorkers(e.cfg.Workers))
	if err != nil {
		return err
	}
	out := e.out()
	if err := e.begin(3, "wattagg in-process"); err != nil {
		return err
	}
	times, err := e.timeRuns(func() error { return aggregateFiles(e.ctx, out, e.inputs, dev) })
	if err != nil {
		return err
	}
	r := e.row("wattagg in-process (open, fedavg, direct-I/O write+fsync)", "wattagg in-process")
	r.set(median(times), 0)
	e.rows = append(e.rows, r)
	return nil
}

// cliVariant is one way the CLI is timed: its extra flags, and its rule.
type cliVariant struct{ name, rule string }

// cliVariants are the CLI as a process: as it runs by default, streaming, and with each way of
// reading forced (--read: the default chooses per file; these rows show what it chose between).
var cliVariants = []cliVariant{
	{"", "wattagg aggregate"},
	{"--stream", "wattagg aggregate --stream"},
	{"--read map", "wattagg aggregate --read map"},
	{"--read copy", "wattagg aggregate --read copy"},
}

// timeCLI times the wattagg CLI as a process in each of cliVariants, unless no CLI was given.
func (e *e2eRun) timeCLI() error {
	if e.cfg.CLI == "" {
		return nil
	}
	for k, v := range cliVariants {
		if err := e.timeCLIVariant(4+k, v); err != nil {
			return err
		}
	}
	return nil
}

// timeCLIVariant times the CLI run as v says, as step done, and adds its row.
func (e *e2eRun) timeCLIVariant(done int, v cliVariant) error {
	if err := e.begin(done, v.rule); err != nil {
		return err
	}
	args := e.cliArgs(v)
	times, err := e.timeRuns(func() error {
		if b, err := exec.CommandContext(e.ctx, e.cfg.CLI, args...).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v: %s", e.cfg.CLI, err, b)
		}
		return nil
	})
	if err != nil {
		return err
	}
	e.rows = append(e.rows, e.cliRow(v, times))
	return nil
}

// cliRow is the row of the CLI run as v says, timed at times; the default's row notes how it
// chose to read.
func (e *e2eRun) cliRow(v cliVariant, times []float64) Row {
	name := "wattagg aggregate --device cpu (whole process)"
	if v.name != "" {
		name = "wattagg aggregate --device cpu " + v.name + " (whole process)"
	}
	r := e.row(name, v.rule)
	if v.name == "" {
		r.Note = autoReadNote()
	}
	r.set(median(times), 0)
	return r
}

// cliArgs is the command line of the CLI run as v says, on the inputs.
func (e *e2eRun) cliArgs(v cliVariant) []string {
	// --device cpu as e2efloor: no GPU driver is initialised (tens of ms where one is installed).
	args := append([]string{"aggregate", "--progress", "never", "--device", "cpu", "--workers", fmt.Sprint(e.cfg.Workers), "-o", e.out()}, strings.Fields(v.name)...)
	return append(args, e.inputs...)
}

// relateToFloor sets, on every row but e2efloor's, the fastest e2efloor as its floor and the
// ratio to it; nothing when e2efloor did not run.
func (e *e2eRun) relateToFloor() {
	if e.floorGBps <= 0 {
		return
	}
	for i := range e.rows {
		if !strings.HasPrefix(e.rows[i].Name, "e2efloor") {
			e.rows[i].FloorGBps, e.rows[i].FloorName = e.floorGBps, e.floorName
			e.rows[i].Ratio = e.rows[i].GBps / e.floorGBps
		}
	}
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
