package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/wattagg/wattagg/tensor"
)

// RSSConfig describes the streaming-memory measurement.
type RSSConfig struct {
	Dir     string
	Clients int
	Params  int
	CLI     string // the wattagg binary to run with --stream
	Workers int    // its --workers; 0: its default
	// Progress, if set, is told each step as it starts: done of total, and what.
	Progress func(done, total int, what string)
}

// RSSResult is the peak anonymous memory of a streaming aggregation against its budget.
type RSSResult struct {
	Clients     int     `json:"clients"`
	Params      int64   `json:"params"`
	OutputBytes int64   `json:"output_bytes"`
	PeakAnon    int64   `json:"peak_rss_anon_bytes"`
	Budget      int64   `json:"budget_bytes"` // 1.3 x output + 96 MiB
	Seconds     float64 `json:"seconds"`
	Samples     int     `json:"samples"`
	Within      bool    `json:"within_budget"`
}

// StreamRSS runs `wattagg aggregate --stream` on a federation of f32 transformer updates and
// samples the child's RssAnon every millisecond. Mapped input files are page cache, not
// anonymous memory; the running sum is.
func StreamRSS(ctx context.Context, cfg RSSConfig) (RSSResult, error) {
	fed := Federation{Model: Transformer(int64(cfg.Params)), Seed: 3}
	for k := range cfg.Clients {
		fed.Clients = append(fed.Clients, Client{DType: tensor.F32, NumExamples: 100 + 10*k})
	}
	if cfg.Progress != nil {
		cfg.Progress(0, 2, "writing the inputs")
	}
	inputs, err := existingOrWrite(ctx, &fed, filepath.Join(cfg.Dir, "stream-inputs"))
	if err != nil {
		return RSSResult{}, err
	}
	if cfg.Progress != nil {
		cfg.Progress(1, 2, "wattagg aggregate --stream")
	}
	if err := warm(inputs); err != nil {
		return RSSResult{}, err
	}
	out := filepath.Join(cfg.Dir, "out-stream.safetensors")
	args := []string{"aggregate", "--stream", "--progress", "never", "-o", out}
	if cfg.Workers > 0 {
		args = append(args, "--workers", strconv.Itoa(cfg.Workers))
	}
	args = append(args, inputs...)
	cmd := exec.CommandContext(ctx, cfg.CLI, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return RSSResult{}, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	res := RSSResult{Clients: cfg.Clients, Params: fed.Model.Params(), OutputBytes: fed.Model.Params() * 4}
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	status := fmt.Sprintf("/proc/%d/status", cmd.Process.Pid)
	for {
		select {
		case err := <-done:
			if err != nil {
				return res, fmt.Errorf("%s --stream: %v: %s", cfg.CLI, err, stderr.Bytes())
			}
			res.Seconds = time.Since(start).Seconds()
			res.Budget = res.OutputBytes*13/10 + 96<<20
			res.Within = res.PeakAnon <= res.Budget
			return res, nil
		case <-tick.C:
			if v, err := rssAnon(status); err == nil {
				res.PeakAnon = max(res.PeakAnon, v)
				res.Samples++
			}
		}
	}
}

// rssAnon reads the RssAnon line (in kB) of a /proc/PID/status file.
func rssAnon(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "RssAnon:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("%s: no RssAnon line", path)
}

// Result is r as a report's result: the peak anonymous memory in MiB against the budget, a
// ceiling (a ratio of at most 1 is within it).
func (r RSSResult) Result() Result {
	const mib = 1 << 20
	x := Result{Name: fmt.Sprintf("streaming fedavg %d x %s f32, peak RssAnon", r.Clients, human(r.Params)),
		Rule: "fedavg --stream", Clients: r.Clients, Params: r.Params, DType: "f32",
		Value: float64(r.PeakAnon) / mib, Unit: "MiB", Floor: float64(r.Budget) / mib, Ceiling: true,
		FloorName: fmt.Sprintf("budget 1.3 x %.1f MiB + 96 MiB =", float64(r.OutputBytes)/mib), Seconds: r.Seconds,
		Note: fmt.Sprintf("whole process %.2f s; %d samples, 1 ms apart", r.Seconds, r.Samples)}
	if x.Floor > 0 {
		x.Ratio = x.Value / x.Floor
	}
	return x
}
