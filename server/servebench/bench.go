package servebench

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wattagg/wattagg/server"
	"github.com/wattagg/wattagg/server/api"
	"github.com/wattagg/wattagg/server/client"
	"github.com/wattagg/wattagg/tensor"
)

// Config is a `wattagg bench serve` run.
type Config struct {
	Dir   string  // scratch directory (data directories, spools, floors' files)
	Start Starter // starts the server process

	Clients int // concurrent clients of the ingest row
	Params  int // f32 parameters of each of their updates

	SmallClients int // clients of the many-small-clients row
	SmallParams  int
	SmallStreams int // of them pushing at once

	Kills        int // crash row: SIGKILLs during a round of
	CrashClients int // clients of
	CrashParams  int // parameters each

	// Sum is the rounds' round.sum ("auto", "exact", "float", or SumOneLimb; "" leaves the server's
	// default, auto: exact sums for fedavg, whose accumulator takes 8 bytes per parameter where
	// its sums stay within 2^62 grid units, as this bench's do, and 16 elsewhere).
	Sum string
	// WeightMax, if above 1, weighs the ingest row's HTTP clients by example counts spread
	// over [1, WeightMax] (client k: 1 + k·(WeightMax−1)/(Clients−1)) instead of 1 each: exact
	// sums then grow with the weights (the running sums' memory: Exact sums, "Two limbs held
	// in one").
	WeightMax int

	Only []string // rows to run (ingest, small, crash); nil: all
	Log  func(format string, args ...any)
}

// Row is one measured figure beside its floor.
type Row struct {
	What     string  `json:"what"`
	Measured float64 `json:"measured"`
	Unit     string  `json:"unit"`
	Floor    float64 `json:"floor,omitempty"`
	FloorIs  string  `json:"floor_is,omitempty"`
	Ratio    float64 `json:"ratio,omitempty"`
	Note     string  `json:"note,omitempty"`
}

// Result is every row of a run.
type Result struct {
	Rows  []Row        `json:"rows"`
	Crash *CrashResult `json:"crash,omitempty"`
}

func (c *Config) wants(row string) bool { return len(c.Only) == 0 || slices.Contains(c.Only, row) }

func (c *Config) logf(format string, args ...any) {
	if c.Log != nil {
		c.Log(format, args...)
	}
}

// Run measures what Config asks, each figure with its floor from the same run.
func Run(ctx context.Context, c Config) (*Result, error) {
	res := &Result{}
	if c.wants("ingest") {
		rows, err := ingestRows(ctx, &c)
		if err != nil {
			return res, fmt.Errorf("ingest: %w", err)
		}
		res.Rows = append(res.Rows, rows...)
	}
	if c.wants("flight") {
		rows, err := flightRows(ctx, &c)
		if err != nil {
			return res, fmt.Errorf("flight: %w", err)
		}
		res.Rows = append(res.Rows, rows...)
	}
	if c.wants("small") {
		rows, err := smallRows(ctx, &c)
		if err != nil {
			return res, fmt.Errorf("small clients: %w", err)
		}
		res.Rows = append(res.Rows, rows...)
	}
	if c.wants("crash") {
		dir := filepath.Join(c.Dir, "crash")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return res, err
		}
		cr, err := Crash(ctx, CrashConfig{Dir: dir, Clients: c.CrashClients, Params: c.CrashParams, Kills: c.Kills,
			Concurrency: 16, MaxKillWait: 30 * time.Millisecond, Seed: rand.Uint64(), Start: c.Start, Log: c.Log, Sum: c.Sum})
		res.Crash = cr
		if err != nil {
			return res, fmt.Errorf("crash run: %w", err)
		}
		ok := 0.0
		if cr.Lost == 0 && cr.Twice == 0 && cr.Mismatched == 0 && cr.BitsEqual {
			ok = 1
		}
		var worst time.Duration
		for _, d := range cr.Resumes {
			worst = max(worst, d)
		}
		res.Rows = append(res.Rows, Row{What: fmt.Sprintf("crash: %d SIGKILLs in a %d-client round (%d params each)", cr.Kills, c.CrashClients, c.CrashParams),
			Measured: ok, Unit: "all checks passed (1/0)",
			Note: fmt.Sprintf("%d acknowledged, %d lost, %d counted twice, %d mismatched, bits equal %v; slowest restart %.2f s",
				cr.Acked, cr.Lost, cr.Twice, cr.Mismatched, cr.BitsEqual, worst.Seconds())})
	}
	return res, nil
}

