package server

import (
	"github.com/wattagg/wattagg/tensor/arrowio"
)

// Source is an update as it arrives over the network: its header (layout, I8 scales,
// metadata) first, then its tensor data chunk by chunk. Ingest checks the header against the
// round before it asks for the first chunk, so a bad update is refused before its body is
// read.
//
// Both ingest protocols are Sources: the HTTP handler's .safetensors body
// (newSafetensorsSource: the layout from the header, then the data section in file order) and
// an Arrow IPC stream (*arrowio.StreamReader: the layout from the schema message, then record
// batches), which is what an Arrow Flight DoPut handler hands to Ingest.
type Source interface {
	// Header is known before any chunk: the layout, scales and metadata of the update.
	Header() arrowio.Header
	// Next returns the next chunk, whose Data is valid until the following call; io.EOF once
	// every tensor is complete. Chunks of one tensor come in order; chunks of different
	// tensors may interleave.
	Next() (arrowio.Chunk, error)
}

var _ Source = (*arrowio.StreamReader)(nil)

// lendFunc gives a Source the buffer the next chunk's bytes belong in: those of tensor t from
// element off, at most max bytes (spoolWriter.lend). It may return nil: no room to lend.
type lendFunc = arrowio.Lend

// lendingSource is a Source that can read a chunk into a buffer its consumer lends, so that
// the bytes go from where they arrived to where they are written with no copy in between. The
// .safetensors body is one (from the socket); an Arrow stream is another (from gRPC's frames,
// for the record batches whose values come last, which is how arrowio and pyarrow write them).
type lendingSource interface {
	Source
	// NextInto is Next, with the chunk's data read into what lend returns when that is not
	// empty, else into the source's own buffer.
	NextInto(lend lendFunc) (arrowio.Chunk, error)
}

var (
	_ lendingSource = (*safetensorsSource)(nil)
	_ lendingSource = (*arrowio.StreamReader)(nil)
)
