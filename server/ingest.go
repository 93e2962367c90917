package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"math"
	"time"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/server/api"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/arrowio"
)

// Upload is one update arriving from one client into one round: the ingest pipeline that every
// protocol drives. BeginUpload is called once the client is authenticated and the round is
// known, before any byte of the update is read; Ingest then takes the update as a Source
// (header first, then chunks); Close always ends it.
//
//	u, err := srv.BeginUpload(ctx, clientID, round, "flight")
//	if err != nil { ... }            // unknown round, closed, full, busy, already arriving
//	defer u.Close()
//	rd, err := arrowio.NewStreamReader(stream)    // the schema message: the header
//	ack, err := u.Ingest(rd, weight)               // header checked, data spooled, durable, added
type Upload struct {
	srv      *Server
	r        *round
	client   string
	protocol string
	ctx      context.Context
	cancel   context.CancelCauseFunc
	dup      *AckRecord // the client's acknowledged update, when this is a second one
	slot     bool
	closed   bool
}

// BeginUpload reserves a stream slot and the client's place in round n. It fails with
// ErrBusy (no stream slot), ErrUnknownRound, ErrRoundClosed (closed, failed, closing or full)
// or ErrConflict (an update from the client is already arriving). A client whose update is
// already acknowledged gets an Upload too: Ingest then compares the new update with it.
func (s *Server) BeginUpload(ctx context.Context, client string, n int, protocol string) (*Upload, error) {
	if err := s.takeStream(); err != nil {
		return nil, err
	}
	return s.beginUpload(ctx, client, n, protocol)
}

// takeStream reserves a stream slot (limits.max_streams) or fails with ErrBusy. A protocol that
// must read before it knows the round (Flight's first message carries it) takes the slot first,
// so that what it reads is bounded by the slots too, and hands it to beginUpload.
func (s *Server) takeStream() error {
	select {
	case s.streams <- struct{}{}:
	default:
		return fmt.Errorf("%w: %d uploads are in progress (limits.max_streams); retry shortly", ErrBusy, cap(s.streams))
	}
	s.metrics.streams.Inc()
	return nil
}

// releaseStream gives back a slot of takeStream.
func (s *Server) releaseStream() {
	<-s.streams
	s.metrics.streams.Dec()
}

// beginUpload is BeginUpload with the stream slot taken: the Upload owns it from here, and
// gives it back when it fails or closes.
func (s *Server) beginUpload(ctx context.Context, client string, n int, protocol string) (*Upload, error) {
	u := &Upload{srv: s, client: client, protocol: protocol, slot: true}
	r, err := s.round(n)
	if err != nil {
		u.Close()
		return nil, err
	}
	u.r = r
	// Only the round cancels the upload (its cause says why); a client that goes away shows as
	// a failed read.
	u.ctx, u.cancel = context.WithCancelCause(context.WithoutCancel(ctx))
	r.mu.Lock()
	defer r.mu.Unlock()
	if i, ok := r.acked[client]; ok {
		rec := r.records[i]
		u.dup = &rec
		return u, nil
	}
	if err := r.openLocked(); err != nil {
		u.closeLocked()
		return nil, err
	}
	if _, ok := r.arriving[client]; ok {
		u.closeLocked()
		return nil, fmt.Errorf("%w: an update from %s to round %d is already arriving", ErrConflict, client, n)
	}
	if len(r.records)+len(r.arriving) >= r.meta.MaxClients {
		u.closeLocked()
		return nil, fmt.Errorf("%w: round %d has its %d clients (max_clients), acknowledged or arriving", ErrRoundClosed, n, r.meta.MaxClients)
	}
	r.arriving[client] = u
	return u, nil
}

// Context is cancelled when the round closes or fails while the update arrives, with the
// reason as its cause: a protocol stops reading then (an HTTP handler cuts the read).
func (u *Upload) Context() context.Context { return u.ctx }

// Close releases the upload's stream slot and place in the round. It is safe to call twice.
func (u *Upload) Close() {
	if u.r != nil {
		u.r.mu.Lock()
		defer u.r.mu.Unlock()
	}
	u.closeLocked()
}

func (u *Upload) closeLocked() {
	if u.closed {
		return
	}
	u.closed = true
	if u.r != nil && u.r.arriving[u.client] == u {
		delete(u.r.arriving, u.client)
	}
	if u.cancel != nil {
		u.cancel(context.Canceled)
	}
	if u.slot {
		u.srv.releaseStream()
	}
}