// direct reports whether the rounds' spools are written with O_DIRECT: exact sums add updates
// as they arrive and never read the spool back (server/direct.go).
func (c *Config) direct() bool { return c.Sum != "float" }

// diskWay names how the disk floor writes.
func (c *Config) diskWay() string {
	if c.direct() {
		return "O_DIRECT, as the spool of an exact sum"
	}
	return "through the page cache, as the spool of a float sum"
}

// rssBudget is the bound on the server's peak RSS in an ingest round: 1.3 × the f32
// model + 2 chunks a stream + 128 MiB.
func (c *Config) rssBudget() float64 {
	return 1.3*float64(c.Params*4) + float64(c.Clients)*2*float64(server.DefaultChunkBytes) + 128<<20
}

// weight is the ingest row's weight of client k.
func (c *Config) weight(k int) float64 {
	if c.WeightMax <= 1 || c.Clients <= 1 {
		return 1
	}
	return float64(1 + k*(c.WeightMax-1)/(c.Clients-1))
}

// weightNote names the ingest row's weights when they are not 1.
func (c *Config) weightNote() string {
	if c.WeightMax <= 1 {
		return ""
	}
	return fmt.Sprintf(", weights 1..%d", c.WeightMax)
}

// sumNote says how the rounds summed and what their accumulator held (fedavg: "auto" is exact).
func (c *Config) sumNote(st *api.Round, params int) string {
	held := "running sums at the close: not reported"
	if st.Report != nil && st.Report.SumBytes > 0 {
		held = fmt.Sprintf("running sums at the close %.0f MiB, %.1f bytes per parameter", float64(st.Report.SumBytes)/(1<<20), float64(st.Report.SumBytes)/float64(params))
	}
	switch c.Sum {
	case "float":
		return "round.sum float: an f32 accumulator; " + held
	case SumOneLimb:
		return fmt.Sprintf("round.sum exact, one_limb (bound %g, max_weight %g): exact sums in one limb; %s", float64(oneLimbBound), float64(oneLimbMaxWeight), held)
	}
	return "round.sum " + cmp.Or(c.Sum, "auto (the default)") + ": exact sums, two limbs held in one where they stay within 2^62 grid units; " + held
}

// SumOneLimb is the Sum that runs exact sums kept in one limb (round.exact.one_limb), with a
// bound and weight cap that the bench's updates (normal values, weight 1) stay within: a grid of
// 2^(4+20−61) = 2^-37.
const SumOneLimb = "one-limb"

const (
	oneLimbBound     = 16
	oneLimbMaxWeight = 1 << 20
)

// setSum sets a round configuration's sum as Config.Sum says.
func setSum(round map[string]any, sum string) {
	switch sum {
	case "":
	case SumOneLimb:
		round["sum"] = server.SumExact
		round["exact"] = map[string]any{"bound": oneLimbBound, "max_weight": oneLimbMaxWeight, "one_limb": true}
	default:
		round["sum"] = sum
	}
}

// serverConfig writes a configuration of n clients and returns its path and their tokens.
func serverConfig(dir string, n, streams int, sum string, extra, top map[string]any) (string, []string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", nil, err
	}
	// A data directory an earlier run left under the same --dir holds round 1 closed with the
	// same clients' updates: every push would be an idempotent retry, acknowledged without
	// writing anything, and the row would measure that.
	if err := os.RemoveAll(filepath.Join(dir, "data")); err != nil {
		return "", nil, err
	}
	tokens := make([]string, n)
	clients := make([]map[string]string, n)
	for k := range tokens {
		tokens[k] = fmt.Sprintf("bench-%d-%x", k, rand.Uint64())
		clients[k] = map[string]string{"id": clientID(k), "token_sha256": server.HashToken(tokens[k])}
	}
	round := map[string]any{"rule": "fedavg", "max_clients": n}
	setSum(round, sum)
	for k, v := range extra {
		round[k] = v
	}
	cfg := map[string]any{"listen": "127.0.0.1:0", "data_dir": filepath.Join(dir, "data"), "clients": clients,
		"round":  round,
		"limits": map[string]any{"max_streams": streams, "max_update_bytes": 1 << 40}}
	for k, v := range top {
		cfg[k] = v
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		return "", nil, err
	}
	path := filepath.Join(dir, "server.json")
	return path, tokens, os.WriteFile(path, b, 0o600)
}

