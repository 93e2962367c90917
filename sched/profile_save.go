package sched

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/wattagg/wattagg/internal/durable"
)

// Save writes the profile to path, creating its directory, so that path holds the old profile
// or the new one whatever happens meanwhile (a crash, a full disk, a power cut): the bytes go
// to a temporary file in the same directory, which is synced and renamed over path, and the
// directory is synced so that the rename survives too. A file that already holds exactly these
// bytes is left alone: neither rewritten nor touched.
func (p *Profile) Save(path string) error {
	return p.save(path, osFS{})
}

func (p *Profile) save(path string, fsys replaceFS) error {
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return fmt.Errorf("%w: %v", ErrProfile, err)
	}
	if err := replaceFile(fsys, path, append(b, '\n')); err != nil {
		return fmt.Errorf("%w: saving %s: %w", ErrProfile, path, err)
	}
	return nil
}

// SaveProfile writes the profile to path (Profile.Save) when Observe has corrected it since
// the planner was made or last saved it, and says whether it wrote: rounds that taught nothing
// leave the file as it was.
func (pl *Planner) SaveProfile(path string) (bool, error) {
	pl.mu.Lock()
	if pl.changes == pl.saved {
		pl.mu.Unlock()
		return false, nil
	}
	p, gen := pl.profile.Clone(), pl.changes
	pl.mu.Unlock()
	if err := p.Save(path); err != nil {
		return false, err
	}
	pl.mu.Lock()
	pl.saved = max(pl.saved, gen)
	pl.mu.Unlock()
	return true, nil
}

// replaceFS is what replaceFile needs of the file system; tests inject failures.
type replaceFS interface {
	CreateTemp(dir, pattern string) (tempFile, error)
	Rename(oldpath, newpath string) error
	SyncDir(dir string) error
}

// tempFile is the temporary file the new contents are written to.
type tempFile interface {
	io.Writer
	Sync() error
	Close() error
	Name() string
}

type osFS struct{}

func (osFS) CreateTemp(dir, pattern string) (tempFile, error) { return os.CreateTemp(dir, pattern) }
func (osFS) Rename(oldpath, newpath string) error             { return os.Rename(oldpath, newpath) }

func (osFS) SyncDir(dir string) error { return durable.SyncDir(dir) }

// replaceFile replaces path by data durably (temporary file, fsync, rename, directory fsync),
// unless path already holds data. On failure path is as it was and the temporary file is gone.
func replaceFile(fsys replaceFS, path string, data []byte) error {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return nil
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := fsys.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = fsys.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
		return err
	}
	return fsys.SyncDir(dir)
}
