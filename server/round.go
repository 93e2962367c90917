package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/internal/durable"
	"github.com/wattagg/wattagg/server/api"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// roundMeta is what round.json keeps of a round: enough to resume it after a restart (the
// updates themselves are in its acknowledgement log) and to report on it once closed.
type roundMeta struct {
	Round      int        `json:"round"`
	State      string     `json:"state"`
	Rule       string     `json:"rule"`
	Opened     time.Time  `json:"opened"`
	Deadline   *time.Time `json:"deadline,omitempty"`
	Closed     *time.Time `json:"closed,omitempty"`
	Global     string     `json:"global,omitempty"` // relative to the data directory when inside it
	Reason     string     `json:"reason,omitempty"`
	MinClients int        `json:"min_clients"`
	MaxClients int        `json:"max_clients"`
	Quorum     int        `json:"quorum"`
	Clients    int        `json:"clients"`
	Bytes      int64      `json:"bytes"`
	ModelRange *[2]int64  `json:"model_range,omitempty"`
	// Sum is how the round sums ("exact" or "float"; empty in rounds opened before the server
	// summed exactly: float), and Exact what its exact sums were set up for. A round keeps
	// both for its life, across restarts: its acknowledged updates were checked against them.
	Sum   string       `json:"sum,omitempty"`
	Exact *ExactConfig `json:"exact,omitempty"`
}

// sum is how the round sums.
func (m *roundMeta) sum() string {
	if m.Sum == "" {
		return SumFloat
	}
	return m.Sum
}

// Files of a round directory.
const (
	roundFile  = "round.json"
	ackFile    = "acks.log"
	spoolDir   = "spool"
	modelFile  = "model.safetensors"
	reportFile = "report.json"
)

// round is one round of the server: the engine's Round (derived state: rebuilt from the
// acknowledgement log after a restart), the log, the spool, and who is in it. Updates reach
// the engine only through the round's committer goroutine, in log order.
type round struct {
	srv    *Server
	n      int
	dir    string
	logger *slog.Logger

	mu       sync.Mutex
	meta     roundMeta
	agg      *engineRound   // nil once closed
	rule     aggregate.Rule // the rule the engine's round runs (built per round)
	whole    bool           // the rule needs every update at once: spools stay mapped
	alog     *ackLog
	records  []AckRecord
	acked    map[string]int     // client -> index in records
	arriving map[string]*Upload // uploads in progress, by client
	sets     []*tensor.Set      // mapped spools the engine keeps (whole-set rules)
	report   *aggregate.Report
	closing  bool  // a close is queued or running: no new uploads
	sumBytes int64 // what the engine's running sums held after the last group commit

	queue chan any      // *commitReq and *closeReq, to the committer
	done  chan struct{} // closed when the committer has exited
	timer *time.Timer

	ended     chan struct{} // closed once the round is closed or failed (WaitStatus)
	endedOnce sync.Once
}

// markEnded wakes those waiting for the round to end.
func (r *round) markEnded() { r.endedOnce.Do(func() { close(r.ended) }) }

// commitReq hands a durable spool file to the committer.
type commitReq struct {
	rec    AckRecord          // Seq and At are set by the committer
	arr    *aggregate.Arrival // the update's pieces, in the sum already (nil: add the spool file)
	result chan commitResult
}

// discard removes the spool file of a request that is refused. An arrival's stays: its upload
// reads its pieces back from it to take them out of the sum, and then removes it.
func (q *commitReq) discard(r *round) {
	if q.arr == nil {
		os.Remove(r.spoolPath(q.rec.File))
	}
}

// refuse discards the request's spool file (see discard) and answers the request with err.
func (q *commitReq) refuse(r *round, err error) {
	q.discard(r)
	q.result <- commitResult{err: err}
}

type commitResult struct {
	rec AckRecord
	err error
}

// closeReq asks the committer to close the round.
type closeReq struct {
	why    closeCause
	result chan error
}

type closeCause int

const (
	closeAdmin closeCause = iota
	closeDeadline
	closeFull
)

func (c closeCause) String() string {
	switch c {
	case closeAdmin:
		return "closed by the admin"
	case closeDeadline:
		return "closed at its deadline"
	}
	return "closed when max_clients updates had arrived"
}

