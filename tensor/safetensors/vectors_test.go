package safetensors

import (
	"encoding/binary"
	"encoding/hex"
	"maps"
	"math"
	"slices"
	"testing"

	"github.com/wattagg/wattagg/tensor"
)

// Files exactly as the reference implementation (Rust safetensors, which the Python package
// calls) writes them: __metadata__ first, tensors sorted by dtype alignment descending then by
// name, compact JSON, the header padded with spaces to a multiple of 8 bytes. The bytes are
// written out by hand.
var referenceFiles = []struct {
	name string
	file string // hex
}{
	{
		// save_file({"layer.weight": f32 [[1,-2],[0.5,3.25]], "emb": bf16 [1,-2,0.15625],
		//            "norm": f16 [1,65504]}, metadata={"format":"pt","num_examples":"120"})
		name: "f32 bf16 f16 with metadata",
		file: "f000000000000000" + // N = 240: 236 bytes of JSON and 4 spaces
			hex.EncodeToString([]byte(`{"__metadata__":{"format":"pt","num_examples":"120"},`+
				`"layer.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},`+
				`"emb":{"dtype":"BF16","shape":[3],"data_offsets":[16,22]},`+
				`"norm":{"dtype":"F16","shape":[2],"data_offsets":[22,26]}}    `)) +
			"0000803f" + "000000c0" + "0000003f" + "00005040" + // f32 1, -2, 0.5, 3.25
			"803f" + "00c0" + "203e" + // bf16 1, -2, 0.15625
			"003c" + "ff7b", // f16 1, 65504
	},
	{
		// serialize({"attn.0": f32 [[[0,1,2],[3,4,5]]]}): 64 bytes of JSON, no padding.
		name: "one f32",
		file: "4000000000000000" +
			hex.EncodeToString([]byte(`{"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}}`)) +
			"00000000" + "0000803f" + "00000040" + "00004040" + "00008040" + "0000a040",
	},
	{
		name: "empty",
		file: "0800000000000000" + hex.EncodeToString([]byte(`{}      `)),
	},
	{
		name: "metadata only",
		file: "2800000000000000" + hex.EncodeToString([]byte(`{"__metadata__":{"framework":"pt"}}     `)),
	},
}

func referenceFile(t testing.TB, i int) []byte {
	t.Helper()
	b, err := hex.DecodeString(referenceFiles[i].file)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestReferenceFiles(t *testing.T) {
	type want struct {
		name   string
		dtype  tensor.DType
		shape  []int
		values []float64
	}
	wants := [][]want{
		{
			{"layer.weight", tensor.F32, []int{2, 2}, []float64{1, -2, 0.5, 3.25}},
			{"emb", tensor.BF16, []int{3}, []float64{1, -2, 0.15625}},
			{"norm", tensor.F16, []int{2}, []float64{1, 65504}},
		},
		{{"attn.0", tensor.F32, []int{1, 2, 3}, []float64{0, 1, 2, 3, 4, 5}}},
		nil,
		nil,
	}
	wantMeta := []map[string]string{
		{"format": "pt", "num_examples": "120"}, {}, {}, {"framework": "pt"},
	}
	for i, rf := range referenceFiles {
		t.Run(rf.name, func(t *testing.T) {
			b := referenceFile(t, i)
			if n := binary.LittleEndian.Uint64(b); (8+n)%8 != 0 {
				t.Fatalf("header length %d: the reference pads 8+N to a multiple of 8", n)
			}
			s, err := Parse(b)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if s.Len() != len(wants[i]) {
				t.Fatalf("%d tensors, want %d", s.Len(), len(wants[i]))
			}
			for j, w := range wants[i] {
				got := s.At(j)
				if got.Name != w.name || got.DType != w.dtype || !slices.Equal(got.Shape, w.shape) || got.Scale != 1 {
					t.Errorf("tensor %d is %q %s %v scale %v, want %q %s %v scale 1",
						j, got.Name, got.DType, got.Shape, got.Scale, w.name, w.dtype, w.shape)
				}
				if v := got.Float64s(); !slices.Equal(v, w.values) {
					t.Errorf("tensor %q = %v, want %v", w.name, v, w.values)
				}
			}
			if !maps.Equal(s.Metadata, wantMeta[i]) {
				t.Errorf("metadata %v, want %v", s.Metadata, wantMeta[i])
			}
		})
	}
}

// TestReferenceFileViews checks that the tensors of a parsed file view its bytes.
func TestReferenceFileViews(t *testing.T) {
	b := referenceFile(t, 0)
	s, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	w, _ := s.Tensor("layer.weight")
	binary.LittleEndian.PutUint32(b[8+240:], math.Float32bits(7))
	if got := w.Value(0); got != 7 {
		t.Errorf("after changing the file, element 0 is %v, want 7 (not a view)", got)
	}
}
