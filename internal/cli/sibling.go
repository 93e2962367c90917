package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
)

// ServerBinary is the sibling that runs the server commands, and ServerEnv the variable that
// names it explicitly.
const (
	ServerBinary = "wattagg-server"
	ServerEnv    = "WATTAGG_SERVER"
)

// PlotBinary is the sibling that draws bench reports' plots (bench/charts), and PlotEnv the
// variable that names it explicitly.
const (
	PlotBinary = "wattagg-plot"
	PlotEnv    = "WATTAGG_PLOT"
)

// ErrNoSibling is returned when the sibling binary cannot be found.
var ErrNoSibling = errors.New("sibling binary not found")

// Sibling finds the binary name: $env if set, else next to this executable, else on PATH.
func Sibling(name, env string) (string, error) {
	if p := os.Getenv(env); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%w: $%s=%s: %v", ErrNoSibling, env, p, err)
		}
		return p, nil
	}
	var tried []string
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		tried = append(tried, filepath.Dir(exe))
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	tried = append(tried, "$PATH")
	return "", fmt.Errorf("%w: %s is in neither %v (build it with `make build`, or go install github.com/wattagg/wattagg/cmd/%s@latest, or set $%s)",
		ErrNoSibling, name, tried, name, env)
}

// RunSibling replaces this process with the sibling binary name run with args (argv[0] is the
// sibling's path): its exit status, signals and standard streams are the command's own. It
// returns only on failure.
func RunSibling(name, env string, args []string) error {
	path, err := Sibling(name, env)
	if err != nil {
		return err
	}
	return execve(path, append([]string{path}, args...))
}

// OutputOfSibling runs the sibling binary name with args as a child, its stderr written to
// stderr, and returns what it wrote on stdout. A failure names the sibling and its exit status.
func OutputOfSibling(ctx context.Context, stderr io.Writer, name, env string, args []string) ([]byte, error) {
	path, err := Sibling(name, env)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Stderr = stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return out, nil
}
