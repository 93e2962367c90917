package safetensors

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wattagg/wattagg/tensor"
)

// bigUpdate writes a file of one f32 tensor of n elements (values i) with large writes (as
// WriteFile does: the page cache then holds it in large folios where the kernel has them).
func bigUpdate(t *testing.T, n int) string {
	t.Helper()
	w, err := tensor.New("w", tensor.F32, n)
	if err != nil {
		t.Fatal(err)
	}
	v, _ := w.F32()
	for i := range v {
		v[i] = float32(i)
	}
	s, err := tensor.NewSet(w)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "u.safetensors")
	if err := WriteFile(p, s); err != nil {
		t.Fatal(err)
	}
	return p
}

// openFDs counts this process's open descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	return len(es)
}

// Each explicit mode is what ReadModeOf reports; the tensors hold the file's bytes whatever the
// mode; copy and direct reads keep their descriptors open until Close and register the
// mapping, and Close gives both back.
func TestReadModeOpen(t *testing.T) {
	p := bigUpdate(t, 300000)
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []ReadMode{ReadMap, ReadCopy, ReadDirect} {
		before := openFDs(t)
		s, err := Open(p, WithReadMode(m))
		if err != nil {
			t.Fatal(err)
		}
		got := ReadModeOf(s)
		if got != m && !(m == ReadDirect && got == ReadCopy) { // a file system without O_DIRECT
			t.Fatalf("opened for %s, reads as %s", m, got)
		}
		b := s.At(0).Bytes()
		if !bytes.Equal(b, want[len(want)-len(b):]) {
			t.Fatalf("%s: the tensor does not hold the file's bytes", m)
		}
		fb, off, registered := tensor.FileBackingOf(b)
		if registered != (got != ReadMap) {
			t.Fatalf("%s: registered %v", m, registered)
		}
		if registered && (off != int64(len(want)-len(b)) || fb.Name != p || (fb.Direct != nil) != (got == ReadDirect)) {
			t.Fatalf("%s: backing %+v at offset %d", m, fb, off)
		}
		fds := map[ReadMode]int{ReadMap: 0, ReadCopy: 1, ReadDirect: 2}[got]
		if n := openFDs(t) - before; n != fds {
			t.Fatalf("%s: %d descriptors open, want %d", m, n, fds)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if n := openFDs(t) - before; n != 0 {
			t.Fatalf("%s: %d descriptors left open after Close", m, n)
		}
		if _, _, ok := tensor.FileBackingOf(b); ok { // b dangles: only its address is looked up
			t.Fatalf("%s: still registered after Close", m)
		}
	}
}

// ReadAuto maps small files and files not in the page cache, and copies files cached in small
// folios (read back 4 KiB at a time after eviction, as DAMON's proactive reclaim leaves them);
// files cached in large folios (where the kernel has them for the file system) go to the faster
// of mapping and copying in the probe's race (TestRaceCopy).
func TestReadModeAuto(t *testing.T) {
	small := bigUpdate(t, 1000)
	s, err := Open(small)
	if err != nil {
		t.Fatal(err)
	}
	if m := ReadModeOf(s); m != ReadMap {
		t.Fatalf("a small file reads as %s, want map", m)
	}
	s.Close()

	p := bigUpdate(t, 3<<20) // 12 MiB of data, written with direct I/O: not in the page cache
	var st unix.Statfs_t
	if err := unix.Statfs(p, &st); err != nil || st.Type == unix.TMPFS_MAGIC {
		t.Skip("the test directory is on tmpfs: nothing can be evicted")
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	size := 3<<20*4 + 4096
	open := func(what string, want ReadMode) {
		t.Helper()
		s, err := Open(p)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if m := ReadModeOf(s); m != want {
			t.Fatalf("%s: reads as %s, want %s", what, m, want)
		}
	}
	// Evicted: readahead started by earlier reads may still be filling pages in, and on a
	// loaded machine it can finish between the eviction and Open's own look at the cache, so
	// evict until the page cache holds less than half the file, open, and try again while Open
	// found the pages back.
	m, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	evict := func() {
		t.Helper()
		for try := 0; ; try++ {
			if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
				t.Fatal(err)
			}
			if !mostlyResident(m[4096:]) {
				return
			}
			if try == 100 {
				t.Skip("the file cannot be evicted here")
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	for try := 0; ; try++ {
		evict()
		s, err := Open(p)
		if err != nil {
			t.Fatal(err)
		}
		got, back := ReadModeOf(s), mostlyResident(m[4096:])
		s.Close()
		if got == ReadMap {
			break
		}
		if !back || try == 20 {
			t.Fatalf("not cached: reads as %s, want map", got)
		}
	}
	// Read back in 4 KiB folios: no readahead, one page per read.
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_RANDOM); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	for off := 0; off < size; off += 4096 {
		if _, err := f.ReadAt(buf[:min(4096, size-off)], int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	if a, ok := faultsToMap(m[8<<20 : 8<<20+probeWindow]); !ok || a == 0 {
		t.Skipf("no fault probe here (%d faults, ok %v)", a, ok)
	}
	open("cached in small folios", ReadCopy)

	for _, c := range []struct {
		bytes  int
		faults int64
		ok     bool
		want   ReadMode
	}{{1 << 20, 16, true, ReadCopy}, {1 << 20, 9, true, ReadCopy}, {1 << 20, 8, true, ReadMap}, {1 << 20, 3, true, ReadMap},
		{1 << 20, 0, true, ReadMap}, {1 << 20, 16, false, ReadMap}} {
		if got := decide(c.bytes, c.faults, c.ok); got != c.want {
			t.Fatalf("decide(%d bytes, %d faults, %v) = %s, want %s", c.bytes, c.faults, c.ok, got, c.want)
		}
	}
}

func TestReadModeOptions(t *testing.T) {
	for _, c := range []struct {
		s    string
		m    ReadMode
		fail bool
	}{{"auto", ReadAuto, false}, {"map", ReadMap, false}, {"copy", ReadCopy, false}, {"direct", ReadDirect, false}, {"mmap", 0, true}, {"", 0, true}} {
		m, err := ParseReadMode(c.s)
		if (err != nil) != c.fail || (c.fail && !errors.Is(err, ErrOption)) || (!c.fail && (m != c.m || m.String() != c.s)) {
			t.Fatalf("ParseReadMode(%q) = %v, %v", c.s, m, err)
		}
	}
	p := bigUpdate(t, 10)
	if _, err := Open(p, WithReadMode(ReadMode(9))); !errors.Is(err, ErrOption) || err.Error() != "invalid safetensors option: ReadMode(9) is not a read mode" {
		t.Fatalf("bad mode: %v", err)
	}
}

// Files opened together vote: the first answer readVoters probes give decides for the others,
// however many probes disagreed before; no vote decides nothing.
func TestReadVote(t *testing.T) {
	var none *readVote
	if _, ok := none.decided(); ok || none.cast(ReadCopy) != ReadCopy {
		t.Fatal("a nil vote decided")
	}
	v := newReadVote()
	for k := range readVoters {
		if _, ok := v.decided(); ok {
			t.Fatalf("decided after %d votes", k)
		}
		v.cast(ReadCopy)
	}
	if m, ok := v.decided(); !ok || m != ReadCopy {
		t.Fatalf("after %d agreeing votes: %s, %v", readVoters, m, ok)
	}
	w := newReadVote()
	w.cast(ReadMap) // an outlier
	for k := range readVoters {
		if _, ok := w.decided(); ok {
			t.Fatalf("decided after an outlier and %d other votes", k)
		}
		w.cast(ReadCopy)
	}
	if m, ok := w.decided(); !ok || m != ReadCopy {
		t.Fatalf("an outlier then %d copies: %s, %v", readVoters, m, ok)
	}
	for range 2 * readVoters { // later votes change nothing
		w.cast(ReadMap)
	}
	if m, ok := w.decided(); !ok || m != ReadCopy {
		t.Fatalf("decided, then outvoted: %s, %v", m, ok)
	}
}

// TestRaceCopy: the probe's race maps where the mapped windows took at most mapFavour of the
// copy's time, copies where they took longer, and maps where it cannot pread its windows (a
// closed file, windows beyond the data).
func TestRaceCopy(t *testing.T) {
	p := bigUpdate(t, 3<<20)
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	size := 3<<20*4 + 4096
	for _, c := range []struct {
		what   string
		lo     int
		mapped time.Duration
		want   ReadMode
	}{
		{"mapping took no time", 4096, 0, ReadMap},
		{"mapping took an hour", 4096, time.Hour, ReadCopy},
		{"windows beyond the data", size - probeWindow, time.Hour, ReadMap},
	} {
		if got := raceCopy(f, c.lo, size, c.mapped); got != c.want {
			t.Errorf("%s: %s, want %s", c.what, got, c.want)
		}
	}
	f.Close()
	if got := raceCopy(f, 4096, size, time.Hour); got != ReadMap {
		t.Errorf("closed file: %s, want map", got)
	}
}

// TestLargeFolioRead: WithLargeFolioRead decides for a file cached in large folios instead of
// the race (map or copy, as calibration measured), leaves a file in small folios copied and a
// small file mapped, and refuses a mode that is not map, copy or auto.
func TestLargeFolioRead(t *testing.T) {
	if _, err := Open(bigUpdate(t, 10), WithLargeFolioRead(ReadDirect)); !errors.Is(err, ErrOption) ||
		err.Error() != "invalid safetensors option: large-folio read direct: want auto, map or copy" {
		t.Fatalf("direct: %v", err)
	}
	small := bigUpdate(t, 1000)
	if s, err := Open(small, WithLargeFolioRead(ReadCopy)); err != nil || ReadModeOf(s) != ReadMap {
		t.Fatalf("a small file: %v", err)
	} else {
		s.Close()
	}
	// Written again through the page cache in one write: large folios, as updates written with
	// large writes are cached (the direct write of bigUpdate leaves nothing cached).
	b, err := os.ReadFile(bigUpdate(t, 3<<20))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "large.safetensors")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := unix.Mmap(int(f.Fd()), 0, len(b), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	faults, ok := faultsToMap(m[4<<20 : 4<<20+probeWindow])
	if !ok || faults == 0 || decide(probeWindow, faults, ok) != ReadMap {
		t.Skipf("the file is not cached in large folios here (%d faults for %d KiB, probe %v)", faults, probeWindow>>10, ok)
	}
	for _, want := range []ReadMode{ReadMap, ReadCopy} {
		s, err := Open(p, WithLargeFolioRead(want))
		if err != nil {
			t.Fatal(err)
		}
		got := ReadModeOf(s)
		s.Close()
		if got != want {
			t.Fatalf("WithLargeFolioRead(%s): reads as %s", want, got)
		}
	}
	// In small folios it is copied whatever the preference (written back first: dirty pages
	// are not dropped).
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_RANDOM); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	for off := 0; off < len(b); off += 4096 {
		if _, err := f.ReadAt(buf[:min(4096, len(b)-off)], int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	if faults, ok := faultsToMap(m[8<<20 : 8<<20+probeWindow]); !ok || decide(probeWindow, faults, ok) != ReadCopy {
		t.Skipf("not in small folios after 4 KiB reads (%d faults)", faults)
	}
	if s, err := Open(p, WithLargeFolioRead(ReadMap)); err != nil || ReadModeOf(s) != ReadCopy {
		t.Fatalf("small folios with a map preference: %v", err)
	} else {
		s.Close()
	}
}
