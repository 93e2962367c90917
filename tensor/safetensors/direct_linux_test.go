package safetensors

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/wattagg/wattagg/tensor"
)

// refusingDirect is a filesystem that opens O_DIRECT but refuses direct writes.
type refusingDirect struct{ writes int }

func (r *refusingDirect) WriteAt([]byte, int64) (int, error) {
	r.writes++
	return 0, &os.PathError{Op: "write", Path: "x", Err: unix.EINVAL}
}
func (r *refusingDirect) Close() error { return nil }

func TestDirectRefusedFallsBack(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 14))
	layout := tensor.Layout{{Name: "x", DType: tensor.F32, Shape: []int{5000}}}
	want := randomSet(t, rng, layout, nil)
	path := filepath.Join(t.TempDir(), "r.safetensors")
	w, err := Create(path, layout, nil)
	if err != nil {
		t.Fatal(err)
	}
	w.direct.Close()
	fake := &refusingDirect{}
	w.direct = fake
	w.directOK.Store(true)
	src := tensor.PageAligned(len(want.At(0).Bytes()))
	copy(src, want.At(0).Bytes())
	for off := 0; off < len(src); off += 4096 {
		if _, err := w.WriteAt(src[off:min(off+4096, len(src))], int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	if fake.writes != 1 {
		t.Errorf("%d direct writes tried, want 1 then buffered", fake.writes)
	}
	got, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	checkSame(t, got, want)
}
