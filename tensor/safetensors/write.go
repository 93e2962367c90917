package safetensors

import (
	"encoding/binary"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"github.com/wattagg/wattagg/internal/durable"
	"github.com/wattagg/wattagg/tensor"
)

// pageSize is the alignment of the data section and of direct writes: the page size, and a
// multiple of the logical block size of the disks O_DIRECT is used on.
const pageSize = 4096

// maxDataSize bounds the data section far below int64 overflow of file offsets.
const maxDataSize = 1 << 62

// WithDirectIO says whether page-aligned writes bypass the page cache with O_DIRECT (the
// default). Direct writes cost about the same CPU as buffered ones but leave nothing for the
// final fsync to flush: on the development VMs 16 MiB took ~8 ms direct plus a ~0.3 ms fsync,
// against ~3 ms buffered plus a ~9 ms fsync. Where the filesystem refuses O_DIRECT (tmpfs on
// old kernels, some network filesystems) the writer falls back to buffered writes silently.
// It applies to Create and WriteFile.
func WithDirectIO(on bool) Option {
	return option("WithDirectIO", forWriters, func(o *options) error { o.direct = on; return nil })
}

// fileWriter is what the direct descriptor does; an interface so that tests can play a
// filesystem that refuses direct writes.
type fileWriter interface {
	io.WriterAt
	io.Closer
}

// Writer writes one .safetensors file atomically. Create makes a temporary file beside the
// destination, sized for the whole file; WriteAt fills the data section, from several
// goroutines if wanted; Commit writes the header, syncs, and renames the file over the
// destination. Abort, or a failed Commit, removes the temporary file, so a failed write
// never leaves a partial file at the destination nor touches what was there.
//
// The writer holds an exclusive flock on its temporary file for its whole life. A process
// killed mid-write leaves the file behind, unlocked; the next Create in that directory (or
// CleanStale) removes it. Sync makes the file durable without publishing it, and CommitGroup
// publishes several writers as one unit.
type Writer struct {
	path, tmp  string
	lim        Limits
	layout     tensor.Layout // header order
	order      []int         // data order: layout indices by offset
	metadata   map[string]string
	offsets    []int64 // offsets[i] is where tensor i begins in the data section
	ends       []int64 // and ends[i] where it ends
	size       int64   // bytes of the data section
	dataOffset int64

	f        *os.File    // the temporary file, flocked
	direct   fileWriter  // O_DIRECT descriptor on the same file, or nil
	directOK atomic.Bool // false once direct writes are off or refused
	written  atomic.Int64

	mu     sync.RWMutex // WriteAt holds it shared; SetScale, Sync, Commit and Abort exclusively
	scales []float32
	synced bool // header written and file synced: nothing more may be written
	done   bool
}

// Create starts writing the file at path with tensors of layout, in layout order, and
// metadata as __metadata__. The header is written at Commit, after I8 scales are known; its
// room is reserved now, padded so that DataOffset is a multiple of 4096. The temporary file,
// "." + base name + ".wattagg-tmp-" + random suffix in the same directory, is allocated to its
// final size at once, so a full disk fails here; before it is made, the stale temporary files
// of dead writers in that directory are removed (see CleanStale).
//
// The data is laid out in layout order, never reordered, so that callers can place it
// themselves (TensorOffset). Every tensor must start at a multiple of its element size: a
// layout whose order would misalign one (an F32 after an odd number of I8 bytes) is refused
// with tensor.ErrUnaligned. Ordering the layout widest element first always satisfies this
// (WriteFile does it for the data while keeping the Set's order in the header). Names, shapes
// and the header size are checked against the same Limits the reader applies, so a file
// Create accepts is a file Open accepts.
func Create(path string, layout tensor.Layout, metadata map[string]string, opts ...Option) (*Writer, error) {
	o, err := applyOptions(forCreate, path, opts)
	if err != nil {
		return nil, err
	}
	return create(path, layout, nil, metadata, o)
}

