package safetensors

import (
	"errors"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wattagg/wattagg/tensor"
)

// For every limit, the writer refuses what the reader refuses, with the same words: at the
// limit both accept; one over it, the writer refuses to write it, and the same file written
// under looser limits is refused by the reader.
func TestLimitsAgree(t *testing.T) {
	lim := Limits{HeaderSize: 2*pageSize - 8, NameLen: 16, Rank: 3}
	loose := Limits{HeaderSize: 1 << 20, NameLen: 1 << 20, Rank: 64}
	f32 := func(name string, shape ...int) tensor.Layout {
		return tensor.Layout{{Name: name, DType: tensor.F32, Shape: shape}}
	}
	// The pad that makes the header exactly lim.HeaderSize bytes of JSON and padding.
	one := f32("w", 1)
	base := len(encodeHeader(one, []int64{0}, []int64{4}, map[string]string{"pad": ""}))
	pad := func(n int) map[string]string { return map[string]string{"pad": strings.Repeat("x", n)} }
	fits := int(lim.HeaderSize) - base

	for _, c := range []struct {
		name             string
		ok, over         tensor.Layout
		okMeta, overMeta map[string]string
		msg              string
	}{
		{"name length", f32(strings.Repeat("n", 16), 2), f32(strings.Repeat("n", 17), 2), nil, nil,
			"name of 17 bytes is over the limit of 16"},
		{"rank", f32("r", 1, 2, 1), f32("r", 1, 2, 1, 1), nil, nil, "shape has more than 3 dimensions"},
		{"header size", one, one, pad(fits), pad(fits + 1), "header length 12280 is over the limit of 8184 bytes"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			rng := rand.New(rand.NewPCG(1, 1))
			okPath := filepath.Join(dir, "ok.safetensors")
			if err := WriteFile(okPath, randomSet(t, rng, c.ok, c.okMeta), WithLimits(lim)); err != nil {
				t.Fatalf("at the limit, the writer refuses: %v", err)
			}
			if s, err := Open(okPath, WithLimits(lim)); err != nil {
				t.Fatalf("at the limit, the reader refuses: %v", err)
			} else {
				s.Close()
			}

			overPath := filepath.Join(dir, "over.safetensors")
			_, err := Create(overPath, c.over, c.overMeta, WithLimits(lim))
			if !errors.Is(err, ErrLimit) || !strings.Contains(err.Error(), c.msg) {
				t.Errorf("writer: %v, want ErrLimit saying %q", err, c.msg)
			}
			if err := WriteFile(overPath, randomSet(t, rng, c.over, c.overMeta), WithLimits(loose)); err != nil {
				t.Fatal(err)
			}
			_, err = Open(overPath, WithLimits(lim))
			if !errors.Is(err, ErrLimit) || !strings.Contains(err.Error(), c.msg) {
				t.Errorf("reader: %v, want ErrLimit saying %q", err, c.msg)
			}
			if _, err := ReadHeader(overPath, WithLimits(lim)); !errors.Is(err, ErrLimit) {
				t.Errorf("ReadHeader: %v, want ErrLimit", err)
			}
			checkNoTemp(t, dir, "ok.safetensors", "over.safetensors")
		})
	}

	// More than 2^48 elements: no file can hold it, so the reader gets a header by hand.
	shape := []int{1 << 24, 1<<24 + 1}
	_, err := Create(filepath.Join(t.TempDir(), "e"), f32("e", shape...), nil)
	if !errors.Is(err, ErrLimit) || !strings.Contains(err.Error(), "[16777216 16777217] has more than 2^48 elements") {
		t.Errorf("writer, elements: %v", err)
	}
	_, err = Parse(fileOf(`{"e":{"dtype":"F32","shape":[16777216,16777217],"data_offsets":[0,0]}}`, nil))
	if !errors.Is(err, ErrLimit) || !strings.Contains(err.Error(), "[16777216 16777217] has more than 2^48 elements") {
		t.Errorf("reader, elements: %v", err)
	}

	// The default limits refuse the 100 MB name of issue 9 item 9 (10 MB here), in one short line.
	long := strings.Repeat("n", 10<<20)
	_, err = Create(filepath.Join(t.TempDir(), "n"), f32(long, 1), nil)
	if !errors.Is(err, ErrLimit) || len(err.Error()) > maxErrorLen {
		t.Errorf("a 10 MB name: %.300v (%d bytes), want a short ErrLimit", err, len(err.Error()))
	}
	zero := "invalid safetensors option: limits {HeaderSize:1 NameLen:0 Rank:1}: every limit must be positive"
	if _, err := Parse(fileOf(`{}`, nil), WithLimits(Limits{HeaderSize: 1, NameLen: 0, Rank: 1})); !errors.Is(err, ErrOption) || err.Error() != zero {
		t.Errorf("reading under a zero limit: %v, want %q", err, zero)
	}
	if _, err := Create(filepath.Join(t.TempDir(), "z"), nil, nil, WithLimits(Limits{HeaderSize: 1, NameLen: 0, Rank: 1})); !errors.Is(err, ErrOption) || err.Error() != zero {
		t.Errorf("writing under a zero limit: %v, want %q", err, zero)
	}
}
