package bench

import (
	"context"
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// Write's files hold every client's Value(k, j) in its dtype, for models of one block, of
// several with a partial last one, and of many fields, with clients in every dtype spread over
// the workers; the num_examples metadata is written where set.
func TestFederationWrite(t *testing.T) {
	for _, m := range []Model{Flat(1000), Flat(2*writeBlock + 77), Transformer(600_000)} {
		f := Federation{Model: m, Seed: 5, Clients: []Client{
			{DType: tensor.F32, NumExamples: 10}, {DType: tensor.BF16}, {DType: tensor.F16, NumExamples: 3},
			{DType: tensor.F32}, {DType: tensor.BF16, NumExamples: 7},
		}}
		var mu sync.Mutex // progress is called from every worker
		var last, total int64
		paths, err := f.Write(context.Background(), t.TempDir(), func(done, all int64) {
			mu.Lock()
			last, total = max(last, done), all
			mu.Unlock()
		})
		if err != nil {
			t.Fatal(err)
		}
		if last != total || total == 0 {
			t.Fatalf("progress ended at %d of %d", last, total)
		}
		for k, p := range paths {
			checkClientFile(t, &f, k, p)
		}
	}
}

func checkClientFile(t *testing.T, f *Federation, k int, path string) {
	t.Helper()
	set, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()
	c := f.Clients[k]
	if got := set.Metadata["num_examples"]; (c.NumExamples > 0) != (got != "") {
		t.Fatalf("client %d: num_examples %q", k, got)
	}
	j := int64(0)
	for _, tt := range set.Tensors() {
		if tt.DType != c.DType {
			t.Fatalf("client %d: tensor %s is %s, want %s", k, tt.Name, tt.DType, c.DType)
		}
		b := tt.Bytes()
		for e := range tt.Len() {
			want := make([]byte, 4)
			if err := encode(want, 0, c.DType, f.Value(k, j)); err != nil {
				t.Fatal(err)
			}
			es := c.DType.Size()
			if string(b[es*e:es*(e+1)]) != string(want[:es]) {
				got := math.Float32frombits(binary.LittleEndian.Uint32(append(b[es*e:es*(e+1):es*(e+1)], 0, 0, 0)[:4]))
				t.Fatalf("client %d (%s), parameter %d: %v, want the encoding of %v", k, c.DType, j, got, f.Value(k, j))
			}
			j++
		}
	}
	if j != f.Model.Params() {
		t.Fatalf("client %d: %d parameters, want %d", k, j, f.Model.Params())
	}
}

// A client of a dtype Write cannot encode fails the call with encode's error, naming the
// client, before any file of the federation is made.
func TestFederationWriteBadDType(t *testing.T) {
	dir := t.TempDir()
	f := Federation{Model: Flat(100), Seed: 1, Clients: []Client{{DType: tensor.F32}, {DType: tensor.I8}, {DType: tensor.F32}}}
	_, err := f.Write(context.Background(), dir, nil)
	if err == nil || !strings.Contains(err.Error(), "client 1: bench: synthetic clients are f32, bf16 or f16, not i8") {
		t.Fatalf("error %v", err)
	}
	left, _ := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	if _, statErr := os.Stat(dir); statErr != nil || len(left) != 0 {
		t.Fatalf("left behind: %v (%v)", left, statErr)
	}
}