func (r *round) spoolPath(name string) string { return filepath.Join(r.dir, spoolDir, name) }

// status describes the round for the API and the status page.
func (r *round) status(withUpdates bool) api.Round {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.meta
	st := api.Round{Round: r.n, State: m.State, Rule: m.Rule, Clients: m.Clients, Bytes: m.Bytes,
		MinClients: m.MinClients, MaxClients: m.MaxClients, Quorum: m.Quorum, Opened: m.Opened,
		Deadline: m.Deadline, Closed: m.Closed, Global: m.Global, Reason: m.Reason, Report: r.report,
		Arriving: len(r.arriving), ModelRange: m.ModelRange, Sum: m.sum(), Exact: apiExact(m.Exact)}
	if m.State == api.StateOpen && r.agg != nil && r.agg.sec != nil {
		st.Recovery = r.recoveryState()
	}
	if m.State == api.StateOpen {
		st.SumBytes = r.sumBytes
	}
	if withUpdates {
		for _, rec := range r.records {
			st.Updates = append(st.Updates, api.ClientUpdate{Client: rec.Client, Seq: rec.Seq, Bytes: rec.Bytes, Weight: rec.Weight, At: rec.At})
		}
	}
	return st
}

// open reports whether the round takes updates.
func (r *round) openLocked() error {
	switch {
	case r.meta.State != api.StateOpen:
		return fmt.Errorf("%w: round %d is %s%s", ErrRoundClosed, r.n, r.meta.State, reasonSuffix(r.meta.Reason))
	case r.closing:
		return fmt.Errorf("%w: round %d is closing", ErrRoundClosed, r.n)
	}
	return nil
}

func reasonSuffix(reason string) string {
	if reason == "" {
		return ""
	}
	return " (" + reason + ")"
}

// submit hands a request to the committer, unless it has exited.
func (r *round) submit(req any) bool {
	select {
	case r.queue <- req:
		return true
	case <-r.done:
		return false
	}
}

