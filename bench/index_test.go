package bench

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestIndex(t *testing.T) {
	dir := t.TempDir()
	idx := Index{Machine: sampleReport().Machine, Date: time.Date(2026, 11, 25, 10, 30, 0, 0, time.UTC), Quick: true,
		Command: "wattagg bench all --quick", Seconds: 61,
		Suites: []IndexEntry{
			{Suite: "mean", Title: "FedAvg in memory", Files: []string{"mean.json", "mean.md", "mean-clients.png"}, Seconds: 12.5},
			{Suite: "e2e", Title: "end to end", Err: "gcc: not found", Seconds: 0.1},
			{Suite: "energy", Title: "joules by policy", Files: []string{"energy.json", "energy.md", "energy-joules.png"},
				Skipped: []string{"always-gpu: no GPU device here"}, Seconds: 3},
		}}
	if err := idx.Write(dir); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "index.md"))
	if err != nil {
		t.Fatal(err)
	}
	md := string(b)
	for _, want := range []string{
		"Measured on **Test CPU 9000, 2 cores / 4 threads, 2 workers, avx2 kernels, GOAMD64=v3, cuda:0 (Test GPU)**",
		"`--quick`", "in 61 s",
		"```sh\nwattagg bench all --quick\n```",
		"| CPU | Test CPU 9000 |", "| kernels | avx2 (core avx2) |", "| GOAMD64 | v3 |", "| GPUs | cuda:0 (Test GPU) |",
		"| energy | estimate (RAPL absent: test) |",
		"| mean | FedAvg in memory | [mean.json](mean.json) · [mean.md](mean.md) | [mean-clients.png](mean-clients.png) | 12.5 s |",
		"| e2e | end to end | FAILED: gcc: not found |  | 0.1 s |",
		"## Not run on this machine\n\n- energy: always-gpu: no GPU device here",
		"![mean-clients](mean-clients.png)", "![energy-joules](energy-joules.png)",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("index.md lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(md, "## e2e") {
		t.Error("a failed suite has a section")
	}
}
