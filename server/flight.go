package server

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/apache/arrow-go/v18/arrow/flight"
	flatbuffers "github.com/google/flatbuffers/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
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
	s *Server
}

// FlightServer is a gRPC server serving Arrow Flight for s, with the configured TLS and mutual
// TLS.
func (s *Server) FlightServer() (*grpc.Server, error) {
	// Fixed flow-control windows: gRPC's automatic ones grow to 16 MiB per stream, and 64
	// streams could then hold a GiB the server has not asked for. With 1 MiB windows a stream
	// holds at most a window and the message being assembled (a record batch, 4 MiB as
	// arrowio writes them); loopback and LAN round trips keep the link busy with that.
	opts := []grpc.ServerOption{grpc.MaxRecvMsgSize(maxFlightMessage),
		grpc.InitialWindowSize(1 << 20), grpc.InitialConnWindowSize(1 << 20)}
	tc, err := s.tlsConfig()
	if err != nil {
		return nil, err
	}
	if tc != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(tc)))
	}
	gs := grpc.NewServer(opts...)
	flight.RegisterFlightServiceServer(gs, &flightService{s: s})
	return gs, nil
}

// maxFlightMessage bounds one gRPC message: a record batch (arrowio writes 4 MiB ones) with
// its framing.
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
	first, err := stream.Recv()
	if err != nil {
		return api.Ack{}, fmt.Errorf("%w: %s: the stream ended before its descriptor: %v", ErrBadRequest, client, err)
	}
	n, err := roundOfDescriptor(first.GetFlightDescriptor())
	if err != nil {
		return api.Ack{}, err
	}
	var weight *float64
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(strings.ToLower(api.WeightHeader)); len(v) > 0 {
		w, err := strconv.ParseFloat(v[0], 64)
		if err != nil {
			return api.Ack{}, fmt.Errorf("%w: %s %q is not a number", ErrBadRequest, api.WeightHeader, v[0])
		}
		weight = &w
	}
	u, err := f.s.BeginUpload(ctx, client, n, "flight")
	if err != nil {
		return api.Ack{}, err
	}
	defer u.Close()
	lim := f.s.cfg.Limits
	rd := newFlightReader(stream, first, time.Duration(lim.IdleTimeout), u.Context())
	defer rd.stop()
	src, err := arrowio.NewStreamReader(rd, arrowio.WithSource(client), arrowio.WithMaxTotalBytes(lim.MaxUpdateBytes),
		arrowio.WithMaxMetadataBytes(lim.MaxHeaderBytes))
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

// flightReader turns the FlightData messages of a DoPut into the bytes of an Arrow IPC stream
// (continuation marker, metadata length, metadata padded to 8 bytes, body), for
// arrowio.NewStreamReader. Messages are received by one goroutine, one at a time; a message
// that does not come within the idle timeout ends the stream (the client stalled), and so does
// the round's closing.
type flightReader struct {
	msgs    chan flightMsg
	done    chan struct{}
	idle    time.Duration
	cancel  <-chan struct{}
	head    []byte
	body    []byte
	eof     bool
	stalled bool
	n       int64
}

type flightMsg struct {
	d   *flight.FlightData
	err error
}

func newFlightReader(stream flight.FlightService_DoPutServer, first *flight.FlightData, idle time.Duration, roundCtx context.Context) *flightReader {
	r := &flightReader{msgs: make(chan flightMsg), done: make(chan struct{}), idle: idle, cancel: roundCtx.Done()}
	r.frame(first)
	go func() {
		for {
			d, err := stream.Recv()
			select {
			case r.msgs <- flightMsg{d, err}:
			case <-r.done:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return r
}

// frame queues the IPC framing and body of one message.
func (r *flightReader) frame(d *flight.FlightData) {
	h := d.GetDataHeader()
	if len(h) == 0 {
		return
	}
	pad := (8 - len(h)%8) % 8
	r.head = make([]byte, 8, 8+len(h)+pad)
	binary.LittleEndian.PutUint32(r.head, 0xFFFFFFFF)
	binary.LittleEndian.PutUint32(r.head[4:], uint32(len(h)+pad))
	r.head = append(append(r.head, h...), make([]byte, pad)...)
	r.body = d.GetDataBody()
}

func (r *flightReader) Read(p []byte) (int, error) {
	for len(r.head) == 0 && len(r.body) == 0 {
		if r.eof {
			return 0, io.EOF
		}
		t := time.NewTimer(r.idle)
		var m flightMsg
		select {
		case m = <-r.msgs:
		case <-t.C:
			r.stalled = true
			return 0, ErrStalled
		case <-r.cancel:
			t.Stop()
			return 0, errCut
		}
		t.Stop()
		switch {
		case m.err == io.EOF:
			r.head, r.eof = []byte{0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0}, true // end of stream
		case m.err != nil:
			return 0, m.err
		default:
			r.frame(m.d)
		}
	}
	var n int
	if len(r.head) > 0 {
		n = copy(p, r.head)
		r.head = r.head[n:]
	} else {
		n = copy(p, r.body)
		r.body = r.body[n:]
		if len(r.body) == 0 {
			r.body = nil // let the message's memory go now, not at the next message
		}
	}
	r.n += int64(n)
	return n, nil
}

func (r *flightReader) stop() { close(r.done) }

// explain says why reading a DoPut failed: the round closed, the client stalled, or err.
func (r *flightReader) explain(u *Upload, err error) error {
	if u.ctx.Err() != nil && context.Cause(u.ctx) != context.Canceled {
		return context.Cause(u.ctx)
	}
	if r.stalled {
		return fmt.Errorf("%w: no message arrived for %s (limits.idle_timeout); the upload was cut after %d bytes", ErrStalled, r.idle, r.n)
	}
	return err
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
	case "close", "open":
		p, err := f.s.flightPrincipal(ctx)
		if err == nil {
			err = f.s.auth.admits(p)
		}
		if err != nil {
			return api.Round{}, err
		}
		if a.GetType() == "open" {
			return f.s.OpenRound()
		}
		n, err := roundOf()
		if err != nil {
			return api.Round{}, err
		}
		return f.s.CloseRound(ctx, n)
	}
	return api.Round{}, fmt.Errorf("%w: unknown action %q (status, close, open)", ErrBadRequest, a.GetType())
}
