package safetensors

import (
	"encoding/json"
	"maps"
	"slices"
	"strconv"

	"github.com/wattagg/wattagg/tensor"
)

// maxScaleLen is the longest formatScale output, "-1.17549435e-38": at most 9 significant
// digits for a float32, a sign, a point and a two-digit exponent (or "-0.000" and 9 digits).
const maxScaleLen = 15

// encodeHeader writes the header JSON as the reference does, compact with __metadata__ first
// (left out when empty), then the tensors in layout order with their byte ranges
// [begin[i], end[i]].
func encodeHeader(layout tensor.Layout, begin, end []int64, meta map[string]string) []byte {
	b := []byte{'{'}
	if len(meta) > 0 {
		b = appendString(b, metadataKey)
		b = append(b, ":{"...)
		for i, k := range slices.Sorted(maps.Keys(meta)) {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, k)
			b = append(b, ':')
			b = appendString(b, meta[k])
		}
		b = append(b, '}')
	}
	for i, f := range layout {
		if i > 0 || len(meta) > 0 {
			b = append(b, ',')
		}
		b = appendString(b, f.Name)
		b = append(b, `:{"dtype":"`...)
		b = append(b, f.DType.SafetensorsName()...)
		b = append(b, `","shape":[`...)
		for j, d := range f.Shape {
			if j > 0 {
				b = append(b, ',')
			}
			b = strconv.AppendInt(b, int64(d), 10)
		}
		b = append(b, `],"data_offsets":[`...)
		b = strconv.AppendInt(b, begin[i], 10)
		b = append(b, ',')
		b = strconv.AppendInt(b, end[i], 10)
		b = append(b, "]}"...)
	}
	return append(b, '}')
}

// appendString appends s as a JSON string; s is valid UTF-8 (the writer checks).
func appendString(b []byte, s string) []byte {
	q, _ := json.Marshal(s) // a string always marshals
	return append(b, q...)
}