// Ingest reads the update from src and adds it to the round: the header is checked against
// the round (source not yet in it, layout, dtypes, update kind, weight) before any chunk is
// read; chunks are checked for NaN and Inf, hashed and written to the spool as they arrive;
// the spool file is made durable, handed to the round's group commit, added to the round in
// acknowledgement order, and only then acknowledged. weight is the client's weight, or nil for
// the update's num_examples (else 1). A refused update leaves the round as it was and its spool
// file removed.
func (u *Upload) Ingest(src Source, weight *float64) (api.Ack, error) {
	if u.closed {
		return api.Ack{}, fmt.Errorf("%w: upload already closed", ErrBadRequest)
	}
	src, err := u.restrict(src)
	if err != nil {
		return api.Ack{}, err
	}
	hdr := src.Header()
	w, from, err := resolveWeight(u.client, weight, hdr.Metadata)
	if err != nil {
		return api.Ack{}, err
	}
	if u.dup != nil {
		return u.retry(src, w, from)
	}
	agg, err := u.admitHeader(hdr, from)
	if err != nil {
		return api.Ack{}, err
	}
	if agg.TakesArrivals() {
		return u.arrive(agg, src, hdr, w, from)
	}
	check := agg.Rule().Requirements().Kind != aggregate.KindModSum
	req, last, err := u.spool(src, hdr, check, w, from)
	if err != nil {
		return api.Ack{}, err
	}
	res, ok := u.await(req)
	if !ok {
		return api.Ack{}, fmt.Errorf("%w: round %d ended before the update was committed", ErrRoundClosed, u.r.n)
	}
	if res.err != nil {
		return api.Ack{}, res.err
	}
	return u.acknowledged(res.rec, last), nil
}

// restrict is src cut to the round's part of the model (round.model_range), or src when the
// round sums the whole model.
func (u *Upload) restrict(src Source) (Source, error) {
	m := u.r.meta.ModelRange
	if m == nil {
		return src, nil
	}
	rs, err := newRangeSource(src, m[0], m[1], u.client)
	if err != nil {
		return nil, err
	}
	return rs, nil
}

// admitHeader checks the update's header against the round before any chunk is read: the
// round is open, the update is weighted as its first was, and the engine's round takes its
// layout and metadata. It returns the engine's round.
func (u *Upload) admitHeader(hdr arrowio.Header, from aggregate.WeightSource) (*engineRound, error) {
	r := u.r
	r.mu.Lock()
	agg, open := r.agg, r.openLocked()
	var first *AckRecord
	if len(r.records) > 0 {
		first = &r.records[0]
	}
	r.mu.Unlock()
	if open != nil {
		return nil, open
	}
	// The engine refuses weights of different sources in one round; say so before the body.
	if first != nil && first.From != string(from) {
		return nil, fmt.Errorf("%s: %w: weighted by %s, but %s was weighted by %s: weight every update of a round the same way (%s header or num_examples metadata)",
			u.client, aggregate.ErrWeight, from, first.Client, first.From, api.WeightHeader)
	}
	if err := agg.CheckHeader(u.client, hdr.Layout, hdr.Metadata); err != nil {
		return nil, err
	}
	return agg, nil
}

// spool writes the update from src to a fresh spool file, checking its values for NaN and Inf
// when check is set, and syncs the file (the group commit makes its directory entry durable):
// it returns the request that hands the file to the committer, and when the update's last byte
// came. A file refused on the way is removed.
func (u *Upload) spool(src Source, hdr arrowio.Header, check bool, w float64, from aggregate.WeightSource) (*commitReq, time.Time, error) {
	name := spoolName(u.client)
	sp, err := createSpool(u.r.spoolPath(name), hdr, u.client, check, false)
	if err != nil {
		return nil, time.Time{}, err
	}
	if err := u.pump(src, nil, sp.write); err != nil {
		sp.abort()
		return nil, time.Time{}, err
	}
	last := time.Now()
	digest, err := sp.finish()
	if err != nil {
		sp.abort()
		return nil, time.Time{}, err
	}
	return &commitReq{rec: sp.record(u.client, name, digest, w, from), result: make(chan commitResult, 1)}, last, nil
}

// arrive takes an update into a round whose sum adds it as it arrives (an exact sum: the
// default): each chunk is checked, hashed and written to the spool with O_DIRECT, then added
// to the engine's sum at once (aggregate.Arrival), so that no update is held and the spool is
// never read back. Once the spool file is durable the committer counts the update in
// acknowledgement order. An update refused at any step is subtracted again, from its spool
// file, exactly; the round is then as it was.
func (u *Upload) arrive(agg *engineRound, src Source, hdr arrowio.Header, w float64, from aggregate.WeightSource) (api.Ack, error) {
	r := u.r
	arr, err := agg.BeginArrival(u.ctx, u.client, hdr.Layout, hdr.Metadata, hdr.Scales, w, from)
	if err != nil {
		return api.Ack{}, agg.explain(err, hdr.Layout)
	}
	name := spoolName(u.client)
	sp, err := createSpool(r.spoolPath(name), hdr, u.client, false, true)
	if err != nil {
		arr.Cancel(context.Background(), nil) // nothing added: nothing to read
		return api.Ack{}, err
	}
	fail := func(err error) (api.Ack, error) {
		if cerr := arr.Cancel(context.Background(), sp.readBack); cerr != nil {
			u.srv.log.Error("taking a refused update out of the sum", "round", r.n, "client", u.client, "err", cerr)
			err = fmt.Errorf("%w (and taking it out of the sum failed: %v)", err, cerr)
		}
		sp.abort()
		return api.Ack{}, err
	}
	sink := func(c arrowio.Chunk) error {
		if err := sp.write(c); err != nil {
			return err
		}
		return agg.explain(arr.Add(context.Background(), c.Tensor, int(c.Offset), c.Data), hdr.Layout)
	}
	if err := u.pump(src, sp.lend, sink); err != nil {
		return fail(err)
	}
	last := time.Now()
	digest, err := sp.finish()
	if err != nil {
		return fail(err)
	}
	req := &commitReq{rec: sp.record(u.client, name, digest, w, from), arr: arr, result: make(chan commitResult, 1)}
	res, ok := u.await(req)
	if !ok {
		return fail(fmt.Errorf("%w: round %d ended before the update was committed", ErrRoundClosed, r.n))
	}
	if res.err != nil {
		return fail(res.err)
	}
	return u.acknowledged(res.rec, last), nil
}

