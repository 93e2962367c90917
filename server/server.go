package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/energy"
	"github.com/wattagg/wattagg/internal/durable"
	"github.com/wattagg/wattagg/server/api"
)

// Server runs rounds of a rule over updates that clients push: it owns the data directory, the
// rounds (at most one open at a time), the ingest pipeline every protocol drives (BeginUpload,
// Upload.Ingest), authentication, limits and metrics. Handler serves its HTTP API; Serve runs
// it on a listener until its context is cancelled.
type Server struct {
	cfg        *Config
	log        *slog.Logger
	auth       *authenticator
	rules      *ruleFactory
	needGlobal bool
	sum        string // SumExact or SumFloat: what round.sum resolved to for the rule
	metrics    *metrics
	meters     []energy.Meter
	engineOpts []aggregate.Option
	lock       *os.File
	roundsDir  string
	streams    chan struct{}
	bufs       sync.Pool    // upload receive buffers
	bufsOut    atomic.Int64 // buffers lent and not yet given back
	stop       chan struct{}
	wg         sync.WaitGroup

	mu      sync.Mutex
	rounds  []*round // round n is rounds[n-1]
	current *round   // the open round, or nil
	latest  int      // the last round with a model (0: none)
	started bool
	closed  bool
}

// Option configures a Server.
type Option func(*Server) error

// WithLogger sets the structured logger (default: slog.Default()). Tokens are never logged.
func WithLogger(l *slog.Logger) Option {
	return func(s *Server) error {
		if l == nil {
			return fmt.Errorf("%w: nil logger", ErrConfig)
		}
		s.log = l
		return nil
	}
}

// WithMeters meters every round (energy.Discover finds RAPL, NVML or the estimate): each
// round's report carries its joules with their provenance.
func WithMeters(ms ...energy.Meter) Option {
	return func(s *Server) error {
		for _, m := range ms {
			if m == nil {
				return fmt.Errorf("%w: nil meter", ErrConfig)
			}
		}
		s.meters = ms
		return nil
	}
}

// WithEngineOptions adds options to every round of the engine (devices, chunk size, memory
// budget). Options about global models and retained updates are the server's.
func WithEngineOptions(opts ...aggregate.Option) Option {
	return func(s *Server) error {
		if err := aggregate.CheckOptions(opts...); err != nil {
			return err
		}
		s.engineOpts = append(s.engineOpts, opts...)
		return nil
	}
}

// New opens the data directory (locking it), resumes the open round from its acknowledgement
// log if the server stopped or crashed during one, and opens a round if none is open.
func New(cfg *Config, opts ...Option) (*Server, error) {
	s, err := newServer(cfg, opts)
	if err != nil {
		return nil, err
	}
	if s.auth, err = newAuthenticator(cfg); err != nil {
		return nil, err
	}
	stateDir, err := s.makeDataDirs()
	if err != nil {
		return nil, err
	}
	if err := s.lockDataDir(); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			s.Close()
		}
	}()
	if err := s.probeRule(stateDir); err != nil {
		return nil, err
	}
	s.streams = make(chan struct{}, cfg.Limits.MaxStreams)
	s.metrics = newMetrics(s)
	if err := s.recover(); err != nil {
		return nil, err
	}
	if err := s.start(); err != nil {
		return nil, err
	}
	ok = true
	return s, nil
}

// newServer checks the configuration and applies the options: the Server New starts from,
// before anything is opened.
func newServer(cfg *Config, opts []Option) (*Server, error) {
	if cfg == nil {
		return nil, fmt.Errorf("%w: nil configuration", ErrConfig)
	}
	if err := cfg.check(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: slog.Default(), stop: make(chan struct{})}
	for _, o := range opts {
		if o == nil {
			return nil, fmt.Errorf("%w: nil option", ErrConfig)
		}
		if err := o(s); err != nil {
			return nil, err
		}
	}
	s.log = s.log.With("component", "wattagg-server")
	return s, nil
}

