package safetensors

import (
	"encoding/binary"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"

	"github.com/wattagg/wattagg/tensor"
)

// WithPopulate says whether Open pre-faults the whole mapping (MAP_POPULATE), so that the file
// is read in, if it is not cached, and mapped during Open. The default is off: each page is
// mapped at first touch, by whichever goroutine reads it, so the mapping work is spread over
// the cores that aggregate instead of done by Open alone. For a 64 MiB file in the page cache
// on the development VMs, Open took ~3.2 ms with populate, against ~0.1 ms without plus
// ~1.5-2.8 ms of faults to touch every page (each fault maps the neighbouring cached pages too,
// by default 64 KiB); mapping 32 updates of 16 MiB and aggregating them took 44-46 ms without
// populate against 59 ms with it. Turn it on when the file may not be cached and the reads
// that follow must not stall on the disk. It applies to Open and OpenAll, the functions that
// map a file.
func WithPopulate(on bool) Option {
	return option("WithPopulate", forOpen|forOpenAll, func(o *options) error { o.populate = on; return nil })
}

// WithSource names the data for errors and Set.Source (Open and ReadHeader use the path
// unless this is given; Parse and ReadHeaderAt use "safetensors"). It applies to Open, Parse,
// ReadHeader and ReadHeaderAt; not to OpenAll, whose sets and errors are each named by their
// own path, so that an error says which file it is about.
func WithSource(name string) Option {
	return option("WithSource", forOpen|forParse|forReadHeader|forReadHeaderAt, func(o *options) error {
		o.source = name
		return nil
	})
}

// withLayoutCache makes headers of the same layout share their tensor entries (OpenAll sets
// its cache itself; the fuzz test gives one to Parse).
func withLayoutCache(c *layoutCache) Option {
	return option("withLayoutCache", forOpen|forParse, func(o *options) error { o.cache = c; return nil })
}

// Open maps the file at path read-only and parses it. The tensors of the returned Set view
// the mapping (no copy) and are read-only: writing to them faults. They stay valid until
// Set.Close, which unmaps the file; Set.Source is path. WithReadMode says how the CPU device
// reads them: in place, or copied from the file (the default, ReadAuto, chooses per file from
// what is in the page cache; ReadModeOf tells the choice).
//
// The header is read and validated before anything is mapped, so a malformed file is
// rejected without being paged in. A file truncated by someone else while it is mapped
// makes the next read of a lost page fault (SIGBUS); files written by this package are
// replaced by rename, never rewritten in place, so they are safe to map while a new
// version is written.
func Open(path string, opts ...Option) (*tensor.Set, error) {
	o, err := applyOptions(forOpen, path, opts)
	if err != nil {
		return nil, err
	}
	return open(path, o)
}

// open is Open with its options applied.
func open(path string, o *options) (*tensor.Set, error) {
	f, size, err := openRegular(path)
	if err != nil {
		return nil, err
	}
	keepFile := false
	defer func() {
		if !keepFile {
			f.Close() // the mapping outlives the descriptor
		}
	}()
	var h *Header
	if o.populate || size < 8 {
		// Validated before MAP_POPULATE reads the whole file in (and a file of under 8 bytes
		// cannot be mapped).
		if h, err = readHeader(f, size, o); err != nil {
			return nil, err
		}
	}
	b, closer, err := mapFile(f, size, o.populate)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", o.source, err)
	}
	if h == nil {
		// Parsed where it is mapped, so the header is not copied: that is one header's bytes
		// per file less, which counts for headers of many tensors. Mapping costs nothing
		// until pages are touched, so a malformed file is still not read beyond its header.
		if h, err = parseFile(b, o); err != nil {
			closer.Close()
			return nil, err
		}
	}
	s, err := newSet(h, b, o.source)
	if err != nil {
		closer.Close()
		return nil, err
	}
	// How the CPU device will read the tensors (ReadMode): the mapping in place, or copies
	// from the file, which then stays open until Close.
	closer, _, keepFile = planReads(f, b, h.DataOffset, o.mode, o.large, o.vote, closer)
	s.SetCloser(closer)
	return s, nil
}

// Parse parses a whole file held in memory. The tensors of the returned Set view b (no copy).
func Parse(b []byte, opts ...Option) (*tensor.Set, error) {
	o, err := applyOptions(forParse, "safetensors", opts)
	if err != nil {
		return nil, err
	}
	h, err := parseFile(b, o)
	if err != nil {
		return nil, err
	}
	return newSet(h, b, o.source)
}

// parseFile parses the header of a whole file held in memory. The Header copies what it
// keeps, so it outlives b.
func parseFile(b []byte, o *options) (*Header, error) {
	n, err := headerLength(b, int64(len(b)), o)
	if err != nil {
		return nil, err
	}
	h, err := parseHeader(o.source, b[8:8+n], int64(len(b))-8-n, o.lim, o.cache)
	if err != nil {
		return nil, err
	}
	h.DataOffset = 8 + n
	return h, nil
}

