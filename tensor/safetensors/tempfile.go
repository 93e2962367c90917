package safetensors

import (
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Temporary files are named "." + base + tempMarker + a random base-36 suffix, so that
// CleanStale knows them for ours; a pin, tempName + pinSuffix, is a symbolic link to the
// group-commit journal that will rename the file (see CommitGroup).
const (
	tempMarker = ".wattagg-tmp-"
	pinSuffix  = ".pin"
	// maxTempBase is how much of the destination's base name a temporary name keeps, so that
	// it stays under NAME_MAX (255 bytes) with the marker and suffix.
	maxTempBase = 128
)

// createTemp creates and flocks a new temporary file for base in dir, mode 0666 (not
// os.CreateTemp's 0600) so that the committed file gets the permissions os.Create would have
// given it. The directory is locked shared meanwhile, so that no CleanStale, which locks it
// exclusively, can see the file between its creation and its lock and take it for stale.
func createTemp(dir, base string) (*os.File, error) {
	unlock, err := lockDir(dir, false)
	if err != nil {
		unlock = func() {} // a directory we cannot open is one CleanStale cannot list either
	}
	defer unlock()
	if len(base) > maxTempBase {
		base = base[:maxTempBase]
	}
	for range 100 {
		name := filepath.Join(dir, "."+base+tempMarker+strconv.FormatUint(rand.Uint64(), 36))
		f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o666)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		ok, err := tryLock(f)
		switch {
		case errors.Is(err, errors.ErrUnsupported): // no locks on this system
		case err != nil:
			f.Close()
			os.Remove(name)
			return nil, err
		case !ok:
			// Only a CleanStale that could not lock the directory can hold it; it removes it.
			f.Close()
			continue
		}
		return f, nil
	}
	return nil, fmt.Errorf("no unused temporary file name for %s in %s", base, dir)
}

// tempKind says whether name is one of our temporary files (1), a pin (2), or neither (0).
func tempKind(name string) int {
	i := strings.LastIndex(name, tempMarker)
	if i < 1 || name[0] != '.' {
		return 0
	}
	rest := name[i+len(tempMarker):]
	kind := 1
	if r, ok := strings.CutSuffix(rest, pinSuffix); ok {
		rest, kind = r, 2
	}
	if rest == "" || strings.IndexFunc(rest, func(c rune) bool { return !('0' <= c && c <= '9' || 'a' <= c && c <= 'z') }) >= 0 {
		return 0
	}
	return kind
}

// CleanStale removes from dir the temporary files that writers of this package left behind
// when their process died (a SIGKILL or a crash mid-write leaves a full-size, allocated file
// that nothing else would remove). A temporary file is stale when its flock can be taken:
// every live writer holds one on its file until it is committed or aborted. Files that a
// pending group-commit journal will rename are kept for RecoverGroup. It returns the paths it
// removed. Create calls it for the directory it writes in. Only Linux locks temporary files,
// so elsewhere it removes nothing.
func CleanStale(dir string) ([]string, error) {
	return cleanStale(dir)
}

func cleanStale(dir string) ([]string, error) {
	if !canLock {
		return nil, nil
	}
	unlock, err := lockDir(dir, true)
	if err != nil {
		return nil, fmt.Errorf("safetensors: cleaning %s: %w", dir, err)
	}
	defer unlock()
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("safetensors: cleaning %s: %w", dir, err)
	}
	var removed []string
	var errs []error
	for _, e := range ents {
		path := filepath.Join(dir, e.Name())
		switch tempKind(e.Name()) {
		case 1:
			gone, err := removeIfStale(path)
			removed = append(removed, gone...)
			errs = append(errs, err)
		case 2:
			// A pin outlives its file only when the file was renamed or removed: it pins nothing.
			if _, err := os.Lstat(strings.TrimSuffix(path, pinSuffix)); errors.Is(err, fs.ErrNotExist) {
				if err := os.Remove(path); err == nil {
					removed = append(removed, path)
				}
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return removed, fmt.Errorf("safetensors: cleaning %s: %w", dir, err)
	}
	return removed, nil
}

// removeIfStale removes the temporary file at path, and its pin, if no writer holds its lock
// and no pending journal names it; it returns what it removed.
func removeIfStale(path string) ([]string, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|openNoBlock|openNoFollow, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil // committed or aborted meanwhile
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return nil, err // a name like ours on something else: not ours to remove
	}
	if ok, err := tryLock(f); err != nil || !ok {
		return nil, err // a live writer
	}
	if pinned(path, fi) {
		return nil, nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	removed := []string{path}
	err = os.Remove(path + pinSuffix)
	if err == nil {
		removed = append(removed, path+pinSuffix)
	}
	if errors.Is(err, fs.ErrNotExist) {
		err = nil
	}
	return removed, err
}

// pinned reports whether a pending journal will rename the temporary file at path (fi): its
// pin names a journal that exists and lists the file. A journal that exists but cannot be
// read keeps the file, since removing it could leave a group half committed.
func pinned(path string, fi fs.FileInfo) bool {
	target, err := os.Readlink(path + pinSuffix)
	if err != nil {
		return false
	}
	j, err := readJournal(target)
	if errors.Is(err, fs.ErrNotExist) {
		return false // never committed (the writer died before), or already completed
	}
	if err != nil {
		return true
	}
	abs, _ := filepath.Abs(path)
	for _, r := range j.Renames {
		if r.sameFile(abs, fi) {
			return true
		}
	}
	return false
}
