package arrowio

import "errors"

// Sentinel errors. Every error of this package wraps one of them (layout errors about element
// types and shapes also wrap tensor.ErrDType or tensor.ErrShape; I/O errors of the underlying
// reader or file are wrapped as they are), so callers branch with errors.Is while users read one
// line naming the source, the tensor and the element offset.
var (
	// ErrFormat: the bytes are not an Arrow IPC stream or file this package reads: bad framing,
	// a truncated message, malformed flatbuffers, compressed or misaligned bodies, a message of
	// a kind that has no place in an update.
	ErrFormat = errors.New("malformed Arrow IPC data")
	// ErrSchema: the schema is not the chunk schema (columns tensor, offset, data of the
	// documented types), or its wattagg.layout metadata is missing or malformed.
	ErrSchema = errors.New("bad schema")
	// ErrChunk: a row does not continue its tensor: unknown tensor, null value, gap, overlap, a
	// partial element, or data past the end of the tensor.
	ErrChunk = errors.New("bad chunk")
	// ErrIncomplete: the stream ended before every tensor was covered, or a Writer was closed
	// before every tensor was written.
	ErrIncomplete = errors.New("incomplete update")
	// ErrLimit: the input is larger than a configured limit (metadata, tensors, batch, total).
	ErrLimit = errors.New("over limit")
	// ErrOption: an option value is out of range.
	ErrOption = errors.New("bad option")
)