// makeDataDirs creates the data directory, its rounds directory and its state directory, and
// returns the state directory.
func (s *Server) makeDataDirs() (string, error) {
	s.roundsDir = filepath.Join(s.cfg.DataDir, "rounds")
	stateDir := filepath.Join(s.cfg.DataDir, "state")
	for _, d := range []string{s.cfg.DataDir, s.roundsDir, stateDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return "", fmt.Errorf("%w: data_dir: %v", ErrConfig, err)
		}
	}
	return stateDir, nil
}

// probeRule sets up the rule factory (its state in stateDir) and builds the rule once to learn
// what its rounds need: a global model (round.initial_global then names round 1's), and how
// they sum.
func (s *Server) probeRule(stateDir string) error {
	var err error
	if s.rules, err = newRuleFactory(s.cfg.Round, stateDir); err != nil {
		return err
	}
	probe, err := s.rules.build()
	if err != nil {
		return err
	}
	s.needGlobal = probe.Requirements().Global
	closeRule(probe)
	if s.needGlobal && s.cfg.Round.InitialGlobal == "" {
		return fmt.Errorf("%w: round.rule %s moves a global model: round.initial_global must name the model round 1 starts from",
			ErrConfig, s.cfg.Round.Rule)
	}
	if s.sum, err = s.resolveSum(); err != nil {
		return err
	}
	return nil
}

// start marks the recovered server started and opens a round if none is open, unless rounds
// open by hand and one exists.
func (s *Server) start() error {
	s.mu.Lock()
	s.started = true
	need := s.current == nil && (!s.cfg.Round.ManualNext || len(s.rounds) == 0) // round 1 always opens
	s.mu.Unlock()
	if need {
		if _, err := s.OpenRound(); err != nil {
			return err
		}
	}
	return nil
}

// lockDataDir takes an exclusive lock on the data directory: two servers sharing one would
// interleave their logs.
func (s *Server) lockDataDir() error {
	f, err := os.OpenFile(filepath.Join(s.cfg.DataDir, "LOCK"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("%w: data_dir: %v", ErrConfig, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return fmt.Errorf("%w: data_dir %s is in use by another server (%v)", ErrConfig, s.cfg.DataDir, err)
	}
	s.lock = f
	return nil
}

// Close stops the rounds' committers and releases everything; an open round resumes from its
// log at the next New. It does not stop an HTTP server running Handler (Serve does).
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	rounds := slices.Clone(s.rounds)
	s.mu.Unlock()
	close(s.stop)
	for _, r := range rounds {
		<-r.done
	}
	s.wg.Wait()
	for _, r := range rounds {
		r.shutdown()
	}
	if s.lock != nil {
		s.lock.Close()
		s.lock = nil
	}
	return nil
}

// round finds round n.
func (s *Server) round(n int) (*round, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n < 1 || n > len(s.rounds) {
		return nil, fmt.Errorf("%w: round %d (rounds 1 to %d exist)", ErrUnknownRound, n, len(s.rounds))
	}
	return s.rounds[n-1], nil
}

// Current is the number of the open round (0: none).
func (s *Server) Current() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.current == nil {
		return 0
	}
	return s.current.n
}

// Latest is the last round that produced a model (0: none). It asks the rounds themselves, so
// a round is the latest as soon as its state says closed.
func (s *Server) Latest() int {
	s.mu.Lock()
	rounds := slices.Clone(s.rounds)
	s.mu.Unlock()
	for i := len(rounds) - 1; i >= 0; i-- {
		if rounds[i].state() == api.StateClosed {
			return rounds[i].n
		}
	}
	return 0
}

// Rounds is the status of every round, oldest first.
func (s *Server) Rounds() api.Rounds {
	latest := s.Latest()
	s.mu.Lock()
	rounds := slices.Clone(s.rounds)
	s.mu.Unlock()
	out := api.Rounds{Latest: latest, Rounds: make([]api.Round, 0, len(rounds))}
	for _, r := range rounds {
		out.Rounds = append(out.Rounds, r.status(false))
	}
	return out
}

