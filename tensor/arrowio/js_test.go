package arrowio

import (
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"github.com/wattagg/wattagg/tensor"
)

// TestArrowJSWriter reads an update written by another Arrow implementation: Arrow JS
// (apache-arrow from npm, pinned in testdata/js/package.json), running testdata/js/write_update.mjs,
// the README's pyarrow write_update in JavaScript (utf8 names, int64 offsets, binary chunks of
// 4 KiB, the layout under wattagg.layout, two more metadata keys; f32 in several chunks, f64,
// i8 with its scale, bf16). Every value must come back as the script computed it (pyarrow
// itself: TestPyarrowWriteUpdate). .ci/run installs the script's dependencies (npm ci), and
// the test fails without node or them when CI=true and skips elsewhere.
func TestArrowJSWriter(t *testing.T) {
	dir, err := filepath.Abs(filepath.Join("testdata", "js"))
	if err != nil {
		t.Fatal(err)
	}
	node, err := exec.LookPath("node")
	if err == nil {
		_, err = os.Stat(filepath.Join(dir, "node_modules", "apache-arrow", "package.json"))
	}
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("Arrow JS writer: %v (.ci/run runs npm ci --prefix tensor/arrowio/testdata/js)", err)
		}
		t.Skipf("no node or no Arrow JS (npm ci --prefix tensor/arrowio/testdata/js): %v", err)
	}
	out := filepath.Join(t.TempDir(), "update.arrows")
	cmd := exec.Command(node, filepath.Join(dir, "write_update.mjs"), out)
	cmd.Dir = dir
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("node write_update.mjs: %v\n%s", err, b)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	set, err := ReadStream(f, WithSource(out))
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()
	if set.Metadata["num_examples"] != "42" || set.Metadata["client"] != "js" {
		t.Errorf("metadata %v", set.Metadata)
	}
	want := []struct {
		name  string
		dtype tensor.DType
		shape []int
		scale float32
	}{{"fc.weight", tensor.F32, []int{3, 1000}, 1}, {"fc.bias", tensor.F64, []int{7}, 1}, {"q", tensor.I8, []int{5}, 0.0125}, {"emb", tensor.BF16, []int{2, 2}, 1}}
	ts := set.Tensors()
	if len(ts) != len(want) {
		t.Fatalf("%d tensors, want %d", len(ts), len(want))
	}
	for i, w := range want {
		if ts[i].Name != w.name || ts[i].DType != w.dtype || !slices.Equal(ts[i].Shape, w.shape) || ts[i].Scale != w.scale {
			t.Fatalf("tensor %d: %s %s %v scale %v, want %s %s %v scale %v", i, ts[i].Name, ts[i].DType, ts[i].Shape, ts[i].Scale, w.name, w.dtype, w.shape, w.scale)
		}
	}
	// The script's values: f32 i*0.25-100, f64 1/(i+1), i8 2i-4, bf16 bits 0x3f80+i.
	f32, err := ts[0].F32()
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range f32 {
		if v != float32(i)*0.25-100 {
			t.Fatalf("fc.weight[%d] = %v, want %v", i, v, float32(i)*0.25-100)
		}
	}
	f64, err := ts[1].F64()
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range f64 {
		if v != 1/float64(i+1) {
			t.Fatalf("fc.bias[%d] = %v", i, v)
		}
	}
	i8, err := ts[2].I8()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(i8, []int8{-4, -2, 0, 2, 4}) {
		t.Fatalf("q = %v", i8)
	}
	bf, err := ts[3].U16()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(bf, []uint16{0x3f80, 0x3f81, 0x3f82, 0x3f83}) {
		t.Fatalf("emb bits = %#x", bf)
	}
	if math.Float32frombits(uint32(bf[0])<<16) != 1 {
		t.Fatal("bf16 bits")
	}
}