// create is Create with the data laid out in order (nil: layout order).
func create(path string, layout tensor.Layout, order []int, metadata map[string]string, o *options) (*Writer, error) {
	w := &Writer{path: path, lim: o.lim, metadata: maps.Clone(metadata), scales: make([]float32, len(layout))}
	if w.metadata == nil {
		w.metadata = map[string]string{}
	}
	if err := w.plan(layout, order); err != nil {
		return nil, err
	}
	// Best effort: a directory that cannot be listed or locked fails below if it matters.
	_, _ = cleanStale(filepath.Dir(path))
	if err := w.open(o.direct); err != nil {
		w.discard()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return w, nil
}

// plan validates the layout and metadata and computes the offsets and the header room.
func (w *Writer) plan(layout tensor.Layout, order []int) error {
	if err := w.copyLayout(layout); err != nil {
		return err
	}
	if err := w.placeData(order); err != nil {
		return err
	}
	if err := w.checkMetadata(); err != nil {
		return err
	}
	return w.reserveHeader()
}

// copyLayout copies layout into w.layout, shapes cloned and scales 1, checking each tensor.
func (w *Writer) copyLayout(layout tensor.Layout) error {
	w.layout = make(tensor.Layout, len(layout))
	seen := make(map[string]bool, len(layout))
	for i, f := range layout {
		f.Shape = slices.Clone(f.Shape)
		w.layout[i] = f
		w.scales[i] = 1
		if err := w.checkTensor(f, seen); err != nil {
			return err
		}
		seen[f.Name] = true
	}
	return nil
}

// checkTensor checks one tensor of the layout: its name (unseen, valid, within the limits),
// its dtype and its shape (no negative dimension, within the limits).
func (w *Writer) checkTensor(f tensor.Field, seen map[string]bool) error {
	switch {
	case seen[f.Name]:
		return w.failTensor(tensor.ErrDuplicateName, f.Name, "the layout has it twice")
	case f.Name == metadataKey || !utf8.ValidString(f.Name):
		return w.failTensor(ErrFormat, f.Name, "not a valid tensor name")
	case !f.DType.Valid():
		return w.failTensor(tensor.ErrDType, f.Name, f.DType.String())
	case slices.ContainsFunc(f.Shape, func(d int) bool { return d < 0 }):
		return w.failTensor(tensor.ErrShape, f.Name, "shape "+formatShape(f.Shape)+" has a negative dimension")
	}
	if err := w.lim.checkName(f.Name); err != nil {
		return w.failTensorErr(ErrFormat, f.Name, err)
	}
	if err := w.lim.checkRank(len(f.Shape)); err != nil {
		return w.failTensorErr(tensor.ErrShape, f.Name, err)
	}
	if _, err := checkElements(f.Shape); err != nil {
		return w.failTensorErr(tensor.ErrShape, f.Name, err)
	}
	return nil
}

// placeData lays the tensors out back to back in order (nil: layout order), refusing a
// misaligned tensor and a data section over maxDataSize.
func (w *Writer) placeData(order []int) error {
	if order == nil {
		order = identity(len(w.layout))
	}
	w.order = order
	w.offsets, w.ends = make([]int64, len(w.layout)), make([]int64, len(w.layout))
	for _, i := range order {
		f := w.layout[i]
		n, _ := numElements(f.Shape)
		es := int64(f.DType.Size())
		if w.size%es != 0 {
			return w.failTensor(tensor.ErrUnaligned, f.Name, fmt.Sprintf(
				"%s data would start at offset %d, not a multiple of its %d-byte elements: order the layout widest element first",
				f.DType.SafetensorsName(), w.size, es))
		}
		if w.size > maxDataSize-n*es {
			return w.failTensor(tensor.ErrShape, f.Name, "the data section would be larger than 2^62 bytes")
		}
		w.offsets[i], w.ends[i] = w.size, w.size+n*es
		w.size += n * es
	}
	return nil
}

// checkMetadata refuses, in key order, a metadata key with the reserved scale prefix and
// an entry that is not valid UTF-8.
func (w *Writer) checkMetadata() error {
	for _, k := range slices.Sorted(maps.Keys(w.metadata)) {
		switch {
		case strings.HasPrefix(k, ScaleKeyPrefix):
			return fmt.Errorf("%s: %w: metadata key %s uses the reserved prefix %q", w.path, ErrFormat, quote(k), ScaleKeyPrefix)
		case !utf8.ValidString(k) || !utf8.ValidString(w.metadata[k]):
			return fmt.Errorf("%s: %w: metadata %s: %s is not valid UTF-8", w.path, ErrFormat, quote(k), quote(w.metadata[k]))
		}
	}
	return nil
}

// reserveHeader sets the data offset past room for the header, padded to a page, and checks
// the header size against the limits.
func (w *Writer) reserveHeader() error {
	// Reserve the longest scale text for every I8 tensor, so any scale set later fits.
	room := 8 + int64(len(w.headerJSON(strings.Repeat("0", maxScaleLen))))
	w.dataOffset = (room + pageSize - 1) &^ (pageSize - 1)
	if err := w.lim.checkHeaderSize(uint64(w.dataOffset - 8)); err != nil {
		return fmt.Errorf("%s: %w", w.path, err)
	}
	return nil
}

// open creates the temporary file, allocates it and opens the direct descriptor.
func (w *Writer) open(direct bool) error {
	f, err := createTemp(filepath.Dir(w.path), filepath.Base(w.path))
	if err != nil {
		return err
	}
	w.f, w.tmp = f, f.Name()
	if err := allocate(f, w.dataOffset+w.DataSize()); err != nil {
		return err
	}
	if !direct {
		return nil
	}
	d, err := openDirect(w.tmp)
	if err != nil {
		return err
	}
	if d != nil {
		w.direct = d
		w.directOK.Store(true)
	}
	return nil
}

// DataOffset is the absolute file offset of the data section, a multiple of 4096.
func (w *Writer) DataOffset() int64 { return w.dataOffset }

// DataSize is the size of the data section: the bytes of all tensors.
func (w *Writer) DataSize() int64 { return w.size }

// TensorOffset is where tensor i begins within the data section. Create lays tensors out
// contiguously in layout order, so TensorOffset(i+1) is where tensor i ends and
// TensorOffset(len(layout)) is DataSize.
func (w *Writer) TensorOffset(i int) int64 {
	if i == len(w.layout) {
		return w.size
	}
	return w.offsets[i]
}

// SetScale records the scale of I8 tensor i, written to the header at Commit (default 1). It
// must be finite and positive, as the reader requires.
func (w *Writer) SetScale(i int, scale float32) error {
	if i < 0 || i >= len(w.layout) {
		return fmt.Errorf("%s: %w: no tensor %d in a layout of %d", w.path, tensor.ErrNotFound, i, len(w.layout))
	}
	name := w.layout[i].Name
	if dt := w.layout[i].DType; dt != tensor.I8 {
		return w.failTensor(tensor.ErrDType, name, "a scale for a "+dt.String()+" tensor")
	}
	if !validScale(float64(scale)) {
		return w.failTensor(ErrFormat, name, fmt.Sprintf("I8 scale %v is not finite and positive", scale))
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.writable(); err != nil {
		return err
	}
	w.scales[i] = scale
	return nil
}

// writable refuses changes once the writer is synced, committed or aborted.
func (w *Writer) writable() error {
	switch {
	case w.done:
		return w.closed()
	case w.synced:
		return fmt.Errorf("%s: %w: the writer was synced", w.path, os.ErrClosed)
	}
	return nil
}

// data section; the rest goes through the page cache.
func (w *Writer) WriteAt(p []byte, off int64) (int, error) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if err := w.writable(); err != nil {
		return 0, err
	}
	if size := w.DataSize(); off < 0 || off > size || int64(len(p)) > size-off {
		return 0, fmt.Errorf("%s: %w: write of %d bytes at %d is outside the %d-byte data section",
			w.path, ErrOffset, len(p), off, size)
	}
	n, err := w.writeAt(p, w.dataOffset+off)
	w.written.Add(int64(n))
	if err != nil {
		return n, fmt.Errorf("%s: %w", w.path, err)
	}
	return n, nil
}

// writeAt writes p at absolute file offset abs, its whole pages direct when it can.
//
// A page is only ever written through one of the two descriptors. O_DIRECT bypasses the page
// cache, and the kernel does not keep a cached page coherent with a direct write to the same
// page that races with it (open(2): avoid mixing O_DIRECT and normal I/O to overlapping
// regions): either write could be lost at writeback. Direct writes only cover whole pages
// inside the caller's range, and callers' ranges are disjoint, so no page is shared.
func (w *Writer) writeAt(p []byte, abs int64) (int, error) {
	n := 0
	if d := w.directLen(p, abs); d > 0 {
		var err error
		n, err = w.direct.WriteAt(p[:d], abs)
		switch {
		case err != nil && !directUnsupported(err):
			return n, err
		case err != nil:
			w.directOK.Store(false) // this filesystem refuses direct writes: buffered from now on
		}
	}
	if n == len(p) {
		return n, nil
	}
	m, err := w.f.WriteAt(p[n:], abs+int64(n))
	return n + m, err
}

// directLen is how many leading bytes of p, to be written at abs, may go direct.
func (w *Writer) directLen(p []byte, abs int64) int {
	if !w.directOK.Load() || abs%pageSize != 0 || !tensor.IsAligned(p, pageSize) {
		return 0
	}
	if len(p)%pageSize == 0 || abs+int64(len(p)) == w.dataOffset+w.DataSize() {
		return len(p) &^ (pageSize - 1)
	}
	return 0
}

// Commit checks that the whole data section was written, writes the header, syncs the file,
// renames it over the destination and syncs the directory. On failure before the rename the
// Sync makes the file durable without publishing it: it checks that the whole data section
// was written, writes the header and fsyncs the temporary file, which stays locked and
// unpublished until Commit, CommitGroup or Abort. Nothing can be written after it. On
// failure the temporary file is removed, as by Abort.
func (w *Writer) Sync() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.writable(); err != nil {
		return err
	}
	if err := w.sync(); err != nil {
		w.done = true
		w.discard()
		return err
	}
	return nil
}

