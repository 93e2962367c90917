package tensor

import (
	"os"
	"slices"
	"sync"
	"sync/atomic"
)

// FileBacking says that a range of memory is a read-only mapping of a file that is better read
// with pread than walked through the mapping. A reader that knows this (the CPU device) copies
// the bytes it needs into its own reused buffers; everything else reads the mapping, which
// holds the same bytes. Mapped page-cache memory is slow to walk where the file's cached pages
// sit in small folios (every 4 KiB page mapped, then unmapped, one by one), while a copy through
// the kernel is not: tensor/safetensors decides per file which way it is read and registers the
// mappings to be copied from.
type FileBacking struct {
	Name   string   // the file, for errors
	File   *os.File // open for reading
	Direct *os.File // the same file opened with O_DIRECT (bypassing the page cache), or nil
	Offset int64    // the file offset of the mapping's first byte
	Size   int64    // the file's size when it was mapped
}

type backingRange struct {
	lo, hi uintptr // [lo, hi) of the mapping
	b      FileBacking
}

var backings struct {
	n      atomic.Int64 // registered ranges: lookups are free while there are none
	mu     sync.RWMutex
	ranges []backingRange // sorted by lo, disjoint
}

// RegisterFileBacking records that mem maps b.File from b.Offset. The returned function removes
// the record; call it before unmapping mem (the addresses may then be reused by another
// mapping).
func RegisterFileBacking(mem []byte, b FileBacking) (unregister func()) {
	if len(mem) == 0 {
		return func() {}
	}
	r := backingRange{lo: addr(mem), hi: addr(mem) + uintptr(len(mem)), b: b}
	backings.mu.Lock()
	i, _ := slices.BinarySearchFunc(backings.ranges, r.lo, func(x backingRange, lo uintptr) int {
		switch {
		case x.lo < lo:
			return -1
		case x.lo > lo:
			return 1
		}
		return 0
	})
	backings.ranges = slices.Insert(backings.ranges, i, r)
	backings.n.Add(1)
	backings.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			backings.mu.Lock()
			defer backings.mu.Unlock()
			for k, x := range backings.ranges {
				if x.lo == r.lo && x.hi == r.hi {
					backings.ranges = slices.Delete(backings.ranges, k, k+1)
					backings.n.Add(-1)
					return
				}
			}
		})
	}
}

// FileBackingOf returns the backing of the registered mapping that holds all of b, and the
// file offset of b's first byte; ok is false when b is not (wholly) in such a mapping.
func FileBackingOf(b []byte) (fb FileBacking, off int64, ok bool) {
	if len(b) == 0 || backings.n.Load() == 0 {
		return FileBacking{}, 0, false
	}
	lo, hi := addr(b), addr(b)+uintptr(len(b))
	backings.mu.RLock()
	defer backings.mu.RUnlock()
	i, found := slices.BinarySearchFunc(backings.ranges, lo, func(x backingRange, a uintptr) int {
		switch {
		case x.hi <= a:
			return -1
		case x.lo > a:
			return 1
		}
		return 0
	})
	if !found || hi > backings.ranges[i].hi {
		return FileBacking{}, 0, false
	}
	r := backings.ranges[i]
	return r.b, r.b.Offset + int64(lo-r.lo), true
}
