package server

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// TestSafetensorsSourceReadsIntoLent: NextInto reads each chunk into the buffer lend gives
// (tensor, element offset, at most the chunk's bytes), in pieces as small as lend makes them,
// reads into its own buffer where lend gives nothing, and stops at lend's error.
func TestSafetensorsSourceReadsIntoLent(t *testing.T) {
	set := f32Set(t, [][]int{{3, 5}, {7}}, func(k, i int) float32 { return float32(100*k + i) })
	body := encode(t, set, nil)
	open := func() *safetensorsSource {
		src, err := newSafetensorsSource(bytes.NewReader(body), int64(len(body)), 1<<16, "c", make([]byte, 4096))
		if err != nil {
			t.Fatal(err)
		}
		return src
	}
	// Tensor 0 goes to dest at its element offset, 3 elements at a time; tensor 1 is not lent.
	dest := make([]byte, 15*4)
	var calls int
	lend := func(tn int, off, max int64) ([]byte, error) {
		calls++
		if tn != 0 {
			return nil, nil
		}
		return dest[off*4 : off*4+min(max, 12)], nil
	}
	src := open()
	got := [2][]byte{}
	for {
		c, err := src.NextInto(lend)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if c.Tensor == 0 && (len(c.Data) != 12 || &c.Data[0] != &dest[c.Offset*4]) {
			t.Fatalf("tensor 0 at element %d: %d bytes, not read into the lent buffer", c.Offset, len(c.Data))
		}
		if c.Tensor == 1 && len(c.Data) > 0 && &c.Data[0] == &dest[0] {
			t.Fatal("tensor 1 was read into tensor 0's buffer")
		}
		got[c.Tensor] = append(got[c.Tensor], c.Data...)
	}
	for k, tt := range set.Tensors() {
		if !bytes.Equal(got[k], tt.Bytes()) {
			t.Fatalf("tensor %d: %d bytes differ from what was sent", k, len(got[k]))
		}
	}
	if calls != 5+1 {
		t.Fatalf("lend called %d times, want 6 (5 pieces of tensor 0, 1 of tensor 1)", calls)
	}

	boom := errors.New("staging write failed")
	src = open()
	fail := func(int, int64, int64) ([]byte, error) { return nil, boom }
	if _, err := src.NextInto(fail); !errors.Is(err, boom) {
		t.Fatalf("lend's error: %v", err)
	}
	if _, err := src.Next(); !errors.Is(err, boom) {
		t.Fatalf("after lend's error, Next: %v", err)
	}
}
