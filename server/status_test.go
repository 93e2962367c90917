package server

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wattagg/wattagg/energy"
	"github.com/wattagg/wattagg/server/api"
)

// chromium finds Debian's chromium; without it the test skips, except in CI (CI=true), where
// .ci/run installs it and its absence is a failure.
func chromium(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"/usr/bin/chromium", "/usr/bin/chromium-browser"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("chromium is not installed (.ci/run installs Debian's chromium)")
	}
	t.Skip("chromium is not installed (apt-get install chromium)")
	return ""
}

// TestStatusPageInChromium renders the status page in headless Chromium after two metered
// rounds and one that is open, and reads what the browser built: one SVG bar per closed round
// with its joules, one row per round, the open round's clients and progress.
func TestStatusPageInChromium(t *testing.T) {
	browser := chromium(t)
	leakCheck(t)
	cfg, tokens, admin := testConfig(t, 3)
	cfg.Round.MaxClients = 2
	meter, err := energy.NewCPUEstimate()
	if err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, cfg, tokens, admin, WithMeters(meter))
	for round := 1; round <= 2; round++ {
		ts.waitState(t, round, api.StateOpen) // the next round opens just after the last closes
		for k := range 2 {
			ts.push(t, fmt.Sprintf("c%d", k), round, encode(t, f32Set(t, [][]int{{256, 64}}, func(_, i int) float32 { return float32(i * (round + k)) }), nil), nil)
		}
		ts.waitState(t, round, api.StateClosed)
	}
	ts.waitState(t, 3, api.StateOpen)
	ts.push(t, "c2", 3, encode(t, f32Set(t, [][]int{{256, 64}}, func(_, i int) float32 { return 1 }), nil), nil)

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
		"--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir="+t.TempDir(), "--dump-dom", ts.url+"/")
	cmd.Stderr = io.Discard
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium: %v", err)
	}
	dom := string(out)
	bars := regexp.MustCompile(`<rect class="bar" data-round="(\d+)" data-joules="([^"]+)"`).FindAllStringSubmatch(dom, -1)
	if len(bars) != 2 {
		t.Fatalf("%d energy bars rendered, want one per closed round (2):\n%s", len(bars), dom)
	}
	for i, b := range bars {
		n, _ := strconv.Atoi(b[1])
		j, err := strconv.ParseFloat(b[2], 64)
		st, _ := ts.Status(n)
		if n != i+1 || err != nil || st.Report == nil || st.Report.Joules == nil || !(j > 0) ||
			strconv.FormatFloat(*st.Report.Joules, 'g', 6, 64) != strconv.FormatFloat(j, 'g', 6, 64) {
			t.Fatalf("bar %d: round %s, %s J; the round's report says %+v", i, b[1], b[2], st.Report)
		}
	}
	rows := regexp.MustCompile(`<tr class="round" data-round="(\d+)" data-state="(\w+)"`).FindAllStringSubmatch(dom, -1)
	if len(rows) != 3 || rows[0][2] != "closed" || rows[1][2] != "closed" || rows[2][2] != "open" {
		t.Fatalf("round rows: %v", rows)
	}
	if !strings.Contains(dom, "Round 3") || strings.Count(dom, `<tr class="client">`) != 1 || !strings.Contains(dom, "<td>c2</td>") {
		t.Fatalf("the open round's clients are not shown:\n%s", dom)
	}
	// Round 3's exact sums of 16384 parameters, in one limb: 128 KiB.
	if !strings.Contains(dom, `<span id="sum-bytes">running sums 128.0 KiB</span>`) {
		t.Fatalf("the open round's running sums are not shown:\n%s", dom)
	}
	if !strings.Contains(dom, `class="progress"`) || !strings.Contains(dom, "estimate") {
		t.Fatalf("no progress bar or energy source:\n%s", dom)
	}
	if strings.Contains(dom, "%!") {
		t.Fatalf("a value failed to format:\n%s", dom)
	}
	if strings.Contains(strings.ToLower(dom), "<script") {
		t.Fatal("the status page has a script")
	}
	// The page is what the server serves, and /healthz answers.
	resp, err := http.Get(ts.url + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("healthz: %d", resp.StatusCode)
	}
}

// TestMetrics checks the Prometheus exposition after a round: bytes in, updates accepted and
// rejected by reason, round durations, joules with their source.
func TestMetrics(t *testing.T) {
	leakCheck(t)
	cfg, tokens, admin := testConfig(t, 2)
	meter, err := energy.NewCPUEstimate()
	if err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, cfg, tokens, admin, WithMeters(meter))
	body := encode(t, f32Set(t, [][]int{{1000}}, func(_, i int) float32 { return float32(i) }), nil)
	ts.push(t, "c0", 1, body, map[string]string{"X-Wattagg-Weight": "1"})
	scrape := func() string {
		resp, err := http.Get(ts.url + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return string(b)
	}
	// The open round's exact sums of 1000 parameters (values below 1000, weight 1: within
	// 2^62 grid units) hold one limb: 8 bytes each.
	if text := scrape(); !strings.Contains(text, "wattagg_round_sum_bytes 8000\n") {
		t.Fatalf("metrics lack the open round's 8000 bytes of sums:\n%s", text)
	}
	var st api.Round
	ts.getJSON(t, "/v1/rounds/1", &st)
	if st.SumBytes != 8000 {
		t.Fatalf("open round's status: sum_bytes %d, want 8000", st.SumBytes)
	}
	code, _ := ts.put(t, "bad", 1, strings.NewReader(string(body)), int64(len(body)), nil)
	if code != 401 {
		t.Fatal(code)
	}
	// Weight 2^20: |Σ w·x| reaches 2^29.9, beyond 2^17 at the default grid: the block needs
	// its second limb, 16 bytes a parameter.
	ts.push(t, "c1", 1, body, map[string]string{"X-Wattagg-Weight": "1048576"})
	if closed := ts.waitState(t, 1, api.StateClosed); closed.SumBytes != 0 || closed.Report == nil || closed.Report.SumBytes != 16000 {
		t.Fatalf("closed round: sum_bytes %d, report's %v; want none and 16000", closed.SumBytes, closed.Report)
	}
	ts.waitState(t, 2, api.StateOpen)
	text := scrape()
	for _, want := range []string{
		`wattagg_ingest_bytes_total{protocol="http"} 8000`,
		`wattagg_updates_accepted_total 2`,
		`wattagg_updates_rejected_total{reason="unauthorized"} 1`,
		`wattagg_round_duration_seconds_count{outcome="closed"} 1`,
		`wattagg_round_joules{source="estimate"}`,
		`wattagg_joules_total{source="estimate"}`,
		`wattagg_commit_group_updates_count 2`,
		`wattagg_ack_latency_seconds_count 2`,
		`wattagg_ingest_gbps`,
		`wattagg_round_current 2`,
		"wattagg_round_sum_bytes 0\n",
	} {
		if !strings.Contains(text, want) {
			t.Fatalf("metrics lack %q:\n%s", want, text)
		}
	}
}
