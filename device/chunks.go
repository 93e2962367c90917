package device

import (
	"cmp"
	"fmt"
	"slices"
)

// CutChunks cuts an output data section into chunks of chunkBytes bytes (the last may be
// shorter). Field t occupies bytes [offsets[t], offsets[t] + Len·size) of the section; fields
// must not overlap, and each offset must be a multiple of its output element size so that chunk
// boundaries (multiples of chunkBytes, itself a multiple of 8) fall between elements.
func CutChunks(fields []AccField, offsets []int64, chunkBytes int) ([]Chunk, error) {
	if len(offsets) != len(fields) {
		return nil, fmt.Errorf("%w: %d offsets for %d fields", ErrJob, len(offsets), len(fields))
	}
	if chunkBytes <= 0 || chunkBytes%8 != 0 {
		return nil, fmt.Errorf("%w: chunk size %d is not a positive multiple of 8", ErrJob, chunkBytes)
	}
	type span struct {
		field      int
		begin, end int64
	}
	spans := make([]span, 0, len(fields))
	var size int64
	for t, f := range fields {
		es := int64(f.Out.Size())
		if es == 0 || offsets[t]%es != 0 {
			return nil, fmt.Errorf("%w: field %q at offset %d is not aligned to its %s elements", ErrJob, f.Name, offsets[t], f.Out)
		}
		if f.Len == 0 {
			continue
		}
		s := span{t, offsets[t], offsets[t] + int64(f.Len)*es}
		spans = append(spans, s)
		size = max(size, s.end)
	}
	slices.SortFunc(spans, func(a, b span) int { return cmp.Compare(a.begin, b.begin) })
	for k := 1; k < len(spans); k++ {
		if spans[k].begin < spans[k-1].end {
			return nil, fmt.Errorf("%w: fields %q and %q overlap", ErrJob, fields[spans[k-1].field].Name, fields[spans[k].field].Name)
		}
	}

	var chunks []Chunk
	k := 0 // first span that may overlap the current chunk
	for a := int64(0); a < size; a += int64(chunkBytes) {
		b := min(a+int64(chunkBytes), size)
		ch := Chunk{Off: a, Len: int(b - a)}
		for k < len(spans) && spans[k].end <= a {
			k++
		}
		for s := k; s < len(spans) && spans[s].begin < b; s++ {
			sp := spans[s]
			es := int64(fields[sp.field].Out.Size())
			lo, hi := max(a, sp.begin), min(b, sp.end)
			ch.Pieces = append(ch.Pieces, Piece{
				Field: sp.field,
				Lo:    int((lo - sp.begin) / es),
				Hi:    int((hi - sp.begin) / es),
				Off:   int(lo - a),
			})
		}
		chunks = append(chunks, ch)
	}
	return chunks, nil
}
