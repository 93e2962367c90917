package safetensors

import (
	"io"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/wattagg/wattagg/tensor"
)

// mapFile maps the first size bytes of f read-only. populate pre-faults every page now
// (MAP_POPULATE) rather than at first touch.
func mapFile(f *os.File, size int64, populate bool) ([]byte, io.Closer, error) {
	flags := unix.MAP_SHARED
	if populate {
		flags |= unix.MAP_POPULATE
	}
	b, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, flags)
	if err != nil {
		return nil, nil, &os.PathError{Op: "mmap", Path: f.Name(), Err: err}
	}
	return b, mapping(b), nil
}

// mapping is a mapped file; Close unmaps it.
type mapping []byte

func (m mapping) Close() error { return unix.Munmap(m) }

// planReads decides how mem, the mapping of all of f, is read (mode, or chooseRead's choice for
// ReadAuto, with large for files in large folios) and, for ReadCopy and ReadDirect, registers
// it with its open files (tensor.RegisterFileBacking) so that the CPU device preads it. It
// returns the Set's closer (which unregisters, closes the files and unmaps, in that order),
// what was chosen, and whether it kept f open: Open must not close it then.
func planReads(f *os.File, mem []byte, dataOff int64, mode, large ReadMode, vote *readVote, m io.Closer) (io.Closer, ReadMode, bool) {
	if mode == ReadAuto {
		mode = chooseRead(f, mem, dataOff, large, vote)
	}
	if mode == ReadMap {
		return m, ReadMap, false
	}
	r := &fileReads{mapping: m, files: []*os.File{f}}
	fb := tensor.FileBacking{Name: f.Name(), File: f, Size: int64(len(mem))}
	if mode == ReadDirect {
		if d := openDirectRead(f); d != nil {
			fb.Direct = d
			r.files = append(r.files, d)
		} else {
			mode = ReadCopy
		}
	}
	r.unregister = tensor.RegisterFileBacking(mem, fb)
	return r, mode, true
}

// openDirectRead opens f's file again with O_DIRECT; nil where the file system refuses it
// (tmpfs) or the name no longer leads to the same file.
func openDirectRead(f *os.File) *os.File {
	d, err := os.OpenFile(f.Name(), os.O_RDONLY|unix.O_DIRECT|openNoBlock, 0)
	if err != nil {
		return nil
	}
	a, aerr := f.Stat()
	b, berr := d.Stat()
	if aerr != nil || berr != nil || !os.SameFile(a, b) {
		d.Close()
		return nil
	}
	return d
}

// The rule of ReadAuto, from measurements on the 2-core development VMs (AMD EPYC, KVM, Linux
// 6.18, ext4, page cache shared with other work; 32 files of 16 MiB summed on 2 threads, CPU
// time, min of 9 runs), and on the VM of the issue:
//   - A file written with large writes sits in the page cache in large folios, and a fault
//     maps a whole folio (~200 KiB of the files wattagg writes). Walking the mapping then beat
//     copying with pread here by a third (60 against 90 ms): the file is mapped.
//   - A file read back after eviction (DAMON proactive reclaim on these VMs), written in small
//     pieces, or cached by a kernel without large folios for its file system (ext4 has them
//     from Linux 6.16) sits in 4 KiB folios, and a fault maps only the 64 KiB fault-around
//     window. Here wattagg's parallel first-touch mapping and its copies then cost about the
//     same (122 and 133 ms) while e2efloor.c's pread beat its mapping (109 against 129 ms);
//     on the VM pread beat mapping 2.25x (0.12 against 0.27 s). Copying is the choice
//     that loses least where it is wrong: the file is copied.
//   - A file mostly not in the page cache is mapped: the kernel's readahead then reads it in
//     large requests. O_DIRECT reads of the blocks the workers need (ReadDirect) took 1.9-2.4 s
//     for 512 MiB here against 0.8-1.1 s mapped and 0.9-1.4 s copied: one synchronous request
//     of 128 KiB per input and worker cannot keep the disk busy.
//
// The probe measures what decides: the bytes one fault maps, over two windows of 128 KiB of
// the data section (MADV_POPULATE_READ on a thread locked for the count, so the counted faults
// are the probe's own). It costs little but not nothing (a few hundred 4 KiB pages mapped in
// small folios), so the files that OpenAll opens together vote: once the first probes agree,
// the others take their answer unprobed (readVote).
const (
	probeMinData   = 4 << 20   // less data than this is mapped: either way is fast, and a mapping needs no open file
	probeWindow    = 128 << 10 // each of the probe's windows
	probeWindows   = 2
	largeFolioMaps = 128 << 10 // bytes per fault from which the file is mapped
)

func chooseRead(f *os.File, mem []byte, dataOff int64, large ReadMode, vote *readVote) ReadMode {
	lo := (int(dataOff) + pageSize - 1) &^ (pageSize - 1)
	if lo > len(mem) || len(mem)-lo < probeMinData {
		return ReadMap
	}
	if m, ok := vote.decided(); ok {
		return m
	}
	data := mem[lo:]
	if !mostlyResident(data) {
		return vote.cast(ReadMap)
	}
	// Windows at a third and two thirds of the data, aligned to their size in the file:
	// folios are aligned to their size in the file, so an aligned window splits none, and the
	// start of a file (small folios wherever a write began) says nothing of the rest.
	var faults int64
	var mapped time.Duration
	for k := 1; k <= probeWindows; k++ {
		at := (lo + k*len(data)/(probeWindows+1)) &^ (probeWindow - 1)
		if at < lo || at+probeWindow > len(mem) {
			return ReadMap
		}
		start := time.Now()
		n, ok := faultsToMap(mem[at : at+probeWindow])
		if !ok {
			return vote.cast(ReadMap)
		}
		touchLines(mem[at : at+probeWindow])
		mapped += time.Since(start)
		faults += n
	}
	mode := decide(probeWindows*probeWindow, faults, true)
	switch {
	case mode != ReadMap || faults == 0:
	case large != ReadAuto:
		mode = large // measured at scale on this machine (WithLargeFolioRead)
	default:
		mode = raceCopy(f, lo, len(mem), mapped)
	}
	return vote.cast(mode)
}

