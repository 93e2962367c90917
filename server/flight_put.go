package server

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/wattagg/wattagg/tensor/arrowio"
)

// flightFraming is what a Flight message may carry beyond limits.chunk_bytes of tensor data:
// the protobuf fields, the IPC metadata of a record batch and its other columns (names,
// offsets). A batch of chunk_bytes of data from arrowio or pyarrow needs well under a KiB.
const flightFraming = 64 << 10

// flightMessageLimit bounds one gRPC message of DoPut, and so what a stream holds while a
// message arrives: gRPC assembles a whole message before anything sees it, so the only bound
// on a client's batch size that costs no memory is the one gRPC checks from the message's
// length prefix, before reading it.
func (s *Server) flightMessageLimit() int { return s.cfg.Limits.ChunkBytes + flightFraming }

// flightWindow is the flow-control window of a stream: what a client may send beyond the
// message the server is reading. gRPC widens it for the message being read (the whole message
// may come at once), so a small window costs no round trips within a message; it only bounds
// how much of the next message waits while the current one is processed. Measured here (64
// clients × 5M f32 in 1 MiB batches, loopback): windows of 64 KiB, 256 KiB and 1 MiB ingested
// at the same rate (0.72-0.77 GB/s) and the server's peak RSS grew with the window (158, 165
// and 179 MiB). gRPC's default read buffer (32 KiB) was kept on the same evidence: 256 KiB
// was 2% faster, within the noise, for 8 MiB more.
const flightWindow = 64 << 10

// putReceiver receives a DoPut's messages one at a time, when asked: gRPC reads a message
// off the transport only in RecvMsg, so receiving on demand keeps a stream to the message
// being processed and the window of the next. It receives on its own goroutine so that a
// wait can be bounded by the idle timeout (a stalled client) and cut by the round's end.
type putReceiver struct {
	stream grpc.ServerStream
	idle   time.Duration
	want   chan struct{}
	got    chan received
	done   chan struct{}
	asked  bool // a message was asked for and not yet taken
}

type received struct {
	m   *putMessage
	err error
}

func newPutReceiver(stream grpc.ServerStream, idle time.Duration) *putReceiver {
	r := &putReceiver{stream: stream, idle: idle, want: make(chan struct{}, 1), got: make(chan received),
		done: make(chan struct{})}
	go r.run()
	return r
}

func (r *putReceiver) run() {
	for {
		select {
		case <-r.want:
		case <-r.done:
			return
		}
		m := new(putMessage)
		err := r.stream.RecvMsg(m)
		select {
		case r.got <- received{m, err}:
		case <-r.done:
			m.free()
			return
		}
		if err != nil {
			return
		}
	}
}

// errIdle: no message within the idle timeout.
var errIdle = errors.New("idle")

// next returns the next message: io.EOF once the client has sent its last, errIdle after
// the idle timeout, errCut when cut closes. The caller owns the message (free).
func (r *putReceiver) next(cut <-chan struct{}) (*putMessage, error) {
	if !r.asked {
		r.want <- struct{}{}
		r.asked = true
	}
	t := time.NewTimer(r.idle)
	defer t.Stop()
	select {
	case res := <-r.got:
		r.asked = false
		if res.err == nil && res.m.err != nil {
			res.m.free()
			return nil, res.m.err
		}
		return res.m, res.err
	case <-t.C:
		return nil, errIdle
	case <-cut:
		return nil, errCut
	}
}

// stop ends the receiving goroutine. The call must be ending (the handler returning), so that
// a RecvMsg in progress returns.
func (r *putReceiver) stop() { close(r.done) }

