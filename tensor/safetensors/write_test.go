package safetensors

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/wattagg/wattagg/tensor"
)

var allDTypes = []tensor.DType{tensor.F32, tensor.F64, tensor.F16, tensor.BF16, tensor.I8, tensor.U32}

// randomSet makes a Set of the given layout filled with random bytes, I8 scales set.
func randomSet(t testing.TB, rng *rand.Rand, layout tensor.Layout, meta map[string]string) *tensor.Set {
	t.Helper()
	s, err := tensor.NewSet()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range layout {
		x, err := tensor.New(f.Name, f.DType, f.Shape...)
		if err != nil {
			t.Fatal(err)
		}
		for i := range x.Bytes() {
			x.Bytes()[i] = byte(rng.Uint32())
		}
		if f.DType == tensor.I8 {
			x.Scale = float32(rng.ExpFloat64()) * 1e-3
		}
		if err := s.Add(x); err != nil {
			t.Fatal(err)
		}
	}
	maps.Copy(s.Metadata, meta)
	return s
}

// checkSame checks that got has the layout, bytes, scales and metadata of want.
func checkSame(t testing.TB, got, want *tensor.Set) {
	t.Helper()
	if !got.Layout().Equal(want.Layout()) {
		t.Fatalf("layout %v, want %v", got.Layout(), want.Layout())
	}
	for i, w := range want.Tensors() {
		g := got.At(i)
		if !bytes.Equal(g.Bytes(), w.Bytes()) {
			t.Errorf("tensor %q: bytes differ", w.Name)
		}
		if g.Scale != w.Scale {
			t.Errorf("tensor %q: scale %v, want %v", w.Name, g.Scale, w.Scale)
		}
	}
	if !maps.Equal(got.Metadata, want.Metadata) {
		t.Errorf("metadata %v, want %v", got.Metadata, want.Metadata)
	}
}

// checkFile checks the file at path as the reference reads it: data section at a multiple of
// 4096, header padded with spaces, nothing after the data.
func checkFile(t testing.TB, path string, dataSize int64) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := int64(binary.LittleEndian.Uint64(b))
	if (8+n)%4096 != 0 || int64(len(b)) != 8+n+dataSize {
		t.Errorf("header length %d, file %d bytes, data %d: want 8+N a multiple of 4096 and the data right after",
			n, len(b), dataSize)
	}
	js := bytes.TrimRight(b[8:8+n], " ")
	if js[len(js)-1] != '}' {
		t.Errorf("header is not JSON padded with spaces: %q", b[8:8+n])
	}
}

// checkNoTemp checks that dir holds exactly the named files (no temporary file is left).
func checkNoTemp(t testing.TB, dir string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if !slices.Equal(got, names) {
		t.Errorf("directory holds %q, want %q", got, names)
	}
}

func TestRoundTripEveryDType(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, dt := range allDTypes {
		for _, shape := range [][]int{{}, {0}, {1}, {3}, {5, 7}, {2, 0, 3}, {1031}, {1024, 1025}} {
			name := fmt.Sprintf("%s/%v", dt, shape)
			t.Run(name, func(t *testing.T) {
				layout := tensor.Layout{{Name: "x", DType: dt, Shape: shape}}
				want := randomSet(t, rng, layout, map[string]string{"dtype": dt.String()})
				roundTrip(t, want)
			})
		}
	}
}

