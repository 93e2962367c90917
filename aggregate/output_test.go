package aggregate

import (
	"bytes"
	"sync"
	"testing"

	"github.com/wattagg/wattagg/tensor"
)

// recordingAlloc records the sizes asked of a CheckedAllocator.
type recordingAlloc struct {
	*tensor.CheckedAllocator
	mu    sync.Mutex
	sizes []int
}

func (r *recordingAlloc) Allocate(n int) []byte {
	r.mu.Lock()
	r.sizes = append(r.sizes, n)
	r.mu.Unlock()
	return r.CheckedAllocator.Allocate(n)
}

// memFile is an io.WriterAt into memory.
type memFile struct {
	mu sync.Mutex
	b  []byte
}

func (m *memFile) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(m.b[off:], p)
	return len(p), nil
}

// The output ring is one allocation (of a huge-page class from 4 MiB, so that the pool can back
// it with huge pages), no larger than the buffers where the allocator aligns it to pages, cut
// into page-aligned buffers that never overlap, and given back whole.
func TestPipeOutputRingIsOneAllocation(t *testing.T) {
	const chunk, buffers = 64 << 10, 6
	ref := tensor.Layout{{Name: "w", DType: tensor.F32, Shape: []int{40000}}, {Name: "b", DType: tensor.F32, Shape: []int{1000}}}
	cfg, err := newConfig([]Option{WithChunkBytes(chunk)})
	if err != nil {
		t.Fatal(err)
	}
	p, err := newPlan(ref, func(int) []tensor.DType { return []tensor.DType{tensor.F32} }, cfg, Requirements{Kind: KindSum})
	if err != nil {
		t.Fatal(err)
	}
	pool, err := tensor.NewPoolAllocator()
	if err != nil {
		t.Fatal(err)
	}
	alloc := &recordingAlloc{CheckedAllocator: tensor.NewCheckedAllocator(pool)}
	dst := &memFile{b: make([]byte, p.size)}
	o := newPipeOutput(dst, p, chunk, buffers, 2, alloc)
	if len(alloc.sizes) != 1 || alloc.sizes[0] != buffers*chunk {
		t.Fatalf("the ring took allocations of %v bytes: want one of %d (the pool's are page-aligned)", alloc.sizes, buffers*chunk)
	}
	seen := map[*byte]bool{}
	for c := range p.chunks {
		for k := range p.chunks[c].Pieces {
			b, err := o.Dest(c, k)
			if err != nil {
				t.Fatal(err)
			}
			for i := range b {
				b[i] = byte(c + 1)
			}
		}
		if !tensor.IsAligned(o.bufs[c], pageSize) || len(o.bufs[c]) > chunk {
			t.Fatalf("chunk %d: buffer of %d bytes, aligned %v", c, len(o.bufs[c]), tensor.IsAligned(o.bufs[c], pageSize))
		}
		seen[&o.bufs[c][0]] = true
		if err := o.Done(c); err != nil {
			t.Fatal(err)
		}
	}
	if err := o.close(); err != nil {
		t.Fatal(err)
	}
	for c, ch := range p.chunks {
		if want := bytes.Repeat([]byte{byte(c + 1)}, ch.Len); !bytes.Equal(dst.b[ch.Off:ch.Off+int64(ch.Len)], want) {
			t.Fatalf("chunk %d was not written whole (a buffer shared by two chunks?)", c)
		}
	}
	if len(seen) > buffers {
		t.Fatalf("%d distinct buffers from a ring of %d", len(seen), buffers)
	}
	alloc.AssertSize(t, 0)
}
