package server

import (
	"context"
	"net"
	"time"
)

// ListenAndServe runs a server of cfg until ctx is cancelled: it opens (or resumes) the data
// directory, listens on cfg.Listen (and cfg.FlightListen), calls ready with the addresses it
// listens on (":0" picks a port; flight is nil without Flight), and serves the HTTP API and
// Arrow Flight; then stops gracefully within grace: Flight first, then HTTP, then the rounds.
func ListenAndServe(ctx context.Context, cfg *Config, grace time.Duration, ready func(http, flight net.Addr), opts ...Option) error {
	s, err := New(cfg, opts...)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		s.Close()
		return err
	}
	var fln net.Listener
	if cfg.FlightListen != "" {
		if fln, err = net.Listen("tcp", cfg.FlightListen); err != nil {
			ln.Close()
			s.Close()
			return err
		}
	}
	if ready != nil {
		var fa net.Addr
		if fln != nil {
			fa = fln.Addr()
		}
		ready(ln.Addr(), fa)
	}
	// HTTP stops (and closes the Server) only once Flight has stopped.
	httpCtx, stopHTTP := context.WithCancel(context.Background())
	defer stopHTTP()
	flightErr := make(chan error, 1)
	go func() {
		if fln != nil {
			flightErr <- s.ServeFlight(ctx, fln, grace)
		} else {
			<-ctx.Done()
			flightErr <- nil
		}
		stopHTTP()
	}()
	err = s.Serve(httpCtx, ln, grace)
	stopHTTP()
	if ferr := <-flightErr; err == nil {
		err = ferr
	}
	return err
}