// roundTrip writes want with WriteFile (direct on and off) and with a Writer, and reads each
// file back with Open (populate on and off) and ReadHeader.
func roundTrip(t *testing.T, want *tensor.Set) {
	t.Helper()
	dir := t.TempDir()
	for _, direct := range []bool{true, false} {
		path := filepath.Join(dir, fmt.Sprintf("direct=%v.safetensors", direct))
		if err := WriteFile(path, want, WithDirectIO(direct)); err != nil {
			t.Fatal(err)
		}
		checkFile(t, path, want.NumBytes())
		for _, populate := range []bool{true, false} {
			got, err := Open(path, WithPopulate(populate))
			if err != nil {
				t.Fatal(err)
			}
			checkSame(t, got, want)
			got.Close()
		}
		h, err := ReadHeader(path)
		if err != nil {
			t.Fatal(err)
		}
		if !tensor.Layout(h.Fields).Equal(want.Layout()) || h.DataOffset%4096 != 0 {
			t.Errorf("header %+v", h)
		}
	}
	// Create keeps the layout's order in the data, so give it one that aligns every tensor.
	want = reorder(t, want, widestFirst(want.Layout()))
	path := filepath.Join(dir, "writer.safetensors")
	w, err := Create(path, want.Layout(), want.Metadata)
	if err != nil {
		t.Fatal(err)
	}
	// Tensors in reverse order, to write at offsets rather than sequentially.
	for i := want.Len() - 1; i >= 0; i-- {
		x := want.At(i)
		if x.DType == tensor.I8 {
			if err := w.SetScale(i, x.Scale); err != nil {
				t.Fatal(err)
			}
		}
		if n, err := w.WriteAt(x.Bytes(), w.TensorOffset(i)); err != nil || n != len(x.Bytes()) {
			t.Fatal(n, err)
		}
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	got, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	checkSame(t, got, want)
	checkNoTemp(t, dir, "direct=false.safetensors", "direct=true.safetensors", "writer.safetensors")
}

// reorder is s with its tensors in the given order.
func reorder(t testing.TB, s *tensor.Set, order []int) *tensor.Set {
	t.Helper()
	out, err := tensor.NewSet()
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range order {
		if err := out.Add(s.At(i)); err != nil {
			t.Fatal(err)
		}
	}
	out.Metadata = s.Metadata
	return out
}

// Odd-sized tensors (3 BF16, 3 I8) before wider ones: WriteFile lays the data out widest
// first, so every tensor is aligned for its typed view, and the header keeps the Set's order,
// so Open returns it. Create, which keeps the caller's order, refuses this layout.
func TestRoundTripOddOffsets(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	layout := tensor.Layout{
		{Name: "b", DType: tensor.BF16, Shape: []int{3}},
		{Name: "f", DType: tensor.F32, Shape: []int{5}},
		{Name: "q", DType: tensor.I8, Shape: []int{3}},
		{Name: "d", DType: tensor.F64, Shape: []int{2}},
		{Name: "scalar", DType: tensor.F16, Shape: []int{}},
		{Name: "empty", DType: tensor.U32, Shape: []int{0, 4}},
		{Name: "u", DType: tensor.U32, Shape: []int{1}},
	}
	want := randomSet(t, rng, layout, map[string]string{"format": "pt", "": "empty key", "ü": "\u2028<&>"})
	roundTrip(t, want)

	path := filepath.Join(t.TempDir(), "odd.safetensors")
	if err := WriteFile(path, want); err != nil {
		t.Fatal(err)
	}
	h, err := ReadHeader(path)
	if err != nil {
		t.Fatal(err)
	}
	// Widest first, stably: d (F64), f, empty, u (4 bytes), b, scalar (2), q (1).
	wantBegin := []int64{40, 16, 48, 0, 46, 36, 36}
	if !slices.Equal(h.Begin, wantBegin) {
		t.Errorf("data offsets %v, want %v", h.Begin, wantBegin)
	}
	got, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	checkSame(t, got, want)
	for _, x := range got.Tensors() {
		if !tensor.IsAligned(x.Bytes(), x.DType.Size()) {
			t.Errorf("tensor %q is not aligned for %s", x.Name, x.DType)
		}
	}
	f, _ := got.Tensor("f")
	if _, err := f.F32(); err != nil {
		t.Errorf("F32 view: %v", err)
	}
	_, err = Create(path, layout, nil)
	checkError(t, err, tensor.ErrUnaligned, path, "f", "F32 data would start at offset 6, not a multiple of its 4-byte elements")
}

// The case of issue 9 item 7: i8[3] then f32[2] put the F32 tensor at byte 4099 of the file.
func TestI8ThenF32Aligned(t *testing.T) {
	q, err := tensor.New("q", tensor.I8, 3)
	if err != nil {
		t.Fatal(err)
	}
	f, err := tensor.FromF32("f", []int{2}, []float32{1.5, -2})
	if err != nil {
		t.Fatal(err)
	}
	s, err := tensor.NewSet(q, f)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "qf.safetensors")
	if err := WriteFile(path, s); err != nil {
		t.Fatal(err)
	}
	got, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	if names := got.Layout(); names[0].Name != "q" || names[1].Name != "f" {
		t.Errorf("order %v, want q then f", names)
	}
	v, err := got.At(1).F32()
	if err != nil || !slices.Equal(v, []float32{1.5, -2}) {
		t.Errorf("F32 view %v, %v", v, err)
	}
}

