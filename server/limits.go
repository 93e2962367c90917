package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/wattagg/wattagg/tensor"
)

// idleReader reads a request body with an idle timeout: before every read the connection's
// read deadline is moved to now + idle (http.ResponseController), so an upload that keeps
// moving is never cut however long it takes, and one that sends nothing for idle is. cut ends
// the reads at once (the round closed).
type idleReader struct {
	rc      *http.ResponseController
	r       io.Reader
	idle    time.Duration
	mu      sync.Mutex
	cutOff  bool
	stalled bool
	n       int64
}

func newIdleReader(w http.ResponseWriter, r io.Reader, idle time.Duration) *idleReader {
	return &idleReader{rc: http.NewResponseController(w), r: r, idle: idle}
}

var errCut = errors.New("upload cut")

func (b *idleReader) Read(p []byte) (int, error) {
	b.mu.Lock()
	if b.cutOff {
		b.mu.Unlock()
		return 0, errCut
	}
	_ = b.rc.SetReadDeadline(time.Now().Add(b.idle))
	b.mu.Unlock()
	n, err := b.r.Read(p)
	b.n += int64(n)
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		b.mu.Lock()
		b.stalled = !b.cutOff
		b.mu.Unlock()
	}
	return n, err
}

// cut makes the pending read and every later one fail now.
func (b *idleReader) cut() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.cutOff = true
	_ = b.rc.SetReadDeadline(time.Now().Add(-time.Second))
}

// stop ends the reads once the handler is done with the body: a body read to its end clears
// the deadline (the connection may carry the next request); one left unread gets a deadline in
// the past, so that net/http's attempt to drain it cannot wait on a stalled client.
func (b *idleReader) stop(complete bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if complete && !b.cutOff {
		_ = b.rc.SetReadDeadline(time.Time{})
		return
	}
	b.cutOff = true
	_ = b.rc.SetReadDeadline(time.Now().Add(-time.Second))
}

// explain says why reading the upload failed: the round closed, the client stalled, or err.
func (b *idleReader) explain(u *Upload, err error) error {
	if u.ctx.Err() != nil && context.Cause(u.ctx) != context.Canceled {
		return context.Cause(u.ctx)
	}
	b.mu.Lock()
	stalled := b.stalled
	b.mu.Unlock()
	if stalled {
		return fmt.Errorf("%w: no byte arrived for %s (limits.idle_timeout); the upload was cut after %d bytes", ErrStalled, b.idle, b.n)
	}
	return err
}

// idleWriter writes a response with an idle timeout: the write deadline moves to now + idle
// before every write, so a download is cut only when the client stops reading.
type idleWriter struct {
	http.ResponseWriter
	rc   *http.ResponseController
	idle time.Duration
}

func newIdleWriter(w http.ResponseWriter, idle time.Duration) *idleWriter {
	return &idleWriter{ResponseWriter: w, rc: http.NewResponseController(w), idle: idle}
}

func (w *idleWriter) Write(p []byte) (int, error) {
	_ = w.rc.SetWriteDeadline(time.Now().Add(w.idle))
	return w.ResponseWriter.Write(p)
}

// getBuffer lends an upload's receive buffer (limits.chunk_bytes, aligned): the server holds
// at most max_streams of them, whatever the number or size of the updates.
func (s *Server) getBuffer() []byte {
	s.bufsOut.Add(1)
	if b, ok := s.bufs.Get().(*[]byte); ok {
		return *b
	}
	return tensor.AlignedBytes(s.cfg.Limits.ChunkBytes)
}

func (s *Server) putBuffer(b []byte) {
	s.bufsOut.Add(-1)
	s.bufs.Put(&b)
}