// Status is the status of round n, with its updates.
func (s *Server) Status(n int) (api.Round, error) {
	r, err := s.round(n)
	if err != nil {
		return api.Round{}, err
	}
	return r.status(true), nil
}

// MaxWait bounds how long WaitStatus (GET /v1/rounds/N?wait=D) may wait for a round to end.
const MaxWait = 10 * time.Minute

// WaitStatus is Status once round n has ended (closed or failed), or after wait, or when ctx
// is done, whichever comes first: what a client that polls for the model calls instead of
// polling. A wait beyond MaxWait, or negative, is ErrBadRequest.
func (s *Server) WaitStatus(ctx context.Context, n int, wait time.Duration) (api.Round, error) {
	if wait < 0 || wait > MaxWait {
		return api.Round{}, fmt.Errorf("%w: wait %v: want 0 to %v", ErrBadRequest, wait, MaxWait)
	}
	r, err := s.round(n)
	if err != nil {
		return api.Round{}, err
	}
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-r.ended:
		case <-t.C:
		case <-ctx.Done():
		}
	}
	return r.status(true), nil
}

// ModelPath is the model file of round n (the latest with a model when n is 0).
func (s *Server) ModelPath(n int) (string, error) {
	if n == 0 {
		if n = s.Latest(); n == 0 {
			return "", fmt.Errorf("%w: no round has produced a model yet", ErrUnknownRound)
		}
	}
	r, err := s.round(n)
	if err != nil {
		return "", err
	}
	if st := r.state(); st != api.StateClosed {
		return "", fmt.Errorf("%w: round %d is %s: it has no model", ErrRoundClosed, n, st)
	}
	return filepath.Join(r.dir, modelFile), nil
}

// CloseRound closes round n now (admin): into its model if it has min_clients updates.
func (s *Server) CloseRound(ctx context.Context, n int) (api.Round, error) {
	r, err := s.round(n)
	if err != nil {
		return api.Round{}, err
	}
	if err := r.requestClose(ctx, closeAdmin); err != nil {
		return api.Round{}, err
	}
	return r.status(false), nil
}

// OpenRound opens the next round (admin, or automatically when one ends). Rules that move a
// global model start from the last round's model, or from round.initial_global.
func (s *Server) OpenRound() (api.Round, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.canOpenLocked(); err != nil {
		return api.Round{}, err
	}
	n := len(s.rounds) + 1
	dir := filepath.Join(s.roundsDir, fmt.Sprintf("%06d", n))
	if err := os.MkdirAll(filepath.Join(dir, spoolDir), 0o700); err != nil {
		return api.Round{}, err
	}
	meta := s.newRoundMetaLocked(n)
	r := s.newRoundStruct(n, dir, meta)
	if err := s.setUpRound(r, &meta); err != nil {
		r.shutdown()
		os.RemoveAll(dir)
		return api.Round{}, err
	}
	s.rounds = append(s.rounds, r)
	s.current = r
	s.startRound(r)
	s.log.Info("round opened", "round", n, "rule", s.cfg.Round.Rule, "sum", meta.Sum, "global", meta.Global, "deadline", meta.Deadline)
	s.metrics.current.Set(float64(n))
	return r.status(false), nil
}

// canOpenLocked refuses to open a round while the server stops or a round is open. The caller
// holds s.mu.
func (s *Server) canOpenLocked() error {
	if s.closed {
		return fmt.Errorf("%w: the server is stopping", ErrConflict)
	}
	if s.current != nil && s.current.state() == api.StateOpen {
		return fmt.Errorf("%w: round %d is open: close it first", ErrConflict, s.current.n)
	}
	return nil
}