// requestClose queues a close and waits for its outcome.
func (r *round) requestClose(ctx context.Context, why closeCause) error {
	req := &closeReq{why: why, result: make(chan error, 1)}
	if !r.submit(req) {
		return fmt.Errorf("%w: round %d is %s", ErrRoundClosed, r.n, r.state())
	}
	select {
	case err := <-req.result:
		return err
	case <-r.done:
		select {
		case err := <-req.result:
			return err
		default:
			return fmt.Errorf("%w: round %d is %s", ErrRoundClosed, r.n, r.state())
		}
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (r *round) state() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.meta.State
}

// committer is the only goroutine that adds updates to the engine's round. It takes every
// request queued at the time (a group), adds the group's updates to the round in order, makes
// their spool entries and acknowledgement records durable with one directory fsync and one
// log append + fdatasync, and only then acknowledges them. The engine validates each update
// again as it adds it, so only updates the round accepted reach the log, and a replay of the
// log never meets a refusal. If the log cannot be written, the round is rebuilt from the log
// as it is on disk (the accumulator is derived state) and the group is refused.
func (r *round) committer(stop <-chan struct{}) {
	defer close(r.done)
	for {
		var first any
		select {
		case first = <-r.queue:
		case <-stop:
			return
		}
		group := []any{first}
	drain:
		for len(group) < 1024 {
			if _, isClose := group[len(group)-1].(*closeReq); isClose {
				break
			}
			select {
			case req := <-r.queue:
				group = append(group, req)
			default:
				break drain
			}
		}
		var uploads []*commitReq
		var closeReqs []*closeReq
		for _, req := range group {
			switch q := req.(type) {
			case *commitReq:
				uploads = append(uploads, q)
			case *closeReq:
				closeReqs = append(closeReqs, q)
			}
		}
		full := r.commit(uploads)
		for _, c := range closeReqs {
			err := r.close(c.why)
			c.result <- err
		}
		if full && len(closeReqs) == 0 {
			if err := r.close(closeFull); errors.Is(err, errNoRecovery) {
				r.logger.Info("a full secure-sum round waits for its recovery")
			} else if err != nil && !errors.Is(err, ErrRoundClosed) {
				r.logger.Error("closing a full round", "err", err)
			}
		}
		r.mu.Lock()
		over := r.meta.State != api.StateOpen
		r.mu.Unlock()
		if over {
			r.drainRefusing()
			return
		}
	}
}

// engineSumBytes is what the engine's running sums hold (the committer's goroutine alone
// drives and closes the engine's round, so it may ask outside the lock).
func (r *round) engineSumBytes() int64 {
	r.mu.Lock()
	agg := r.agg
	r.mu.Unlock()
	if agg == nil {
		return 0
	}
	return agg.SumBytes()
}

// drainRefusing answers what is still queued once the round is over.
func (r *round) drainRefusing() {
	for {
		select {
		case req := <-r.queue:
			err := fmt.Errorf("%w: round %d is %s", ErrRoundClosed, r.n, r.state())
			switch q := req.(type) {
			case *commitReq:
				q.refuse(r, err)
			case *closeReq:
				q.result <- err
			}
		default:
			return
		}
	}
}

// commit adds a group of durable spool files to the round and acknowledges them. It reports
// whether the round has reached max_clients.
func (r *round) commit(reqs []*commitReq) bool {
	if len(reqs) == 0 {
		return false
	}
	seq, open := r.nextSeq()
	var g commitGroup
	for _, q := range reqs {
		set, err := r.admitToGroup(q, open)
		if err != nil {
			q.refuse(r, err)
			continue
		}
		q.rec.Seq = seq
		seq++
		g.accepted = append(g.accepted, q) // here, not in a method of g: see commitGroup
		g.sets = append(g.sets, set)
	}
	if len(g.accepted) == 0 {
		return false
	}
	start := time.Now()
	recs := g.stamp(start)
	if err := r.makeDurable(recs, start); err != nil {
		r.abandonGroup(&g, err)
		return false
	}
	full := r.recordGroup(&g)
	r.acknowledgeGroup(&g)
	return full
}

// commitGroup is the group of a commit that the round accepted: the requests, in log order,
// and the mapped spool of each (nil once unmapped, and for an arrival). It holds nothing else,
// and its slices grow in commit alone, so that a small group's stay on the stack: escape
// analysis does not tell a struct's fields apart, and a pointer that leaks from any field
// would move both slices to the heap.
type commitGroup struct {
	accepted []*commitReq
	sets     []*tensor.Set
}

// nextSeq returns the sequence number of the round's next record and whether the round is
// open (nil), as a group begins.
func (r *round) nextSeq() (int, error) {
	r.mu.Lock()
	open := r.openLocked()
	seq := len(r.records)
	r.mu.Unlock()
	return seq, open
}

// admitToGroup puts a request of a group in the engine's round, unless the round was not open
// as the group began (open), and returns the mapped spool the round keeps of it.
func (r *round) admitToGroup(q *commitReq, open error) (*tensor.Set, error) {
	if open != nil {
		return nil, open
	}
	set, err := r.admit(q)
	if err != nil {
		return nil, err
	}
	if !r.whole && set != nil {
		// A sum is done with the update once it is added: unmap it now, so that a large
		// group does not hold every update of the group mapped (resident) at once.
		set.Close()
		set = nil
	}
	return set, nil
}

// stamp sets the time of the group's records to start and returns the records for the log.
func (g *commitGroup) stamp(start time.Time) []AckRecord {
	recs := make([]AckRecord, len(g.accepted))
	for i, q := range g.accepted {
		q.rec.At = start.UTC()
		recs[i] = q.rec
	}
	return recs
}

// makeDurable makes a group's spool entries durable with one directory fsync and its records
// with one log append + fdatasync, and counts the time taken since start and the size of the
// group.
func (r *round) makeDurable(recs []AckRecord, start time.Time) error {
	err := durable.SyncDir(filepath.Join(r.dir, spoolDir))
	if err == nil {
		err = r.alog.append(recs)
	}
	r.srv.metrics.commitSync.Observe(time.Since(start).Seconds())
	r.srv.metrics.commitGroup.Observe(float64(len(recs)))
	return err
}

// abandonGroup answers a group whose records could not be made durable (err): the engine's
// round, which has the group's updates in it, is rebuilt from the log as it is on disk and
// every request of the group is refused. The round fails if it cannot be rebuilt.
func (r *round) abandonGroup(g *commitGroup, err error) {
	r.logger.Error("acknowledgement log append failed: rebuilding the round from the log", "err", err, "group", len(g.accepted))
	for _, s := range g.sets {
		if s != nil && !r.whole {
			s.Close()
		}
	}
	rerr := r.rebuild()
	for _, q := range g.accepted {
		q.refuse(r, fmt.Errorf("%s: the update could not be made durable: %w", q.rec.Client, err))
	}
	if rerr != nil {
		r.fail(fmt.Sprintf("the acknowledgement log failed (%v) and the round could not be rebuilt: %v", err, rerr))
	}
}

// recordGroup adds a durable group to the round's records and counts, and reports whether the
// round has reached max_clients.
func (r *round) recordGroup(g *commitGroup) bool {
	held := r.engineSumBytes()
	r.mu.Lock()
	r.sumBytes = held // before the acknowledgements: a status after one shows the sums with it
	for i, q := range g.accepted {
		r.acked[q.rec.Client] = len(r.records)
		delete(r.arriving, q.rec.Client) // acknowledged: counted by records now, not twice toward max_clients
		r.records = append(r.records, q.rec)
		r.meta.Clients++
		r.meta.Bytes += q.rec.Bytes
		if r.whole {
			r.sets = append(r.sets, g.sets[i])
		}
	}
	full := len(r.records) >= r.meta.MaxClients
	r.mu.Unlock()
	return full
}

// acknowledgeGroup answers each request of a recorded group with its record, first unmapping
// the spool a sum is done with.
func (r *round) acknowledgeGroup(g *commitGroup) {
	for i, q := range g.accepted {
		if !r.whole && g.sets[i] != nil {
			g.sets[i].Close()
		}
		q.result <- commitResult{rec: q.rec}
	}
}

// admit puts a request's update in the engine's round: an arrival, whose pieces are in the
// sum already, is counted (Commit); a spool file is added (add).
func (r *round) admit(q *commitReq) (*tensor.Set, error) {
	if q.arr != nil {
		return nil, r.agg.explain(q.arr.Commit(), nil)
	}
	return r.add(q.rec)
}

// add maps a spool file and adds it to the engine's round with its recorded weight. The
// mapped Set is returned: a whole-set rule keeps it until the round closes.
func (r *round) add(rec AckRecord) (*tensor.Set, error) {
	set, err := safetensors.Open(r.spoolPath(rec.File), safetensors.WithSource(rec.Client))
	if err != nil {
		return nil, fmt.Errorf("%s: %w: reading back its spool file: %w", rec.Client, ErrCorrupt, err)
	}
	ctx := context.Background()
	if rec.From == string(aggregate.WeightsGiven) {
		err = r.agg.Add(ctx, set, rec.Weight)
	} else {
		err = r.agg.AddByExamples(ctx, set)
	}
	if err != nil {
		set.Close()
		return nil, err
	}
	return set, nil
}

// rebuild replaces the engine's round by a fresh one fed the acknowledged updates again, in log
// order: the same operations in the same order, so the same bits.
func (r *round) rebuild() error {
	r.mu.Lock()
	recs := append([]AckRecord(nil), r.records...)
	old, oldSets := r.agg, r.sets
	r.sets = nil
	r.mu.Unlock()
	if old != nil {
		old.Close()
	}
	for _, s := range oldSets {
		s.Close()
	}
	r.mu.Lock()
	oldRule := r.rule
	r.rule = nil
	r.mu.Unlock()
	if oldRule != nil {
		closeRule(oldRule)
	}
	agg, rule, err := r.srv.newEngineRound(&r.meta)
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.agg, r.rule = agg, rule
	r.mu.Unlock()
	sets, err := r.replay(recs)
	if err != nil {
		return err
	}
	held := r.engineSumBytes()
	r.mu.Lock()
	r.sets, r.sumBytes = sets, held
	r.mu.Unlock()
	return nil
}

// replay adds acknowledged updates to the engine's round again, in log order, and returns the
// mapped spools a whole-set rule keeps (the others are unmapped once added). On an error it
// returns those kept so far with it.
func (r *round) replay(recs []AckRecord) ([]*tensor.Set, error) {
	var sets []*tensor.Set
	for _, rec := range recs {
		set, err := r.replayOne(rec)
		if err != nil {
			return sets, err
		}
		if r.whole {
			sets = append(sets, set)
		} else {
			set.Close()
		}
	}
	return sets, nil
}

// replayOne checks an acknowledged spool file against its record (size, digest) and adds it.
func (r *round) replayOne(rec AckRecord) (*tensor.Set, error) {
	path := r.spoolPath(rec.File)
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("%w: acknowledged update %d (%s): %v", ErrCorrupt, rec.Seq, rec.Client, err)
	}
	if fi.Size() != rec.Size {
		return nil, fmt.Errorf("%w: acknowledged update %d (%s): spool file of %d bytes, the log says %d", ErrCorrupt, rec.Seq, rec.Client, fi.Size(), rec.Size)
	}
	set, err := safetensors.Open(path, safetensors.WithSource(rec.Client))
	if err != nil {
		return nil, fmt.Errorf("%w: acknowledged update %d (%s): %w", ErrCorrupt, rec.Seq, rec.Client, err)
	}
	want, legacy := rec.digest()
	if d := hexDigest(verifySpool(set, legacy)); d != want {
		set.Close()
		return nil, fmt.Errorf("%w: acknowledged update %d (%s): digest %s, the log says %s", ErrCorrupt, rec.Seq, rec.Client, d, want)
	}
	ctx := context.Background()
	if rec.From == string(aggregate.WeightsGiven) {
		err = r.agg.Add(ctx, set, rec.Weight)
	} else {
		err = r.agg.AddByExamples(ctx, set)
	}
	if err != nil {
		set.Close()
		return nil, fmt.Errorf("acknowledged update %d (%s) replayed: %w", rec.Seq, rec.Client, err)
	}
	return set, nil
}

