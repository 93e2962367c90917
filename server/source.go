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
