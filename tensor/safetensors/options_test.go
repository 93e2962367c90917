package safetensors

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/wattagg/wattagg/tensor"
)

var (
	readers = []string{"Open", "OpenAll", "Parse", "ReadHeader", "ReadHeaderAt"}
	writers = []string{"Create", "WriteFile"}
)

// optionCases is every exported option, with a valid value, and the functions that take it,
// written out here rather than read from the code under test.
func optionCases() []struct {
	name  string
	opt   Option
	takes []string
} {
	return []struct {
		name  string
		opt   Option
		takes []string
	}{
		{"WithReadMode", WithReadMode(ReadCopy), []string{"Open", "OpenAll"}},
		{"WithPopulate", WithPopulate(true), []string{"Open", "OpenAll"}},
		{"WithSource", WithSource("client-17"), []string{"Open", "Parse", "ReadHeader", "ReadHeaderAt"}},
		{"WithLimits", WithLimits(DefaultLimits()), append(slices.Clone(readers), writers...)},
		{"WithMaxHeaderSize", WithMaxHeaderSize(1 << 20), append(slices.Clone(readers), writers...)},
		{"WithDirectIO", WithDirectIO(false), writers},
	}
}

// TestOptionGivenWhereItDoesNotApply gives every option to each reader and writer that does
// not take it: each refuses it with ErrOption, naming the option and the functions it belongs
// to, before it reads or writes anything.
func TestOptionGivenWhereItDoesNotApply(t *testing.T) {
	dir := t.TempDir()
	s := randomSet(t, rand.New(rand.NewPCG(5, 6)), tensor.Layout{{Name: "w", DType: tensor.F32, Shape: []int{4}}}, nil)
	src := filepath.Join(dir, "src.safetensors")
	if err := WriteFile(src, s); err != nil {
		t.Fatal(err)
	}
	file, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "dst.safetensors")
	call := map[string]func(Option) error{
		"Open": func(o Option) error {
			s, err := Open(src, o)
			if err == nil {
				s.Close()
			}
			return err
		},
		"OpenAll": func(o Option) error {
			sets, err := OpenAll([]string{src, src}, o)
			CloseAll(sets)
			return err
		},
		"Parse": func(o Option) error {
			_, err := Parse(file, o)
			return err
		},
		"ReadHeader": func(o Option) error {
			_, err := ReadHeader(src, o)
			return err
		},
		"ReadHeaderAt": func(o Option) error {
			_, err := ReadHeaderAt(bytes.NewReader(file), int64(len(file)), o)
			return err
		},
		"Create": func(o Option) error {
			w, err := Create(dst, s.Layout(), nil, o)
			if err == nil {
				w.Abort()
			}
			return err
		},
		"WriteFile": func(o Option) error { return WriteFile(dst, s, o) },
	}
	all := append(slices.Clone(readers), writers...)
	refused := 0
	for _, c := range optionCases() {
		for _, fn := range all {
			if slices.Contains(c.takes, fn) {
				if err := call[fn](c.opt); err != nil {
					t.Errorf("%s(%s): %v", fn, c.name, err)
				}
				continue
			}
			err := call[fn](c.opt)
			want := "invalid safetensors option: " + c.name + " is an option of " + list(c.takes) + "; " + fn + " does not take it"
			if !errors.Is(err, ErrOption) || err.Error() != want {
				t.Errorf("%s(%s): %v, want %q", fn, c.name, err, want)
			}
			refused++
		}
	}
	if refused != 5+5+3+5 {
		t.Errorf("%d refusals checked, want 18", refused)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 { // src, and dst from the writers that took their options
		t.Errorf("files left: %v", entries)
	}
	for _, fn := range all {
		if err := call[fn](nil); !errors.Is(err, ErrOption) || err.Error() != "invalid safetensors option: nil option given to "+fn {
			t.Errorf("%s(nil): %v", fn, err)
		}
	}
}

// list is names as consumer.String writes them: "a", "a and b", "a, b and c".
func list(names []string) string {
	if len(names) < 2 {
		return strings.Join(names, "")
	}
	return strings.Join(names[:len(names)-1], ", ") + " and " + names[len(names)-1]
}

// TestLimitsOptionsBindWriters: WithLimits and WithMaxHeaderSize bound what Create and
// WriteFile write, as they bound what the readers read.
func TestLimitsOptionsBindWriters(t *testing.T) {
	dir := t.TempDir()
	layout := tensor.Layout{{Name: strings.Repeat("n", 100), DType: tensor.F32, Shape: []int{2}}}
	s := randomSet(t, rand.New(rand.NewPCG(7, 8)), layout, nil)
	if err := WriteFile(filepath.Join(dir, "a"), s, WithMaxHeaderSize(64)); !errors.Is(err, ErrLimit) {
		t.Errorf("WriteFile under a 64-byte header limit: %v, want ErrLimit", err)
	}
	if _, err := Create(filepath.Join(dir, "b"), layout, nil, WithLimits(Limits{HeaderSize: 1 << 20, NameLen: 99, Rank: 4})); !errors.Is(err, ErrLimit) {
		t.Errorf("Create of a 100-byte name under a 99-byte limit: %v, want ErrLimit", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("files left: %v", entries)
	}
}