// close ends the round: into its model and report when it may close, or into a failure. It
// runs on the committer, after every update queued before the request.
func (r *round) close(why closeCause) error {
	r.mu.Lock()
	if r.meta.State != api.StateOpen {
		r.mu.Unlock()
		return fmt.Errorf("%w: round %d is %s", ErrRoundClosed, r.n, r.meta.State)
	}
	n, minimum := len(r.records), r.closeMinimum(why)
	if n < minimum {
		r.closing = false
		r.mu.Unlock()
		return r.closeShort(why, n, minimum)
	}
	if sec := r.agg.sec; sec != nil {
		if err := r.unmask(sec); err != nil {
			r.closing = false
			r.mu.Unlock()
			return r.closeStillMasked(why, n, err)
		}
	}
	r.closing = true
	arriving := r.arrivingLocked()
	r.mu.Unlock()
	r.cancelArrivals(arriving, why)
	r.settleArrivals()
	start := time.Now()
	rep, err := r.agg.WriteFile(context.Background(), filepath.Join(r.dir, modelFile))
	if err != nil {
		r.fail(fmt.Sprintf("%s, but the rule failed: %v", why, err))
		return nil
	}
	r.finishClose(why, n, rep, start)
	return nil
}

// closeMinimum is how many updates the round needs to close for why: min_clients, or the
// quorum at the deadline.
func (r *round) closeMinimum(why closeCause) int {
	if why == closeDeadline {
		return r.meta.Quorum
	}
	return r.meta.MinClients
}

