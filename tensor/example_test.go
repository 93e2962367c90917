package tensor_test

import (
	"fmt"

	"github.com/wattagg/wattagg/tensor"
)

func ExampleNewSet() {
	w, _ := tensor.FromF32("layer.weight", []int{2, 2}, []float32{1, 2, 3, 4})
	b, _ := tensor.New("layer.bias", tensor.F16, 2)
	update, err := tensor.NewSet(w, b)
	if err != nil {
		panic(err)
	}
	fmt.Println(update.Len(), "tensors,", update.NumParams(), "parameters,", update.NumBytes(), "bytes")
	for _, f := range update.Layout() {
		fmt.Println(f.Name, f.DType, f.Shape)
	}

	// Another client sent the same tensors in another order and precision.
	other := tensor.Layout{
		{Name: "layer.bias", DType: tensor.F32, Shape: []int{2}},
		{Name: "layer.weight", DType: tensor.F32, Shape: []int{2, 2}},
	}
	perm, err := update.Layout().Match(other, false)
	fmt.Println(perm, err)
	_, err = update.Layout().Match(other, true)
	fmt.Println(err)
	// Output:
	// 2 tensors, 6 parameters, 20 bytes
	// layer.weight f32 [2 2]
	// layer.bias f16 [2]
	// [1 0] <nil>
	// layout mismatch: tensor "layer.bias" has dtype f32, want f16
}
