package arrowio

import (
	"fmt"

	"github.com/apache/arrow-go/v18/arrow/ipc"
	flatbuffers "github.com/google/flatbuffers/go"
)

// msgInfo is what peekMessage learns from a message's metadata before Arrow decodes it.
type msgInfo struct {
	kind    ipc.MessageType
	bodyLen int64
}

// Field slots (vtable offsets) of the Arrow format's flatbuffer tables (format/Message.fbs):
// Message {version, header_type, header, bodyLength, custom_metadata},
// RecordBatch {length, nodes, buffers, compression, variadicBufferCounts},
// DictionaryBatch {id, data, isDelta}.
const (
	slotMessageVersion    = 4
	slotMessageHeaderType = 6
	slotMessageHeader     = 8
	slotMessageBodyLength = 10
	slotBatchBuffers      = 8
	slotBatchCompression  = 10
	slotDictData          = 6
	// metadataV4 and metadataV5 are the MetadataVersion values of Arrow 0.8 to 0.17 and of
	// Arrow 1.0 on; older streams have another layout.
	metadataV4, metadataV5 = 3, 4
	// bufferSize is the size of the flatbuffer struct Buffer {offset: long; length: long}.
	bufferSize = 16
)

// peekMessage checks the metadata of one encapsulated message before Arrow decodes it: the
// metadata version, that its kind belongs in an update, its body length, and, for record and
// dictionary batches, that they are not compressed and that every buffer lies inside the body
// at an 8-byte aligned offset. Arrow decodes buffers with typed views, so a misaligned buffer
// would otherwise be read through a misaligned pointer, and a compressed one would make it
// allocate whatever size the sender claims.
func peekMessage(meta []byte) (info msgInfo, err error) {
	defer func() {
		if recover() != nil { // the flatbuffers runtime panics on offsets outside meta
			err = fmt.Errorf("%w: message metadata is not a valid flatbuffer", ErrFormat)
		}
	}()
	if len(meta) < 8 {
		return info, fmt.Errorf("%w: message metadata of %d bytes", ErrFormat, len(meta))
	}
	t := flatbuffers.Table{Bytes: meta, Pos: flatbuffers.GetUOffsetT(meta)}
	if v := t.GetInt16Slot(slotMessageVersion, 0); v != metadataV4 && v != metadataV5 {
		return info, fmt.Errorf("%w: metadata version %d (want V4 or V5: Arrow 0.8 or later)", ErrFormat, v+1)
	}
	info.kind = ipc.MessageType(t.GetByteSlot(slotMessageHeaderType, 0))
	info.bodyLen = t.GetInt64Slot(slotMessageBodyLength, 0)
	if info.bodyLen < 0 {
		return info, fmt.Errorf("%w: negative body length %d", ErrFormat, info.bodyLen)
	}
	o := t.Offset(slotMessageHeader)
	if o == 0 {
		return info, fmt.Errorf("%w: %v message without a header", ErrFormat, info.kind)
	}
	var hdr flatbuffers.Table
	t.Union(&hdr, flatbuffers.UOffsetT(o))
	switch info.kind {
	case ipc.MessageSchema:
		if info.bodyLen != 0 {
			return info, fmt.Errorf("%w: schema message with a body of %d bytes", ErrFormat, info.bodyLen)
		}
	case ipc.MessageRecordBatch:
		err = checkBatch(&hdr, info.bodyLen)
	case ipc.MessageDictionaryBatch:
		o := hdr.Offset(slotDictData)
		if o == 0 {
			return info, fmt.Errorf("%w: dictionary batch without data", ErrFormat)
		}
		batch := flatbuffers.Table{Bytes: meta, Pos: hdr.Indirect(flatbuffers.UOffsetT(o) + hdr.Pos)}
		err = checkBatch(&batch, info.bodyLen)
	default:
		return info, fmt.Errorf("%w: a %v message has no place in an update", ErrFormat, info.kind)
	}
	return info, err
}

// checkBatch checks the RecordBatch table rb of a message whose body has bodyLen bytes.
func checkBatch(rb *flatbuffers.Table, bodyLen int64) error {
	if rb.Offset(slotBatchCompression) != 0 {
		return fmt.Errorf("%w: compressed record batch (write uncompressed: tensor data barely compresses)", ErrFormat)
	}
	o := flatbuffers.UOffsetT(rb.Offset(slotBatchBuffers))
	if o == 0 {
		return nil
	}
	n := rb.VectorLen(o)
	start := rb.Vector(o)
	if n < 0 || int64(start)+bufferSize*int64(n) > int64(len(rb.Bytes)) {
		return fmt.Errorf("%w: buffer list runs past the metadata", ErrFormat)
	}
	for i := range n {
		p := start + flatbuffers.UOffsetT(bufferSize*i)
		off, size := rb.GetInt64(p), rb.GetInt64(p+8)
		switch {
		case off < 0 || size < 0 || off > bodyLen || size > bodyLen-off:
			return fmt.Errorf("%w: buffer %d [%d, +%d) lies outside the body of %d bytes", ErrFormat, i, off, size, bodyLen)
		case off%8 != 0:
			return fmt.Errorf("%w: buffer %d at body offset %d is not 8-byte aligned", ErrFormat, i, off)
		}
	}
	return nil
}