// closeShort answers a close of a round with n updates, short of minimum: at the deadline the
// round fails, otherwise the close is refused.
func (r *round) closeShort(why closeCause, n, minimum int) error {
	if why == closeDeadline {
		r.fail(fmt.Sprintf("the deadline passed with %d updates, short of the quorum of %d", n, minimum))
		return nil
	}
	return fmt.Errorf("%w: round %d has %d updates; min_clients is %d", ErrConflict, r.n, n, minimum)
}

// closeStillMasked answers a close of a secure sum that could not be unmasked (err): at the
// deadline the round fails, otherwise the close is refused.
func (r *round) closeStillMasked(why closeCause, n int, err error) error {
	if why == closeDeadline {
		r.fail(fmt.Sprintf("the deadline passed with %d updates, but %v", n, err))
		return nil
	}
	if errors.Is(err, ErrCorrupt) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrConflict, err)
}

// arrivingLocked lists the uploads still arriving. The caller holds r.mu.
func (r *round) arrivingLocked() []*Upload {
	arriving := make([]*Upload, 0, len(r.arriving))
	for _, u := range r.arriving {
		arriving = append(arriving, u)
	}
	return arriving
}

// cancelArrivals tells the uploads still arriving that the round was closed (why).
func (r *round) cancelArrivals(arriving []*Upload, why closeCause) {
	for _, u := range arriving {
		u.cancel(fmt.Errorf("%w: round %d was %s while the update was arriving", ErrRoundClosed, r.n, why))
	}
}

