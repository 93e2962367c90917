package safetensors

import (
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/wattagg/wattagg/tensor"
)

// ReadMode says how the tensors of a file that Open maps are read by the CPU device (the
// mapping is made either way, and anything else that reads the tensors reads it).
type ReadMode int

const (
	// ReadAuto chooses per file (chooseRead): a file cached in small folios (a fault maps less
	// than 128 KiB of it) is copied; a file cached in large folios goes to the faster of
	// mapping and copying in a race the probe runs (raceCopy); a file of a few MiB and one
	// mostly not in the page cache are mapped. It is the default.
	ReadAuto ReadMode = iota
	// ReadMap reads the mapping in place: no copy, but every page is mapped at first touch and
	// unmapped at Close, which costs a fault per folio and page-table work per 4 KiB page.
	ReadMap
	// ReadCopy reads blocks with pread into the workers' reused, cache-sized buffers: a copy
	// through the kernel, and no page-table work at all.
	ReadCopy
	// ReadDirect reads blocks with O_DIRECT, from the disk into the workers' buffers without
	// filling the page cache with a file read once; where the file system refuses O_DIRECT
	// (tmpfs) it is ReadCopy. One synchronous request per block and worker is slower than the
	// kernel's readahead for a mapped or copied file (2x here), so ReadAuto never chooses it.
	ReadDirect
)

var readModeNames = [...]string{ReadAuto: "auto", ReadMap: "map", ReadCopy: "copy", ReadDirect: "direct"}

func (m ReadMode) String() string {
	if m >= 0 && int(m) < len(readModeNames) {
		return readModeNames[m]
	}
	return fmt.Sprintf("ReadMode(%d)", int(m))
}

// ParseReadMode parses "auto", "map", "copy" or "direct".
func ParseReadMode(s string) (ReadMode, error) {
	for m, name := range readModeNames {
		if s == name {
			return ReadMode(m), nil
		}
	}
	return 0, fmt.Errorf("%w: read mode %q: want auto, map, copy or direct", ErrOption, s)
}

// WithReadMode sets how the tensors of a mapped file are read (default ReadAuto). It applies
// to Open and OpenAll: Parse's set is read where it is in memory, and ReadHeader reads no
// tensor.
func WithReadMode(m ReadMode) Option {
	return option("WithReadMode", forOpen|forOpenAll, func(o *options) error {
		if m < ReadAuto || m > ReadDirect {
			return fmt.Errorf("%w: %v is not a read mode", ErrOption, m)
		}
		o.mode = m
		return nil
	})
}

// WithLargeFolioRead gives ReadAuto the choice for files cached in large folios, which it
// otherwise makes by a race between mapping and copying two small windows of the file
// (raceCopy): m is ReadMap or ReadCopy as measured on this machine at scale (`wattagg
// calibrate` records it in the profile), or ReadAuto for the race. Files in small folios are
// still copied, and small or uncached files mapped. It applies to Open and OpenAll.
func WithLargeFolioRead(m ReadMode) Option {
	return option("WithLargeFolioRead", forOpen|forOpenAll, func(o *options) error {
		if m != ReadAuto && m != ReadMap && m != ReadCopy {
			return fmt.Errorf("%w: large-folio read %v: want auto, map or copy", ErrOption, m)
		}
		o.large = m
		return nil
	})
}

// ReadModeOf reports how the tensors of a Set that Open returned are read: ReadMap unless the
// set's data is registered to be copied (ReadCopy) or read directly (ReadDirect). A set in
// memory (Parse) reports ReadMap: it is read where it is.
func ReadModeOf(s *tensor.Set) ReadMode {
	for _, t := range s.Tensors() {
		if fb, _, ok := tensor.FileBackingOf(t.Bytes()); ok {
			if fb.Direct != nil {
				return ReadDirect
			}
			return ReadCopy
		}
	}
	return ReadMap
}

// fileReads is what Open keeps for a file read with ReadCopy or ReadDirect: the registration
// of its mapping and the open files. Close undoes them before the mapping goes.
type fileReads struct {
	unregister func()
	files      []*os.File
	mapping    io.Closer
}

func (r *fileReads) Close() error {
	r.unregister()
	var first error
	for _, f := range r.files {
		if err := f.Close(); err != nil && first == nil {
			first = err
		}
	}
	if err := r.mapping.Close(); err != nil && first == nil {
		first = err
	}
	return first
}

// readVote shares ReadAuto's choice between the files OpenAll opens together: files of one
// federation sit in the page cache alike, so the first answer that readVoters probes give
// decides for the later files, which take it without a probe of their own. Probes that
// disagree go on until one answer has readVoters votes: a single outlier (the first probe of a
// process on the Zen 5 VM of 2026-12-02 once timed its cold preads at 208 µs against 25-40 for
// the others, and chose the mapping) no longer makes every file of the batch probe (32 probes,
// 16 ms of a 0.11 s `wattagg aggregate`). A nil vote decides nothing.
type readVote struct {
	mu     sync.Mutex
	counts map[ReadMode]int
	choice ReadMode
	done   bool
}

// readVoters is how many probes giving one answer decide for the rest.
const readVoters = 3

func newReadVote() *readVote { return &readVote{counts: map[ReadMode]int{}} }

// decided returns the agreed choice, if there is one.
func (v *readVote) decided() (ReadMode, bool) {
	if v == nil {
		return 0, false
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.choice, v.done
}

// cast records a probe's choice and returns it.
func (v *readVote) cast(m ReadMode) ReadMode {
	if v == nil {
		return m
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.counts[m]++
	if !v.done && v.counts[m] >= readVoters {
		v.choice, v.done = m, true
	}
	return m
}
