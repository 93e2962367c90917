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
	fs := flag.NewFlagSet("digits-serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	modelPath := fs.String("model", "", "global model (.safetensors): fc1.weight, fc1.bias, fc2.weight, fc2.bias")
	addr := fs.String("addr", "127.0.0.1:8080", "listen address")
	poll := fs.Duration("poll", time.Second, "how often to check the model file for a new version (0: only on SIGHUP)")
	maxRows := fs.Int("max-rows", 4096, "most rows in one request")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if *modelPath == "" || fs.NArg() > 0 {
		fs.Usage()
		return fmt.Errorf("%w: -model is required and there are no arguments", errUsage)
	}
	if *poll < 0 {
		return fmt.Errorf("%w: -poll %v is negative", errUsage, *poll)
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))

	svc, err := serving.New(serving.WithMaxRows(*maxRows))
	if err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	defer svc.Close()
	info, err := svc.Reload(*modelPath)
	if err != nil {
		return err
	}
	log.Info("model loaded", "path", *modelPath, "hidden", info.Hidden)

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           svc.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// SIGHUP is caught from here on (registered before anyone can know the address), so it
	// can never fall through to its default action and end the process.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	done := make(chan struct{}) // closed when the background goroutines are gone
	go func() {
		defer close(done)
		watch := make(chan struct{})
		go func() {
			defer close(watch)
			if *poll > 0 {
				svc.Watch(ctx, *modelPath, *poll, log)
			}
		}()
		for {
			select {
			case <-ctx.Done():
				<-watch
				return
			case <-hup:
				if info, err := svc.Reload(*modelPath); err != nil {
					log.Error("model reload on SIGHUP failed; serving the previous model", "err", err)
				} else {
					log.Info("model reloaded on SIGHUP", "generation", info.Generation)
				}
			}
		}
	}()

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	log.Info("listening", "addr", ln.Addr().String())
	if ready != nil {
		ready <- ln.Addr().String()
	}

	select {
	case err = <-serveErr: // the listener failed
	case <-ctx.Done():
		shutdown, stop := context.WithTimeout(context.Background(), 10*time.Second)
		err = srv.Shutdown(shutdown)
		stop()
		<-serveErr // http.ErrServerClosed
	}
	cancel()
	<-done
	if err == nil {
		log.Info("stopped")
	}
	return err
}