// recordingDirect stands for the O_DIRECT descriptor, recording what is sent to it and
// writing it through the buffered one.
type recordingDirect struct {
	f     *os.File
	mu    sync.Mutex
	calls [][2]int64 // offset in the data section, length
	base  int64
}

func (r *recordingDirect) WriteAt(p []byte, off int64) (int, error) {
	r.mu.Lock()
	r.calls = append(r.calls, [2]int64{off - r.base, int64(len(p))})
	r.mu.Unlock()
	return r.f.WriteAt(p, off)
}
func (r *recordingDirect) Close() error { return nil }

// writeTensors sends page-aligned tensors at page-aligned offsets direct without a copy and
// stages the others into whole pages.
func TestWriteTensorsStaging(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 22))
	const big = 1 << 19 // F32 elements: 2 MiB, more than a stage
	layout := tensor.Layout{
		{Name: "aligned", DType: tensor.F32, Shape: []int{1024}}, // [0, 4096): direct as it is
		{Name: "odd", DType: tensor.F32, Shape: []int{3}},        // staged
		{Name: "fill", DType: tensor.F32, Shape: []int{1021}},    // staged, ends at 8192
		{Name: "view", DType: tensor.F32, Shape: []int{2048}},    // aligned offset, unaligned memory: staged
		{Name: "big", DType: tensor.F32, Shape: []int{big}},      // direct as it is
		{Name: "tail", DType: tensor.F32, Shape: []int{1025}},    // direct as it is, then a 4-byte tail
	}
	ts := make([]*tensor.Tensor, len(layout))
	for i, f := range layout {
		n := f.Len() * 4
		mem := tensor.PageAligned(n)
		if f.Name == "view" {
			mem = tensor.PageAligned(n + 4)[4:]
		}
		for j := range mem {
			mem[j] = byte(rng.Uint32())
		}
		var err error
		if ts[i], err = tensor.FromBytes(f.Name, f.DType, f.Shape, mem); err != nil {
			t.Fatal(err)
		}
	}
	want, err := tensor.NewSet(ts...)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "s.safetensors")
	w, err := Create(path, layout, nil)
	if err != nil {
		t.Fatal(err)
	}
	if w.direct == nil {
		t.Skip("no O_DIRECT on the temp dir's filesystem")
	}
	w.direct.Close()
	rec := &recordingDirect{f: w.f, base: w.DataOffset()}
	w.direct = rec
	if err := w.writeTensors(want.Tensors()); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	wantCalls := [][2]int64{{0, 4096}, {4096, 12288}, {16384, 4 * big}, {16384 + 4*big, 4096}}
	if !slices.Equal(rec.calls, wantCalls) {
		t.Errorf("direct writes %v, want %v", rec.calls, wantCalls)
	}
	got, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	checkSame(t, got, want)
}