// Commit checks that the whole data section was written, writes the header, syncs the file,
// renames it over the destination and syncs the directory. On failure before the rename the
// temporary file is removed and the destination is untouched.
func (w *Writer) Commit() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return w.closed()
	}
	w.done = true
	if !w.synced {
		if err := w.sync(); err != nil {
			w.discard()
			return err
		}
	}
	if err := os.Rename(w.tmp, w.path); err != nil {
		w.discard()
		return fmt.Errorf("%s: %w", w.path, err)
	}
	w.tmp = "" // renamed: nothing is left to remove
	w.release()
	if err := durable.SyncDir(filepath.Dir(w.path)); err != nil {
		return fmt.Errorf("%s: written, but the directory sync failed: %w", w.path, err)
	}
	return nil
}

// sync is Sync with w.mu held.
func (w *Writer) sync() error {
	// The count cannot tell a gap from a range written twice; either way it is off.
	if n, size := w.written.Load(), w.DataSize(); n < size {
		return fmt.Errorf("%s: %w: %d of %d bytes written", w.path, ErrIncomplete, n, size)
	} else if n > size {
		return fmt.Errorf("%s: %w: %d bytes written into %d: ranges overlap, so some may be missing",
			w.path, ErrIncomplete, n, size)
	}
	head, err := w.head()
	if err != nil {
		return err
	}
	if _, err := w.f.WriteAt(head, 0); err != nil {
		return fmt.Errorf("%s: %w", w.path, err)
	}
	if err := w.closeDirect(); err != nil {
		return fmt.Errorf("%s: %w", w.path, err)
	}
	// One fsync covers both descriptors: it flushes the inode, whichever descriptor wrote.
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("%s: %w", w.path, err)
	}
	w.synced = true
	return nil
}

