package bench

import (
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/wattagg/wattagg/kernels"
	"github.com/wattagg/wattagg/tensor"
)

// floorBlock is the unit the read-floor workers claim: large enough that the claim costs
// nothing, small enough to balance the workers.
const floorBlock = 1 << 20

// ReadFloor measures how fast workers goroutines can read bufs with the cheapest possible
// kernel (kernels.XorFold): the physical floor of any single pass over that memory. It returns
// the best of passes, in bytes per second.
func ReadFloor(bufs [][]byte, workers, passes int) float64 {
	type block struct {
		buf    int
		lo, hi int
	}
	var blocks []block
	var total int64
	for i, b := range bufs {
		for lo := 0; lo < len(b); lo += floorBlock {
			blocks = append(blocks, block{i, lo, min(lo+floorBlock, len(b))})
		}
		total += int64(len(b))
	}
	best := 0.0
	for range max(1, passes) {
		var next atomic.Int64
		var sink atomic.Uint64
		var wg sync.WaitGroup
		start := time.Now()
		for range max(1, workers) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var x uint64
				for {
					k := int(next.Add(1) - 1)
					if k >= len(blocks) {
						break
					}
					b := blocks[k]
					x ^= kernels.XorFold(bufs[b.buf][b.lo:b.hi])
				}
				sink.Add(x)
			}()
		}
		wg.Wait()
		best = max(best, float64(total)/time.Since(start).Seconds())
	}
	return best
}

// TouchedBuffer returns n bytes of anonymous memory, written once so that no page fault is
// left in it (fresh pages cost ~20x a read; a floor must not measure them).
func TouchedBuffer(n int) []byte {
	b := tensor.AlignedBytes(n)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

// MemoryFloor measures the read bandwidth of anonymous memory: size bytes, read by 1 and by
// workers goroutines, best of passes. It returns bytes per second for each worker count.
func MemoryFloor(size, workers, passes int) map[int]float64 {
	buf := [][]byte{TouchedBuffer(size)}
	out := map[int]float64{}
	for _, w := range slices.Compact([]int{1, workers}) {
		out[w] = ReadFloor(buf, w, passes)
	}
	runtime.KeepAlive(buf)
	return out
}

// DurableWriteFloor measures how fast n bytes reach the disk in dir the way wattagg writes a
// result: 1 MiB page-aligned writes with O_DIRECT where the filesystem allows it (buffered
// otherwise), then fsync. n is rounded up to whole pages (direct I/O writes whole pages). It
// returns bytes per second, best of passes, and removes its file.
func DurableWriteFloor(dir string, n int64, passes int) (float64, error) {
	n = (n + 4095) &^ 4095
	buf := pageAlignedBuffer(1 << 20)
	for i := range buf {
		buf[i] = byte(i)
	}
	best := 0.0
	for range max(1, passes) {
		f, err := os.CreateTemp(dir, ".wattagg-write-floor-*")
		if err != nil {
			return 0, err
		}
		name := f.Name()
		start := time.Now()
		err = writeDurably(f, name, buf, n)
		secs := time.Since(start).Seconds()
		os.Remove(name)
		if err != nil {
			return 0, err
		}
		best = max(best, float64(n)/secs)
	}
	return best, nil
}

func writeDurably(f *os.File, name string, buf []byte, n int64) error {
	defer f.Close()
	w := f
	if d, err := openDirect(name); err == nil {
		defer d.Close()
		w = d
	}
	for off := int64(0); off < n; off += int64(len(buf)) {
		if _, err := w.WriteAt(buf[:min(int64(len(buf)), n-off)], off); err != nil {
			return err
		}
	}
	return f.Sync()
}

func pageAlignedBuffer(n int) []byte {
	b := tensor.AlignedBytes(n + 4096)
	off := (4096 - int(uintptr(unsafe.Pointer(unsafe.SliceData(b)))%4096)) % 4096
	return b[off : off+n : off+n]
}
