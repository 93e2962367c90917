// Package headroom bounds the garbage a Go process may hold by a constant rather than by a
// multiple of its live heap.
//
// Go's collector lets the heap grow to (1 + GOGC/100) × the heap that was live at the last
// collection before it collects again. A process whose live heap is mostly one large, long-lived
// buffer (an aggregation server's running sums: 8 or 16 bytes per parameter of the model) is then
// allowed as much garbage as its sums take: measured in `wattagg bench serve` (25M f32 model,
// 64 Flight uploads), the heap's next goal was 396 MiB for 198 MiB live, and the peak RSS
// followed it. Keep sets the runtime's soft memory limit, after every collection, to what the
// process holds apart from garbage plus a fixed headroom: the collector then runs whenever the
// garbage reaches the headroom, whatever the size of the sums.
package headroom

import (
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// Keep keeps the process's memory limit at its memory other than garbage, plus bytes, updated
// after every garbage collection, until the returned stop is called (which
// restores the limit found).
// A GOMEMLIMIT in the environment wins: Keep then does nothing. GOGC still applies: the
// collector runs at whichever of the two comes first.
func Keep(bytes uint64) (stop func()) {
	if os.Getenv("GOMEMLIMIT") != "" || bytes == 0 {
		return func() {}
	}
	k := &keeper{headroom: bytes, before: debug.SetMemoryLimit(-1)}
	k.samples = []metrics.Sample{{Name: mapped}, {Name: released}, {Name: objects}, {Name: live}}
	k.update()
	k.arm()
	return k.stop
}

// The runtime/metrics the limit is computed from. The memory limit applies to mapped −
// released; heap objects are the live ones and the garbage not yet swept. Free heap memory (mapped,
// holding no object) stays inside the limit: the runtime reuses it for the next allocations.
// Leaving it out made the runtime give it back to the system after every collection and fault
// it in again at once: in the Flight round of `wattagg bench serve` (64 × 25M f32, one limb),
// 1.05–1.26 GB/s with it left out (4 runs, alternating with Go's own pacing: 1.18–1.27) and
// 1.31–1.37 with it kept (3 runs; Go's pacing 1.15–1.23), the peak RSS the same (360–365 MiB,
// against 406–417 with Go's pacing).
const (
	mapped   = "/memory/classes/total:bytes"
	released = "/memory/classes/heap/released:bytes"
	objects  = "/memory/classes/heap/objects:bytes"
	live     = "/gc/heap/live:bytes"
)

type keeper struct {
	headroom uint64
	before   int64

	mu      sync.Mutex
	stopped bool
	samples []metrics.Sample
	limit   int64 // the last limit set, for tests
}

// sentinel is an object whose finalizer runs once a collection has found it unreachable: after
// every cycle, as each re-arms a new one. It is larger than the tiny allocator's 16 bytes, so
// that it is an object of its own.
type sentinel struct {
	k   *keeper
	pad [3]uint64
}

func (k *keeper) arm() {
	runtime.SetFinalizer(&sentinel{k: k}, func(s *sentinel) {
		if s.k.update() {
			s.k.arm()
		}
	})
}

// update sets the limit from the last collection's live heap and reports whether to go on.
func (k *keeper) update() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.stopped {
		return false
	}
	metrics.Read(k.samples)
	v := func(i int) uint64 {
		if k.samples[i].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return k.samples[i].Value.Uint64()
	}
	held := v(0) - v(1)
	garbage := v(2) - min(v(2), v(3)) // objects not live at the last mark
	limit := held - garbage + k.headroom
	k.limit = int64(min(limit, math.MaxInt64))
	debug.SetMemoryLimit(k.limit)
	return true
}

func (k *keeper) stop() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.stopped {
		k.stopped = true
		debug.SetMemoryLimit(k.before)
	}
}
