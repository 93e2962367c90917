package tensor

import (
	"fmt"
	"io"
)

// Set is one model update: named tensors in a fixed order, string metadata, and where it came
// from. A Set made by a reader may view a mapped file; Close releases it, after which the
// tensors are empty.
type Set struct {
	// Source names where the Set came from (a file path, a client id) for error messages.
	Source string
	// Metadata is free-form string metadata (the __metadata__ of a .safetensors file).
	Metadata map[string]string

	tensors []*Tensor
	index   map[string]int
	closer  io.Closer
	closed  bool
}

// NewSet builds a Set from tensors in order; names must be unique.
func NewSet(tensors ...*Tensor) (*Set, error) {
	// Sized up front: a reader's Set of a million tensors would otherwise allocate its index
	// and slice about twice over while they grow.
	s := &Set{Metadata: map[string]string{}, index: make(map[string]int, len(tensors)),
		tensors: make([]*Tensor, 0, len(tensors))}
	for _, t := range tensors {
		if err := s.Add(t); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Add appends t. A name already present is an ErrDuplicateName error.
func (s *Set) Add(t *Tensor) error {
	if s.closed {
		return ErrClosed
	}
	if s.index == nil {
		s.index = map[string]int{}
	}
	if _, dup := s.index[t.Name]; dup {
		return fmt.Errorf("%w: %q", ErrDuplicateName, t.Name)
	}
	s.index[t.Name] = len(s.tensors)
	s.tensors = append(s.tensors, t)
	return nil
}

// Len is the number of tensors.
func (s *Set) Len() int { return len(s.tensors) }

// At returns the i-th tensor.
func (s *Set) At(i int) *Tensor { return s.tensors[i] }

// Tensors returns the tensors in order. The slice is the Set's own: do not modify it.
func (s *Set) Tensors() []*Tensor { return s.tensors }

// Tensor looks a tensor up by name.
func (s *Set) Tensor(name string) (*Tensor, bool) {
	i, ok := s.index[name]
	if !ok {
		return nil, false
	}
	return s.tensors[i], true
}

// Index returns the position of the named tensor, or -1.
func (s *Set) Index(name string) int {
	if i, ok := s.index[name]; ok {
		return i
	}
	return -1
}

// Layout describes the tensors without their data.
func (s *Set) Layout() Layout {
	l := make(Layout, len(s.tensors))
	for i, t := range s.tensors {
		l[i] = t.Field()
	}
	return l
}

// NumParams is the total element count.
func (s *Set) NumParams() int64 {
	var n int64
	for _, t := range s.tensors {
		n += int64(t.Len())
	}
	return n
}

// NumBytes is the total data size in bytes.
func (s *Set) NumBytes() int64 {
	var n int64
	for _, t := range s.tensors {
		n += int64(len(t.data))
	}
	return n
}

// CheckFinite returns a *NonFiniteError (naming Source and tensor) for the first NaN or Inf.
func (s *Set) CheckFinite() error {
	for _, t := range s.tensors {
		if err := t.CheckFinite(); err != nil {
			err.(*NonFiniteError).Source = s.Source
			return err
		}
	}
	return nil
}

// Clone returns a deep copy whose tensors own aligned buffers; it needs no Close.
func (s *Set) Clone() *Set {
	c := &Set{Source: s.Source, Metadata: make(map[string]string, len(s.Metadata))}
	for k, v := range s.Metadata {
		c.Metadata[k] = v
	}
	for _, t := range s.tensors {
		_ = c.Add(t.Clone()) // names are already unique
	}
	return c
}

// SetCloser registers what Close must release (a file mapping). Readers call it.
func (s *Set) SetCloser(c io.Closer) { s.closer = c }

// Close releases the memory the tensors view, if any, and empties them so that a use after
// Close reads nothing instead of unmapped memory. It is safe to call more than once.
func (s *Set) Close() error {
	if s.closed {
		return nil
	}
	s.closed = true
	for _, t := range s.tensors {
		t.data = nil
	}
	if s.closer != nil {
		return s.closer.Close()
	}
	return nil
}