func TestI8Scales(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	layout := tensor.Layout{
		{Name: "q1", DType: tensor.I8, Shape: []int{4}},
		{Name: "w", DType: tensor.F32, Shape: []int{2}},
		{Name: "q2", DType: tensor.I8, Shape: []int{0}},
	}
	want := randomSet(t, rng, layout, map[string]string{"round": "7"})
	want.At(0).Scale = math.SmallestNonzeroFloat32
	want.At(2).Scale = math.MaxFloat32
	path := filepath.Join(t.TempDir(), "q.safetensors")
	if err := WriteFile(path, want); err != nil {
		t.Fatal(err)
	}
	got, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	checkSame(t, got, want)
	if got.At(1).Scale != 1 {
		t.Errorf("F32 scale %v, want 1", got.At(1).Scale)
	}
	h, err := ReadHeader(path)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(h.Scales, []float32{math.SmallestNonzeroFloat32, 1, math.MaxFloat32}) {
		t.Errorf("header scales %v", h.Scales)
	}
	raw, _ := os.ReadFile(path)
	for _, s := range []string{`"wattagg.i8_scale.q1":"1e-45"`, `"wattagg.i8_scale.q2":"3.4028235e+38"`} {
		if !bytes.Contains(raw, []byte(s)) {
			t.Errorf("header does not hold %s", s)
		}
	}
	if bytes.Contains(raw, []byte(`i8_scale.w"`)) {
		t.Error("header holds a scale for an F32 tensor")
	}
}

// The header room reserved at Create fits any scale: formatScale is never longer than
// maxScaleLen, and reads back exactly.
func TestScaleText(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	edge := []float32{1, -1, math.MaxFloat32, -math.MaxFloat32, math.SmallestNonzeroFloat32,
		-1.17549435e-38, -1.1754942e-38, -0.00012345679, 123456.79, 1e-5, -9.9999994e-5}
	for i := range 1 << 20 {
		s := math.Float32frombits(rng.Uint32())
		if i < len(edge) {
			s = edge[i]
		}
		s = float32(math.Abs(float64(s))) // the formatting is the same; negatives are refused
		if s == 0 || math.IsInf(float64(s), 0) || math.IsNaN(float64(s)) {
			continue
		}
		text := formatScale(s)
		if len(text) > maxScaleLen {
			t.Fatalf("scale %v is written as %q, longer than %d", s, text, maxScaleLen)
		}
		if back, err := parseScale(text); err != nil || back != s {
			t.Fatalf("scale %v written as %q reads back as %v, %v", s, text, back, err)
		}
	}
}

// Headers whose size falls on either side of a 4096-byte boundary, with I8 placeholders that
// are longer than the scales finally written.
func TestHeaderRoom(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	dir := t.TempDir()
	for pad := 3950; pad < 4120; pad++ {
		layout := tensor.Layout{{Name: "q", DType: tensor.I8, Shape: []int{1}}, {Name: "f", DType: tensor.F16, Shape: []int{1}}}
		want := randomSet(t, rng, layout, map[string]string{"pad": strings.Repeat("x", pad)})
		want.At(0).Scale = 0.5
		path := filepath.Join(dir, "h.safetensors")
		if err := WriteFile(path, want); err != nil {
			t.Fatal(err)
		}
		checkFile(t, path, 3)
		got, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		checkSame(t, got, want)
		got.Close()
	}
}

func TestEmptySet(t *testing.T) {
	s := must(tensor.NewSet())(t)
	roundTrip(t, s)
}

