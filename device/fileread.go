package device

import (
	"errors"
	"fmt"
	"sync"
	"unsafe"

	"github.com/wattagg/wattagg/internal/sysinfo"
	"github.com/wattagg/wattagg/tensor"
)

// Reading inputs that are mapped files without walking the mappings. tensor/safetensors
// registers the mappings of files that are better copied than mapped (tensor.FileBacking:
// cached in small folios, or not cached at all); the CPU device looks each input span up once
// per job, and its workers pread the blocks they need into reused, cache-sized buffers
// instead of touching the mapping. The bytes are the same (both views read the page cache, or
// the disk for O_DIRECT), so the results are the same bits; the mapping is never faulted in,
// so it costs nothing to make and nothing to unmap.

// fileSpan is where an input span's bytes are in its file.
type fileSpan struct {
	name   string
	fd     int   // buffered reads
	direct int   // O_DIRECT reads, or -1
	off    int64 // file offset of the span's first byte
	size   int64 // the file's size when it was mapped
}

// fileInputs are a job's inputs that are read from their files, by input and field (nil
// entries are read in place). A nil *fileInputs reads everything in place.
type fileInputs struct {
	spans [][]*fileSpan
}

// lookupFiles finds which of inputs' spans are registered file mappings to be copied from.
func lookupFiles(inputs [][]Span) *fileInputs {
	var fi *fileInputs
	for i, in := range inputs {
		for t, sp := range in {
			fb, off, ok := tensor.FileBackingOf(sp.Data)
			if !ok {
				continue
			}
			if fi == nil {
				fi = &fileInputs{spans: make([][]*fileSpan, len(inputs))}
			}
			if fi.spans[i] == nil {
				fi.spans[i] = make([]*fileSpan, len(in))
			}
			fs := &fileSpan{name: fb.Name, fd: int(fb.File.Fd()), direct: -1, off: off, size: fb.Size}
			if fb.Direct != nil {
				fs.direct = int(fb.Direct.Fd())
			}
			fi.spans[i][t] = fs
		}
	}
	return fi
}

// of returns input i's field t, or nil when it is read in place.
func (fi *fileInputs) of(i, t int) *fileSpan {
	if fi == nil || fi.spans[i] == nil {
		return nil
	}
	return fi.spans[i][t]
}

// directAlign is the alignment O_DIRECT asks of offsets, lengths and buffers (the logical
// block size is 512 or 4096 bytes; 4096 suits both).
const directAlign = 4096

// blockReader is a worker's reused read buffers: one per slot, each holding a window of one
// input's bytes, so that the small blocks of an order statistic come from one read.
type blockReader struct {
	raw  [][]byte // as allocated (directAlign-aligned)
	held []heldWindow
}

type heldWindow struct {
	fs     *fileSpan
	lo, hi int // bytes of the span held, [lo, hi)
	start  int // where byte lo is in the buffer
}

// bytes returns bytes [lo, hi) of span sp (its file fs, nil to read it in place) for slot:
// sp.Data[lo:hi], or a copy read into the slot's buffer, reading up to window bytes ahead. A
// file that ends before the bytes asked for (truncated since it was mapped) is a *FaultError
// at the first missing byte, as a truncated mapping is.
func (r *blockReader) bytes(slot int, fs *fileSpan, sp Span, lo, hi, window int) ([]byte, error) {
	if fs == nil {
		return sp.Data[lo:hi], nil
	}
	for len(r.held) <= slot {
		r.raw = append(r.raw, nil)
		r.held = append(r.held, heldWindow{})
	}
	h := &r.held[slot]
	if h.fs == fs && lo >= h.lo && hi <= h.hi {
		return r.raw[slot][h.start+lo-h.lo : h.start+hi-h.lo : h.start+hi-h.lo], nil
	}
	end := min(len(sp.Data), lo+max(window, hi-lo))
	fileLo, fileHi := fs.off+int64(lo), fs.off+int64(end)
	fd, start := fs.fd, 0
	if fs.direct >= 0 {
		fd = fs.direct
		start = int(fileLo % directAlign)
		fileLo -= int64(start)
		fileHi = min((fileHi+directAlign-1)/directAlign*directAlign, (fs.size+directAlign-1)/directAlign*directAlign)
	}
	need := int(fileHi - fileLo)
	if cap(r.raw[slot]) < need {
		r.raw[slot] = tensor.PageAligned(max(need, window+2*directAlign))
	}
	buf := r.raw[slot][:need]
	*h = heldWindow{} // invalid until the read succeeds
	n, err := preadFull(fd, buf, fileLo)
	if n < start+hi-lo { // the bytes asked for did not all come
		if err == nil || errors.Is(err, errShortRead) {
			missing := max(lo, lo+n-start)
			return nil, &FaultError{Addr: uintptr(unsafe.Pointer(unsafe.SliceData(sp.Data))) + uintptr(missing)}
		}
		return nil, fmt.Errorf("%s: %w", fs.name, err)
	}
	got := min(end, lo+n-start) // a short read at the end of a direct read is the file's end
	*h = heldWindow{fs: fs, lo: lo, hi: got, start: start}
	return buf[start : start+hi-lo : start+hi-lo], nil
}

// release forgets the windows (the next job's spans may reuse the addresses).
func (r *blockReader) release() {
	clear(r.held)
}

// errShortRead is a read that found the end of the file before the bytes it wanted.
var errShortRead = errors.New("short read")

// readGroupOnce is how many inputs' blocks the weighted sum reads before a kernel call: as
// many as fit in half the L2 cache beside the accumulator block, so the kernel reads what the
// preads just wrote from L2 (4 blocks of 128 KiB with a 1 MiB L2), at least 1, at most 8 (the
// kernels' widest pass).
var readL2 = sync.OnceValue(func() int {
	if l2 := sysinfo.Read().CacheSize(2); l2 > 0 {
		return int(l2)
	}
	return 1 << 20
})

// readGroup is the inputs read per kernel call for blocks of blockBytes per input.
func readGroup(blockBytes int) int {
	return max(1, min(8, readL2()/2/max(1, blockBytes)))
}
