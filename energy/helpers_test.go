package energy

import (
	"math"
	"sync"
	"time"
)

// clock is a fake time source advanced by tests; a window's poller reads it on its own
// goroutine, hence the lock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}
func withClock(c *clock) Option { return func(cfg *config) error { cfg.now = c.now; return nil } }
func withCPUFlags(flags ...string) Option {
	return func(cfg *config) error { cfg.cpuinfoOverride = flags; return nil }
}
func withReadFile(f func(string) ([]byte, error)) Option {
	return func(cfg *config) error { cfg.readFile = f; return nil }
}

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }
