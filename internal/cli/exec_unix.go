//go:build unix

package cli

import (
	"fmt"
	"os"
	"syscall"
)

// execve replaces the process (exec(3)): the sibling keeps our pid, so a supervisor's SIGTERM
// reaches the server itself.
func execve(path string, argv []string) error {
	if err := syscall.Exec(path, argv, os.Environ()); err != nil {
		return fmt.Errorf("run %s: %w", path, err)
	}
	return nil
}
