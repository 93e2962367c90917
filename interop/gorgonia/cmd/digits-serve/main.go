// Command digits-serve is the inference node of the federation showcase: it serves digit
// predictions over HTTP from the global model in a .safetensors file and reloads the model,
// without dropping a request, whenever the file is replaced (polled) or on SIGHUP.
//
//	digits-serve -model global.safetensors [-addr 127.0.0.1:8080] [-poll 1s] [-max-rows 4096]
//
//	curl -s localhost:8080/predict -d '{"inputs": [[0,0,5,13,9,1,0,0, ...64 pixels 0..16...]]}'
//	{"logits":[[...10 values...]],"classes":[0],"model":{"generation":1,"source":"global.safetensors",...}}
//	curl -s localhost:8080/healthz
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/wattagg/wattagg/interop/gorgonia/serving"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr, nil); err != nil {
		fmt.Fprintln(os.Stderr, "digits-serve:", err)
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

var errUsage = errors.New("usage")

// run serves until ctx is done, then shuts down gracefully. It sends the address it listens
// on to ready, if not nil.
func run(ctx context.Context, args []string, stderr io.Writer, ready chan<- string) error {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))

	n, err := newNode(cfg, log)
	if err != nil {
		return err
	}
	defer n.svc.Close()
	if err := n.loadModel(); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return err
	}
	srv := n.httpServer()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	hup := catchSIGHUP()
	defer signal.Stop(hup)
	done := n.reloadInBackground(ctx, hup)

	err = n.serve(ctx, srv, ln, ready)
	cancel()
	<-done
	if err == nil {
		log.Info("stopped")
	}
	return err
}

// config is what the command line asks for.
type config struct {
	modelPath string
	addr      string
	poll      time.Duration
	maxRows   int
}

// parseFlags reads the command line; the flag set's messages and usage go to stderr, and its
// errors wrap errUsage.
func parseFlags(args []string, stderr io.Writer) (config, error) {
	var cfg config
	fs := flag.NewFlagSet("digits-serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.modelPath, "model", "", "global model (.safetensors): fc1.weight, fc1.bias, fc2.weight, fc2.bias")
	fs.StringVar(&cfg.addr, "addr", "127.0.0.1:8080", "listen address")
	fs.DurationVar(&cfg.poll, "poll", time.Second, "how often to check the model file for a new version (0: only on SIGHUP)")
	fs.IntVar(&cfg.maxRows, "max-rows", 4096, "most rows in one request")
	if err := fs.Parse(args); err != nil {
		return cfg, fmt.Errorf("%w: %v", errUsage, err)
	}
	if cfg.modelPath == "" || fs.NArg() > 0 {
		fs.Usage()
		return cfg, fmt.Errorf("%w: -model is required and there are no arguments", errUsage)
	}
	if cfg.poll < 0 {
		return cfg, fmt.Errorf("%w: -poll %v is negative", errUsage, cfg.poll)
	}
	return cfg, nil
}

// node is the running inference node: the model service, what the flags asked of it and the
// log it writes.
type node struct {
	config
	svc *serving.Service
	log *slog.Logger
}

// newNode opens the model service (not yet loaded) that cfg asks for; its errors wrap
// errUsage.
func newNode(cfg config, log *slog.Logger) (*node, error) {
	svc, err := serving.New(serving.WithMaxRows(cfg.maxRows))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errUsage, err)
	}
	return &node{config: cfg, svc: svc, log: log}, nil
}

// loadModel loads the model file for the first time.
func (n *node) loadModel() error {
	info, err := n.svc.Reload(n.modelPath)
	if err != nil {
		return err
	}
	n.log.Info("model loaded", "path", n.modelPath, "hidden", info.Hidden)
	return nil
}

// httpServer is the HTTP server of the service, with timeouts, logging its errors as warnings.
func (n *node) httpServer() *http.Server {
	return &http.Server{
		Handler:           n.svc.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(n.log.Handler(), slog.LevelWarn),
	}
}

// catchSIGHUP returns the channel SIGHUP is delivered to; the caller stops it with
// signal.Stop.
func catchSIGHUP() chan os.Signal {
	// SIGHUP is caught from here on (registered before anyone can know the address), so it
	// can never fall through to its default action and end the process.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	return hup
}

// reloadInBackground reloads the model on each SIGHUP from hup and, with -poll, whenever the
// file is replaced, until ctx is done. The channel it returns is closed when the background
// goroutines are gone.
func (n *node) reloadInBackground(ctx context.Context, hup <-chan os.Signal) <-chan struct{} {
	done := make(chan struct{}) // closed when the background goroutines are gone
	go func() {
		defer close(done)
		watch := n.watch(ctx)
		for {
			select {
			case <-ctx.Done():
				<-watch
				return
			case <-hup:
				n.reloadOnSIGHUP()
			}
		}
	}()
	return done
}

// watch polls the model file for a new version until ctx is done, if -poll asks for it. The
// channel it returns is closed when it has stopped.
func (n *node) watch(ctx context.Context) <-chan struct{} {
	watch := make(chan struct{})
	go func() {
		defer close(watch)
		if n.poll > 0 {
			n.svc.Watch(ctx, n.modelPath, n.poll, n.log)
		}
	}()
	return watch
}

// reloadOnSIGHUP reloads the model file; if that fails, the previous model keeps serving.
func (n *node) reloadOnSIGHUP() {
	if info, err := n.svc.Reload(n.modelPath); err != nil {
		n.log.Error("model reload on SIGHUP failed; serving the previous model", "err", err)
	} else {
		n.log.Info("model reloaded on SIGHUP", "generation", info.Generation)
	}
}

// serve serves srv on ln until the listener fails or ctx is done, then shuts srv down
// gracefully. It sends the address it listens on to ready, if not nil.
func (n *node) serve(ctx context.Context, srv *http.Server, ln net.Listener, ready chan<- string) error {
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	n.log.Info("listening", "addr", ln.Addr().String())
	if ready != nil {
		ready <- ln.Addr().String()
	}

	var err error
	select {
	case err = <-serveErr: // the listener failed
	case <-ctx.Done():
		shutdown, stop := context.WithTimeout(context.Background(), 10*time.Second)
		err = srv.Shutdown(shutdown)
		stop()
		<-serveErr // http.ErrServerClosed
	}
	return err
}