// ingestRows: Clients concurrent clients push a Params-parameter f32 update each over loopback
// HTTP with durability on, against plain TCP streams into a discarding reader and the disk's
// durable write rate for the same bytes; the server's peak RSS against the budget; and the
// cost of checkpointing the accumulator per group (design B).
func ingestRows(ctx context.Context, c *Config) ([]Row, error) {
	r, err := newIngestRun(c)
	if err != nil {
		return nil, err
	}
	if r.before, err = r.floors("before"); err != nil {
		return nil, err
	}
	// Design B: a durable write of the accumulator (model-sized, f32) per group.
	if r.accWrite, err = durableWrite(r.floorDir, c.Params*4); err != nil {
		return nil, err
	}
	if err := r.serve(ctx); err != nil {
		return nil, err
	}
	if r.after, err = r.floors("after"); err != nil {
		return nil, err
	}
	return r.rows(), nil
}

// ingestRun is the ingest row's run: what it sends and what it measured.
type ingestRun struct {
	c        *Config
	name     string  // the round's name in the rows ("ingest", "Flight")
	dir      string  // the row's scratch directory
	floorDir string  // the floors' files
	body     []byte  // the update every client sends
	total    float64 // bytes all the clients send
	model    float64 // bytes of the f32 model

	before, after ingestFloors  // the floors before and after the server's run
	accWrite      time.Duration // design B: a durable write of the accumulator
	ingest        time.Duration // first byte to last acknowledgement
	closed        time.Duration // the start of the pushes to the round's close
	closedSt      *api.Round    // the closed round's status
	groups        float64       // group commits of the round
	hwm, anon     float64       // the server's VmHWM and RssAnon at the end, in bytes
}

// newIngestRun is the ingest row's run for c, its update encoded.
func newIngestRun(c *Config) (*ingestRun, error) {
	body, err := updateBytes(c.Params, 0)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(c.Dir, "ingest")
	return &ingestRun{c: c, name: "ingest", dir: dir, floorDir: filepath.Join(dir, "floor"), body: body,
		total: float64(len(body)) * float64(c.Clients), model: float64(c.Params * 4)}, nil
}

// floors measures the row's floors and logs them as rates, saying when ("before" or "after" the
// server's run).
func (r *ingestRun) floors(when string) (ingestFloors, error) {
	f, err := r.measure(true)
	if err != nil {
		return f, err
	}
	r.c.logf("floors %s: %s", when, f.rates(r.total))
	return f, nil
}

// measure measures the row's floors for every client's stream of the body; both only with
// withBoth.
func (r *ingestRun) measure(withBoth bool) (ingestFloors, error) {
	return measureFloors(r.floorDir, r.body, r.c.Clients, r.c.direct(), withBoth)
}

// serve starts the server, measures a round of every client's push, its group commits and the
// server's peak RSS, and stops the server.
func (r *ingestRun) serve(ctx context.Context) error {
	p, tokens, err := r.start(ctx, nil)
	if err != nil {
		return err
	}
	defer p.stop()
	if err := r.pushAll(ctx, p.url, tokens); err != nil {
		return err
	}
	if r.groups, err = scrape(p.url, "wattagg_commit_group_updates_count"); err != nil {
		return err
	}
	r.hwm, r.anon = peakRSS(p.cmd.Process.Pid)
	return nil
}

// start writes the server's configuration for the row's clients, all streaming at once, with
// top's settings beside, and starts the server; it returns it and the clients' tokens.
func (r *ingestRun) start(ctx context.Context, top map[string]any) (*process, []string, error) {
	cfgPath, tokens, err := serverConfig(r.dir, r.c.Clients, r.c.Clients, r.c.Sum, nil, top)
	if err != nil {
		return nil, nil, err
	}
	p, err := startProcess(ctx, r.c.Start, cfgPath, filepath.Join(r.dir, "addr"))
	return p, tokens, err
}

