package safetensors

import "errors"

// Sentinel errors. Every error of this package wraps one of them (or tensor.ErrDType for an
// element type wattagg does not read, or an I/O error from the os package).
var (
	// ErrFormat: the header is not the JSON the format requires (bad JSON, wrong types,
	// missing fields, duplicate names, a missing or malformed I8 scale).
	ErrFormat = errors.New("malformed header")
	// ErrHeaderSize: the header length prefix is larger than allowed or than the file, or the
	// file is too short to hold it. A header over Limits.HeaderSize wraps ErrLimit too.
	ErrHeaderSize = errors.New("bad header size")
	// ErrOffset: tensor byte ranges do not match their shapes or do not tile the data section.
	ErrOffset = errors.New("bad data offsets")
	// ErrIncomplete: Commit was called before every byte of the data section was written.
	ErrIncomplete = errors.New("data section not completely written")
	// ErrLimit: a header, name or shape is over one of the Limits that reader and writer
	// share, so what the writer refuses is exactly what the reader would refuse.
	ErrLimit = errors.New("over a safetensors limit")
	// ErrNotRegular: the path names a named pipe, directory, device or socket. Such a path is
	// refused before anything could block on it (opening a FIFO for reading waits for a
	// writer, forever).
	ErrNotRegular = errors.New("not a regular file")
	// ErrJournal: a group-commit journal is malformed or cannot be rolled forward.
	ErrJournal = errors.New("bad group-commit journal")
	// ErrOption: an option out of range (a limit that is not positive, an unknown read
	// mode), or given to a function it does not apply to (WithDirectIO to Open).
	ErrOption = errors.New("invalid safetensors option")
)