// finishClose ends a round whose model is written (rep; n updates; start: when the writing
// began): it writes the report, counts the round, marks it closed and writes its state, logs
// it, releases it and tells the server.
func (r *round) finishClose(why closeCause, n int, rep *aggregate.Report, start time.Time) {
	if err := writeJSONAtomic(filepath.Join(r.dir, reportFile), rep); err != nil {
		r.logger.Error("writing the round's report", "err", err)
	}
	now := time.Now().UTC()
	// Metrics first, so that whoever sees the round closed sees it counted.
	r.srv.metrics.roundEnded(api.StateClosed, now.Sub(r.meta.Opened), rep)
	r.mu.Lock()
	r.report = rep
	r.meta.State, r.meta.Closed, r.meta.Reason = api.StateClosed, &now, why.String()
	meta := r.meta
	r.mu.Unlock()
	if err := writeJSONAtomic(filepath.Join(r.dir, roundFile), meta); err != nil {
		r.logger.Error("writing the round's state", "err", err)
	}
	r.logger.Info("round closed", "why", why.String(), "clients", n, "seconds", time.Since(start).Seconds(),
		"joules", joulesOf(rep), "joules_source", rep.JoulesSource)
	r.release()
	r.markEnded()
	r.srv.roundEnded(r)
}

// settleArrivals waits, once the uploads still arriving were told to stop, until none has
// pieces in the engine's sum: each takes its pieces out again (aggregate.Arrival.Cancel). The
// commits they queue meanwhile are refused here, since the committer is the one waiting. After
// a minute the engine's close refuses to make a result with pieces of uncounted updates in it,
// and the round fails.
func (r *round) settleArrivals() {
	deadline := time.Now().Add(time.Minute)
	for r.agg.Arriving() > 0 && time.Now().Before(deadline) {
		r.drainRefusing()
		time.Sleep(time.Millisecond)
	}
}

// fail ends the round without a model.
func (r *round) fail(reason string) {
	now := time.Now().UTC()
	r.srv.metrics.roundEnded(api.StateFailed, now.Sub(r.meta.Opened), nil)
	r.mu.Lock()
	r.meta.State, r.meta.Closed, r.meta.Reason = api.StateFailed, &now, reason
	r.closing = false
	meta := r.meta
	arriving := r.arrivingLocked()
	r.mu.Unlock()
	for _, u := range arriving {
		u.cancel(fmt.Errorf("%w: round %d failed while the update was arriving: %s", ErrRoundClosed, r.n, reason))
	}
	if err := writeJSONAtomic(filepath.Join(r.dir, roundFile), meta); err != nil {
		r.logger.Error("writing the round's state", "err", err)
	}
	r.logger.Warn("round failed", "reason", reason)
	r.release()
	r.markEnded()
	r.srv.roundEnded(r)
}

// release frees what an ended round holds (see shutdown), and removes its spool files unless
// they are kept.
func (r *round) release() {
	r.shutdown()
	if !r.srv.cfg.Round.KeepSpool {
		if err := os.RemoveAll(filepath.Join(r.dir, spoolDir)); err != nil {
			r.logger.Warn("removing the spool", "err", err)
		}
	}
}

// shutdown releases the engine's round, the rule, mapped spools, the log and the deadline. An
// open round resumes from its log at the next start.
func (r *round) shutdown() {
	r.mu.Lock()
	agg, rule, sets, alog := r.agg, r.rule, r.sets, r.alog
	r.agg, r.rule, r.sets, r.alog = nil, nil, nil, nil
	if r.timer != nil && r.timer.Stop() {
		r.srv.wg.Done() // the deadline will not run
	}
	r.timer = nil
	r.mu.Unlock()
	if agg != nil {
		agg.Close()
	}
	if rule != nil {
		closeRule(rule)
	}
	for _, s := range sets {
		s.Close()
	}
	if alog != nil {
		alog.close()
	}
}

func joulesOf(rep *aggregate.Report) float64 {
	if rep == nil || rep.Joules == nil {
		return 0
	}
	return *rep.Joules
}
