package energy

import "time"

// deltaEvent says how a counter delta was read.
type deltaEvent int

const (
	deltaOK    deltaEvent = iota
	deltaWrap             // the counter passed its maximum and restarted from zero
	deltaReset            // the counter went back by more than a wrap explains: it was reset
	deltaJump             // the counter advanced faster than the hardware can draw
)

// counterSlack is added to the time between reads when judging whether a delta is possible:
// counters advance in steps (about 1 ms for RAPL), so a short interval may see one more step.
const counterSlack = 5 * time.Millisecond

// counterDelta is the advance, in µJ, of a cumulative µJ counter from prev to cur, which wraps
// after max (0: never), over dt, given that the hardware draws at most ceilingW watts.
//
// A counter that went back is a wrap if the wrapped advance is possible, else a reset: the
// energy since the reset (cur) is kept if possible, and what came before the reset is lost. A
// forward advance beyond the ceiling is rejected.
func counterDelta(prev, cur, max uint64, dt time.Duration, ceilingW float64) (uint64, deltaEvent) {
	limit := ceilingW * (dt + counterSlack).Seconds() * 1e6
	if cur >= prev {
		d := cur - prev
		if float64(d) > limit {
			return 0, deltaJump
		}
		return d, deltaOK
	}
	if max >= prev {
		if d := max - prev + cur; float64(d) <= limit {
			return d, deltaWrap
		}
	}
	if float64(cur) <= limit {
		return cur, deltaReset
	}
	return 0, deltaReset
}
