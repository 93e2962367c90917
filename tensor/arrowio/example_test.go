package arrowio_test

import (
	"bytes"
	"fmt"
	"io"
	"log"

	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/arrowio"
)

// A client writes its update as an Arrow IPC stream; the server learns the layout from the
// schema message, then takes the chunks as batches arrive.
func Example() {
	w, _ := tensor.FromF32("fc.weight", []int{2, 40}, make([]float32, 80))
	b, _ := tensor.FromF32("fc.bias", []int{2}, []float32{0.5, -0.5})
	update, _ := tensor.NewSet(w, b)
	update.Metadata["num_examples"] = "120"

	var wire bytes.Buffer // a network connection, an HTTP body
	if err := arrowio.WriteSet(&wire, update, arrowio.WithBatchBytes(128)); err != nil {
		log.Fatal(err)
	}

	r, err := arrowio.NewStreamReader(&wire, arrowio.WithSource("client 7"))
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()
	fmt.Println("layout:", r.Layout(), "num_examples:", r.Metadata()["num_examples"])
	for {
		c, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			log.Fatal(err) // one line naming the client, the tensor and the element
		}
		fmt.Printf("%s: elements %d..%d\n", r.Layout()[c.Tensor].Name, c.Offset, c.Offset+int64(len(c.Data)/4)-1)
	}
	// Output:
	// layout: [{fc.weight f32 [2 40]} {fc.bias f32 [2]}] num_examples: 120
	// fc.weight: elements 0..31
	// fc.weight: elements 32..63
	// fc.weight: elements 64..79
	// fc.bias: elements 0..1
}
