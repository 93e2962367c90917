package safetensors

import (
	"fmt"

	"github.com/wattagg/wattagg/tensor"
)

// DefaultMaxHeaderSize bounds the header JSON, as the reference implementation does.
const DefaultMaxHeaderSize = 100_000_000

// Limits bound what a header may describe. The reader refuses a file over them and the
// writer refuses to write one, both through the checks in this file, so a file wattagg writes
// is always one it reads back (the reference's only limit is the header size; without the
// others a writer could produce a 100 MB header from one long name that every reader
// rejects). Every refusal wraps ErrLimit.
type Limits struct {
	// HeaderSize bounds the header, in bytes, as its length prefix counts them (JSON and
	// padding). It bounds what a reader allocates and parses for a hostile length prefix.
	HeaderSize int64
	// NameLen bounds a tensor name, in bytes.
	NameLen int
	// Rank bounds the number of dimensions of a shape. It is checked while a shape is parsed,
	// so a shape of millions of dimensions costs nothing before it is refused.
	Rank int
}

// DefaultLimits are far above any real model: the reference's 100 MB header, 4096-byte names
// (Hugging Face names are under 200) and 64 dimensions (NumPy 2's maximum).
func DefaultLimits() Limits {
	return Limits{HeaderSize: DefaultMaxHeaderSize, NameLen: 4096, Rank: 64}
}

// WithLimits replaces DefaultLimits, for reading and writing alike: a file written with
// WithLimits(l) is read back with WithLimits(l). Every limit must be positive. It applies to
// every reader and writer (Open, OpenAll, Parse, ReadHeader, ReadHeaderAt, Create, WriteFile).
func WithLimits(l Limits) Option {
	return option("WithLimits", forReaders|forWriters, func(o *options) error {
		if err := l.valid(); err != nil {
			return err
		}
		o.lim = l
		return nil
	})
}

// WithMaxHeaderSize sets Limits.HeaderSize (default DefaultMaxHeaderSize bytes), so that a
// hostile length prefix cannot make a reader allocate or parse gigabytes, and a writer does
// not write a header its readers refuse. It applies to every reader and writer, as WithLimits.
func WithMaxHeaderSize(n int64) Option {
	return option("WithMaxHeaderSize", forReaders|forWriters, func(o *options) error {
		if n <= 0 {
			return fmt.Errorf("%w: header size limit %d is not positive", ErrOption, n)
		}
		o.lim.HeaderSize = n
		return nil
	})
}

// valid checks that every limit is positive.
func (l Limits) valid() error {
	if l.HeaderSize <= 0 || l.NameLen <= 0 || l.Rank <= 0 {
		return fmt.Errorf("%w: limits %+v: every limit must be positive", ErrOption, l)
	}
	return nil
}

// checkHeaderSize checks a header of n bytes (the length prefix).
func (l Limits) checkHeaderSize(n uint64) error {
	if n > uint64(l.HeaderSize) {
		return fmt.Errorf("%w: %w: header length %d is over the limit of %d bytes", ErrHeaderSize, ErrLimit, n, l.HeaderSize)
	}
	return nil
}

// checkName checks the length of a tensor name.
func (l Limits) checkName(name string) error {
	if len(name) > l.NameLen {
		return fmt.Errorf("%w: name of %d bytes is over the limit of %d", ErrLimit, len(name), l.NameLen)
	}
	return nil
}

// checkRank checks a shape of rank dimensions.
func (l Limits) checkRank(rank int) error {
	if rank > l.Rank {
		return fmt.Errorf("%w: shape has more than %d dimensions", ErrLimit, l.Rank)
	}
	return nil
}

// checkElements checks the element count of a shape: tensor.MaxElements, which tensor.New
// and tensor.FromBytes enforce too, so a shape accepted here is accepted there.
func checkElements(shape []int) (int64, error) {
	n, ok := numElements(shape)
	if !ok {
		return 0, fmt.Errorf("%w: shape %s has more than 2^48 elements", ErrLimit, formatShape(shape))
	}
	return n, nil
}

// numElements is the element count of shape, or false past tensor.MaxElements. It bounds
// every partial product as tensor.New does.
func numElements(shape []int) (int64, bool) {
	n := int64(1)
	for _, d := range shape {
		if d < 0 || d > tensor.MaxElements || d != 0 && n > tensor.MaxElements/int64(d) {
			return 0, false
		}
		n *= int64(d)
	}
	return n, true
}
