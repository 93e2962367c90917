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
	slotMessageMetadata   = 12
	slotSchemaFields      = 6
	slotSchemaMetadata    = 8
	slotSchemaFeatures    = 10
	slotFieldName         = 4
	slotFieldTypeType     = 8
	slotFieldChildren     = 14
	slotFieldMetadata     = 16
	slotKey, slotValue    = 4, 6
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
	budget := len(meta) // string bytes the message may hold: strings are not shared
	if err := checkKeyValues(&t, slotMessageMetadata, &budget); err != nil {
		return info, err
	}
	switch info.kind {
	case ipc.MessageSchema:
		if info.bodyLen != 0 {
			return info, fmt.Errorf("%w: schema message with a body of %d bytes", ErrFormat, info.bodyLen)
		}
		err = checkSchema(&hdr, &budget)
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

// Arrow's decoder sizes its slices by the vector lengths a flatbuffer declares (fields,
// children, metadata entries) before reading them, and Go aborts the process, with no panic to
// recover, when such an allocation cannot be met. So before Arrow sees a schema, the vectors it
// preallocates from are checked to lie inside the metadata, a schema has exactly the three
// columns of an update, of the types an update uses, without children, and every string of
// metadata lies inside the buffer, all strings together no longer than it (so that checking
// them costs time linear in the input).

// typeNames are the names of the Arrow format's Type union members (format/Schema.fbs).
var typeNames = [...]string{"NONE", "Null", "Int", "FloatingPoint", "Binary", "Utf8", "Bool", "Decimal",
	"Date", "Time", "Timestamp", "Interval", "List", "Struct", "Union", "FixedSizeBinary", "FixedSizeList",
	"Map", "Duration", "LargeBinary", "LargeUtf8", "LargeList", "RunEndEncoded", "BinaryView", "Utf8View",
	"ListView", "LargeListView"}

// columnTypes are the Type union members a column of an update may have: Int (offset, and
// wrong but nameable), Binary, Utf8, LargeBinary, LargeUtf8; readSchema says which goes where.
var columnTypes = map[byte]bool{2: true, 4: true, 5: true, 19: true, 20: true}

// checkSchema checks the Schema table s.
func checkSchema(s *flatbuffers.Table, budget *int) error {
	if err := checkKeyValues(s, slotSchemaMetadata, budget); err != nil {
		return err
	}
	if _, _, err := vector(s, slotSchemaFeatures, 8); err != nil {
		return err
	}
	n, start, err := vector(s, slotSchemaFields, 4)
	if err != nil {
		return err
	}
	if n != 3 {
		return fmt.Errorf("%w: the schema has %d columns, want 3 (%s, %s, %s)", ErrSchema, n, ColTensor, ColOffset, ColData)
	}
	for i := range n {
		p := start + flatbuffers.UOffsetT(4*i)
		f := flatbuffers.Table{Bytes: s.Bytes, Pos: s.Indirect(p)}
		name := ""
		if o := f.Offset(slotFieldName); o != 0 {
			b := f.ByteVector(flatbuffers.UOffsetT(o) + f.Pos)
			if *budget -= len(b); *budget < 0 {
				return fmt.Errorf("%w: strings of the schema overlap", ErrFormat)
			}
			name = string(b)
		}
		if typ := f.GetByteSlot(slotFieldTypeType, 0); !columnTypes[typ] {
			tn := fmt.Sprintf("%d", typ)
			if int(typ) < len(typeNames) {
				tn = typeNames[typ]
			}
			return fmt.Errorf("%w: column %s has Arrow type %s, which no column of an update has", ErrSchema, quote(name), tn)
		}
		if c, _, err := vector(&f, slotFieldChildren, 4); err != nil || c != 0 {
			return fmt.Errorf("%w: column %s has child fields", ErrSchema, quote(name))
		}
		if err := checkKeyValues(&f, slotFieldMetadata, budget); err != nil {
			return err
		}
	}
	return nil
}

// vector returns the length and first element of the vector in slot of t (0 if absent),
// checking that its elements of size bytes lie inside t's buffer.
func vector(t *flatbuffers.Table, slot flatbuffers.VOffsetT, size int) (int, flatbuffers.UOffsetT, error) {
	o := flatbuffers.UOffsetT(t.Offset(slot))
	if o == 0 {
		return 0, 0, nil
	}
	n := t.VectorLen(o)
	start := t.Vector(o)
	if n < 0 || int64(start)+int64(size)*int64(n) > int64(len(t.Bytes)) {
		return 0, 0, fmt.Errorf("%w: a vector of %d elements runs past the metadata", ErrFormat, n)
	}
	return n, start, nil
}

// checkKeyValues checks the [KeyValue] vector in slot of t and charges its strings to budget.
func checkKeyValues(t *flatbuffers.Table, slot flatbuffers.VOffsetT, budget *int) error {
	n, start, err := vector(t, slot, 4)
	if err != nil {
		return err
	}
	for i := range n {
		kv := flatbuffers.Table{Bytes: t.Bytes, Pos: t.Indirect(start + flatbuffers.UOffsetT(4*i))}
		for _, s := range [...]flatbuffers.VOffsetT{slotKey, slotValue} {
			if o := kv.Offset(s); o != 0 {
				if *budget -= len(kv.ByteVector(flatbuffers.UOffsetT(o) + kv.Pos)); *budget < 0 {
					return fmt.Errorf("%w: metadata strings overlap", ErrFormat)
				}
			}
		}
	}
	return nil
}