// pushAll has every client push the update to the server at url at once, and times it to the
// last acknowledgement and to the round's close.
func (r *ingestRun) pushAll(ctx context.Context, url string, tokens []string) error {
	t0 := time.Now()
	var err error
	r.ingest, err = timed(r.c.Clients, r.c.Clients, func(k int) error {
		cl, err := client.New(url, client.WithToken(tokens[k]))
		if err == nil {
			_, err = cl.Push(ctx, 1, bytes.NewReader(r.body), int64(len(r.body)), client.WithWeight(r.c.weight(k)))
		}
		return err
	})
	if err != nil {
		return err
	}
	if r.closedSt, err = waitClosedStatus(ctx, url, 1); err != nil {
		return err
	}
	r.closed = time.Since(t0)
	return nil
}

// rows are the row's figures, each beside its floor.
func (r *ingestRun) rows() []Row {
	best := r.before.best(r.after)
	return []Row{r.httpRow(best), r.tcpIntoDiskRow(best), r.rssRow(), r.designBRow()}
}

// gb is the rate, in GB/s, of sending every client's update in d.
func (r *ingestRun) gb(d time.Duration) float64 { return r.total / d.Seconds() / 1e9 }

// httpRow is the HTTP ingest against the floor, min(TCP, disk).
func (r *ingestRun) httpRow(best ingestFloors) Row {
	c := r.c
	return r.ingestRow(fmt.Sprintf("HTTP ingest, %d clients × %d f32 params, durable%s", c.Clients, c.Params, c.weightNote()), best,
		fmt.Sprintf("first byte to last acknowledgement %.2f s; round closed %.2f s after the start; %.0f group commits", r.ingest.Seconds(), r.closed.Seconds(), r.groups))
}

// ingestRow is the ingest, named what, against the floor, min(TCP, disk), of best; its
// note gives the floors before and after, and then more.
func (r *ingestRun) ingestRow(what string, best ingestFloors, more string) Row {
	gb := r.gb
	floor, floorIs := best.ingest()
	return Row{What: what, Measured: gb(r.ingest), Unit: "GB/s",
		Floor: gb(floor), FloorIs: "min(loopback TCP, disk durable): " + floorIs, Ratio: floor.Seconds() / r.ingest.Seconds(),
		Note: fmt.Sprintf("TCP %.2f GB/s (before %.2f, after %.2f), disk %.2f GB/s (before %.2f, after %.2f; %s); ",
			gb(best.tcp), gb(r.before.tcp), gb(r.after.tcp), gb(best.disk), gb(r.before.disk), gb(r.after.disk), r.c.diskWay()) + more}
}

// tcpIntoDiskRow is the same ingest against TCP into disk at once.
func (r *ingestRun) tcpIntoDiskRow(best ingestFloors) Row {
	gb := r.gb
	return Row{What: "the same ingest against TCP into disk at once", Measured: gb(r.ingest), Unit: "GB/s",
		Floor: gb(best.both), FloorIs: "the same bytes over as many TCP streams, each written durably as it arrives (no parsing, hashing or adding)", Ratio: best.both.Seconds() / r.ingest.Seconds(),
		Note: fmt.Sprintf("before %.2f, after %.2f GB/s: what the machine does when it receives and writes at once, against the issue's floor min(TCP, disk) of the two measured alone", gb(r.before.both), gb(r.after.both))}
}

// rssRow is the server's peak RSS against the budget.
func (r *ingestRun) rssRow() Row {
	budget := r.c.rssBudget()
	return Row{What: fmt.Sprintf("server peak RSS (VmHWM) during the %s round", r.name), Measured: r.hwm / (1 << 20), Unit: "MiB",
		Floor: budget / (1 << 20), FloorIs: "budget 1.3 × model + streams × 2 chunks + 128 MiB", Ratio: r.hwm / budget,
		Note: fmt.Sprintf("RssAnon at the end %.0f MiB; model %.0f MiB; %s", r.anon/(1<<20), r.model/(1<<20), r.c.sumNote(r.closedSt, r.c.Params))}
}

