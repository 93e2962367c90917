package safetensors_test

import (
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"sync"

	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

func Example() {
	dir, err := os.MkdirTemp("", "safetensors-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "update.safetensors")

	w, _ := tensor.FromF32("layer.weight", []int{2, 2}, []float32{1, 2, 3, 4})
	b, _ := tensor.New("layer.bias", tensor.BF16, 2)
	update, _ := tensor.NewSet(w, b)
	update.Metadata["round"] = "7"
	if err := safetensors.WriteFile(path, update); err != nil {
		log.Fatal(err)
	}

	s, err := safetensors.Open(path)
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close() // unmaps the file: the tensors are views of it
	for _, t := range s.Tensors() {
		fmt.Println(t.Name, t.DType, t.Shape, t.Float64s())
	}
	fmt.Println(s.Metadata)
	// Output:
	// layer.weight f32 [2 2] [1 2 3 4]
	// layer.bias bf16 [2] [0 0]
	// map[round:7]
}

// A Writer is filled at offsets, here by one goroutine per tensor, and becomes visible at
// path only when Commit succeeds.
func ExampleCreate() {
	dir, err := os.MkdirTemp("", "safetensors-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "quantised.safetensors")

	layout := tensor.Layout{
		{Name: "q", DType: tensor.I8, Shape: []int{4}},
		{Name: "bias", DType: tensor.F32, Shape: []int{1}},
	}
	w, err := safetensors.Create(path, layout, map[string]string{"format": "wattagg"})
	if err != nil {
		log.Fatal(err)
	}
	defer w.Abort() // removes the temporary file unless Commit succeeded
	if err := w.SetScale(0, 0.5); err != nil {
		log.Fatal(err)
	}
	data := [][]byte{{1, 2, 0xfd, 0xfc}, {0, 0, 0x80, 0x3f}} // int8 1 2 -3 -4; float32 1
	var wg sync.WaitGroup
	for i, d := range data {
		wg.Go(func() {
			if _, err := w.WriteAt(d, w.TensorOffset(i)); err != nil {
				log.Fatal(err)
			}
		})
	}
	wg.Wait()
	if err := w.Commit(); err != nil {
		log.Fatal(err)
	}
	fmt.Println("data section at", w.DataOffset(), "size", w.DataSize())

	h, err := safetensors.ReadHeader(path)
	if err != nil {
		log.Fatal(err)
	}
	for i, f := range h.Fields {
		fmt.Println(f.Name, f.DType, f.Shape, h.Begin[i], h.End[i], h.Scales[i])
	}
	fmt.Println(h.Metadata)
	// Output:
	// data section at 4096 size 8
	// q i8 [4] 0 4 0.5
	// bias f32 [1] 4 8 1
	// map[format:wattagg]
}

// Errors name the file and the tensor and wrap a sentinel to branch on.
func ExampleParse() {
	file := []byte("\x3c\x00\x00\x00\x00\x00\x00\x00" +
		`{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}}   ` + "twelve bytes")
	_, err := safetensors.Parse(file, safetensors.WithSource("client-17"))
	fmt.Println(err)
	fmt.Println(errors.Is(err, safetensors.ErrOffset))
	// Output:
	// client-17: bad data offsets: data_offsets [0, 12] hold 12 bytes, shape [2 2] of F32 needs 16 (tensor "w")
	// true
}

// Readers and writers take the same Option type. One limit serves both sides, so a file is
// read back under the limits it was written with; an option given to a function it does not
// apply to is refused by name.
func ExampleOption() {
	dir, err := os.MkdirTemp("", "safetensors-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	w, err := tensor.FromF32("w", []int{2}, []float32{1, 2})
	if err != nil {
		log.Fatal(err)
	}
	set, err := tensor.NewSet(w)
	if err != nil {
		log.Fatal(err)
	}
	path := filepath.Join(dir, "model.safetensors")
	lim := safetensors.Limits{HeaderSize: 1 << 16, NameLen: 256, Rank: 8}
	if err := safetensors.WriteFile(path, set, safetensors.WithLimits(lim)); err != nil {
		log.Fatal(err)
	}
	h, err := safetensors.ReadHeader(path, safetensors.WithLimits(lim))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(h.Fields[0].Name, h.Fields[0].Shape)

	_, err = safetensors.ReadHeader(path, safetensors.WithReadMode(safetensors.ReadCopy))
	fmt.Println(err)
	fmt.Println(errors.Is(err, safetensors.ErrOption))
	// Output:
	// w [2]
	// invalid safetensors option: WithReadMode is an option of Open and OpenAll; ReadHeader does not take it
	// true
}
