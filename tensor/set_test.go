package tensor

import (
	"errors"
	"maps"
	"strings"
	"testing"
)

// countingCloser counts Close calls.
type countingCloser struct{ n int }

func (c *countingCloser) Close() error { c.n++; return errors.New("closed") }

func testSet(t *testing.T) *Set {
	t.Helper()
	a := must(New("a", F32, 2, 3))(t)
	b := must(New("b", BF16, 5))(t)
	q := must(New("q", I8, 4))(t)
	s, err := NewSet(a, b, q)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSet(t *testing.T) {
	s := testSet(t)
	if s.Len() != 3 || s.At(1).Name != "b" || len(s.Tensors()) != 3 || s.Metadata == nil {
		t.Fatalf("set %+v", s)
	}
	if x, ok := s.Tensor("q"); !ok || x.DType != I8 {
		t.Errorf("Tensor(q) = %v, %v", x, ok)
	}
	if _, ok := s.Tensor("z"); ok {
		t.Error("Tensor(z) found")
	}
	if s.Index("b") != 1 || s.Index("z") != -1 {
		t.Errorf("Index: %d %d", s.Index("b"), s.Index("z"))
	}
	if s.NumParams() != 15 || s.NumBytes() != 38 {
		t.Errorf("NumParams %d NumBytes %d, want 15 and 38", s.NumParams(), s.NumBytes())
	}
	want := Layout{{"a", F32, []int{2, 3}}, {"b", BF16, []int{5}}, {"q", I8, []int{4}}}
	if l := s.Layout(); !l.Equal(want) || l.NumParams() != 15 {
		t.Errorf("Layout %v", l)
	}
}

func TestSetDuplicate(t *testing.T) {
	a := must(New("a", F32, 1))(t)
	a2 := must(New("a", F64, 1))(t)
	if _, err := NewSet(a, a2); !errors.Is(err, ErrDuplicateName) || err.Error() != `duplicate tensor name: "a"` {
		t.Errorf("NewSet: %v", err)
	}
	s := must(NewSet(a))(t)
	if err := s.Add(a2); !errors.Is(err, ErrDuplicateName) {
		t.Errorf("Add: %v", err)
	}
	if s.Len() != 1 || s.At(0) != a {
		t.Error("a rejected Add changed the set")
	}
	var zero Set
	if err := zero.Add(a); err != nil || zero.Index("a") != 0 {
		t.Errorf("Add to a zero Set: %v", err)
	}
}

func TestSetClose(t *testing.T) {
	s := testSet(t)
	c := &countingCloser{}
	s.SetCloser(c)
	if err := s.Close(); err == nil || err.Error() != "closed" {
		t.Errorf("Close returns the closer's error: %v", err)
	}
	for _, x := range s.Tensors() {
		if len(x.Bytes()) != 0 || x.Len() != 0 {
			t.Errorf("tensor %q still has %d bytes after Close", x.Name, len(x.Bytes()))
		}
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if c.n != 1 {
		t.Errorf("closer called %d times, want 1", c.n)
	}
	x := must(New("late", F32, 1))(t)
	if err := s.Add(x); !errors.Is(err, ErrClosed) {
		t.Errorf("Add after Close: %v", err)
	}
	if err := (&Set{}).Close(); err != nil {
		t.Errorf("Close without a closer: %v", err)
	}
}

func TestSetClone(t *testing.T) {
	s := testSet(t)
	s.Source = "client-1"
	s.Metadata["round"] = "3"
	s.At(2).Scale = 0.125
	s.At(0).Bytes()[0] = 7
	c := s.Clone()
	c.Metadata["round"] = "4"
	c.At(0).Bytes()[0] = 8
	if s.Metadata["round"] != "3" || s.At(0).Bytes()[0] != 7 {
		t.Error("changing the clone changed the original")
	}
	if c.Source != "client-1" || !c.Layout().Equal(s.Layout()) || c.At(2).Scale != 0.125 || c.Index("q") != 2 {
		t.Errorf("clone %+v", c)
	}
	m := maps.Clone(c.Metadata)
	s.Close()
	if len(c.At(0).Bytes()) != 24 || !maps.Equal(m, c.Metadata) {
		t.Error("closing the original emptied the clone")
	}
}

func TestLayoutMatch(t *testing.T) {
	l := Layout{{"a", F32, []int{2}}, {"b", F16, []int{3, 4}}, {"c", I8, []int{}}}
	perm, err := l.Match(Layout{{"c", I8, []int{}}, {"a", F32, []int{2}}, {"b", F16, []int{3, 4}}}, true)
	if err != nil || perm[0] != 1 || perm[1] != 2 || perm[2] != 0 {
		t.Errorf("permuted: %v %v", perm, err)
	}
	if perm, err := l.Match(l, true); err != nil || perm[0] != 0 || perm[2] != 2 {
		t.Errorf("same: %v %v", perm, err)
	}
	if _, err := l.Match(Layout{{"b", BF16, []int{3, 4}}, {"a", F64, []int{2}}, {"c", F32, []int{}}}, false); err != nil {
		t.Errorf("other dtypes without sameDType: %v", err)
	}
	for _, c := range []struct {
		name      string
		o         Layout
		sameDType bool
		msg       string
	}{
		{"missing", Layout{{"a", F32, []int{2}}, {"c", I8, []int{}}}, true, `layout mismatch: tensor "b" is missing`},
		{"extra", append(Layout{{"z", F32, []int{1}}}, l...), true, `layout mismatch: unexpected tensor "z"`},
		{"renamed", Layout{{"a", F32, []int{2}}, {"b", F16, []int{3, 4}}, {"d", I8, []int{}}}, true, `layout mismatch: tensor "c" is missing`},
		{"shape", Layout{{"a", F32, []int{2}}, {"b", F16, []int{4, 3}}, {"c", I8, []int{}}}, false, `layout mismatch: tensor "b" has shape [4 3], want [3 4]`},
		{"scalar vs [1]", Layout{{"a", F32, []int{2}}, {"b", F16, []int{3, 4}}, {"c", I8, []int{1}}}, false, `layout mismatch: tensor "c" has shape [1], want []`},
		{"dtype", Layout{{"a", F16, []int{2}}, {"b", F16, []int{3, 4}}, {"c", I8, []int{}}}, true, `layout mismatch: tensor "a" has dtype f16, want f32`},
	} {
		perm, err := l.Match(c.o, c.sameDType)
		if !errors.Is(err, ErrLayoutMismatch) || err.Error() != c.msg || perm != nil {
			t.Errorf("%s: %v, want %q", c.name, err, c.msg)
		}
	}
}

func TestLayoutEqual(t *testing.T) {
	l := Layout{{"a", F32, []int{2}}, {"b", F16, nil}}
	cases := []struct {
		o    Layout
		want bool
	}{
		{Layout{{"a", F32, []int{2}}, {"b", F16, []int{}}}, true},
		{Layout{{"b", F16, nil}, {"a", F32, []int{2}}}, false},
		{Layout{{"a", F32, []int{2}}}, false},
		{Layout{{"a", F64, []int{2}}, {"b", F16, nil}}, false},
		{Layout{{"a", F32, []int{1, 2}}, {"b", F16, nil}}, false},
	}
	for i, c := range cases {
		if got := l.Equal(c.o); got != c.want {
			t.Errorf("case %d: Equal = %v", i, got)
		}
	}
	if n := (Layout{{"a", F32, []int{2, 3}}, {"s", F32, nil}, {"e", F32, []int{0, 5}}}).NumParams(); n != 7 {
		t.Errorf("NumParams = %d, want 7", n)
	}
	if !strings.Contains(ErrLayoutMismatch.Error(), "layout") {
		t.Error(ErrLayoutMismatch)
	}
}