// Concurrent writers of disjoint 4096-aligned chunks from page-aligned memory (direct), of
// unaligned chunks (buffered), and of the unaligned tail of the data section.
func TestConcurrentWriteAt(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	const size = 3<<20 + 1234 // bytes of one I8 tensor: the section ends mid-page
	layout := tensor.Layout{{Name: "q", DType: tensor.I8, Shape: []int{size}}}
	want := randomSet(t, rng, layout, nil)
	want.At(0).Scale = 1
	for _, direct := range []bool{true, false} {
		t.Run(fmt.Sprintf("direct=%v", direct), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "c.safetensors")
			w, err := Create(path, layout, nil, WithDirectIO(direct))
			if err != nil {
				t.Fatal(err)
			}
			defer w.Abort()
			switch got := w.directOK.Load(); {
			case got && !direct:
				t.Fatal("direct descriptor in use with WithDirectIO(false)")
			case !got && direct:
				t.Log("no O_DIRECT on the temp dir's filesystem: all writes buffered")
			}
			src := tensor.PageAligned(size)
			copy(src, want.At(0).Bytes())
			// Chunks of 64 KiB, then the last one split at an unaligned point.
			type chunk struct{ lo, hi int }
			var chunks []chunk
			for lo := 0; lo < size; lo += 64 << 10 {
				chunks = append(chunks, chunk{lo, min(lo+64<<10, size)})
			}
			last := chunks[len(chunks)-1]
			chunks = append(chunks[:len(chunks)-1], chunk{last.lo, last.lo + 100}, chunk{last.lo + 100, last.hi})
			rng.Shuffle(len(chunks), func(i, j int) { chunks[i], chunks[j] = chunks[j], chunks[i] })
			var wg sync.WaitGroup
			errs := make(chan error, len(chunks))
			for _, c := range chunks {
				wg.Go(func() {
					if _, err := w.WriteAt(src[c.lo:c.hi], int64(c.lo)); err != nil {
						errs <- err
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			if err := w.Commit(); err != nil {
				t.Fatal(err)
			}
			got, err := Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer got.Close()
			checkSame(t, got, want)
		})
	}
}

// directLen sends whole aligned pages direct, and the tail of the data section buffered.
func TestDirectLen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.safetensors")
	w, err := Create(path, tensor.Layout{{Name: "x", DType: tensor.I8, Shape: []int{3*4096 + 5}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort()
	if !w.directOK.Load() {
		t.Skip("no O_DIRECT on the temp dir's filesystem")
	}
	buf := tensor.PageAligned(4 * 4096)
	d := w.dataOffset
	cases := []struct {
		p    []byte
		abs  int64
		want int
	}{
		{buf[:4096], d, 4096},
		{buf[:8192], d + 4096, 8192},
		{buf[:4095], d, 0},               // not a whole page, not the end
		{buf[1 : 4096+1], d, 0},          // unaligned memory
		{buf[:4096], d + 1, 0},           // unaligned offset
		{buf[:4096+5], d + 2*4096, 4096}, // ends the data section: direct, then a 5-byte tail
		{buf[:5], d + 3*4096, 0},         // only the tail
		{buf[:0], d, 0},
	}
	for _, c := range cases {
		if got := w.directLen(c.p, c.abs); got != c.want {
			t.Errorf("directLen(%d bytes at %d) = %d, want %d", len(c.p), c.abs-d, got, c.want)
		}
	}
}

func TestCommitIncomplete(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "i.safetensors")
	layout := tensor.Layout{{Name: "x", DType: tensor.F32, Shape: []int{4}}}
	for _, c := range []struct {
		name   string
		writes [][2]int // [offset, length]
		msg    string
	}{
		{"nothing", nil, "0 of 16 bytes written"},
		{"half", [][2]int{{0, 8}}, "8 of 16 bytes written"},
		{"overlap", [][2]int{{0, 12}, {4, 12}}, "24 bytes written into 16"},
	} {
		t.Run(c.name, func(t *testing.T) {
			w, err := Create(path, layout, nil)
			if err != nil {
				t.Fatal(err)
			}
			for _, wr := range c.writes {
				if _, err := w.WriteAt(make([]byte, wr[1]), int64(wr[0])); err != nil {
					t.Fatal(err)
				}
			}
			err = w.Commit()
			checkError(t, err, ErrIncomplete, path, "", c.msg)
			checkNoTemp(t, dir)
			if err := w.Abort(); err != nil {
				t.Errorf("Abort after a failed Commit: %v", err)
			}
		})
	}
}

func TestWriterMisuse(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "m.safetensors")
	layout := tensor.Layout{{Name: "x", DType: tensor.F32, Shape: []int{4}}, {Name: "q", DType: tensor.I8, Shape: []int{1}}}
	w, err := Create(path, layout, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		off int64
		n   int
	}{{-1, 1}, {17, 1}, {16, 2}, {0, 18}, {math.MaxInt64, 1}} {
		if _, err := w.WriteAt(make([]byte, c.n), c.off); !errors.Is(err, ErrOffset) {
			t.Errorf("WriteAt(%d bytes at %d): %v, want ErrOffset", c.n, c.off, err)
		}
	}
	if err := w.SetScale(0, 2); !errors.Is(err, tensor.ErrDType) {
		t.Errorf("SetScale of an F32 tensor: %v", err)
	}
	for _, s := range []float32{0, -1, float32(math.Copysign(0, -1)), float32(math.Inf(1)), float32(math.NaN())} {
		if err := w.SetScale(1, s); !errors.Is(err, ErrFormat) {
			t.Errorf("SetScale(%v): %v", s, err)
		}
	}
	if err := w.SetScale(2, 1); !errors.Is(err, tensor.ErrNotFound) {
		t.Errorf("SetScale of tensor 2: %v", err)
	}
	if _, err := w.WriteAt(make([]byte, 17), 0); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteAt(make([]byte, 1), 0); !errors.Is(err, os.ErrClosed) {
		t.Errorf("WriteAt after Commit: %v", err)
	}
	if err := w.Commit(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("second Commit: %v", err)
	}
	if err := w.SetScale(1, 2); !errors.Is(err, os.ErrClosed) {
		t.Errorf("SetScale after Commit: %v", err)
	}
	if err := w.Abort(); err != nil {
		t.Errorf("Abort after Commit: %v", err)
	}
	checkNoTemp(t, dir, "m.safetensors")
}

func TestCreateRejects(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "bad.safetensors")
	f32 := func(name string, shape ...int) tensor.Field {
		return tensor.Field{Name: name, DType: tensor.F32, Shape: shape}
	}
	for _, c := range []struct {
		name     string
		layout   tensor.Layout
		meta     map[string]string
		sentinel error
		tensor   string
	}{
		{"duplicate", tensor.Layout{f32("a", 1), f32("a", 2)}, nil, tensor.ErrDuplicateName, "a"},
		{"reserved name", tensor.Layout{f32("__metadata__", 1)}, nil, ErrFormat, "__metadata__"},
		{"invalid UTF-8 name", tensor.Layout{f32("a\xff", 1)}, nil, ErrFormat, "a\xff"},
		{"invalid dtype", tensor.Layout{{Name: "a", DType: tensor.Invalid, Shape: []int{1}}}, nil, tensor.ErrDType, "a"},
		{"negative dim", tensor.Layout{f32("a", 2, -1)}, nil, tensor.ErrShape, "a"},
		{"too many elements", tensor.Layout{f32("a", 1<<30, 1<<30)}, nil, tensor.ErrShape, "a"},
		{"data over 2^62", hugeLayout(), nil, tensor.ErrShape, "t2048"},
		{"scale key", nil, map[string]string{ScaleKeyPrefix + "a": "1"}, ErrFormat, ""},
		{"invalid UTF-8 metadata", nil, map[string]string{"a": "\xff"}, ErrFormat, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Create(path, c.layout, c.meta)
			checkError(t, err, c.sentinel, path, c.tensor, "")
			checkNoTemp(t, dir)
		})
	}
}

