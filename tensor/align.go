package tensor

import "unsafe"

// Alignment is the byte alignment of every buffer this package allocates: one cache line, and
// a multiple of every vector width the kernels use.
const Alignment = 64

// AlignedBytes returns n zeroed bytes whose first byte is Alignment-aligned.
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
	s := make([]T, n+Alignment/size)
	off := 0
	if mis := int(uintptr(unsafe.Pointer(unsafe.SliceData(s))) % Alignment); mis != 0 {
		off = (Alignment - mis) / size
	}
	return s[off : off+n : off+n]
}

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
	off := -int(uintptr(unsafe.Pointer(unsafe.SliceData(b)))) & (PageSize - 1)
	b = b[off : off+n : off+n]
	if n >= prefaultFrom {
		firstTouch(b) // see PoolAllocator.fresh
	}
	return b
}

// prefaultFrom is the size from which PageAligned maps a buffer's pages in one call: these
// buffers (read and write staging) are written whole at once.
const prefaultFrom = 64 << 10

// IsAligned reports whether b starts at a multiple of align bytes (align a power of two).
func IsAligned(b []byte, align int) bool {
	return uintptr(unsafe.Pointer(unsafe.SliceData(b)))&uintptr(align-1) == 0
}
