package safetensors

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"github.com/wattagg/wattagg/internal/durable"
)

// groupHook, when set by tests, is called after each step of CommitGroup, so that a child
// process can be killed there: "synced" (steps 1-2 done), "journal synced" (the journal's
// temporary file written and synced, not renamed), "journal" (3), "renamed N" (the rename of
// writer N done), "done" (journal removed).
var groupHook func(step string)

func hook(step string) {
	if groupHook != nil {
		groupHook(step)
	}
}

// journalFormat marks a file as a group-commit journal of this package, version 1.
const journalFormat = "wattagg.group-journal.v1"

// journal is the JSON of a group-commit journal.
type journal struct {
	Format  string   `json:"format"`
	Renames []rename `json:"renames"`
}

// rename is one temp -> destination rename of a group, with absolute paths.
type rename struct {
	From string `json:"from"`
	To   string `json:"to"`
	// Dev and Ino identify the temporary file (0 where unknown), so that recovery can tell a
	// rename that was done (the destination is that inode) from a temporary file that was lost.
	Dev uint64 `json:"dev,omitempty"`
	Ino uint64 `json:"ino,omitempty"`
}

// sameFile reports whether the file at path (fi) is the temporary file r renames.
func (r rename) sameFile(path string, fi fs.FileInfo) bool {
	if dev, ino, ok := fileID(fi); ok && r.Ino != 0 {
		return dev == r.Dev && ino == r.Ino
	}
	return filepath.Clean(path) == filepath.Clean(r.From)
}

// CommitGroup publishes the files of ws as one unit, in the order given: after a crash at any
// point and a RecoverGroup, either every destination holds its new file or every one holds
// what it held before, never a mix. A server optimizer's model and its state, or a DP rule's
// privacy ledger and the model it releases, are such units. journalPath is the caller's
// choice (it lives only during the commit); the caller recovers with RecoverGroup(journalPath)
// before it reads the files, for instance when a rule opens its state. One committer uses a
// journal path at a time; CommitGroup first runs RecoverGroup on it, so that a group left
// pending by a crash is completed before the next one starts.
//
// CommitGroup does, in order:
//
//  1. Sync every writer: header written, temporary file fsynced (still locked, unpublished).
//  2. Pin every temporary file: a symbolic link beside it, named after it with ".pin", points
//     to the journal, so that CleanStale keeps the file once the journal exists even though
//     its writer's lock died with a crash. Sync every directory involved, so that the
//     temporary names and pins are durable.
//  3. Write the journal atomically (temporary file, fsync, rename, directory fsync). It lists
//     the renames temp -> destination in order, with absolute paths and each temporary
//     file's device and inode. This rename is the commit point.
//  4. Rename every temporary file over its destination, in order, each followed by a sync of
//     its directory.
//  5. Remove the journal (and sync its directory), then the pins.
//
// A crash before step 3 completes leaves no journal: the group did not happen, the
// destinations are untouched, and the temporary files are stale (RecoverGroup removes those
// beside the journal; the next Create or CleanStale in another directory removes the rest).
// A crash after it leaves the journal, and RecoverGroup completes steps 4 and 5.
//
// Bad arguments (no writer, a writer or a destination twice) are refused before anything is
// done. Before the commit point, a failure aborts every writer (temporary files removed,
// destinations untouched). After it, a failure leaves the journal for RecoverGroup, which
// finishes the renames. Either way the writers are finished: Commit and Abort on them are
// errors or no-ops afterwards.
func CommitGroup(journalPath string, ws ...*Writer) (err error) {
	g, err := newGroupCommit(journalPath, ws)
	if err != nil {
		return err
	}
	for _, w := range ws {
		w.mu.Lock()
		defer w.mu.Unlock()
	}
	defer g.finish()
	if err := g.checkOpen(); err != nil {
		return err
	}
	if err := RecoverGroup(journalPath); err != nil {
		return err
	}
	if err := g.prepare(); err != nil {
		return err
	}
	hook("synced")
	if err := g.commit(); err != nil {
		return err
	}
	hook("journal")
	if err := g.publish(); err != nil {
		return err
	}
	if err := removeJournal(g.jabs); err != nil {
		return err
	}
	hook("done")
	g.unpin()
	return nil
}

// groupCommit is the state of one CommitGroup: its writers, the journal it builds and whether
// the commit point was reached.
type groupCommit struct {
	journalPath string // as the caller gave it, for messages
	jabs        string // absolute, for the journal file and the pins
	ws          []*Writer
	j           journal
	committed   bool
}