// hugeLayout needs 2^62 + 2^51 bytes: 2049 tensors of 2^51 bytes.
func hugeLayout() tensor.Layout {
	l := make(tensor.Layout, 2049)
	for i := range l {
		l[i] = tensor.Field{Name: fmt.Sprintf("t%d", i), DType: tensor.F64, Shape: []int{1 << 24, 1 << 24}}
	}
	return l
}

func TestWriteFileClosedSet(t *testing.T) {
	rng := rand.New(rand.NewPCG(15, 16))
	s := randomSet(t, rng, tensor.Layout{{Name: "x", DType: tensor.F32, Shape: []int{3}}}, nil)
	s.Close()
	dir := t.TempDir()
	path := filepath.Join(dir, "c.safetensors")
	checkError(t, WriteFile(path, s), tensor.ErrShape, path, "x", "is the set closed?")
	checkNoTemp(t, dir)
}

func TestAbortLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "a.safetensors")
	w, err := Create(path, tensor.Layout{{Name: "x", DType: tensor.F64, Shape: []int{1000}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tmp := w.tmp
	if !strings.HasPrefix(filepath.Base(tmp), ".a.safetensors.wattagg-tmp-") || filepath.Dir(tmp) != dir {
		t.Errorf("temporary file %q, want %s/.a.safetensors.wattagg-tmp-*", tmp, dir)
	}
	if fi, err := os.Stat(tmp); err != nil || fi.Size() != w.DataOffset()+8000 {
		t.Errorf("temporary file not allocated to its final size: %v %v", fi, err)
	}
	if _, err := w.WriteAt(make([]byte, 8000), 0); err != nil {
		t.Fatal(err)
	}
	if err := w.Abort(); err != nil {
		t.Fatal(err)
	}
	if err := w.Abort(); err != nil {
		t.Errorf("second Abort: %v", err)
	}
	if err := w.Commit(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Commit after Abort: %v", err)
	}
	checkNoTemp(t, dir)
}

// A failed write leaves the previous file at path as it was.
func TestFailedWriteKeepsPrevious(t *testing.T) {
	rng := rand.New(rand.NewPCG(17, 18))
	dir := t.TempDir()
	path := filepath.Join(dir, "p.safetensors")
	layout := tensor.Layout{{Name: "x", DType: tensor.F32, Shape: []int{100}}}
	old := randomSet(t, rng, layout, map[string]string{"v": "1"})
	if err := WriteFile(path, old); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(path)

	w, err := Create(path, layout, map[string]string{"v": "2"})
	if err != nil {
		t.Fatal(err)
	}
	w.WriteAt(make([]byte, 200), 0)
	if err := w.Commit(); !errors.Is(err, ErrIncomplete) {
		t.Fatal(err)
	}
	w, err = Create(path, layout, map[string]string{"v": "3"})
	if err != nil {
		t.Fatal(err)
	}
	w.WriteAt(make([]byte, 400), 0)
	w.Abort()

	after, _ := os.ReadFile(path)
	if !bytes.Equal(before, after) {
		t.Error("the previous file changed")
	}
	checkNoTemp(t, dir, "p.safetensors")
}

// A Set read from a file can be written back over that file while it is mapped.
func TestOverwriteWhileMapped(t *testing.T) {
	rng := rand.New(rand.NewPCG(19, 20))
	path := filepath.Join(t.TempDir(), "o.safetensors")
	want := randomSet(t, rng, tensor.Layout{{Name: "x", DType: tensor.BF16, Shape: []int{70000}}}, nil)
	if err := WriteFile(path, want); err != nil {
		t.Fatal(err)
	}
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	s.Metadata["gen"] = "2"
	if err := WriteFile(path, s); err != nil {
		t.Fatal(err)
	}
	s.Close()
	got, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	want.Metadata["gen"] = "2"
	checkSame(t, got, want)
}

func TestCreateInReadOnlyDir(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o555); err != nil {
		t.Fatal(err)
	}
	defer os.Chmod(dir, 0o755)
	if f, err := os.Create(filepath.Join(dir, "probe")); err == nil {
		// Root writes into read-only directories; sysfs refuses new files even to root.
		f.Close()
		os.Remove(f.Name())
		if dir = "/sys"; runtime.GOOS != "linux" {
			t.Skip("the directory is writable anyway (running as root)")
		}
	}
	path := filepath.Join(dir, "r.safetensors")
	_, err := Create(path, tensor.Layout{{Name: "x", DType: tensor.F32, Shape: []int{1}}}, nil)
	if !errors.Is(err, os.ErrPermission) || !strings.HasPrefix(err.Error(), path+": ") {
		t.Errorf("Create in a read-only directory: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".r.safetensors*")); len(left) != 0 {
		t.Errorf("left behind: %q", left)
	}
}

func TestCreateInMissingDir(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "missing", "r.safetensors")
	_, err := Create(path, tensor.Layout{{Name: "x", DType: tensor.F32, Shape: []int{1}}}, nil)
	if !errors.Is(err, os.ErrNotExist) || !strings.HasPrefix(err.Error(), path+": ") {
		t.Errorf("Create in a missing directory: %v", err)
	}
	// A file where the directory should be.
	os.WriteFile(filepath.Join(dir, "file"), nil, 0o644)
	path = filepath.Join(dir, "file", "r.safetensors")
	if _, err := Create(path, nil, nil); err == nil || !strings.HasPrefix(err.Error(), path+": ") {
		t.Errorf("Create under a file: %v", err)
	}
	checkNoTemp(t, dir, "file")
}
