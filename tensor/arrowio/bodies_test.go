package arrowio

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/wattagg/wattagg/tensor"
)

// lendingAlloc counts the buffers it has lent, and the most at once.
type lendingAlloc struct {
	memory.Allocator
	lent, most, total atomic.Int64
}

func (a *lendingAlloc) Allocate(n int) []byte {
	a.total.Add(1)
	if l := a.lent.Add(1); l > a.most.Load() {
		a.most.Store(l)
	}
	return a.Allocator.Allocate(n)
}

func (a *lendingAlloc) Free(b []byte) {
	a.lent.Add(-1)
	a.Allocator.Free(b)
}

// TestBodyAllocator: with WithBodyAllocator a stream reader takes every message body from that
// allocator and gives it back before the next is read (one lent at a time, none kept), reads
// the same chunks as without it, and gives everything back at the end and at a Close in the
// middle; its other allocations still come from WithAllocator's.
func TestBodyAllocator(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	layout := tensor.Layout{{Name: "a", DType: tensor.F32, Shape: []int{5000}}, {Name: "b", DType: tensor.F64, Shape: []int{700}}}
	set := randomSet(t, rng, layout, nil)
	var buf bytes.Buffer
	if err := WriteSet(&buf, set, WithBatchBytes(4096)); err != nil {
		t.Fatal(err)
	}
	stream := buf.Bytes()
	plain, err := NewStreamReader(bytes.NewReader(stream))
	if err != nil {
		t.Fatal(err)
	}
	want := chunksOf(t, plain)
	plain.Close()

	for _, stop := range []int{len(want), 3} {
		mem := checkedMem(t)
		checked := memory.NewCheckedAllocator(memory.NewGoAllocator())
		bodies := &lendingAlloc{Allocator: checked}
		sr, err := NewStreamReader(bytes.NewReader(stream), WithAllocator(mem), WithBodyAllocator(bodies))
		if err != nil {
			t.Fatal(err)
		}
		var got []Chunk
		for len(got) < stop {
			c, err := sr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			c.Data = slices.Clone(c.Data)
			got = append(got, c)
		}
		sr.Close()
		if stop == len(want) {
			if len(got) != len(want) {
				t.Fatalf("%d chunks, want %d", len(got), len(want))
			}
			for i := range want {
				if got[i].Tensor != want[i].Tensor || got[i].Offset != want[i].Offset || !bytes.Equal(got[i].Data, want[i].Data) {
					t.Fatalf("chunk %d differs", i)
				}
			}
		}
		if bodies.most.Load() != 1 || bodies.lent.Load() != 0 || bodies.total.Load() < int64(len(got)/2) {
			t.Fatalf("stop %d: at most %d bodies lent at once (want 1), %d still lent, %d lent in all", stop, bodies.most.Load(), bodies.lent.Load(), bodies.total.Load())
		}
		checked.AssertSize(t, 0)
	}
	if _, err := NewStreamReader(bytes.NewReader(stream), WithBodyAllocator(nil)); !errors.Is(err, ErrOption) {
		t.Fatalf("a nil body allocator: %v, want ErrOption", err)
	}
}