// acknowledged counts and logs an update the round committed; last is when its last byte came.
func (u *Upload) acknowledged(rec AckRecord, last time.Time) api.Ack {
	u.srv.metrics.ackLatency.Observe(time.Since(last).Seconds())
	u.srv.metrics.accepted.Inc()
	u.srv.log.Info("update acknowledged", "round", u.r.n, "client", u.client, "seq", rec.Seq,
		"bytes", rec.Bytes, "weight", rec.Weight, "protocol", u.protocol)
	return ackOf(u.r.n, rec, false)
}

// record is the acknowledgement record of a finished spool file (Seq and At: the committer's).
func (s *spoolWriter) record(client, name string, digest [32]byte, w float64, from aggregate.WeightSource) AckRecord {
	return AckRecord{Client: client, File: name, Size: s.size, Bytes: s.got, Digest: hexDigest(digest), Weight: w, From: string(from)}
}

// await submits a durable update to the committer and waits for its verdict.
func (u *Upload) await(req *commitReq) (commitResult, bool) {
	r := u.r
	if !r.submit(req) {
		req.discard(r)
		return commitResult{}, false
	}
	select {
	case res := <-req.result:
		return res, true
	case <-r.done:
		select {
		case res := <-req.result:
			return res, true
		default:
			return commitResult{}, false
		}
	}
}

// pump feeds every chunk of src to sink, counting bytes, until io.EOF. A source that can
// (lendingSource) reads each chunk into the buffer lend gives, if lend is not nil.
func (u *Upload) pump(src Source, lend lendFunc, sink func(c arrowio.Chunk) error) error {
	next := src.Next
	if ls, ok := src.(lendingSource); ok && lend != nil {
		next = func() (arrowio.Chunk, error) { return ls.NextInto(lend) }
	}
	for {
		if u.ctx.Err() != nil {
			return context.Cause(u.ctx)
		}
		c, err := next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			if u.ctx.Err() != nil {
				return context.Cause(u.ctx)
			}
			return err
		}
		if err := sink(c); err != nil {
			return err
		}
		u.srv.metrics.received(u.protocol, len(c.Data))
	}
}

// retry compares a second update from a client with its acknowledged one: the same update
// (digest and weight) gets the same acknowledgement, anything else is a conflict. Nothing is
// written.
func (u *Upload) retry(src Source, w float64, from aggregate.WeightSource) (api.Ack, error) {
	rec := *u.dup
	want, legacy := rec.digest()
	d := newDigesterOf(src.Header(), u.client, false, legacy)
	if err := u.pump(src, nil, d.write); err != nil {
		return api.Ack{}, err
	}
	if err := d.complete(); err != nil {
		return api.Ack{}, err
	}
	if got := hexDigest(d.digest()); got != want || w != rec.Weight || string(from) != rec.From {
		return api.Ack{}, fmt.Errorf("%w: %s already sent a different update to round %d (acknowledged as update %d, digest %s, weight %v): one update per client per round",
			ErrConflict, u.client, u.r.n, rec.Seq, want[:min(16, len(want))], rec.Weight)
	}
	return ackOf(u.r.n, rec, true), nil
}

func ackOf(n int, rec AckRecord, retry bool) api.Ack {
	d, _ := rec.digest()
	return api.Ack{Round: n, Client: rec.Client, Seq: rec.Seq, Digest: d, Bytes: rec.Bytes,
		Weight: rec.Weight, From: rec.From, At: rec.At, Retry: retry}
}

// resolveWeight is the weight an update enters the round with: the one given, else its
// num_examples, else 1; checked now so that a bad one is refused before the body is read.
func resolveWeight(client string, given *float64, md map[string]string) (float64, aggregate.WeightSource, error) {
	if given != nil {
		if w := *given; !(w > 0) || math.IsInf(w, 0) {
			return 0, "", fmt.Errorf("%s: %w %v: weights must be positive and finite", client, aggregate.ErrWeight, w)
		}
		return *given, aggregate.WeightsGiven, nil
	}
	w, ok, err := aggregate.WeightOf(&tensor.Set{Source: client, Metadata: md})
	switch {
	case err != nil:
		return 0, "", err
	case ok:
		return w, aggregate.WeightsNumExamples, nil
	}
	return 1, aggregate.WeightsUniform, nil
}

// spoolName is a fresh spool file name for a client's update.
func spoolName(client string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return client + "." + hex.EncodeToString(b[:]) + ".safetensors"
}
