package server

import (
	"encoding/json"
	"os"
	"path/filepath"

	"github.com/wattagg/wattagg/internal/durable"
)

// writeFileAtomic replaces path with b durably: a temporary file beside it, fsync, rename,
// fsync of the directory. Readers and a restart after a crash see the old file or the new one.
func writeFileAtomic(path string, b []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return durable.SyncDir(dir)
}

// writeJSONAtomic writes v as indented JSON with writeFileAtomic.
func writeJSONAtomic(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(path, append(b, '\n'))
}

// readJSON decodes the JSON file at path into v.
func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// exists reports whether path exists (errors other than not-exist count as existing, so that a
// file that cannot be examined is never taken for absent).
func exists(path string) bool {
	_, err := os.Lstat(path)
	return !os.IsNotExist(err)
}