// head is the file up to the data section: length prefix, header JSON, space padding.
func (w *Writer) head() ([]byte, error) {
	js := w.headerJSON("")
	if int64(len(js)) > w.dataOffset-8 {
		// Create reserved the longest scale text; this guards that promise.
		return nil, fmt.Errorf("%s: header of %d bytes outgrew the %d reserved", w.path, len(js), w.dataOffset-8)
	}
	b := make([]byte, w.dataOffset)
	binary.LittleEndian.PutUint64(b, uint64(w.dataOffset-8))
	n := copy(b[8:], js)
	for i := 8 + n; i < len(b); i++ {
		b[i] = ' '
	}
	return b, nil
}

// headerJSON encodes the header with the I8 scales in the metadata; a non-empty placeholder
// stands for every scale (to size the room for the header).
func (w *Writer) headerJSON(placeholder string) []byte {
	meta := maps.Clone(w.metadata)
	for i, f := range w.layout {
		if f.DType != tensor.I8 {
			continue
		}
		v := placeholder
		if v == "" {
			v = formatScale(w.scales[i])
		}
		meta[ScaleKeyPrefix+f.Name] = v
	}
	return encodeHeader(w.layout, w.offsets, w.ends, meta)
}

// Abort discards the file: the temporary file is removed and the destination is untouched.
// It is a no-op after Commit, so `defer w.Abort()` is the way to clean up on every error path.
func (w *Writer) Abort() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return nil
	}
	w.done = true
	return w.discard()
}

// discard removes the temporary file and closes the descriptors. The file is removed while
// its lock is still held, so that no CleanStale can take it for stale in between.
func (w *Writer) discard() error {
	var err error
	if w.tmp != "" {
		err = os.Remove(w.tmp)
		w.tmp = ""
	}
	w.release()
	if err != nil {
		return fmt.Errorf("%s: %w", w.path, err)
	}
	return nil
}

// release closes the descriptors, which drops the lock.
func (w *Writer) release() {
	w.closeDirect()
	if w.f != nil {
		w.f.Close()
		w.f = nil
	}
}

func (w *Writer) closeDirect() error {
	if w.direct == nil {
		return nil
	}
	err := w.direct.Close()
	w.direct = nil
	w.directOK.Store(false)
	return err
}

