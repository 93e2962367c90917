package server

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/apache/arrow-go/v18/arrow/flight"
	flatbuffers "github.com/google/flatbuffers/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/wattagg/wattagg/server/api"
	"github.com/wattagg/wattagg/tensor/arrowio"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// Arrow Flight serves the same rounds as the HTTP API, through the same ingest pipeline:
//
//	DoPut       an update as an Arrow IPC stream of tensor/arrowio's chunk schema; the descriptor's
//	            path is ["rounds", "N"]; gRPC metadata "authorization: Bearer TOKEN" and, optionally,
//	            "x-wattagg-weight"; the PutResult's app_metadata is the acknowledgement (JSON)
//	DoGet       ticket "rounds/N" or "latest": the round's model as an Arrow IPC stream
//	ListFlights the rounds with a model
//	DoAction    "status" (body: round number), "close" (body: round number; admin), "open" (admin)
//
// The schema message is the update's header: it is checked against the round before any batch
// is read, and batches stream into the spool as they arrive (one message in memory at a time).
type flightService struct {
	flight.BaseFlightServer
	s      *Server
	bodies *bodyAllocator
	held   atomic.Int64 // frames held by DoPut messages
}

// FlightServer is a gRPC server serving Arrow Flight for s, with the configured TLS and mutual
// TLS.
//
// Its memory per upload is bounded whatever clients send: a message is at most
// limits.chunk_bytes + 64 KiB (gRPC refuses a longer one from its length prefix, before
// reading it, with ResourceExhausted "grpc: received message larger than max (N vs. M)"), a
// stream's window is 64 KiB beyond the message being read (gRPC's automatic windows grow to
// 16 MiB per stream, and 64 streams could then hold a GiB the server has not asked for), and
// messages are received one at a time, when the update's reader needs the next. The codec
// (FlightCodec) reads a message's body where gRPC received it; the reader copies each row's
// values from there into the spool's staging buffer (arrowio's NextInto), or, for a batch
// laid out otherwise, into a body buffer lent only while the batch is decoded (bodyAllocator).
// A stream thus holds at most two messages' worth: the one arriving and the one being read.
func (s *Server) FlightServer() (*grpc.Server, error) {
	gs, _, err := s.flightServer()
	return gs, err
}

// flightServer is FlightServer, with its service (whose buffer counts tests read).
func (s *Server) flightServer() (*grpc.Server, *flightService, error) {
	svc := &flightService{s: s, bodies: newBodyAllocator(s.flightMessageLimit())}
	opts := []grpc.ServerOption{
		grpc.ForceServerCodecV2(flightCodec{proto: encoding.GetCodecV2("proto"), held: &svc.held}),
		grpc.MaxRecvMsgSize(s.flightMessageLimit()),
		grpc.InitialWindowSize(flightWindow),
		grpc.InitialConnWindowSize(flightConnWindow),
		grpc.ReadBufferSize(flightReadBuffer),
		experimental.BufferPool(&framePool{}),
	}
	tc, err := s.tlsConfig()
	if err != nil {
		return nil, nil, err
	}
	if tc != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(tc)))
	}
	gs := grpc.NewServer(opts...)
	flight.RegisterFlightServiceServer(gs, svc)
	return gs, svc, nil
}

// flightConnWindow is a connection's window. gRPC gives it back as data arrives, whether or
// not a stream reads it (stream windows bound the memory), so it only needs to keep the
// connection's streams sending between two window updates.
const flightConnWindow = 1 << 20

// maxFlightMessage bounds the IPC messages SendIPC cuts from a stream: a sanity bound on
// what a corrupt stream's lengths may make it allocate, not the server's limit
// (flightMessageLimit).
const maxFlightMessage = 64 << 20

// ServeFlight serves Arrow Flight on ln until ctx is cancelled, then stops gracefully within
// grace. It does not close the Server.
func (s *Server) ServeFlight(ctx context.Context, ln net.Listener, grace time.Duration) error {
	gs, err := s.FlightServer()
	if err != nil {
		ln.Close()
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(ln) }()
	s.log.Info("serving Arrow Flight", "addr", ln.Addr().String())
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(grace):
		gs.Stop()
		<-stopped
	}
	<-errc
	return nil
}

