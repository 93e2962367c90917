package safetensors

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"unsafe"

	"github.com/wattagg/wattagg/tensor"
)

// allocated is how many bytes f allocates on the heap.
func allocated(f func()) uint64 {
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// manyTensors is the header of n F32 tensors of one element each.
func manyTensors(n int) string {
	var b strings.Builder
	b.WriteByte('{')
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"layer.%d.weight":{"dtype":"F32","shape":[1],"data_offsets":[%d,%d]}`, i, 4*i, 4*i+4)
	}
	b.WriteByte('}')
	return b.String()
}

// Header parsing costs a small multiple of the header's bytes (issue 9 item 12): before, a
// header of a million tensors allocated 14 times its size, and one shape of 33 million
// dimensions 30 times (1.9 GB) before it was even accepted.
func TestHeaderAllocations(t *testing.T) {
	const n = 50_000
	js := manyTensors(n)
	file := fileOf(js, make([]byte, 4*n))
	var s *tensor.Set
	var err error
	got := allocated(func() { s, err = Parse(file) })
	if err != nil {
		t.Fatal(err)
	}
	if s.Len() != n {
		t.Fatalf("%d tensors, want %d", s.Len(), n)
	}
	// Measured: 3.9 times for a million tensors (names, shapes, offsets, index, Set).
	if limit := uint64(6 * len(js)); got > limit {
		t.Errorf("parsing a %d-byte header of %d tensors allocated %d bytes, over %d", len(js), n, got, limit)
	}

	// A shape of 2 million dimensions is refused at the 65th, having allocated next to nothing.
	js = `{"w":{"dtype":"F32","shape":[` + strings.Repeat("1,", 2_000_000) + `1],"data_offsets":[0,4]}}`
	file = fileOf(js, make([]byte, 4))
	got = allocated(func() { _, err = Parse(file) })
	if !errors.Is(err, ErrLimit) || len(err.Error()) > maxErrorLen {
		t.Errorf("2M dimensions: %.300v", err)
	}
	if got > 64<<10 {
		t.Errorf("refusing a %d-byte shape allocated %d bytes", len(js), got)
	}

	// Long values are quoted in part: a 1 MB name, a 1 MB number, a 1 MB dtype.
	mb := strings.Repeat("ü", 1<<19)
	for _, js := range []string{
		`{"` + mb + `":{"dtype":"F31","shape":[1],"data_offsets":[0,4]}}`,
		`{"w":{"dtype":"F32","shape":[1` + strings.Repeat("0", 1<<20) + `],"data_offsets":[0,4]}}`,
		`{"w":{"dtype":"` + mb + `","shape":[1],"data_offsets":[0,4]}}`,
		`{"w":{"dtype":"F32","shape":"` + mb + `","data_offsets":[0,4]}}`,
		`{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"__metadata__":{"` + mb + `":1}}`,
	} {
		_, err := Parse(fileOf(js, make([]byte, 4)))
		if err == nil || len(err.Error()) > maxErrorLen || !strings.Contains(err.Error(), "bytes)") {
			t.Errorf("error of %d bytes: %.300v", len(err.Error()), err)
		}
	}
}

// OpenAll parses a layout once for all the files that share it: names and shapes are shared,
// metadata and scales are each file's own, and files of another layout are parsed apart.
func TestOpenAllSharesLayout(t *testing.T) {
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(21, 22))
	layout := tensor.Layout{
		{Name: "layer.w", DType: tensor.F32, Shape: []int{3, 2}}, {Name: "layer.q", DType: tensor.I8, Shape: []int{5}},
		{Name: "layer.b", DType: tensor.BF16, Shape: []int{7}},
	}
	var paths []string
	var want []*tensor.Set
	for i := range 4 {
		l := layout
		if i == 3 {
			l = layout[:2] // another layout
		}
		s := randomSet(t, rng, l, map[string]string{"num_examples": strings.Repeat("9", i+1)})
		p := filepath.Join(dir, fmt.Sprintf("c%d.safetensors", i))
		if err := WriteFile(p, s); err != nil {
			t.Fatal(err)
		}
		paths, want = append(paths, p), append(want, s)
	}
	sets, err := OpenAll(paths)
	if err != nil {
		t.Fatal(err)
	}
	defer CloseAll(sets)
	for i, s := range sets {
		checkSame(t, s, want[i])
		if s.Source != paths[i] {
			t.Errorf("source %q, want %q", s.Source, paths[i])
		}
	}
	// (Names of more than one byte: Go makes every 1-byte string point at one static table.)
	name := func(s *tensor.Set, i int) *byte { return unsafe.StringData(s.At(i).Name) }
	for i := 1; i < 3; i++ {
		if name(sets[i], 0) != name(sets[0], 0) {
			t.Errorf("file %d does not share the layout of file 0", i)
		}
	}
	if name(sets[3], 0) == name(sets[0], 0) {
		t.Error("a file of another layout shares the layout of file 0")
	}

	// The layout's cost is paid once: 8 clients of 20k tensors allocate far less than 8 times one.
	const n = 20_000
	js := manyTensors(n)
	paths = paths[:0]
	for i := range 8 {
		meta := fmt.Sprintf(`{"__metadata__":{"num_examples":"%d"},`, 10*i)
		p := filepath.Join(dir, fmt.Sprintf("m%d.safetensors", i))
		if err := writeBytes(p, fileOf(meta+js[1:], make([]byte, 4*n))); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	one := allocated(func() { sets, err = OpenAll(paths[:1]); CloseAll(sets) })
	all := allocated(func() { sets, err = OpenAll(paths); CloseAll(sets) })
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("one client: %d bytes, eight: %d bytes", one, all)
	// Measured 3.7 times (each client's Set and tensors remain its own); unshared it is 8.
	if all > 5*one {
		t.Errorf("8 clients of one layout allocated %d bytes, one client %d: the layout is not shared", all, one)
	}
}

func writeBytes(path string, b []byte) error { return os.WriteFile(path, b, 0o644) }
