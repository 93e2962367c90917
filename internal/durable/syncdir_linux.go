package durable

import "os"

// SyncDir makes the entries of directory dir durable: a file created in it or renamed into it
// survives a crash once SyncDir returns nil.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