// designBRow is what checkpointing the accumulator per group commit (design B) would cost.
func (r *ingestRun) designBRow() Row {
	g := max(r.groups, 1)
	return Row{What: "design B: accumulator checkpoint per group commit", Measured: r.accWrite.Seconds() * 1e3, Unit: "ms per group",
		Note: fmt.Sprintf("a durable write of the %.0f MiB f32 accumulator; over this round's %.0f groups B would write %.2f GB (%.1f s of checkpoints) where A wrote %.2f GB of spool in the ingest itself",
			r.model/(1<<20), g, g*r.model/1e9, g*r.accWrite.Seconds(), r.total/1e9)}
}

// smallRows: many clients of a small model, pushing SmallStreams at a time: updates per
// second and the time from an update's last byte to its acknowledgement.
func smallRows(ctx context.Context, c *Config) ([]Row, error) {
	r, err := newSmallRun(c)
	if err != nil {
		return nil, err
	}
	if r.disk, err = r.floor(); err != nil {
		return nil, err
	}
	if err := r.serve(ctx); err != nil {
		return nil, err
	}
	return r.rows(), nil
}

// smallRun is the many-small-clients row's run: what it sends and what it measured.
type smallRun struct {
	c    *Config
	dir  string // the row's scratch directory
	body []byte // the update every client sends

	disk time.Duration   // the disk floor
	wall time.Duration   // every client's push, SmallStreams at a time
	lat  []time.Duration // each client's last byte to acknowledgement
	m    [6]float64      // the server's metrics, in smallMetrics' order
}

// smallMetrics are the server's metrics the row reads after the round: group commits, their
// syncs and the acknowledgements' latency, each a sum and a count.
var smallMetrics = [6]string{"wattagg_commit_group_updates_sum", "wattagg_commit_group_updates_count",
	"wattagg_commit_sync_seconds_sum", "wattagg_commit_sync_seconds_count", "wattagg_ack_latency_seconds_sum", "wattagg_ack_latency_seconds_count"}

// newSmallRun is the many-small-clients row's run for c, its update encoded.
func newSmallRun(c *Config) (*smallRun, error) {
	body, err := updateBytes(c.SmallParams, 1)
	if err != nil {
		return nil, err
	}
	return &smallRun{c: c, dir: filepath.Join(c.Dir, "small"), body: body, lat: make([]time.Duration, c.SmallClients)}, nil
}

// floor measures the row's disk floor.
func (r *smallRun) floor() (time.Duration, error) {
	// The disk floor writes the same files: SmallClients of them, SmallStreams at a time.
	return diskFloorFiles(filepath.Join(r.dir, "floor"), len(r.body), r.c.SmallClients, r.c.SmallStreams, r.c.direct())
}

// serve starts the server, measures a round of every client's push and reads the server's
// metrics, and stops the server.
func (r *smallRun) serve(ctx context.Context) error {
	cfgPath, tokens, err := serverConfig(r.dir, r.c.SmallClients, r.c.SmallStreams, r.c.Sum, nil, nil)
	if err != nil {
		return err
	}
	p, err := startProcess(ctx, r.c.Start, cfgPath, filepath.Join(r.dir, "addr"))
	if err != nil {
		return err
	}
	defer p.stop()
	if err := r.pushAll(ctx, p.url, tokens); err != nil {
		return err
	}
	if err := waitClosed(ctx, p.url, 1); err != nil {
		return err
	}
	return r.scrape(p.url)
}

// pushAll has every client push the update to the server at url, SmallStreams at a time, and
// times it.
func (r *smallRun) pushAll(ctx context.Context, url string, tokens []string) error {
	var err error
	r.wall, err = timed(r.c.SmallClients, r.c.SmallStreams, func(k int) error {
		cl, err := client.New(url, client.WithToken(tokens[k]))
		if err != nil {
			return err
		}
		return r.push(ctx, cl, k)
	})
	return err
}

// push pushes the update as client k with cl, and keeps the time from its last byte to its
// acknowledgement.
func (r *smallRun) push(ctx context.Context, cl *client.Client, k int) error {
	var last time.Time
	n := int64(len(r.body))
	_, err := cl.Push(ctx, 1, bytes.NewReader(r.body), n, client.WithProgress(func(done, _ int64) {
		if done == n {
			last = time.Now()
		}
	}))
	r.lat[k] = time.Since(last)
	return err
}

