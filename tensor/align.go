package tensor

import (
	"sync/atomic"
	"unsafe"
)

// Alignment is the byte alignment of every buffer this package allocates: one cache line, and
// a multiple of every vector width the kernels use.
const Alignment = 64

// AlignedBytes returns n zeroed bytes whose first byte is Alignment-aligned. Buffers from
// ColourFrom bytes start at a colour: see ColourFrom.
func AlignedBytes(n int) []byte { return aligned[byte](n) }

// AlignedF32 returns n zeroed float32s whose first element is Alignment-aligned.
func AlignedF32(n int) []float32 { return aligned[float32](n) }

// AlignedF64 returns n zeroed float64s whose first element is Alignment-aligned.
func AlignedF64(n int) []float64 { return aligned[float64](n) }

func aligned[T byte | float32 | float64](n int) []T {
	if n < 0 {
		panic("tensor: negative buffer length")
	}
	var zero T
	size := int(unsafe.Sizeof(zero))
	if n*size < ColourFrom {
		s := make([]T, n+Alignment/size)
		off := 0
		if mis := int(uintptr(unsafe.Pointer(unsafe.SliceData(s))) % Alignment); mis != 0 {
			off = (Alignment - mis) / size
		}
		return s[off : off+n : off+n]
	}
	s := make([]T, n+(Colours*Alignment+PageSize)/size)
	off := (toPage(unsafe.Pointer(unsafe.SliceData(s))) + nextColour()*Alignment) / size
	return s[off : off+n : off+n]
}

// ColourFrom is the size from which AlignedBytes, AlignedF32 and AlignedF64 give each buffer
// its own colour: the buffer starts Alignment·c bytes into a page, c taking the values 0 to
// Colours-1 in turn (slab colouring, Bonwick 1994). Large buffers otherwise all start on a
// page boundary, and then element j of every one of them falls in the same set of the L1
// cache (64 sets of 64 bytes span a 4 KiB page): a kernel that reads element j of 32 inputs at
// once — the median, the trimmed mean — asks one 12-way set for 32 lines, and the lines the
// hardware prefetches into it are evicted before they are read. Measured on the Zen 5 VM
// (2026-12-03, `wattagg bench robust`, 32 × 4M f32, alternating with the page-aligned tree):
// median 42.6 against 29.7 GB/s, trimmed mean 37.0 against 26.2 (read floor about 70 GB/s);
// when the memory was slower (floor 44 GB/s, 3 pairs) 32.5-34.2 against 31.1-32.6 and
// 32.3-34.1 against 28.9-30.2. A colour costs at most 4.5 KiB beside the buffer.
const ColourFrom = 64 << 10

// Colours is how many colours there are (offsets 0 to 448 bytes): 32 inputs then ask each
// L1 set for 4 lines, where Zen 4's L1 has 8 ways and Zen 5's 12. Measured the same day, in bench robust (2
// alternating rounds each): median 35.9, 35.0 GB/s with one colour; 38.9, 40.1 with 4; 40.0,
// 39.0 with 8; 39.3, 36.8 with 64. The weighted sum reads its inputs in runs of 128 KiB and
// does not care (a C loop of its access pattern, 2 threads, 32 × 4M f32: within the noise
// for 1, 4 and 64 colours; `bench mean` 0.88-0.92 of the read floor against 0.88-0.95
// page-aligned, median 0.91 both, 5 alternating pairs).
const Colours = 8

var colourNext atomic.Uint32

// nextColour is the colour of the next large buffer.
func nextColour() int { return int(colourNext.Add(1)-1) % Colours }

// PageSize is the alignment of PageAligned: a memory page, and what O_DIRECT asks of a
// buffer's address on every disk here (logical blocks of 512 or 4096 bytes).
const PageSize = 4096

// PageAligned returns n zeroed bytes whose first byte is on a page boundary: a buffer for
// O_DIRECT reads and writes.
func PageAligned(n int) []byte {
	if n < 0 {
		panic("tensor: negative buffer length")
	}
	b := make([]byte, n+PageSize)
	off := toPage(unsafe.Pointer(unsafe.SliceData(b)))
	b = b[off : off+n : off+n]
	if n >= prefaultFrom {
		firstTouch(b) // see PoolAllocator.fresh
	}
	return b
}

// prefaultFrom is the size from which PageAligned maps a buffer's pages in one call: these
// buffers (read and write staging) are written whole at once.
const prefaultFrom = 64 << 10

// toPage is how many bytes there are from p to the next page boundary (0 if p is on one).
func toPage(p unsafe.Pointer) int { return -int(uintptr(p)) & (PageSize - 1) }

// IsAligned reports whether b starts at a multiple of align bytes (align a power of two).
func IsAligned(b []byte, align int) bool {
	return uintptr(unsafe.Pointer(unsafe.SliceData(b)))&uintptr(align-1) == 0
}