// newGroupCommit checks the arguments of CommitGroup, before anything is done, and returns the
// state of the commit.
func newGroupCommit(journalPath string, ws []*Writer) (*groupCommit, error) {
	if len(ws) == 0 {
		return nil, fmt.Errorf("safetensors: %w: a group commit of no writers", ErrJournal)
	}
	for i, w := range ws {
		if w == nil || slices.Contains(ws[:i], w) {
			return nil, fmt.Errorf("safetensors: %w: writer %d is nil or given twice", ErrJournal, i)
		}
		if j := slices.IndexFunc(ws[:i], func(v *Writer) bool { return sameDest(v.path, w.path) }); j >= 0 {
			return nil, fmt.Errorf("safetensors: %w: writers %d and %d both write %s", ErrJournal, j, i, w.path)
		}
	}
	jabs, err := filepath.Abs(journalPath)
	if err != nil {
		return nil, fmt.Errorf("safetensors: journal %s: %w", journalPath, err)
	}
	return &groupCommit{journalPath: journalPath, jabs: jabs, ws: ws, j: journal{Format: journalFormat}}, nil
}

// finish runs when CommitGroup returns: every writer is finished, and before the commit point
// the temporary files and the pins are removed.
func (g *groupCommit) finish() {
	for _, w := range g.ws {
		if g.committed {
			w.release() // a temporary file not renamed stays, pinned, for RecoverGroup
		} else {
			w.discard()
		}
		w.done = true
	}
	if !g.committed {
		g.unpin()
	}
}

// checkOpen refuses a writer that was already committed or aborted.
func (g *groupCommit) checkOpen() error {
	for _, w := range g.ws {
		if w.done {
			return w.closed()
		}
	}
	return nil
}

// prepare does steps 1 and 2: every writer synced and pinned, its rename recorded in the
// journal, then every directory involved synced.
func (g *groupCommit) prepare() error {
	for _, w := range g.ws {
		if err := g.pin(w); err != nil {
			return err
		}
	}
	dirs := []string{}
	for _, r := range g.j.Renames {
		if d := filepath.Dir(r.From); !slices.Contains(dirs, d) {
			dirs = append(dirs, d)
		}
	}
	for _, d := range dirs {
		if err := durable.SyncDir(d); err != nil {
			return fmt.Errorf("safetensors: group commit: %w", err)
		}
	}
	return nil
}

// pin syncs w if it is not yet, records its rename in the journal and pins its temporary file.
func (g *groupCommit) pin(w *Writer) error {
	if !w.synced {
		if err := w.sync(); err != nil {
			return err
		}
	}
	r, err := w.journalEntry()
	if err != nil {
		return err
	}
	g.j.Renames = append(g.j.Renames, r)
	if err := os.Symlink(g.jabs, w.tmp+pinSuffix); err != nil {
		return fmt.Errorf("%s: pinning for the group commit: %w", w.path, err)
	}
	return nil
}

// commit does step 3: it writes the journal, which is the commit point.
func (g *groupCommit) commit() error {
	if err := writeJournal(g.jabs, &g.j); err != nil {
		return err
	}
	g.committed = true
	return nil
}

// publish does step 4: every temporary file renamed over its destination, in order, each
// followed by a sync of its directory.
func (g *groupCommit) publish() error {
	for i, w := range g.ws {
		if err := os.Rename(w.tmp, w.path); err != nil {
			return g.leftForRecovery(w, err)
		}
		w.tmp = ""
		w.release()
		if err := durable.SyncDir(filepath.Dir(w.path)); err != nil {
			return g.leftForRecovery(w, err)
		}
		hook(fmt.Sprintf("renamed %d", i))
	}
	return nil
}

// leftForRecovery is the error of w after the commit point: the journal stays for
// RecoverGroup.
func (g *groupCommit) leftForRecovery(w *Writer, err error) error {
	return fmt.Errorf("%s: %w (journal %s is left for RecoverGroup)", w.path, err, g.journalPath)
}

// unpin removes the pins of the renames the journal records.
func (g *groupCommit) unpin() {
	for _, r := range g.j.Renames {
		os.Remove(r.From + pinSuffix)
	}
}

// journalEntry is the rename of a synced writer, as the journal records it.
func (w *Writer) journalEntry() (rename, error) {
	from, err := filepath.Abs(w.tmp)
	if err != nil {
		return rename{}, err
	}
	to, err := filepath.Abs(w.path)
	if err != nil {
		return rename{}, err
	}
	r := rename{From: from, To: to}
	if fi, err := w.f.Stat(); err == nil {
		r.Dev, r.Ino, _ = fileID(fi)
	}
	return r, nil
}