// scrape reads smallMetrics from the server at url.
func (r *smallRun) scrape(url string) error {
	var err error
	for i, name := range smallMetrics {
		if r.m[i], err = scrape(url, name); err != nil {
			return err
		}
	}
	return nil
}

// rows are the row's figures: the updates' rate beside its floor, and their latency.
func (r *smallRun) rows() []Row {
	return []Row{r.rateRow(), r.latencyRow()}
}

// rateRow is the updates per second against the disk's rate for as many files.
func (r *smallRun) rateRow() Row {
	c := r.c
	perSec := float64(c.SmallClients) / r.wall.Seconds()
	diskPerSec := float64(c.SmallClients) / r.disk.Seconds()
	return Row{What: fmt.Sprintf("%d clients × %d f32 params, %d pushing at once", c.SmallClients, c.SmallParams, c.SmallStreams),
		Measured: perSec, Unit: "updates/s", Floor: diskPerSec, FloorIs: "disk: as many files of one update, written and fdatasynced as many at a time, " + c.diskWay(),
		Ratio: perSec / diskPerSec, Note: fmt.Sprintf("%.2f GB/s of updates", perSec*float64(len(r.body))/1e9)}
}

// latencyRow is the p99 time from an update's last byte to its acknowledgement, beside the
// server's own account of it.
func (r *smallRun) latencyRow() Row {
	lat, m := r.lat, r.m
	slices.Sort(lat)
	p99 := lat[len(lat)*99/100]
	p50 := lat[len(lat)/2]
	return Row{What: "last byte to acknowledgement", Measured: float64(p99.Microseconds()) / 1e3, Unit: "ms p99",
		Note: fmt.Sprintf("p50 %.2f ms, max %.2f ms (client side: includes the answer's way back); server side: mean %.2f ms from last byte to acknowledgement, %.0f group commits of %.1f updates on average, %.2f ms each (directory fsync, log append and fdatasync)",
			float64(p50.Microseconds())/1e3, float64(lat[len(lat)-1].Microseconds())/1e3,
			1e3*m[4]/max(m[5], 1), m[1], m[0]/max(m[1], 1), 1e3*m[2]/max(m[3], 1))}
}

// tcpFloor sends body over n concurrent loopback TCP streams into io.Discard and returns the
// time from the first byte to the last stream's end.
func tcpFloor(body []byte, n int) (time.Duration, error) {
	return tcpStreams(body, n, func(_ int, conn net.Conn) error {
		_, err := io.Copy(io.Discard, conn)
		return err
	})
}

// tcpDiskFloor sends body over n concurrent loopback TCP streams, each received into its own
// file in the writes design A's spool makes (512 KiB from a page-aligned buffer, O_DIRECT where
// direct; the last write rounded up and the file cut back), each file fdatasynced, and returns
// the time from the first byte to the last file's sync. It is the I/O of a durable ingest with
// nothing else: no parsing, hashing or adding. On a machine whose network and disk share the
// cores it can be far below min(TCP, disk), each measured alone: on the 2-vCPU PVM guest of
// 2026-12-02, 64 O_DIRECT writers at 0.75 GB/s took 58% of what two goroutines hashing beside
// them could otherwise do.
func tcpDiskFloor(dir string, body []byte, n int, direct bool) (time.Duration, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, err
	}
	defer removeSynced(dir)
	return tcpStreams(body, n, func(k int, conn net.Conn) error {
		return receiveFile(filepath.Join(dir, strconv.Itoa(k)), conn, direct)
	})
}

// tcpStreams sends body over n concurrent loopback TCP streams, the k-th accepted one received
// by recv(k, conn), and returns the time from the first byte to the last receiver's return.
func tcpStreams(body []byte, n int, recv func(k int, conn net.Conn) error) (time.Duration, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	var received sync.WaitGroup
	received.Add(n)
	errs := make(chan error, 2*n)
	go func() {
		for k := range n {
			conn, err := ln.Accept()
			if err != nil {
				errs <- err
				for range n - k {
					received.Done()
				}
				return
			}
			go func() {
				defer received.Done()
				defer conn.Close()
				if err := recv(k, conn); err != nil {
					errs <- err
				}
			}()
		}
	}()
	t0 := time.Now()
	var send sync.WaitGroup
	for range n {
		send.Go(func() {
			conn, err := net.Dial("tcp", ln.Addr().String())
			if err == nil {
				_, err = conn.Write(body)
				conn.Close()
			}
			if err != nil {
				errs <- err
			}
		})
	}
	send.Wait()
	received.Wait()
	d := time.Since(t0)
	close(errs)
	for err := range errs {
		return 0, err
	}
	return d, nil
}