// raceCopy is the second half of the probe of a file cached in large folios: it preads as many
// bytes as the probe mapped, from windows of the data between the mapped ones (at a sixth and a
// half, after an untimed read at five sixths: none the probe touched), into a reused buffer, walks them as it walked
// the mapped windows, and chooses ReadCopy unless mapping took at most mapFavour of the copy's
// time. Whether a mapped walk beats a copy through the kernel depends on the machine, not only
// on the folios: on the Zen 4 VMs above the mapping won by a third; on a Zen 5 VM (2026-12-02,
// Linux 6.18, files written with 4 MiB writes, one fault per 128 KiB window) the first mapping
// of 8 files of 16 MiB walked at 3.4 GB/s against 18 GB/s preaded, and `bench e2e` ran
// `wattagg aggregate` of 32 × 4M f32 in 0.255 s mapped against 0.122 s copied.
func raceCopy(f *os.File, lo, size int, mapped time.Duration) ReadMode {
	bp := probeBuffer()
	defer probeBufs.Put(bp)
	buf := *bp
	var copied time.Duration
	data := size - lo
	window := func(k int) int { return (lo + (2*k+1)*data/(2*(probeWindows+1))) &^ (probeWindow - 1) }
	// One untimed read first, of a window the race does not time (at five sixths), so that a
	// process's first reads do not count their cold start against the copy.
	if at := window(probeWindows); at >= lo && at+probeWindow <= size {
		_, _ = f.ReadAt(buf, int64(at))
	}
	for k := 0; k < probeWindows; k++ {
		at := window(k)
		if at < lo || at+probeWindow > size {
			return ReadMap
		}
		start := time.Now()
		if n, err := f.ReadAt(buf, int64(at)); n != len(buf) || err != nil {
			return ReadMap
		}
		touchLines(buf)
		copied += time.Since(start)
	}
	if mapped <= copied*mapFavour/100 {
		return ReadMap
	}
	return ReadCopy
}

// mapFavour is the share (in percent) of the copy's time within which the probe's mapping must
// come to be chosen: copying is the choice that loses least where the probe is wrong (see the
// rule above), so a tie goes to the copy.
const mapFavour = 80

// probeBufs keeps raceCopy's buffers, one window each: the files OpenAll opens are probed
// concurrently, each into its own.
var probeBufs sync.Pool

// probeBuffer is a buffer for raceCopy (give it back to probeBufs), touched when made so that
// its first use in a probe costs no page faults (fresh memory is slow to touch on these VMs).
func probeBuffer() *[]byte {
	if b, ok := probeBufs.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, probeWindow)
	for i := 0; i < len(b); i += pageSize {
		b[i] = 1
	}
	return &b
}

// touchLines reads one word of every 64-byte line of b, as a pass over the data would.
func touchLines(b []byte) {
	var s uint64
	for i := 0; i+8 <= len(b); i += 64 {
		s += *(*uint64)(unsafe.Pointer(&b[i]))
	}
	touchSink.Add(s)
}

var touchSink atomic.Uint64

// decide is ReadAuto's choice for a cached file whose probe mapped bytes with faults: copy
// when a fault maps less than largeFolioMaps. Without a probe (ok false: Linux before 5.14
// has no MADV_POPULATE_READ), or when the probe took no fault (the pages were mapped already,
// by another Open of the file), the file is mapped, as before the probe existed.
func decide(bytes int, faults int64, ok bool) ReadMode {
	if !ok || faults == 0 || int64(bytes)/faults >= largeFolioMaps {
		return ReadMap
	}
	return ReadCopy
}

// mostlyResident reports whether at least half of b's pages are in the page cache (mincore),
// looking at 8 windows of 64 KiB spread over b.
func mostlyResident(b []byte) bool {
	const window, windows = 64 << 10, 8
	var vec [window / pageSize]byte
	var in, all int
	for k := range windows {
		lo := (k * len(b) / windows) &^ (pageSize - 1)
		w := b[lo:min(lo+window, len(b))]
		v := vec[:(len(w)+pageSize-1)/pageSize]
		if err := mincore(w, v); err != nil {
			return true // cannot tell: assume cached, as the mapping did
		}
		for _, x := range v {
			in += int(x & 1)
		}
		all += len(v)
	}
	return 2*in >= all
}

// faultsToMap maps b's pages (MADV_POPULATE_READ) and returns the page faults it took; ok is
// false where the kernel does not have the advice or the pages cannot be read.
func faultsToMap(b []byte) (faults int64, ok bool) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var before, after unix.Rusage
	if unix.Getrusage(unix.RUSAGE_THREAD, &before) != nil {
		return 0, false
	}
	if unix.Madvise(b, unix.MADV_POPULATE_READ) != nil {
		return 0, false
	}
	if unix.Getrusage(unix.RUSAGE_THREAD, &after) != nil {
		return 0, false
	}
	return (after.Minflt - before.Minflt) + (after.Majflt - before.Majflt), true
}

// mincore reports in vec (one byte per page of b) which pages of b are in memory.
func mincore(b, vec []byte) error {
	_, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)),
		uintptr(unsafe.Pointer(unsafe.SliceData(vec))))
	if e != 0 {
		return e
	}
	return nil
}