func (w *Writer) closed() error {
	return fmt.Errorf("%s: %w: the writer was committed or aborted", w.path, os.ErrClosed)
}

func (w *Writer) failTensor(sentinel error, name, msg string) error {
	return fmt.Errorf("%s: %w: %s (tensor %s)", w.path, sentinel, msg, quote(name))
}

// failTensorErr is failTensor for an error that wraps its own sentinels (a limit).
func (w *Writer) failTensorErr(sentinel error, name string, err error) error {
	return fmt.Errorf("%s: %w: %w (tensor %s)", w.path, sentinel, err, quote(name))
}

// stageSize is the chunk in which WriteFile copies tensors into page-aligned memory for
// direct writes: large enough to amortise a syscall, small enough to stay in L2/L3.
const stageSize = 1 << 20

// WriteFile writes s to path atomically: Set.Metadata, I8 scales, and the tensors listed in
// the header in Set order, which is the order Open returns them in. The data section is laid
// out widest element first (stably, as the reference writer does), so that every tensor starts
// at a multiple of its element size whatever the mix of dtypes; the safetensors format allows
// no holes that could align them otherwise. A Set read from path itself may be written back:
// the old file stays mapped until the Set is closed.
func WriteFile(path string, s *tensor.Set, opts ...Option) error {
	o, err := applyOptions(forWriteFile, path, opts)
	if err != nil {
		return err
	}
	layout := s.Layout()
	w, err := create(path, layout, widestFirst(layout), s.Metadata, o)
	if err != nil {
		return err
	}
	defer w.Abort()
	for i, t := range s.Tensors() {
		if n, want := int64(len(t.Bytes())), w.ends[i]-w.offsets[i]; n != want {
			return w.failTensor(tensor.ErrShape, t.Name, fmt.Sprintf("%d bytes of data, shape %s of %s needs %d (is the set closed?)",
				n, formatShape(t.Shape), t.DType, want))
		}
		if t.DType == tensor.I8 {
			if err := w.SetScale(i, t.Scale); err != nil {
				return err
			}
		}
	}
	if err := w.writeTensors(s.Tensors()); err != nil {
		return err
	}
	return w.Commit()
}

// widestFirst is the indices of layout ordered by element size, widest first, stably.
func widestFirst(layout tensor.Layout) []int {
	order := identity(len(layout))
	slices.SortStableFunc(order, func(a, b int) int { return layout[b].DType.Size() - layout[a].DType.Size() })
	return order
}

// identity is the indices 0 to n-1 in order.
func identity(n int) []int {
	order := make([]int, n)
	for i := range order {
		order[i] = i
	}
	return order
}

// writeTensors writes ts (in layout order) back to back from offset 0, in data order. A tensor that can go direct as it is
// (page-aligned memory at a page-aligned offset) does, without a copy. The others are staged
// through a page-aligned buffer when a direct descriptor is open, since O_DIRECT needs
// page-aligned memory and tensor buffers are only 64-byte aligned, and go straight to the page
// cache otherwise, saving the copy.
func (w *Writer) writeTensors(ts []*tensor.Tensor) error {
	s := stage{w: w}
	if w.directOK.Load() {
		s.buf = tensor.PageAligned(int(min(stageSize, (w.DataSize()+pageSize-1)&^(pageSize-1))))
	}
	for _, i := range w.order {
		if err := s.write(ts[i].Bytes(), w.offsets[i]); err != nil {
			return err
		}
	}
	return s.flush()
}

// stage gathers consecutive writes into one page-aligned buffer. Its offset stays page
// aligned: it only moves by whole buffers, or past a tensor that went direct, which either
// covers whole pages or ends the data section.
type stage struct {
	w   *Writer
	buf []byte // nil: no staging
	off int64  // data section offset of buf[0]
	n   int    // bytes staged
}

// write writes b, which goes at offset off, right after what was written or staged before.
func (s *stage) write(b []byte, off int64) error {
	if s.buf == nil || s.w.directLen(b, s.w.dataOffset+off) > 0 {
		if err := s.flush(); err != nil {
			return err
		}
		_, err := s.w.WriteAt(b, off)
		s.off = off + int64(len(b))
		return err
	}
	for len(b) > 0 {
		c := copy(s.buf[s.n:], b)
		s.n += c
		b = b[c:]
		if s.n == len(s.buf) {
			if err := s.flush(); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s *stage) flush() error {
	if s.n == 0 {
		return nil
	}
	_, err := s.w.WriteAt(s.buf[:s.n], s.off)
	s.off += int64(s.n)
	s.n = 0
	return err
}