// receiveFile writes what r sends to a new file at path in 512 KiB writes, O_DIRECT where direct,
// and fdatasyncs it.
func receiveFile(path string, r io.Reader, direct bool) error {
	f, err := createFloorFile(path, direct)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := tensor.PageAligned(512 << 10)
	size := 0
	for {
		got, err := io.ReadFull(r, buf)
		if got > 0 {
			size += got
			w := got
			if direct {
				w = (got + 4095) &^ 4095
				clear(buf[got:w])
			}
			if _, err := f.Write(buf[:w]); err != nil {
				return err
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return err
		}
	}
	return syncFloorFile(f, size, direct)
}

// createFloorFile creates (or truncates) a floor's file at path, for O_DIRECT writes where
// direct.
func createFloorFile(path string, direct bool) (*os.File, error) {
	flags := os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	if direct {
		flags |= unix.O_DIRECT
	}
	return os.OpenFile(path, flags, 0o600)
}

// syncFloorFile cuts a file written in whole blocks (direct) back to size and fdatasyncs it.
func syncFloorFile(f *os.File, size int, direct bool) error {
	if direct && size%4096 != 0 {
		if err := f.Truncate(int64(size)); err != nil {
			return err
		}
	}
	return unix.Fdatasync(int(f.Fd()))
}

// ingestFloors are the floors of an ingest row, each the time the same bytes took: over as many
// loopback TCP streams into io.Discard (tcp), written durably as the spool writes them (disk), and
// both at once, each stream written as it arrives (both; zero where not measured).
type ingestFloors struct{ tcp, disk, both time.Duration }

// measureFloors measures the floors of clients streams of body, writing under dir; both only
// with withBoth.
func measureFloors(dir string, body []byte, clients int, direct, withBoth bool) (ingestFloors, error) {
	var f ingestFloors
	var err error
	if f.tcp, err = tcpFloor(body, clients); err != nil {
		return f, err
	}
	if f.disk, err = diskFloor(dir, len(body), clients, direct); err != nil {
		return f, err
	}
	if withBoth {
		f.both, err = tcpDiskFloor(dir, body, clients, direct)
	}
	return f, err
}

// best is the faster of each floor measured before and after a run: the machine is shared, so
// the ratio against it is the conservative one.
func (f ingestFloors) best(g ingestFloors) ingestFloors {
	return ingestFloors{tcp: min(f.tcp, g.tcp), disk: min(f.disk, g.disk), both: min(f.both, g.both)}
}

// ingest is the floor, min(TCP, disk) as a rate, so the longer of the two times, and
// which it is.
func (f ingestFloors) ingest() (time.Duration, string) {
	if f.disk > f.tcp {
		return f.disk, "disk durable writes"
	}
	return f.tcp, "loopback TCP"
}

// rates prints the floors as rates for total bytes.
func (f ingestFloors) rates(total float64) string {
	gb := func(d time.Duration) float64 { return total / d.Seconds() / 1e9 }
	s := fmt.Sprintf("TCP %.2f GB/s, disk %.2f GB/s", gb(f.tcp), gb(f.disk))
	if f.both > 0 {
		s += fmt.Sprintf(", TCP into disk %.2f GB/s", gb(f.both))
	}
	return s
}

// diskFloor writes n files of size bytes at once, in 1 MiB writes, each fdatasynced, as the
// spool does, and returns the time it took. direct writes them with O_DIRECT, as the spool of a
// round that adds updates as they arrive does (exact sums: the default), else through the page
// cache, as the spool of a float sum does.
func diskFloor(dir string, size, n int, direct bool) (time.Duration, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, err
	}
	defer removeSynced(dir)
	return timed(n, n, func(k int) error {
		return writeFloorFile(filepath.Join(dir, strconv.Itoa(k)), size, direct)
	})
}