// recvError explains a failed receive: a message over the limit, a message that is not a
// FlightData, or the stream's own error.
func (s *Server) recvError(err error) error {
	if errors.Is(err, errWire) {
		return fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	st, ok := status.FromError(err)
	switch {
	case !ok:
		return err
	case st.Code() == codes.ResourceExhausted:
		// gRPC has already answered the client with its own status (sizes only); this is for
		// the log and the metrics.
		lim := s.flightMessageLimit()
		return fmt.Errorf("%w: a Flight message over the limit of %d bytes (limits.chunk_bytes %d + %d KiB of framing): send record batches of at most %d bytes of tensor data; the schema message must fit too (%s)",
			ErrTooLarge, lim, s.cfg.Limits.ChunkBytes, flightFraming>>10, s.cfg.Limits.ChunkBytes, st.Message())
	case st.Code() == codes.Internal:
		return fmt.Errorf("%w: %s", ErrBadRequest, st.Message())
	}
	return err
}

// flightReader turns the messages of a DoPut into the bytes of an Arrow IPC stream
// (continuation marker, metadata length, metadata padded to 8 bytes, body) for
// arrowio.NewStreamReader: the framing and metadata from a small buffer, the body straight
// from gRPC's frames, each frame freed as soon as it is read. arrowio reads a batch's values
// from there into the spool's staging buffer (NextInto): that is the one copy of the tensor
// bytes between gRPC's frames and the disk.
type flightReader struct {
	s       *Server
	recv    *putReceiver
	cut     <-chan struct{}
	head    []byte
	cur     *putMessage // the current message, its body read up to off in body[0]
	off     int
	msgs    int
	eof     bool
	stalled bool
	n       int64
}

func newFlightReader(s *Server, recv *putReceiver, first *putMessage, cut <-chan struct{}) (*flightReader, error) {
	r := &flightReader{s: s, recv: recv, cut: cut}
	if err := r.frame(first); err != nil {
		r.close()
		return nil, err
	}
	return r, nil
}

// frame queues the IPC framing, metadata and body of a message, taking over its body.
func (r *flightReader) frame(m *putMessage) error {
	r.msgs++
	h := m.header
	if len(h) == 0 {
		body := m.body.Len()
		m.free()
		if body > 0 {
			return fmt.Errorf("%w: Flight message %d has a data_body but no data_header", ErrBadRequest, r.msgs)
		}
		return nil // app_metadata only: nothing of the stream
	}
	// The body must be the length the metadata declares, or the stream would be read out of
	// step (garbage metadata is left to arrowio, which says what is wrong with it).
	if want, err := messageBodyLen(h); err == nil && want != int64(m.body.Len()) {
		got := m.body.Len()
		m.free()
		return fmt.Errorf("%w: Flight message %d has a data_body of %d bytes, its data_header declares %d", ErrBadRequest, r.msgs, got, want)
	}
	pad := (8 - len(h)%8) % 8
	r.head = make([]byte, 8, 8+len(h)+pad)
	binary.LittleEndian.PutUint32(r.head, 0xFFFFFFFF)
	binary.LittleEndian.PutUint32(r.head[4:], uint32(len(h)+pad))
	r.head = append(append(r.head, h...), make([]byte, pad)...)
	r.cur, r.off = m, 0
	return nil
}

func (r *flightReader) Read(p []byte) (int, error) {
	for len(r.head) == 0 && (r.cur == nil || len(r.cur.body) == 0) {
		if r.eof {
			return 0, io.EOF
		}
		m, err := r.recv.next(r.cut)
		switch {
		case err == io.EOF:
			r.head, r.eof = []byte{0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0}, true // end of stream
		case errors.Is(err, errIdle):
			r.stalled = true
			return 0, ErrStalled
		case err != nil:
			return 0, r.s.recvError(err)
		default:
			if err := r.frame(m); err != nil {
				return 0, err
			}
		}
	}
	var n int
	if len(r.head) > 0 {
		n = copy(p, r.head)
		r.head = r.head[n:]
	}
	for n < len(p) && r.cur != nil && len(r.cur.body) > 0 {
		b := r.cur.body[0]
		k := copy(p[n:], b.ReadOnlyData()[r.off:])
		n += k
		if r.off += k; r.off == b.Len() {
			r.cur.freeFirst() // back to gRPC's pool now, not at the end of the message
			r.off = 0
		}
	}
	r.n += int64(n)
	return n, nil
}

// close frees what is left of the current message.
func (r *flightReader) close() {
	if r.cur != nil {
		r.cur.free()
		r.cur = nil
	}
}

// explain says why reading a DoPut failed: the round closed, the client stalled, or err.
func (r *flightReader) explain(u *Upload, err error) error {
	if u.ctx.Err() != nil && context.Cause(u.ctx) != context.Canceled {
		return context.Cause(u.ctx)
	}
	if r.stalled {
		return fmt.Errorf("%w: no message arrived for %s (limits.idle_timeout); the upload was cut after %d bytes", ErrStalled, r.recv.idle, r.n)
	}
	return err
}

var _ io.Reader = (*flightReader)(nil)

// readerOptions are the options of a DoPut's reader: its limits (a batch is at most a Flight
// message) and the allocator of its bodies.
func (f *flightService) readerOptions(client string) []arrowio.Option {
	lim := f.s.cfg.Limits
	msg := int64(f.s.flightMessageLimit())
	return []arrowio.Option{arrowio.WithSource(client), arrowio.WithBodyAllocator(f.bodies), arrowio.WithMaxTotalBytes(lim.MaxUpdateBytes),
		arrowio.WithMaxMetadataBytes(max(64, min(lim.MaxHeaderBytes, msg))), arrowio.WithMaxBatchBytes(msg)}
}
