package tensor_test

import (
	"os"
	"testing"

	"github.com/wattagg/wattagg/tensor"
)

// Lookups find the mapping that holds all of a slice, with the file offset of its first byte;
// a slice that straddles a mapping's end, or lies outside every mapping, is not found; a
// removed record is gone and removing it again changes nothing.
func TestFileBackingLookup(t *testing.T) {
	mem := make([]byte, 3<<12)
	a, gap, b := mem[:4096], mem[4096:8192], mem[8192:]
	fa, fb := tensor.FileBacking{Name: "a", File: os.Stdin, Offset: 100}, tensor.FileBacking{Name: "b", File: os.Stdin}
	ua := tensor.RegisterFileBacking(a, fa)
	ub := tensor.RegisterFileBacking(b, fb)
	for _, c := range []struct {
		b    []byte
		name string
		off  int64
	}{
		{a, "a", 100}, {a[10:20], "a", 110}, {a[4095:], "a", 4195}, {b[7:], "b", 7},
		{gap, "", 0}, {a[4000:4096:4096][:0], "", 0}, {mem[4000:4200], "", 0}, {mem, "", 0}, {nil, "", 0},
	} {
		got, off, ok := tensor.FileBackingOf(c.b)
		if ok != (c.name != "") || (ok && (got.Name != c.name || off != c.off)) {
			t.Fatalf("slice of %d bytes: got %q at %d (%v), want %q at %d", len(c.b), got.Name, off, ok, c.name, c.off)
		}
	}
	ua()
	ua()
	if _, _, ok := tensor.FileBackingOf(a); ok {
		t.Fatal("a removed record was found")
	}
	if got, _, ok := tensor.FileBackingOf(b); !ok || got.Name != "b" {
		t.Fatal("removing a's record removed b's")
	}
	ub()
	if _, _, ok := tensor.FileBackingOf(b); ok {
		t.Fatal("b's record survived")
	}
}