// writeFloorFile writes size bytes to a new file at path in 1 MiB writes and fdatasyncs it.
// With O_DIRECT every write is whole blocks from an aligned buffer, the last one rounded up
// and the file cut back to size, as the spool does.
func writeFloorFile(path string, size int, direct bool) error {
	f, err := createFloorFile(path, direct)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := floorBuffer()
	for off := 0; off < size; off += len(buf) {
		n := min(len(buf), size-off)
		if direct {
			n = (n + 4095) &^ 4095
		}
		if _, err := f.Write(buf[:n]); err != nil {
			return err
		}
	}
	return syncFloorFile(f, size, direct)
}

// floorBuffer is 1 MiB of data at a page boundary (what O_DIRECT needs).
func floorBuffer() []byte {
	b := tensor.PageAligned(1 << 20)
	for i := range b {
		b[i] = byte(i * 7)
	}
	return b
}

// diskFloorFiles writes n files of size bytes from conc writers at once (each takes the next
// file as soon as its last one is fdatasynced), directly or not (diskFloor), and returns the
// time it took.
func diskFloorFiles(dir string, size, n, conc int, direct bool) (time.Duration, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, err
	}
	defer removeSynced(dir)
	return timed(n, conc, func(k int) error {
		return writeFloorFile(filepath.Join(dir, strconv.Itoa(k)), size, direct)
	})
}

// timed runs do(k) for k in [0, n) on conc goroutines, each taking the next k as soon as its
// last is done and stopping at its first error, and returns how long they all took and the
// first error.
func timed(n, conc int, do func(k int) error) (time.Duration, error) {
	work := make(chan int, n)
	for k := range n {
		work <- k
	}
	close(work)
	errs := make(chan error, conc)
	var wg sync.WaitGroup
	t0 := time.Now()
	for range conc {
		wg.Go(func() {
			for k := range work {
				if err := do(k); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	d := time.Since(t0)
	close(errs)
	return d, <-errs
}

// removeSynced removes a floor's files and waits until the file system has committed the
// removal: on a file system mounted with discard (these VMs' ext4), freeing 6.4 GB sends discards
// to the disk at the next journal commit, and the next row would otherwise pay for them.
func removeSynced(dir string) {
	os.RemoveAll(dir)
	unix.Sync()
}

// durableWrite times one durable write of size bytes (write and fdatasync), as a checkpoint of
// the accumulator would be.
func durableWrite(dir string, size int) (time.Duration, error) {
	return diskFloor(dir, size, 1, false)
}

// scrape reads the value of one metric from the server's /metrics.
func scrape(url, name string) (float64, error) {
	resp, err := httpGet(url + "/metrics")
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(resp))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, name+" ") {
			return strconv.ParseFloat(strings.TrimSpace(strings.TrimPrefix(line, name)), 64)
		}
	}
	return 0, fmt.Errorf("metric %s not found", name)
}

// peakRSS reads VmHWM and RssAnon of a process, in bytes.
func peakRSS(pid int) (hwm, anon float64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "VmHWM:":
			hwm = v * 1024
		case "RssAnon:":
			anon = v * 1024
		}
	}
	return hwm, anon
}

// Print writes the rows as a table.
func (r *Result) Print(w io.Writer) {
	fmt.Fprintf(w, "%-64s %14s %-22s %12s %7s\n", "what", "measured", "unit", "floor", "ratio")
	for _, row := range r.Rows {
		floor, ratio := "", ""
		if row.Floor != 0 {
			floor = fmt.Sprintf("%.3g", row.Floor)
		}
		if row.Ratio != 0 {
			ratio = fmt.Sprintf("%.2f", row.Ratio)
		}
		fmt.Fprintf(w, "%-64s %14.4g %-22s %12s %7s\n", row.What, row.Measured, row.Unit, floor, ratio)
		if row.FloorIs != "" {
			fmt.Fprintf(w, "    floor: %s\n", row.FloorIs)
		}
		if row.Note != "" {
			fmt.Fprintf(w, "    %s\n", row.Note)
		}
	}
}

// httpGet reads the body at url.
func httpGet(url string) ([]byte, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return io.ReadAll(resp.Body)
}
