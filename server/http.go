package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wattagg/wattagg/aggregate/secagg"
	"github.com/wattagg/wattagg/server/api"
)

// Handler is the server's HTTP API:
//
//	PUT  /v1/rounds/{round}/update   a .safetensors body (client token); weight from X-Wattagg-Weight
//	GET  /v1/rounds/{round}/model    the round's model;  GET /v1/model: the latest
//	GET  /v1/rounds                  every round's status; GET /v1/rounds/{round}: one, with its updates
//	POST /v1/rounds/{round}/close    close it now (admin token)
//	POST /v1/rounds                  open the next round (admin token)
//	GET  /metrics                    Prometheus metrics
//	GET  /                           a read-only status page (HTML and SVG)
//	GET  /healthz                    200 while the server runs
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /v1/rounds/{round}/update", s.handleUpdate)
	mux.HandleFunc("GET /v1/rounds/{round}/model", s.handleModel)
	mux.HandleFunc("GET /v1/model", s.handleModel)
	mux.HandleFunc("GET /v1/rounds", s.handleRounds)
	mux.HandleFunc("GET /v1/rounds/{round}", s.handleRound)
	mux.HandleFunc("POST /v1/rounds/{round}/close", s.handleClose)
	mux.HandleFunc("PUT /v1/rounds/{round}/recovery", s.handleRecovery)
	mux.HandleFunc("POST /v1/rounds", s.handleOpen)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /{$}", s.handleStatusPage)
	return mux
}