// newRoundMetaLocked is the state round n opens with, now: the configured round, its deadline,
// and the global model it starts from (the latest round's, else round.initial_global). The
// caller holds s.mu.
func (s *Server) newRoundMetaLocked(n int) roundMeta {
	rc := s.cfg.Round
	now := time.Now().UTC()
	meta := roundMeta{Round: n, State: api.StateOpen, Rule: rc.Rule, Opened: now,
		MinClients: rc.MinClients, MaxClients: rc.MaxClients, Quorum: rc.Quorum, ModelRange: rc.ModelRange, Sum: s.sum}
	if s.sum == SumExact {
		meta.Exact = exactSettings(rc.Exact)
	}
	if rc.Deadline > 0 {
		d := now.Add(time.Duration(rc.Deadline))
		meta.Deadline = &d
	}
	if s.needGlobal {
		meta.Global = rc.InitialGlobal
		if s.latest > 0 {
			meta.Global = filepath.Join("rounds", fmt.Sprintf("%06d", s.latest), modelFile)
		}
	}
	return meta
}

// setUpRound makes a new round r (meta: its state) ready to open: the part of the initial model
// it starts from, the engine's round and the rule, the acknowledgement log, round.json, and the
// rounds directory synced. On error the caller shuts r down and removes its directory.
func (s *Server) setUpRound(r *round, meta *roundMeta) error {
	rc := s.cfg.Round
	if rc.ModelRange != nil && meta.Global == rc.InitialGlobal && meta.Global != "" {
		// The initial model is whole: the round starts from its part (later rounds from the
		// previous round's model, a part already).
		part, err := writeGlobalPart(r.dir, rc.InitialGlobal, *rc.ModelRange)
		if err != nil {
			return err
		}
		meta.Global = filepath.Join("rounds", fmt.Sprintf("%06d", r.n), part)
		r.meta.Global = meta.Global
	}
	var err error
	if r.agg, r.rule, err = s.newEngineRound(meta); err != nil {
		return err
	}
	r.whole = r.rule.Requirements().Kind == aggregate.KindWhole
	if r.alog, _, err = openAckLog(filepath.Join(r.dir, ackFile)); err != nil {
		return err
	}
	if err := writeJSONAtomic(filepath.Join(r.dir, roundFile), *meta); err != nil {
		return err
	}
	return durable.SyncDir(s.roundsDir)
}

func (s *Server) newRoundStruct(n int, dir string, meta roundMeta) *round {
	return &round{srv: s, n: n, dir: dir, meta: meta, logger: s.log.With("round", n),
		acked: map[string]int{}, arriving: map[string]*Upload{}, done: closedChan, ended: make(chan struct{})}
}

// closedChan is the done channel of a round whose committer is not running: submissions to
// it are refused at once.
var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// startRound starts an open round's committer and deadline.
func (s *Server) startRound(r *round) {
	r.queue = make(chan any, s.cfg.Limits.MaxStreams+16)
	r.done = make(chan struct{})
	go r.committer(s.stop)
	if len(r.records) >= r.meta.MaxClients {
		// Resumed full: the server stopped between the last acknowledgement and the close.
		r.submit(&closeReq{why: closeFull, result: make(chan error, 1)})
	}
	if r.meta.Deadline != nil {
		s.wg.Add(1)
		r.timer = time.AfterFunc(max(time.Until(*r.meta.Deadline), 0), func() {
			defer s.wg.Done()
			if err := r.requestClose(context.Background(), closeDeadline); err != nil && !errors.Is(err, ErrRoundClosed) {
				r.logger.Error("closing at the deadline", "err", err)
			}
		})
	}
}

