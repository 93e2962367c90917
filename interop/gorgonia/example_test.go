package gorgonia_test

import (
	"fmt"

	"github.com/wattagg/wattagg/interop/gorgonia"
	"github.com/wattagg/wattagg/tensor"
)

// A model's tensor as a gorgonia Dense: the Dense reads and writes the tensor's own memory.
func ExampleDense() {
	w, err := tensor.FromF32("fc.weight", []int{2, 3}, []float32{1, 2, 3, 4, 5, 6})
	if err != nil {
		panic(err)
	}
	d, err := gorgonia.Dense(w)
	if err != nil {
		panic(err)
	}
	v, _ := d.At(1, 2)
	fmt.Println(d.Shape(), v)
	_ = d.SetAt(float32(60), 1, 2)
	fmt.Println(w.Value(5))
	// Output:
	// (2, 3) 6
	// 60
}