func sameDest(a, b string) bool {
	x, err1 := filepath.Abs(a)
	y, err2 := filepath.Abs(b)
	return err1 == nil && err2 == nil && x == y
}

// writeJournal writes j at path atomically: temporary file, fsync, rename, directory fsync.
func writeJournal(path string, j *journal) error {
	b, err := json.Marshal(j)
	if err != nil {
		return fmt.Errorf("safetensors: journal %s: %w", path, err)
	}
	dir := filepath.Dir(path)
	f, err := createTemp(dir, filepath.Base(path))
	if err != nil {
		return fmt.Errorf("safetensors: journal %s: %w", path, err)
	}
	tmp := f.Name()
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if err == nil {
		hook("journal synced")
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	f.Close()
	if err == nil {
		err = durable.SyncDir(dir)
	}
	if err != nil {
		return fmt.Errorf("safetensors: journal %s: %w", path, err)
	}
	return nil
}

// removeJournal removes the journal and makes that durable.
func removeJournal(path string) error {
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("safetensors: journal %s: %w", path, err)
	}
	if err := durable.SyncDir(filepath.Dir(path)); err != nil {
		return fmt.Errorf("safetensors: journal %s: %w", path, err)
	}
	return nil
}

// maxJournal bounds what readJournal reads: a journal lists a handful of paths.
const maxJournal = 1 << 20

// readJournal reads and checks the journal at path; a missing one is fs.ErrNotExist.
func readJournal(path string) (*journal, error) {
	f, size, err := openRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if size > maxJournal {
		return nil, fmt.Errorf("safetensors: journal %s: %w: %d bytes", path, ErrJournal, size)
	}
	b := make([]byte, size)
	if _, err := f.ReadAt(b, 0); err != nil {
		return nil, fmt.Errorf("safetensors: journal %s: %w", path, err)
	}
	var j journal
	if err := json.Unmarshal(b, &j); err != nil || j.Format != journalFormat || len(j.Renames) == 0 {
		return nil, fmt.Errorf("safetensors: journal %s: %w: not a %s journal", path, ErrJournal, journalFormat)
	}
	for _, r := range j.Renames {
		if !filepath.IsAbs(r.From) || !filepath.IsAbs(r.To) || filepath.Dir(r.From) != filepath.Dir(r.To) {
			return nil, fmt.Errorf("safetensors: journal %s: %w: rename %s -> %s", path, ErrJournal, quote(r.From), quote(r.To))
		}
	}
	return &j, nil
}

// RecoverGroup finishes a group commit that a crash interrupted, and is a no-op when none is
// pending. If the journal exists, the group was committed: every rename whose temporary file
// still exists is done (in order, each made durable), a rename already done is skipped, then
// the journal and the pins are removed, so every destination holds its new file. If there is
// no journal, the group never reached its commit point and the destinations hold the old
// files; the stale temporary files beside the journal are removed (CleanStale), and those in
// other directories are removed by the next Create or CleanStale there.
//
// A journal whose temporary file is gone while its destination is not that file (someone
// removed it) cannot be completed: that is an ErrJournal error and the journal is kept.
func RecoverGroup(journalPath string) error {
	j, err := readJournal(journalPath)
	if errors.Is(err, fs.ErrNotExist) {
		_, err := cleanStale(filepath.Dir(journalPath))
		if errors.Is(err, fs.ErrNotExist) {
			return nil // no directory yet: nothing was ever committed there
		}
		return err
	}
	if err != nil {
		return err
	}
	for _, r := range j.Renames {
		fi, err := os.Lstat(r.From)
		switch {
		case err == nil && r.sameFile(r.From, fi):
			if err := os.Rename(r.From, r.To); err != nil {
				return fmt.Errorf("safetensors: recovering %s: %w", journalPath, err)
			}
			if err := durable.SyncDir(filepath.Dir(r.To)); err != nil {
				return fmt.Errorf("safetensors: recovering %s: %w", journalPath, err)
			}
		case err == nil:
			return fmt.Errorf("safetensors: recovering %s: %w: %s is not the file the journal names", journalPath, ErrJournal, r.From)
		case !errors.Is(err, fs.ErrNotExist):
			return fmt.Errorf("safetensors: recovering %s: %w", journalPath, err)
		default:
			// Renamed before the crash: the destination must be that very file.
			fi, err := os.Lstat(r.To)
			if err != nil || !r.sameFile(r.From, fi) {
				return fmt.Errorf("safetensors: recovering %s: %w: %s is gone and %s is not the file it held",
					journalPath, ErrJournal, r.From, r.To)
			}
		}
		os.Remove(r.From + pinSuffix)
	}
	return removeJournal(journalPath)
}
