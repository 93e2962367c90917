package bench

import (
	"bytes"
	"strings"
	"testing"
)

// tableRows returns the cells of the Markdown table rows that follow the header line head.
func tableRows(t *testing.T, md, head string) [][]string {
	t.Helper()
	lines := strings.Split(md, "\n")
	for i, l := range lines {
		if l != head {
			continue
		}
		var rows [][]string
		for _, r := range lines[i+2:] {
			if !strings.HasPrefix(r, "|") {
				return rows
			}
			cells := strings.Split(strings.Trim(r, "|"), " | ")
			for j := range cells {
				cells[j] = strings.TrimSpace(cells[j])
			}
			rows = append(rows, cells)
		}
		return rows
	}
	t.Fatalf("no table headed %q in:\n%s", head, md)
	return nil
}

func TestMarkdownFloorBesideFigure(t *testing.T) {
	var buf bytes.Buffer
	if err := sampleReport().WriteMarkdown(&buf, []string{"robust-clients.png", "robust-ratio.png"}); err != nil {
		t.Fatal(err)
	}
	md := buf.String()
	for _, want := range []string{
		"# wattagg bench robust: robust rules beside their floors",
		"Measured on **Test CPU 9000, 2 cores / 4 threads, 2 workers, avx2 kernels, GOAMD64=v3, cuda:0 (Test GPU)**, go1.26.0 linux/amd64, 2026-11-25 10:30 UTC (`--quick`",
		"Settings: `clients=32`, `params=4194304`.",
		"- a note \\| with a pipe",
		"![robust: against the number of clients](robust-clients.png)",
		"![robust-ratio](robust-ratio.png)",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("Markdown lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(md, "robust-params.png") {
		t.Error("links a plot that was not written")
	}
	main := tableRows(t, md, "| what | measured | floor, same run | ratio | note |")
	want := [][]string{
		{"read floor 32 x 4M f32", "30.5 GB/s", "—", "—", ""},
		{"median", "15.3 GB/s (119M params/s)", "read bandwidth / 1 pass 30.5 GB/s", "0.50", "n=32"},
		{"krum", "8.40 GB/s", "read bandwidth / 2 passes 15.3 GB/s", "0.55", ""},
		{"peak RssAnon", "110 MiB", "budget 220 MiB", "0.50 (within)", ""},
	}
	if len(main) != len(want) {
		t.Fatalf("main table has %d rows, want %d:\n%s", len(main), len(want), md)
	}
	for i := range want {
		if strings.Join(main[i], "|") != strings.Join(want[i], "|") {
			t.Errorf("row %d: got %q, want %q", i, main[i], want[i])
		}
	}
	sweep := tableRows(t, md, "| rule | clients | params | dtype | measured | floor, same run | ratio |")
	if len(sweep) != 6 || strings.Join(sweep[2], "|") != "median|32|1M|f32|12.0 GB/s|read bandwidth 24.0 GB/s|0.50" {
		t.Fatalf("clients sweep table: %q", sweep)
	}
}

func TestMarkdownEnergy(t *testing.T) {
	var buf bytes.Buffer
	if err := energyReport().WriteMarkdown(&buf, nil); err != nil {
		t.Fatal(err)
	}
	rows := tableRows(t, buf.String(), "| what | measured | floor, same run | ratio | predicted | source | note |")
	want := [][]string{
		{"always-cpu (cpu 100%)", "0.52 nJ/param estimated", "—", "—", "0.61 nJ/param", "estimate (estimated: no energy counter)", ""},
		{"always-gpu", "skipped: no GPU device here", "—", "—", "—", "—", ""},
		{"planner min-energy (cpu 100%)", "0.49 nJ/param estimated", "—", "—", "0.6 nJ/param", "estimate (estimated: no energy counter)", ""},
	}
	if len(rows) != len(want) {
		t.Fatalf("got %q", rows)
	}
	for i := range want {
		if strings.Join(rows[i], "|") != strings.Join(want[i], "|") {
			t.Errorf("row %d: got %q, want %q", i, rows[i], want[i])
		}
	}
}

func TestFormatValue(t *testing.T) {
	for _, tc := range []struct {
		v    float64
		unit string
		want string
	}{
		{0, "GB/s", "0 GB/s"}, {0.000123456, "nJ/param", "0.000123 nJ/param"}, {1.005, "GB/s", "1.00 GB/s"},
		{35.24, "GB/s", "35.2 GB/s"}, {219.6, "MiB", "220 MiB"}, {-2.5, "", "-2.50"},
	} {
		if got := FormatValue(tc.v, tc.unit); got != tc.want {
			t.Errorf("FormatValue(%v, %q) = %q, want %q", tc.v, tc.unit, got, tc.want)
		}
	}
	for n, want := range map[int64]string{4 << 20: "4M", 64 << 20: "64M", 4096: "4k", 25_000_000: "25M", 100_352: "98k", 100_000: "100k", 0: "—", 1000: "1k", 999: "999"} {
		if got := ParamsLabel(n); got != want {
			t.Errorf("ParamsLabel(%d) = %q, want %q", n, got, want)
		}
	}
}