// flightPrincipal authenticates a call from its metadata and TLS peer.
func (s *Server) flightPrincipal(ctx context.Context) (principal, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	var tok string
	ok := false
	for _, v := range md.Get("authorization") {
		scheme, t, found := strings.Cut(v, " ")
		if found && strings.EqualFold(scheme, "Bearer") && strings.TrimSpace(t) != "" {
			tok, ok = strings.TrimSpace(t), true
		}
	}
	cn := ""
	if p, found := peer.FromContext(ctx); found {
		if ti, isTLS := p.AuthInfo.(credentials.TLSInfo); isTLS && len(ti.State.PeerCertificates) > 0 {
			cn = ti.State.PeerCertificates[0].Subject.CommonName
		}
	}
	return s.auth.check(tok, ok, cn)
}

// grpcError turns an error into a gRPC status with the code of its HTTP status.
func grpcError(err error) error {
	st, _ := classify(err)
	code := codes.Internal
	switch st {
	case 400, 411:
		code = codes.InvalidArgument
	case 401:
		code = codes.Unauthenticated
	case 403:
		code = codes.PermissionDenied
	case 404:
		code = codes.NotFound
	case 408:
		code = codes.DeadlineExceeded
	case 409:
		code = codes.FailedPrecondition
	case 413, 503:
		code = codes.ResourceExhausted
	}
	return status.Error(code, err.Error())
}

// DoPut receives one update.
func (f *flightService) DoPut(stream flight.FlightService_DoPutServer) error {
	ack, err := f.put(stream)
	if err != nil {
		_, code := classify(err)
		f.s.metrics.rejected.WithLabelValues(code).Inc()
		f.s.log.Info("update refused", "protocol", "flight", "reason", code, "err", err)
		return grpcError(err)
	}
	b, err := json.Marshal(ack)
	if err != nil {
		return grpcError(err)
	}
	return stream.Send(&flight.PutResult{AppMetadata: b})
}

// put takes one update: it authenticates the client, reads its weight, takes a stream slot and
// the client's place in the round the first message names, and ingests the update.
func (f *flightService) put(stream flight.FlightService_DoPutServer) (api.Ack, error) {
	ctx := stream.Context()
	p, err := f.s.flightPrincipal(ctx)
	if err != nil {
		return api.Ack{}, err
	}
	client, err := p.pusher()
	if err != nil {
		return api.Ack{}, err
	}
	var weight *float64
	w, given, err := flightWeight(ctx)
	if err != nil {
		return api.Ack{}, err
	}
	if given {
		weight = &w
	}
	// The first message names the round: the stream slot is taken before it is read, so that
	// what streams hold is bounded by limits.max_streams from their first byte.
	if err := f.s.takeStream(); err != nil {
		return api.Ack{}, err
	}
	recv := newPutReceiver(stream, time.Duration(f.s.cfg.Limits.IdleTimeout))
	defer recv.stop()
	first, n, err := firstPutMessage(recv)
	if err != nil {
		f.s.releaseStream()
		return api.Ack{}, f.s.descriptorError(client, recv, err)
	}
	u, err := f.s.beginUpload(ctx, client, n, "flight")
	if err != nil {
		first.free()
		return api.Ack{}, err
	}
	defer u.Close()
	return f.ingest(u, recv, first, client, weight)
}

// flightWeight is the weight a DoPut's metadata gives (x-wattagg-weight), if it gives one.
func flightWeight(ctx context.Context) (float64, bool, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	v := md.Get(strings.ToLower(api.WeightHeader))
	if len(v) == 0 {
		return 0, false, nil
	}
	w, err := strconv.ParseFloat(v[0], 64)
	if err != nil {
		return 0, false, fmt.Errorf("%w: %s %q is not a number", ErrBadRequest, api.WeightHeader, v[0])
	}
	return w, true, nil
}

// firstPutMessage receives the first message of a DoPut and the round its descriptor names.
// A message that names no round is freed.
func firstPutMessage(recv *putReceiver) (*putMessage, int, error) {
	first, err := recv.next(nil)
	if err != nil {
		return nil, 0, err
	}
	n, err := roundOfDescriptor(first.desc)
	if err != nil {
		first.free()
		return nil, 0, err
	}
	return first, n, nil
}

