package server

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"testing"

	"github.com/wattagg/wattagg/tensor/arrowio"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// FuzzParseAckLog: any bytes parse without panicking into a valid prefix whose records parse
// again the same, or into an ErrCorrupt error.
func FuzzParseAckLog(f *testing.F) {
	for _, g := range [][]AckRecord{testRecords(0, 1), testRecords(0, 3)} {
		b, err := encodeAckFrame(g)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(append(b, b[:7]...))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		recs, good, err := parseAckLog(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		if good < 0 || good > len(b) {
			t.Fatalf("valid prefix %d of %d bytes", good, len(b))
		}
		again, good2, err := parseAckLog(b[:good])
		if err != nil || good2 != good || !reflect.DeepEqual(again, recs) {
			t.Fatalf("the valid prefix does not parse to the same records: %v", err)
		}
	})
}

// FuzzSafetensorsSource: any body decodes without panicking, chunk by chunk within the layout,
// or fails with an error of the safetensors package or a truncation.
func FuzzSafetensorsSource(f *testing.F) {
	f.Add(encode(f, f32Set(f, [][]int{{3, 4}, {5}}, func(tn, i int) float32 { return float32(tn + i) }), nil))
	f.Add([]byte("\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":1}        "))
	f.Fuzz(func(t *testing.T, b []byte) {
		src, err := newSafetensorsSource(bytes.NewReader(b), int64(len(b)), 1<<16, "fuzz", make([]byte, 4096))
		if err != nil {
			if !errors.Is(err, ErrTruncated) && !errors.Is(err, safetensors.ErrFormat) && !errors.Is(err, safetensors.ErrHeaderSize) &&
				!errors.Is(err, safetensors.ErrOffset) && !errors.Is(err, safetensors.ErrLimit) && !isLayoutErr(err) {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		d := newDigester(src.Header(), "fuzz", true)
		for {
			c, err := src.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return
			}
			if err := d.write(c); err != nil && !errors.Is(err, arrowio.ErrChunk) && !isNonFinite(err) {
				t.Fatalf("chunk refused: %v", err)
			} else if err != nil {
				return
			}
		}
		if err := d.complete(); err != nil {
			t.Fatalf("a body decoded to its end is incomplete: %v", err)
		}
	})
}

func isLayoutErr(err error) bool {
	status, _ := classify(err)
	return status == 400
}

func isNonFinite(err error) bool {
	_, code := classify(err)
	return code == "non_finite"
}
