package safetensors

import (
	"fmt"

	"github.com/wattagg/wattagg/internal/optnames"
)

// Option configures the readers (Open, OpenAll, Parse, ReadHeader, ReadHeaderAt) and the
// writers (Create, WriteFile): the package has one option type, and each option's doc says
// which functions take it. Limits are one option for both sides (WithLimits), so that a file
// is written and read back under the same value. An option given to a function it does not
// apply to is refused with an ErrOption error that names it, instead of being ignored: a
// read mode given to Parse, which reads memory where it is, or O_DIRECT given to a reader,
// would otherwise silently do nothing.
type Option func(*options) error

// options is what the options set, for whichever function they are given to.
type options struct {
	fn       consumer // the function applying the options; an option checks that it takes it
	lim      Limits
	source   string
	populate bool
	mode     ReadMode
	large    ReadMode // ReadAuto's choice for files in large folios, if not ReadAuto (WithLargeFolioRead)
	direct   bool
	vote     *readVote    // ReadAuto's choice shared by the files of one OpenAll
	cache    *layoutCache // shares identical layouts across the files OpenAll opens
}

// consumer is a bit set of the functions that take options.
type consumer uint8

const (
	forOpen consumer = 1 << iota
	forOpenAll
	forParse
	forReadHeader
	forReadHeaderAt
	forCreate
	forWriteFile

	forReaders = forOpen | forOpenAll | forParse | forReadHeader | forReadHeaderAt
	forWriters = forCreate | forWriteFile
)

var consumerNames = [...]string{"Open", "OpenAll", "Parse", "ReadHeader", "ReadHeaderAt", "Create", "WriteFile"}

// String lists the functions of c: "Open and OpenAll", "Create and WriteFile".
func (c consumer) String() string { return optnames.Of(uint(c), consumerNames[:]) }

// option makes the Option called name, which the functions of takes accept: given to another
// it is an ErrOption naming it, before set sees its value.
func option(name string, takes consumer, set func(*options) error) Option {
	return func(o *options) error {
		if o.fn&takes == 0 {
			return fmt.Errorf("%w: %s is an option of %v; %v does not take it", ErrOption, name, takes, o.fn)
		}
		return set(o)
	}
}

// applyOptions applies opts for the function fn over the defaults; source names the data
// unless WithSource does.
func applyOptions(fn consumer, source string, opts []Option) (*options, error) {
	o := &options{fn: fn, lim: DefaultLimits(), source: source, direct: true}
	for _, opt := range opts {
		if opt == nil {
			return nil, fmt.Errorf("%w: nil option given to %v", ErrOption, fn)
		}
		if err := opt(o); err != nil {
			return nil, err
		}
	}
	return o, nil
}