// newEngineRound begins the engine's round for a round of the server, summing as the round
// opened to (meta.Sum, meta.Exact).
func (s *Server) newEngineRound(meta *roundMeta) (*engineRound, aggregate.Rule, error) {
	rule, sec, err := s.rules.buildIn(s.rules.stateDir)
	if err != nil {
		return nil, nil, err
	}
	opts := s.roundOptions(rule)
	if meta.Global != "" {
		opts = append(opts, aggregate.WithGlobalFile(s.dataPath(meta.Global)))
	}
	exact := meta.sum() == SumExact
	if exact {
		opts = append(opts, aggregate.WithExactSum(meta.Exact.exactSum()))
	}
	agg, err := aggregate.NewRound(context.Background(), rule, opts...)
	if err != nil {
		closeRule(rule)
		return nil, nil, fmt.Errorf("round %d: %w", meta.Round, err)
	}
	return &engineRound{Round: agg, exact: exact, sec: sec}, rule, nil
}

// dataPath resolves a path kept relative to the data directory.
func (s *Server) dataPath(p string) string {
	if filepath.IsAbs(p) || p == s.cfg.Round.InitialGlobal {
		return p
	}
	return filepath.Join(s.cfg.DataDir, p)
}

// roundEnded is told by a round that it closed or failed: the next one opens unless rounds
// open by hand.
func (s *Server) roundEnded(r *round) {
	s.mu.Lock()
	if r.state() == api.StateClosed && r.n > s.latest {
		s.latest = r.n
	}
	if s.current == r {
		s.current = nil
	}
	// Unless an admin opened the next round already (between the close and this call).
	next := s.started && !s.closed && !s.cfg.Round.ManualNext && s.current == nil
	s.mu.Unlock()
	if next {
		if _, err := s.OpenRound(); err != nil {
			s.log.Error("opening the next round", "err", err)
		}
	}
}

// recover loads every round of the data directory and resumes the open one.
func (s *Server) recover() error {
	entries, err := os.ReadDir(s.roundsDir)
	if err != nil {
		return err
	}
	var nums []int
	for _, e := range entries {
		n, err := strconv.Atoi(e.Name())
		if err != nil || !e.IsDir() || n < 1 {
			continue
		}
		dir := filepath.Join(s.roundsDir, e.Name())
		if !exists(filepath.Join(dir, roundFile)) {
			// A crash while the round was being created: it never opened.
			s.log.Warn("removing a round that never opened", "dir", dir)
			if err := os.RemoveAll(dir); err != nil {
				return err
			}
			continue
		}
		nums = append(nums, n)
	}
	slices.Sort(nums)
	for i, n := range nums {
		if n != i+1 {
			return fmt.Errorf("%w: %s holds round %d but not round %d", ErrCorrupt, s.roundsDir, n, i+1)
		}
		if err := s.loadRound(n); err != nil {
			return err
		}
	}
	return nil
}

// loadRound loads round n at startup: a closed or failed round for its status, an open one
// resumed by replaying its acknowledgement log.
func (s *Server) loadRound(n int) error {
	dir := filepath.Join(s.roundsDir, fmt.Sprintf("%06d", n))
	var meta roundMeta
	if err := readJSON(filepath.Join(dir, roundFile), &meta); err != nil {
		return fmt.Errorf("%w: round %d: %v", ErrCorrupt, n, err)
	}
	r := s.newRoundStruct(n, dir, meta)
	s.rounds = append(s.rounds, r)
	if b, err := os.ReadFile(filepath.Join(dir, ackFile)); err == nil {
		recs, _, err := parseAckLog(b)
		if err != nil {
			return fmt.Errorf("round %d: %w", n, err)
		}
		r.setRecords(recs)
	}
	if exists(filepath.Join(dir, reportFile)) {
		var rep aggregate.Report
		if err := readJSON(filepath.Join(dir, reportFile), &rep); err == nil {
			r.report = &rep
		}
	}
	if meta.State == api.StateOpen && exists(filepath.Join(dir, modelFile)) {
		// The model was published, then the server stopped before it recorded the close.
		now := time.Now().UTC()
		r.meta.State, r.meta.Closed = api.StateClosed, &now
		r.meta.Reason = "closed; the server stopped before it recorded how"
		if r.report == nil {
			r.meta.Reason += " (its report was lost)"
		}
		if err := writeJSONAtomic(filepath.Join(dir, roundFile), r.meta); err != nil {
			return err
		}
		r.release()
	}
	switch r.meta.State {
	case api.StateClosed:
		s.latest = n
		r.markEnded()
		return nil
	case api.StateFailed:
		r.markEnded()
		return nil
	}
	return s.resume(r)
}