// descriptorError explains why the first message of client's DoPut named no round: the client
// stalled, the stream ended, or err.
func (s *Server) descriptorError(client string, recv *putReceiver, err error) error {
	switch {
	case errors.Is(err, errIdle):
		return fmt.Errorf("%w: %s: no message arrived for %s (limits.idle_timeout)", ErrStalled, client, recv.idle)
	case err == io.EOF:
		return fmt.Errorf("%w: %s: the stream ended before its descriptor", ErrBadRequest, client)
	}
	return fmt.Errorf("%s: %w", client, s.recvError(err))
}

// ingest reads the update of upload u from the DoPut's messages, the first already received,
// and hands it to the ingest pipeline with the client's weight.
func (f *flightService) ingest(u *Upload, recv *putReceiver, first *putMessage, client string, weight *float64) (api.Ack, error) {
	rd, err := newFlightReader(f.s, recv, first, u.Context().Done())
	if err != nil {
		return api.Ack{}, fmt.Errorf("%s: %w", client, err)
	}
	defer rd.close()
	src, err := arrowio.NewStreamReader(rd, f.readerOptions(client)...)
	if err != nil {
		return api.Ack{}, rd.explain(u, err)
	}
	defer src.Close()
	ack, err := u.Ingest(src, weight)
	if err != nil {
		return api.Ack{}, rd.explain(u, err)
	}
	return ack, nil
}

// roundOfDescriptor reads the round of a DoPut: path ["rounds", "N"].
func roundOfDescriptor(d *flight.FlightDescriptor) (int, error) {
	if d == nil || d.GetType() != flight.DescriptorPATH || len(d.GetPath()) != 2 || d.GetPath()[0] != "rounds" {
		return 0, fmt.Errorf("%w: the descriptor must be the path [\"rounds\", \"N\"]", ErrBadRequest)
	}
	n, err := strconv.Atoi(d.GetPath()[1])
	if err != nil || n < 1 {
		return 0, fmt.Errorf("%w: round %q is not a round number", ErrBadRequest, d.GetPath()[1])
	}
	return n, nil
}

// DoGet sends a round's model ("rounds/N", or "latest") as an Arrow IPC stream.
func (f *flightService) DoGet(t *flight.Ticket, stream flight.FlightService_DoGetServer) error {
	n := 0
	if tk := string(t.GetTicket()); tk != "latest" {
		v, ok := strings.CutPrefix(tk, "rounds/")
		var err error
		if n, err = strconv.Atoi(v); !ok || err != nil || n < 1 {
			return grpcError(fmt.Errorf("%w: ticket %q: want \"rounds/N\" or \"latest\"", ErrBadRequest, tk))
		}
	}
	path, err := f.s.ModelPath(n)
	if err != nil {
		return grpcError(err)
	}
	set, err := safetensors.Open(path)
	if err != nil {
		return grpcError(err)
	}
	defer set.Close()
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(arrowio.WriteSet(pw, set)) }()
	defer pr.Close()
	return SendIPC(pr, func(d *flight.FlightData) error { return stream.Send(d) })
}

// SendIPC cuts an Arrow IPC stream read from r into Flight messages, one per IPC message (a
// DoPut client sends an update so, with the descriptor set on the first; DoGet sends a model).
func SendIPC(r io.Reader, send func(*flight.FlightData) error) error {
	var pre [8]byte
	for {
		if _, err := io.ReadFull(r, pre[:]); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		n := binary.LittleEndian.Uint32(pre[4:])
		if binary.LittleEndian.Uint32(pre[:4]) != 0xFFFFFFFF {
			return fmt.Errorf("%w: not an IPC stream with continuation markers", arrowio.ErrFormat)
		}
		if n == 0 {
			return nil // end of stream
		}
		if n > maxFlightMessage {
			return fmt.Errorf("%w: IPC metadata of %d bytes", arrowio.ErrFormat, n)
		}
		meta := make([]byte, n)
		if _, err := io.ReadFull(r, meta); err != nil {
			return err
		}
		bodyLen, err := messageBodyLen(meta)
		if err != nil {
			return err
		}
		body := make([]byte, bodyLen)
		if _, err := io.ReadFull(r, body); err != nil {
			return err
		}
		if err := send(&flight.FlightData{DataHeader: meta, DataBody: body}); err != nil {
			return err
		}
	}
}

