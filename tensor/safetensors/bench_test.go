package safetensors

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/wattagg/wattagg/tensor"
)

const benchSize = 64 << 20

// benchLayout is 64 MiB of F32 in 16 tensors, the last one odd-sized so that the data
// section ends mid-page.
func benchLayout() tensor.Layout {
	l := make(tensor.Layout, 16)
	for i := range l {
		l[i] = tensor.Field{Name: fmt.Sprintf("layer%d.weight", i), DType: tensor.F32, Shape: []int{1024, 1024}}
	}
	l[15].Shape = []int{1024*1024 - 3}
	return l
}

// BenchmarkOpen maps a 64 MiB file held in the page cache. Floor: with populate the kernel
// only builds page tables (no copy), so Open costs about one first-touch pass without the
// per-page faults; without populate Open is nearly free and "read" pays one fault per
// fault-around block instead. "read" touches one byte per page.
func BenchmarkOpen(b *testing.B) {
	path := filepath.Join(b.TempDir(), "bench.safetensors")
	if err := WriteFile(path, randomSet(b, rand.New(rand.NewPCG(1, 2)), benchLayout(), nil)); err != nil {
		b.Fatal(err)
	}
	for _, populate := range []bool{true, false} {
		for _, read := range []bool{false, true} {
			b.Run(fmt.Sprintf("populate=%v/read=%v", populate, read), func(b *testing.B) {
				b.SetBytes(benchSize)
				var sink byte
				for b.Loop() {
					s, err := Open(path, WithPopulate(populate))
					if err != nil {
						b.Fatal(err)
					}
					if read {
						for _, t := range s.Tensors() {
							data := t.Bytes()
							for i := 0; i < len(data); i += pageSize {
								sink += data[i]
							}
						}
					}
					s.Close()
				}
				_ = sink
			})
		}
	}
}

// BenchmarkWriter writes 64 MiB with WriteAt in 1 MiB page-aligned chunks, Create to Commit
// (fsync and rename included), through O_DIRECT or the page cache. Floor: the disk's write
// bandwidth; the page-cache path also pays a memory copy and then the flush at fsync.
func BenchmarkWriter(b *testing.B) {
	layout := benchLayout()
	path := filepath.Join(b.TempDir(), "bench.safetensors")
	const chunk = 1 << 20
	src := tensor.PageAligned(chunk)
	for _, direct := range []bool{true, false} {
		b.Run(fmt.Sprintf("direct=%v", direct), func(b *testing.B) {
			for b.Loop() {
				w, err := Create(path, layout, nil, WithDirectIO(direct))
				if err != nil {
					b.Fatal(err)
				}
				size := w.DataSize()
				b.SetBytes(size)
				for off := int64(0); off < size; off += chunk {
					if _, err := w.WriteAt(src[:min(chunk, size-off)], off); err != nil {
						b.Fatal(err)
					}
				}
				if err := w.Commit(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkWriteFile writes a 64 MiB Set; with O_DIRECT the tensors are staged through a
// page-aligned buffer (one extra memory copy) to bypass the page cache.
func BenchmarkWriteFile(b *testing.B) {
	s := randomSet(b, rand.New(rand.NewPCG(3, 4)), benchLayout(), nil)
	path := filepath.Join(b.TempDir(), "bench.safetensors")
	for _, direct := range []bool{true, false} {
		b.Run(fmt.Sprintf("direct=%v", direct), func(b *testing.B) {
			b.SetBytes(s.NumBytes())
			for b.Loop() {
				if err := WriteFile(path, s, WithDirectIO(direct)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkParseHeader parses headers of many small tensors (I8, so every tensor also has a
// scale key). Floor: json.Valid alone runs at about 300 MB/s here; the parse validates with it
// and then walks the tokens once.
func BenchmarkParseHeader(b *testing.B) {
	for _, n := range []int{300, 20000} {
		l := make(tensor.Layout, n)
		for i := range l {
			l[i] = tensor.Field{Name: fmt.Sprintf("model.layers.%d.mlp.weight", i), DType: tensor.I8, Shape: []int{2}}
		}
		file := randomSet(b, rand.New(rand.NewPCG(5, 6)), l, map[string]string{"format": "pt"})
		path := filepath.Join(b.TempDir(), "h.safetensors")
		if err := WriteFile(path, file); err != nil {
			b.Fatal(err)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("tensors=%d", n), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if _, err := Parse(data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
