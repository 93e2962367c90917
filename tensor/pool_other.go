//go:build !linux

package tensor

// prefault writes each page of b once, so the faults are taken by the pool's goroutines in
// parallel instead of by whoever writes the buffer first.
func prefault(b []byte) { touchPages(b) }

// firstTouch is prefault: the write to each page is the touch.
func firstTouch(b []byte) { touchPages(b) }

// adviseHuge does nothing: transparent huge pages are a Linux feature.
func adviseHuge([]byte) {}
