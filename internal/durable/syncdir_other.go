//go:build !linux

package durable

import "os"

// SyncDir is best effort: Windows cannot open a directory to sync it, and wattagg only
// promises durability on Linux.
func SyncDir(dir string) error {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