// ReadHeader reads and validates the header of the file at path; no data is read or mapped.
func ReadHeader(path string, opts ...Option) (*Header, error) {
	o, err := applyOptions(forReadHeader, path, opts)
	if err != nil {
		return nil, err
	}
	f, size, err := openRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readHeader(f, size, o)
}

// ReadHeaderAt reads and validates the header of a safetensors file of size bytes through r:
// only the length prefix and the header JSON are read. A server that receives a file over the
// network, its length known in advance, checks the header this way before any tensor byte
// arrives (r holds the prefix received so far). Errors name WithSource, default "safetensors".
func ReadHeaderAt(r io.ReaderAt, size int64, opts ...Option) (*Header, error) {
	o, err := applyOptions(forReadHeaderAt, "safetensors", opts)
	if err != nil {
		return nil, err
	}
	return readHeader(r, size, o)
}

// openRegular opens path and returns its size; only regular files can be mapped. The open
// does not block (O_NONBLOCK: opening a FIFO for reading would wait for a writer, forever,
// and the blocked thread would not even see SIGTERM), and the check is an fstat of the
// descriptor, so the file checked is the file opened.
func openRegular(path string) (*os.File, int64, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|openNoBlock, 0)
	if err != nil {
		if fi, serr := os.Stat(path); serr == nil && !fi.Mode().IsRegular() {
			// A socket cannot be opened at all (ENXIO): say what it is all the same.
			return nil, 0, notRegular(path, fi.Mode())
		}
		return nil, 0, err
	}
	fi, err := f.Stat()
	switch {
	case err != nil:
	case !fi.Mode().IsRegular():
		err = notRegular(path, fi.Mode())
	case fi.Size() > math.MaxInt:
		err = fmt.Errorf("%s: %d bytes do not fit in memory", path, fi.Size())
	}
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, fi.Size(), nil
}

// notRegular is the ErrNotRegular error for path, saying what it is.
func notRegular(path string, m fs.FileMode) error {
	what := "special file"
	switch {
	case m&fs.ModeNamedPipe != 0:
		what = "named pipe"
	case m.IsDir():
		what = "directory"
	case m&fs.ModeCharDevice != 0:
		what = "character device"
	case m&fs.ModeDevice != 0:
		what = "device"
	case m&fs.ModeSocket != 0:
		what = "socket"
	}
	return fmt.Errorf("%s: %w: it is a %s", path, ErrNotRegular, what)
}

// readHeader reads the length prefix and the header of a file of size bytes.
func readHeader(f io.ReaderAt, size int64, o *options) (*Header, error) {
	var prefix [8]byte
	if size >= 8 {
		if _, err := f.ReadAt(prefix[:], 0); err != nil {
			return nil, fmt.Errorf("%s: %w", o.source, err)
		}
	}
	n, err := headerLength(prefix[:], size, o)
	if err != nil {
		return nil, err
	}
	js := make([]byte, n)
	if _, err := f.ReadAt(js, 8); err != nil {
		return nil, fmt.Errorf("%s: %w", o.source, err)
	}
	h, err := parseHeader(o.source, js, size-8-n, o.lim, o.cache)
	if err != nil {
		return nil, err
	}
	h.DataOffset = 8 + n
	return h, nil
}

// headerLength decodes and bounds the length prefix of a file of size bytes; prefix holds at
// least its first 8 bytes when size >= 8.
func headerLength(prefix []byte, size int64, o *options) (int64, error) {
	if size < 8 {
		return 0, fmt.Errorf("%s: %w: truncated: %d bytes, less than the 8-byte length prefix", o.source, ErrHeaderSize, size)
	}
	n := binary.LittleEndian.Uint64(prefix)
	if err := o.lim.checkHeaderSize(n); err != nil {
		return 0, fmt.Errorf("%s: %w", o.source, err)
	}
	switch {
	case n > uint64(size-8):
		return 0, fmt.Errorf("%s: %w: truncated: header length %d but only %d bytes follow the length prefix",
			o.source, ErrHeaderSize, n, size-8)
	}
	return int64(n), nil
}

// newSet makes the Set of h whose tensors view file, the whole file's bytes.
func newSet(h *Header, file []byte, source string) (*tensor.Set, error) {
	ts := make([]*tensor.Tensor, len(h.Fields))
	for i, f := range h.Fields {
		lo, hi := h.DataOffset+h.Begin[i], h.DataOffset+h.End[i]
		// The capacity is cut so that an append to one tensor's bytes cannot write into the next.
		t, err := tensor.FromBytes(f.Name, f.DType, f.Shape, file[lo:hi:hi])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", source, err) // parseHeader checked this; kept as a guard
		}
		t.Scale = h.Scales[i]
		ts[i] = t
	}
	s, err := tensor.NewSet(ts...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	s.Source = source
	s.Metadata = h.Metadata
	return s, nil
}
