package server

import (
	"context"
	"net"
	"time"
)

// ListenAndServe runs a server of cfg until ctx is cancelled: it opens (or resumes) the data
// directory, listens on cfg.Listen, calls ready with the address it listens on (":0" picks a
// port), and serves the API; then shuts down gracefully within grace.
func ListenAndServe(ctx context.Context, cfg *Config, grace time.Duration, ready func(net.Addr), opts ...Option) error {
	s, err := New(cfg, opts...)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		s.Close()
		return err
	}
	if ready != nil {
		ready(ln.Addr())
	}
	return s.Serve(ctx, ln, grace)
}