// resume replays an open round's acknowledgement log into a fresh engine round: every
// acknowledged update, checked against its digest, added in log order with its weight. Spool
// files that no record names (uploads never acknowledged) are removed.
func (s *Server) resume(r *round) error {
	start := time.Now()
	recs, err := r.reopenAckLog()
	if err != nil {
		return err
	}
	r.setRecords(recs)
	removed, err := r.removeUnacknowledged(recs)
	if err != nil {
		return err
	}
	r.agg, r.rule, err = s.newEngineRound(&r.meta)
	if err != nil {
		return err
	}
	r.whole = r.rule.Requirements().Kind == aggregate.KindWhole
	if err := r.replayResumed(recs); err != nil {
		r.logger.Error("replay failed", "err", err)
		r.fail(fmt.Sprintf("resuming after a restart: %v", err))
		return nil
	}
	s.current = r
	s.startRound(r)
	r.logger.Info("round resumed from its acknowledgement log", "updates", len(recs), "removed_unacknowledged", removed,
		"seconds", time.Since(start).Seconds())
	return nil
}

// reopenAckLog opens the round's acknowledgement log for appending and returns its records as
// they are once it is open.
func (r *round) reopenAckLog() ([]AckRecord, error) {
	var err error
	r.alog, _, err = openAckLog(filepath.Join(r.dir, ackFile))
	if err != nil {
		return nil, err
	}
	// The log may have lost a torn tail since it was first read.
	b, err := os.ReadFile(filepath.Join(r.dir, ackFile))
	if err != nil {
		return nil, err
	}
	recs, _, err := parseAckLog(b)
	if err != nil {
		return nil, err
	}
	return recs, nil
}

// removeUnacknowledged removes the spool files that no record of recs names, with a directory
// fsync when it removed any, and returns how many it removed.
func (r *round) removeUnacknowledged(recs []AckRecord) (int, error) {
	keep := map[string]bool{}
	for _, rec := range recs {
		keep[rec.File] = true
	}
	spool := filepath.Join(r.dir, spoolDir)
	if err := os.MkdirAll(spool, 0o700); err != nil {
		return 0, err
	}
	entries, err := os.ReadDir(spool)
	if err != nil {
		return 0, err
	}
	removed := 0
	for _, e := range entries {
		if !keep[e.Name()] {
			if err := os.Remove(filepath.Join(spool, e.Name())); err != nil {
				return 0, err
			}
			removed++
		}
	}
	if removed > 0 {
		if err := durable.SyncDir(spool); err != nil {
			return 0, err
		}
	}
	return removed, nil
}

// replayResumed adds the acknowledged updates recs to the resumed round's fresh engine round
// and notes what its running sums hold. On an error, the round keeps the spools mapped so far
// (they are released when it fails).
func (r *round) replayResumed(recs []AckRecord) error {
	// Nothing else adds to the round until the replay is done: its committer starts after.
	sets, err := r.replay(recs)
	r.sets = sets
	if err != nil {
		return err
	}
	held := r.engineSumBytes()
	r.mu.Lock()
	r.sumBytes = held
	r.mu.Unlock()
	return nil
}

// setRecords installs the acknowledged records of a loaded round.
func (r *round) setRecords(recs []AckRecord) {
	r.records = recs
	r.acked = map[string]int{}
	r.meta.Clients, r.meta.Bytes = len(recs), 0
	for i, rec := range recs {
		r.acked[rec.Client] = i
		r.meta.Bytes += rec.Bytes
	}
}

var _ io.Closer = (*Server)(nil)
