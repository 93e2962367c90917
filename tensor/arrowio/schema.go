package arrowio

import (
	"fmt"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/endian"
)

// The columns of the chunk schema: one row per chunk of a tensor.
const (
	// ColTensor names the tensor of the chunk: utf8 or large_utf8, or a dictionary of either.
	ColTensor = "tensor"
	// ColOffset is the element offset of the chunk in its tensor: int64.
	ColOffset = "offset"
	// ColData holds the chunk's raw little-endian element bytes: binary or large_binary.
	ColData = "data"
)

// tensorKind says how the tensor column is encoded.
type tensorKind uint8

const (
	tensorUTF8 tensorKind = iota
	tensorLargeUTF8
	tensorDict
)

// columns are the positions of the three columns in a schema and the tensor column's kind.
type columns struct {
	tensor, offset, data int
	kind                 tensorKind
	dataLarge            bool // the data column is large_binary (64-bit offsets)
}

// writeSchema is the schema a Writer produces for h (checked): non-null utf8, int64 and
// large_binary columns (large_binary so that a whole tensor of more than 2 GiB is one chunk of
// a file), the layout JSON and then h's metadata in key order.
func writeSchema(h Header) *arrow.Schema {
	keys := make([]string, 0, len(h.Metadata)+1)
	for k := range h.Metadata {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	vals := make([]string, 0, len(keys)+1)
	for _, k := range keys {
		vals = append(vals, h.Metadata[k])
	}
	keys = append([]string{LayoutKey}, keys...)
	vals = append([]string{encodeLayout(h)}, vals...)
	md := arrow.NewMetadata(keys, vals)
	return arrow.NewSchema([]arrow.Field{
		{Name: ColTensor, Type: arrow.BinaryTypes.String},
		{Name: ColOffset, Type: arrow.PrimitiveTypes.Int64},
		{Name: ColData, Type: arrow.BinaryTypes.LargeBinary},
	}, &md)
}

// readSchema checks that s is the chunk schema and decodes the header its metadata carries.
// The columns may come in any order and be nullable (pyarrow's default); nulls in the data
// are refused batch by batch.
func readSchema(s *arrow.Schema, o *options) (columns, Header, error) {
	c := columns{tensor: -1, offset: -1, data: -1}
	if s.Endianness() != endian.LittleEndian {
		return c, Header{}, fmt.Errorf("%w: the schema is big-endian; tensor data is little-endian", ErrSchema)
	}
	if err := c.locate(s.Fields()); err != nil {
		return c, Header{}, err
	}
	h, err := readHeader(s.Metadata(), o)
	return c, h, err
}

// locate finds the three columns among fields, each once and of a type it reads, and
// refuses any other column.
func (c *columns) locate(fields []arrow.Field) error {
	for i, f := range fields {
		if err := c.place(i, f); err != nil {
			return err
		}
	}
	for _, p := range []struct {
		pos  int
		name string
	}{{c.tensor, ColTensor}, {c.offset, ColOffset}, {c.data, ColData}} {
		if p.pos < 0 {
			return fmt.Errorf("%w: no column %q", ErrSchema, p.name)
		}
	}
	return nil
}

// place records field f, checked, as the column at position i.
func (c *columns) place(i int, f arrow.Field) error {
	var pos *int
	switch f.Name {
	case ColTensor:
		pos = &c.tensor
		kind, ok := tensorColumnKind(f.Type)
		if !ok {
			return fmt.Errorf("%w: column %q is %s, want utf8, large_utf8 or a dictionary of them", ErrSchema, f.Name, f.Type)
		}
		c.kind = kind
	case ColOffset:
		pos = &c.offset
		if f.Type.ID() != arrow.INT64 {
			return fmt.Errorf("%w: column %q is %s, want int64", ErrSchema, f.Name, f.Type)
		}
	case ColData:
		pos = &c.data
		if id := f.Type.ID(); id != arrow.BINARY && id != arrow.LARGE_BINARY {
			return fmt.Errorf("%w: column %q is %s, want binary or large_binary", ErrSchema, f.Name, f.Type)
		}
		c.dataLarge = f.Type.ID() == arrow.LARGE_BINARY
	default:
		return fmt.Errorf("%w: unexpected column %s (want %s, %s, %s)", ErrSchema, quote(f.Name), ColTensor, ColOffset, ColData)
	}
	if *pos >= 0 {
		return fmt.Errorf("%w: duplicate column %q", ErrSchema, f.Name)
	}
	*pos = i
	return nil
}

// readHeader decodes the header the schema's metadata md carries: the layout, parsed and held
// to o's limits, and the other keys as the header's metadata.
func readHeader(md arrow.Metadata, o *options) (Header, error) {
	meta, layout, err := splitMetadata(md)
	h := Header{Metadata: meta}
	if err != nil {
		return h, err
	}
	if h.Layout, h.Scales, err = parseLayout(layout, o.maxTensors); err != nil {
		return h, err
	}
	if n := h.DataBytes(); n > o.maxTotal {
		return h, fmt.Errorf("%w: the layout declares %d bytes of tensor data, more than the limit of %d", ErrLimit, n, o.maxTotal)
	}
	return h, nil
}

// splitMetadata separates the layout from the rest of md, which it clones into a map. It
// refuses keys or values that are not UTF-8, duplicate keys and metadata without a layout;
// on error the map holds the keys read so far.
func splitMetadata(md arrow.Metadata) (map[string]string, string, error) {
	keys, vals := md.Keys(), md.Values()
	meta := make(map[string]string, len(keys))
	layout, found := "", false
	for i, k := range keys {
		if !utf8.ValidString(k) || !utf8.ValidString(vals[i]) {
			return meta, "", fmt.Errorf("%w: metadata %s is not valid UTF-8", ErrSchema, quote(k))
		}
		_, dup := meta[k]
		if dup || (k == LayoutKey && found) {
			return meta, "", fmt.Errorf("%w: duplicate metadata key %s", ErrSchema, quote(k))
		}
		if k == LayoutKey {
			layout, found = vals[i], true
			continue
		}
		// Clones: the strings view the message's metadata, which may be a mapped file.
		meta[strings.Clone(k)] = strings.Clone(vals[i])
	}
	if !found {
		return meta, "", fmt.Errorf("%w: no %q in the schema metadata: the layout must come before the data", ErrSchema, LayoutKey)
	}
	return meta, layout, nil
}

func tensorColumnKind(t arrow.DataType) (tensorKind, bool) {
	switch t.ID() {
	case arrow.STRING:
		return tensorUTF8, true
	case arrow.LARGE_STRING:
		return tensorLargeUTF8, true
	case arrow.DICTIONARY:
		d := t.(*arrow.DictionaryType)
		if id := d.ValueType.ID(); id == arrow.STRING || id == arrow.LARGE_STRING {
			return tensorDict, true
		}
	}
	return 0, false
}
