package safetensors

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/wattagg/wattagg/tensor"
)

// FuzzParse checks that Parse never panics; that every error is one short line wrapping a
// sentinel; that a layout cache (OpenAll's) changes nothing, whether its entry is new or
// reused; and that whatever it accepts survives the writer's encoding (in memory: the header
// WriteFile would write) and a second Parse unchanged.
func FuzzParse(f *testing.F) {
	for i := range referenceFiles {
		f.Add(referenceFile(f, i))
	}
	for _, c := range badHeaders {
		f.Add(fileOf(c.js, make([]byte, c.data)))
	}
	f.Add(fileOf(`{"__metadata__":{"wattagg.i8_scale.q":"0.25"},"q":{"dtype":"I8","shape":[3],"data_offsets":[0,3]},`+
		`"b":{"dtype":"BF16","shape":[],"data_offsets":[3,5]},"e":{"dtype":"U32","shape":[0,7],"data_offsets":[5,5]},`+
		`"d":{"dtype":"F64","shape":[1],"data_offsets":[5,13]}}`, make([]byte, 13)))
	written := filepath.Join(f.TempDir(), "seed.safetensors")
	seed := randomSet(f, rand.New(rand.NewPCG(1, 1)), tensor.Layout{
		{Name: "h", DType: tensor.F16, Shape: []int{3}}, {Name: "q", DType: tensor.I8, Shape: []int{2, 2}},
	}, map[string]string{"k": "v"})
	if err := WriteFile(written, seed); err != nil {
		f.Fatal(err)
	}
	if b, err := os.ReadFile(written); err == nil {
		f.Add(b)
	}

	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := Parse(b)
		cache := newLayoutCache()
		for range 2 { // the first fills the cache, the second may hit it
			c, cerr := Parse(b, withLayoutCache(cache))
			switch {
			case (err == nil) != (cerr == nil):
				t.Fatalf("with a layout cache: %v, without: %v", cerr, err)
			case err != nil && err.Error() != cerr.Error():
				t.Fatalf("with a layout cache: %v, without: %v", cerr, err)
			case err == nil:
				checkSame(t, c, s)
			}
		}
		if err != nil {
			if !errors.Is(err, ErrFormat) && !errors.Is(err, ErrHeaderSize) && !errors.Is(err, ErrOffset) &&
				!errors.Is(err, tensor.ErrDType) {
				t.Fatalf("error wraps no sentinel: %v", err)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "safetensors: ") || strings.Contains(msg, "\n") {
				t.Fatalf("error is not one line naming the source: %q", msg)
			}
			if len(msg) > maxErrorLen {
				t.Fatalf("error of %d bytes: %.300q", len(msg), msg)
			}
			return
		}
		checkAgainstStdlib(t, b, s)
		got, err := Parse(encode(t, s))
		if err != nil {
			t.Fatal(err)
		}
		checkSame(t, got, s)
	})
}

// maxErrorLen bounds an error line: a few values of at most ~200 quoted bytes each.
const maxErrorLen = 1200

// encode is the file WriteFile writes for s, made in memory by the same code (plan, head) so
// that the fuzzer runs at parse speed instead of at fsync speed.
func encode(t testing.TB, s *tensor.Set) []byte {
	t.Helper()
	layout := s.Layout()
	w := &Writer{path: "encode", lim: DefaultLimits(), metadata: s.Metadata, scales: make([]float32, len(layout))}
	if err := w.plan(layout, widestFirst(layout)); err != nil {
		t.Fatal(err)
	}
	for i, x := range s.Tensors() {
		if x.DType == tensor.I8 {
			if err := w.SetScale(i, x.Scale); err != nil {
				t.Fatal(err)
			}
		}
	}
	head, err := w.head()
	if err != nil {
		t.Fatal(err)
	}
	b := append(head, make([]byte, w.DataSize())...)
	for i, x := range s.Tensors() {
		copy(b[w.dataOffset+w.offsets[i]:], x.Bytes())
	}
	return b
}

// checkAgainstStdlib decodes an accepted header with encoding/json and checks that it names
// the same tensors with the same shapes and the same metadata as s.
func checkAgainstStdlib(t *testing.T, file []byte, s *tensor.Set) {
	t.Helper()
	var h map[string]struct {
		Shape []int `json:"shape"`
	}
	var m struct {
		Meta map[string]string `json:"__metadata__"`
	}
	js := file[8 : 8+binary.LittleEndian.Uint64(file)]
	if err := json.Unmarshal(js, &m); err != nil {
		t.Fatalf("encoding/json rejects an accepted header: %v", err)
	}
	// __metadata__ does not decode as a tensor entry: drop it first.
	var raw map[string]json.RawMessage
	json.Unmarshal(js, &raw)
	delete(raw, "__metadata__")
	rest, _ := json.Marshal(raw)
	if err := json.Unmarshal(rest, &h); err != nil {
		t.Fatalf("encoding/json: %v", err)
	}
	if len(h) != s.Len() {
		t.Fatalf("encoding/json sees %d tensors, Parse %d", len(h), s.Len())
	}
	for _, x := range s.Tensors() {
		if e, ok := h[x.Name]; !ok || !slices.Equal(e.Shape, x.Shape) {
			t.Fatalf("tensor %q: encoding/json sees %v (found %v)", x.Name, e.Shape, ok)
		}
	}
	for k, v := range m.Meta {
		if !strings.HasPrefix(k, ScaleKeyPrefix) && s.Metadata[k] != v {
			t.Fatalf("metadata %q: encoding/json sees %q, Parse %q", k, v, s.Metadata[k])
		}
	}
}
