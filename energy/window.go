package energy

import (
	"fmt"
	"sync"
	"time"
)

// Window measures what a set of meters count between Start and Stop. While it is open, a
// goroutine reads the meters that are Pollers as often as they ask (a RAPL counter that could
// wrap twice in a long window, NVML power that is integrated), so a window may be as long as
// needed.
type Window struct {
	meters []Meter
	start  []Reading

	stop chan struct{}
	done chan struct{}

	mu      sync.Mutex
	pollErr error
	stopped bool
}

// Start reads every meter and opens a window. With no meters it returns a window whose Stop
// returns no measurements.
func Start(meters ...Meter) (*Window, error) {
	w := &Window{meters: meters, start: make([]Reading, len(meters))}
	for i, m := range meters {
		if m == nil {
			return nil, fmt.Errorf("%w: nil meter", ErrOption)
		}
		r, err := m.Read()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", m.Name(), err)
		}
		w.start[i] = r
	}
	var every time.Duration
	var pollers []Meter
	for _, m := range meters {
		if p, ok := m.(Poller); ok && p.PollEvery() > 0 {
			pollers = append(pollers, m)
			if every == 0 || p.PollEvery() < every {
				every = p.PollEvery()
			}
		}
	}
	if len(pollers) > 0 {
		w.stop, w.done = make(chan struct{}), make(chan struct{})
		go w.poll(pollers, every)
	}
	return w, nil
}

func (w *Window) poll(meters []Meter, every time.Duration) {
	defer close(w.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-w.stop:
			return
		case <-t.C:
			for _, m := range meters {
				if _, err := m.Read(); err != nil {
					w.mu.Lock()
					if w.pollErr == nil {
						w.pollErr = fmt.Errorf("%s: background read: %w", m.Name(), err)
					}
					w.mu.Unlock()
				}
			}
		}
	}
}

// Stop closes the window and returns one measurement per meter, in the order given to Start.
// Calling Stop twice is an error.
func (w *Window) Stop() ([]Measurement, error) {
	w.mu.Lock()
	if w.stopped {
		w.mu.Unlock()
		return nil, fmt.Errorf("%w: window stopped twice", ErrOption)
	}
	w.stopped = true
	w.mu.Unlock()
	if w.stop != nil {
		close(w.stop)
		<-w.done
	}
	if w.pollErr != nil {
		return nil, w.pollErr
	}
	out := make([]Measurement, len(w.meters))
	for i, m := range w.meters {
		r, err := m.Read()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", m.Name(), err)
		}
		out[i] = Between(w.start[i], r)
	}
	return out, nil
}