// HTTPServer is the net/http server of Handler with the configured timeouts: headers within
// ReadHeaderTimeout, idle keep-alive connections closed after IdleTimeout; no fixed read or
// write timeout, since a large model moves for as long as it keeps moving (uploads and
// downloads renew a deadline on progress instead). With TLS configured, it serves HTTPS, and
// with a client CA, requires client certificates it signed.
func (s *Server) HTTPServer() (*http.Server, error) {
	l := s.cfg.Limits
	hs := &http.Server{
		Addr:              s.cfg.Listen,
		Handler:           s.Handler(),
		ReadHeaderTimeout: time.Duration(l.ReadHeaderTimeout),
		IdleTimeout:       time.Duration(l.IdleTimeout),
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	tc, err := s.tlsConfig()
	if err != nil {
		return nil, err
	}
	hs.TLSConfig = tc
	return hs, nil
}

// tlsConfig is the configured TLS (nil: none): the server's certificate and, with a client CA,
// client certificates required and verified against it.
func (s *Server) tlsConfig() (*tls.Config, error) {
	t := s.cfg.TLS
	if t == nil {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("%w: tls: %v", ErrConfig, err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if t.ClientCAFile != "" {
		pem, err := os.ReadFile(t.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("%w: tls.client_ca_file: %v", ErrConfig, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: tls.client_ca_file %s holds no PEM certificate", ErrConfig, t.ClientCAFile)
		}
		tc.ClientCAs, tc.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return tc, nil
}

// Serve serves the API on ln until ctx is cancelled, then shuts down gracefully: no new
// connections, requests in progress get up to grace to finish, then the rounds stop (an open
// round resumes from its log at the next start). It closes the Server.
func (s *Server) Serve(ctx context.Context, ln net.Listener, grace time.Duration) error {
	hs, err := s.HTTPServer()
	if err != nil {
		ln.Close()
		s.Close()
		return err
	}
	isTLS := hs.TLSConfig != nil
	mtls := isTLS && hs.TLSConfig.ClientCAs != nil
	errc := make(chan error, 1)
	go func() {
		if isTLS {
			errc <- hs.ServeTLS(ln, "", "") // the certificate is in TLSConfig
		} else {
			errc <- hs.Serve(ln)
		}
	}()
	s.log.Info("serving", "addr", ln.Addr().String(), "tls", isTLS, "mtls", mtls)
	select {
	case err = <-errc:
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), grace)
		err = hs.Shutdown(sctx)
		cancel()
		if err != nil {
			hs.Close()
		}
		<-errc
		err = nil
	}
	s.log.Info("stopped")
	if cerr := s.Close(); err == nil {
		err = cerr
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// writeJSON answers v with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// writeError answers err with its status and reason.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) (int, string) {
	status, code := statusOf(err)
	switch status {
	case http.StatusUnauthorized:
		w.Header().Set("WWW-Authenticate", `Bearer realm="wattagg"`)
	case http.StatusServiceUnavailable:
		w.Header().Set("Retry-After", "1")
	}
	if status >= 500 {
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "status", status, "err", err)
	}
	writeJSON(w, status, api.Error{Error: err.Error(), Code: code})
	return status, code
}

// roundParam reads {round} (0 for /v1/model).
func roundParam(r *http.Request) (int, error) {
	v := r.PathValue("round")
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("%w: round %q is not a round number (1, 2, ...)", ErrBadRequest, v)
	}
	return n, nil
}

// handleUpdate receives one update. Everything that can be refused from the request line and
// headers is refused before a byte of the body is read: the token, the stream slot, the round
// and the client's place in it, the length, the weight. Then the .safetensors header is read
// and checked against the round before the data; the data streams into the spool, and the
// answer comes once the update is durable and added.
func (s *Server) handleUpdate(w http.ResponseWriter, r *http.Request) {
	ack, err := s.receive(w, r)
	if err != nil {
		// The body may be unread: the connection cannot carry another request.
		w.Header().Set("Connection", "close")
		_, code := s.writeError(w, r, err)
		s.metrics.rejected.WithLabelValues(code).Inc()
		s.log.Info("update refused", "round", r.PathValue("round"), "client", clientOf(r), "reason", code, "err", err)
		return
	}
	writeJSON(w, http.StatusOK, ack)
}

// clientOf names the client of a request for logs, from what authentication stored.
func clientOf(r *http.Request) string {
	if c, ok := r.Context().Value(clientKeyCtx{}).(string); ok {
		return c
	}
	return ""
}

type clientKeyCtx struct{}

func (s *Server) receive(w http.ResponseWriter, r *http.Request) (api.Ack, error) {
	client, err := s.auth.client(r)
	if err != nil {
		return api.Ack{}, err
	}
	*r = *r.WithContext(context.WithValue(r.Context(), clientKeyCtx{}, client))
	n, err := roundParam(r)
	if err != nil {
		return api.Ack{}, err
	}
	lim := s.cfg.Limits
	switch {
	case r.ContentLength < 0:
		return api.Ack{}, fmt.Errorf("%w: send Content-Length: the server checks the update's size before reading it", ErrLengthRequired)
	case r.ContentLength > lim.MaxUpdateBytes:
		return api.Ack{}, fmt.Errorf("%w: %d bytes, over the %d-byte limit (limits.max_update_bytes)", ErrTooLarge, r.ContentLength, lim.MaxUpdateBytes)
	}
	var weight *float64
	if v := r.Header.Get(api.WeightHeader); v != "" {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return api.Ack{}, fmt.Errorf("%w: %s %q is not a number", ErrBadRequest, api.WeightHeader, v)
		}
		weight = &f
	}
	u, err := s.BeginUpload(r.Context(), client, n, "http")
	if err != nil {
		return api.Ack{}, err
	}
	defer u.Close()
	body := newIdleReader(w, r.Body, time.Duration(lim.IdleTimeout))
	complete := false
	defer func() { body.stop(complete) }()
	// A round that closes while the update arrives cuts the read at once.
	stopCut := context.AfterFunc(u.Context(), body.cut)
	defer stopCut()
	buf := s.getBuffer()
	defer s.putBuffer(buf)
	src, err := newSafetensorsSource(body, r.ContentLength, lim.MaxHeaderBytes, client, buf)
	if err != nil {
		return api.Ack{}, body.explain(u, err)
	}
	ack, err := u.Ingest(src, weight)
	if err != nil {
		return api.Ack{}, body.explain(u, err)
	}
	complete = true
	return ack, nil
}

// handleModel streams a round's model file (the latest model for /v1/model).
func (s *Server) handleModel(w http.ResponseWriter, r *http.Request) {
	n, err := roundParam(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	path, err := s.ModelPath(n)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	f, err := os.Open(path)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="round-%06d.safetensors"`, roundOfPath(s, n)))
	// A download that keeps moving is never cut; one that stalls for the idle timeout is.
	http.ServeContent(newIdleWriter(w, time.Duration(s.cfg.Limits.IdleTimeout)), r, "", fi.ModTime(), f)
}

// roundOfPath is the round whose model /v1/model serves.
func roundOfPath(s *Server, n int) int {
	if n == 0 {
		return s.Latest()
	}
	return n
}

func (s *Server) handleRounds(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.Rounds())
}

func (s *Server) handleRound(w http.ResponseWriter, r *http.Request) {
	n, err := roundParam(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var wait time.Duration
	if v := r.URL.Query().Get("wait"); v != "" {
		if wait, err = time.ParseDuration(v); err != nil {
			s.writeError(w, r, fmt.Errorf("%w: wait %q is not a duration (30s, 2m)", ErrBadRequest, v))
			return
		}
	}
	st, err := s.WaitStatus(r.Context(), n, wait)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// adminRound checks an admin request on round {round}: its number, or false once the refusal
// is written.
func (s *Server) adminRound(w http.ResponseWriter, r *http.Request) (int, bool) {
	err := s.auth.requireAdmin(r)
	n := 0
	if err == nil {
		n, err = roundParam(r)
	}
	if err != nil {
		s.writeError(w, r, err)
		return 0, false
	}
	return n, true
}

func (s *Server) handleClose(w http.ResponseWriter, r *http.Request) {
	n, ok := s.adminRound(w, r)
	if !ok {
		return
	}
	st, err := s.CloseRound(r.Context(), n)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.log.Info("admin closed a round", "round", n, "state", st.State)
	writeJSON(w, http.StatusOK, st)
}

// maxRecoveryBytes bounds a recovery's JSON: seeds for 1000 clients, each dropped one's shared
// with 1000 survivors, are about 70 bytes per (dropped, survivor) pair.
const maxRecoveryBytes = 64 << 20

// handleRecovery stores the recovery of a secure-sum round (admin token): the seeds of its
// unmasking round, in secagg.Recovery's JSON form.
func (s *Server) handleRecovery(w http.ResponseWriter, r *http.Request) {
	n, ok := s.adminRound(w, r)
	if !ok {
		return
	}
	rec, err := decodeRecovery(http.MaxBytesReader(w, r.Body, maxRecoveryBytes))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	st, err := s.SetRecovery(r.Context(), n, rec)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// decodeRecovery reads a recovery's JSON; what is wrong with it is a bad request.
func decodeRecovery(body io.Reader) (*secagg.Recovery, error) {
	b, err := io.ReadAll(body)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, fmt.Errorf("%w: recovery of more than %d bytes", ErrBadRequest, tooBig.Limit)
		}
		return nil, err
	}
	var rec secagg.Recovery
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	return &rec, nil
}

func (s *Server) handleOpen(w http.ResponseWriter, r *http.Request) {
	if err := s.auth.requireAdmin(r); err != nil {
		s.writeError(w, r, err)
		return
	}
	st, err := s.OpenRound()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, st)
}
