package tensor_test

import (
	"errors"
	"sync/atomic"
	"testing"

	"github.com/wattagg/wattagg/tensor"
)

// countCloser counts its Close calls and fails with err.
type countCloser struct {
	n   *atomic.Int32
	err error
}

func (c countCloser) Close() error { c.n.Add(1); return c.err }

func closingSets(n int, failAt int, closed *atomic.Int32) ([]*tensor.Set, error) {
	bad := errors.New("close failed")
	sets := make([]*tensor.Set, n)
	for k := range sets {
		if k == 2 {
			continue // nil entries are skipped
		}
		s, _ := tensor.NewSet()
		var err error
		if k == failAt {
			err = bad
		}
		s.SetCloser(countCloser{closed, err})
		sets[k] = s
	}
	return sets, bad
}

// CloseAll closes every set once, skips nil ones and joins the errors.
func TestCloseAll(t *testing.T) {
	var closed atomic.Int32
	sets, bad := closingSets(37, 5, &closed)
	if err := tensor.CloseAll(sets); !errors.Is(err, bad) {
		t.Fatalf("CloseAll: %v, want the failed Close's error", err)
	}
	if n := closed.Load(); n != 36 {
		t.Fatalf("%d sets closed, want 36", n)
	}
	if err := tensor.CloseAll(sets); err != nil || closed.Load() != 36 {
		t.Fatalf("second CloseAll: %v, %d closes: want nothing done", err, closed.Load())
	}
	if err := tensor.CloseAll(nil); err != nil {
		t.Fatal(err)
	}
}

// A Release closes once whether started or not, and Wait returns CloseAll's error.
func TestRelease(t *testing.T) {
	for _, start := range []int{0, 1, 3} {
		var closed atomic.Int32
		sets, bad := closingSets(9, 0, &closed)
		r := tensor.NewRelease(sets)
		for range start {
			r.Start()
		}
		if err := r.Wait(); !errors.Is(err, bad) {
			t.Fatalf("%d starts: Wait %v, want the failed Close's error", start, err)
		}
		r.Start()
		if err := r.Wait(); !errors.Is(err, bad) || closed.Load() != 8 {
			t.Fatalf("%d starts: second Wait %v after %d closes, want the same error and 8", start, err, closed.Load())
		}
	}
}
