package arrowio

import (
	"bytes"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/wattagg/wattagg/tensor"
)

// bench25M is a 25M-parameter f32 model: a 16M-row embedding, eight 1M layers and small tensors.
func bench25M(b *testing.B) *tensor.Set {
	layout := tensor.Layout{{Name: "emb", DType: tensor.F32, Shape: []int{16_000_000}}}
	for i := range 8 {
		layout = append(layout, tensor.Field{Name: "layer" + string(rune('0'+i)), DType: tensor.F32, Shape: []int{1024, 1024}})
	}
	for i := range 8 {
		layout = append(layout, tensor.Field{Name: "bias" + string(rune('0'+i)), DType: tensor.F32, Shape: []int{1024}})
	}
	layout = append(layout, tensor.Field{Name: "head", DType: tensor.F32, Shape: []int{25_000_000 - 16_000_000 - 8<<20 - 8<<10}})
	return randomSet(b, rand.New(rand.NewPCG(1, 2)), layout, map[string]string{"num_examples": "1"})
}

// BenchmarkStream25M writes and reads a 25M-parameter f32 update through an in-memory IPC
// stream, beside the floor measured in the same run: one memcpy of the same bytes. Each
// reports the update's bytes per second as update-MB/s (SetBytes counts bytes read plus
// written, as the other benchmarks here do).
//
//	write:        WriteSet into a reused buffer (tensor bytes are written straight from the Set)
//	decode:       NewStreamReader and Next, each chunk copied into a reused Set (a server's path:
//	              stream -> body buffer -> destination)
//	ReadStream:   a fresh Set per update (its pages are touched for the first time)
//	write+decode: both
func BenchmarkStream25M(b *testing.B) {
	s := bench25M(b)
	n := s.NumBytes()
	var wire bytes.Buffer
	if err := WriteSet(&wire, s); err != nil {
		b.Fatal(err)
	}
	stream := bytes.Clone(wire.Bytes())
	dst := s.Clone()
	src := make([]byte, n)
	sink := make([]byte, n)
	for i := range src {
		src[i] = byte(i)
	}
	copy(sink, src) // first touch outside the timing: every contender writes to memory it owns already
	report := func(b *testing.B, rw int64) {
		b.SetBytes(rw)
		b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds()/1e6, "update-MB/s")
	}
	decode := func(b *testing.B, r io.Reader) {
		sr, err := NewStreamReader(r)
		if err != nil {
			b.Fatal(err)
		}
		for {
			c, err := sr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
			copy(dst.At(c.Tensor).Bytes()[c.Offset*4:], c.Data)
		}
		sr.Close()
	}
	b.Run("memcpy", func(b *testing.B) {
		for b.Loop() {
			copy(sink, src)
		}
		report(b, 2*n)
	})
	b.Run("write", func(b *testing.B) {
		for b.Loop() {
			wire.Reset()
			if err := WriteSet(&wire, s); err != nil {
				b.Fatal(err)
			}
		}
		report(b, 2*n)
	})
	b.Run("decode", func(b *testing.B) {
		for b.Loop() {
			decode(b, bytes.NewReader(stream))
		}
		report(b, 2*n)
	})
	b.Run("ReadStream", func(b *testing.B) {
		for b.Loop() {
			if _, err := ReadStream(bytes.NewReader(stream)); err != nil {
				b.Fatal(err)
			}
		}
		report(b, 2*n)
	})
	b.Run("write+decode", func(b *testing.B) {
		for b.Loop() {
			wire.Reset()
			if err := WriteSet(&wire, s); err != nil {
				b.Fatal(err)
			}
			decode(b, &wire)
		}
		report(b, 4*n)
	})
}