// messageBodyLen reads Message.bodyLength from an IPC message's flatbuffer.
func messageBodyLen(meta []byte) (int64, error) {
	if len(meta) < 8 {
		return 0, fmt.Errorf("%w: IPC message of %d bytes", arrowio.ErrFormat, len(meta))
	}
	root := flatbuffers.GetUOffsetT(meta)
	if int(root)+4 > len(meta) {
		return 0, fmt.Errorf("%w: IPC message root out of range", arrowio.ErrFormat)
	}
	t := &flatbuffers.Table{Bytes: meta, Pos: root}
	n := t.GetInt64Slot(10, 0) // Message.bodyLength
	if n < 0 || n > maxFlightMessage {
		return 0, fmt.Errorf("%w: IPC body of %d bytes", arrowio.ErrFormat, n)
	}
	return n, nil
}

// ListFlights lists the rounds that have a model.
func (f *flightService) ListFlights(_ *flight.Criteria, stream flight.FlightService_ListFlightsServer) error {
	for _, r := range f.s.Rounds().Rounds {
		if r.State != api.StateClosed {
			continue
		}
		path, err := f.s.ModelPath(r.Round)
		if err != nil {
			continue
		}
		size := int64(-1)
		if fi, err := os.Stat(path); err == nil {
			size = fi.Size()
		}
		ticket := "rounds/" + strconv.Itoa(r.Round)
		info := &flight.FlightInfo{
			FlightDescriptor: &flight.FlightDescriptor{Type: flight.DescriptorPATH, Path: []string{"rounds", strconv.Itoa(r.Round)}},
			Endpoint:         []*flight.FlightEndpoint{{Ticket: &flight.Ticket{Ticket: []byte(ticket)}}},
			TotalRecords:     -1, TotalBytes: size,
		}
		if err := stream.Send(info); err != nil {
			return err
		}
	}
	return nil
}

// ListActions lists DoAction's actions.
func (f *flightService) ListActions(_ *flight.Empty, stream flight.FlightService_ListActionsServer) error {
	for _, a := range []*flight.ActionType{
		{Type: "status", Description: "the status of round N (body: N) as JSON"},
		{Type: "close", Description: "close round N now (body: N; admin token)"},
		{Type: "open", Description: "open the next round (admin token)"},
		{Type: "recovery", Description: "the recovery of secure-sum round N (body: N, a newline, the recovery's JSON; admin token)"},
	} {
		if err := stream.Send(a); err != nil {
			return err
		}
	}
	return nil
}

// DoAction runs status, close or open; the result's body is the round's status (JSON).
func (f *flightService) DoAction(a *flight.Action, stream flight.FlightService_DoActionServer) error {
	st, err := f.action(stream.Context(), a)
	if err != nil {
		return grpcError(err)
	}
	b, err := json.Marshal(st)
	if err != nil {
		return grpcError(err)
	}
	return stream.Send(&flight.Result{Body: b})
}

func (f *flightService) action(ctx context.Context, a *flight.Action) (api.Round, error) {
	roundOf := func() (int, error) {
		n, err := strconv.Atoi(strings.TrimSpace(string(a.GetBody())))
		if err != nil || n < 1 {
			return 0, fmt.Errorf("%w: action %s: body %q is not a round number", ErrBadRequest, a.GetType(), a.GetBody())
		}
		return n, nil
	}
	switch a.GetType() {
	case "status":
		n, err := roundOf()
		if err != nil {
			return api.Round{}, err
		}
		return f.s.Status(n)
	case "close", "open", "recovery":
		p, err := f.s.flightPrincipal(ctx)
		if err == nil {
			err = f.s.auth.admits(p)
		}
		if err != nil {
			return api.Round{}, err
		}
		switch a.GetType() {
		case "open":
			return f.s.OpenRound()
		case "recovery":
			num, js, _ := strings.Cut(string(a.GetBody()), "\n")
			n, err := strconv.Atoi(strings.TrimSpace(num))
			if err != nil || n < 1 {
				return api.Round{}, fmt.Errorf("%w: action recovery: body %q does not start with a round number and a newline", ErrBadRequest, num)
			}
			rec, err := decodeRecovery(strings.NewReader(js))
			if err != nil {
				return api.Round{}, err
			}
			return f.s.SetRecovery(ctx, n, rec)
		}
		n, err := roundOf()
		if err != nil {
			return api.Round{}, err
		}
		return f.s.CloseRound(ctx, n)
	}
	return api.Round{}, fmt.Errorf("%w: unknown action %q (status, close, open, recovery)", ErrBadRequest, a.GetType())
}
