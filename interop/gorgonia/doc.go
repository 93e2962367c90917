// Package gorgonia hands wattagg models to gorgonia.org/tensor and back without copying: a
// tensor.Tensor becomes a *tensor.Dense whose backing is the tensor's own bytes (a mapped
// .safetensors file, a buffer pulled from a server, a Go slice), and a contiguous Dense
// becomes a tensor.Tensor that views the Dense's backing.
//
// It is a nested module (its own go.mod) so that gorgonia's dependency graph (gonum, protobuf,
// arrow's old Go module, ...) stays out of the core wattagg module: the aggregation server and
// the CLI never build it. The core module is required through a replace directive to ../..
// so both are built from the same tree.
//
// gorgonia.org/gorgonia v0.9.18 imports go4.org/unsafe/assume-no-moving-gc, whose 2022
// versions panic at program start on any Go release they were not written for (Go 1.26
// included). This module requires the November 2023 version, which no longer panics; a
// program that links gorgonia without this module must upgrade it the same way.
//
// The subpackages are the server-free half of the federation showcase: digits (the UCI
// handwritten digits, a held-out split, non-IID client shards), mlp (a small perceptron
// trained with gorgonia from a global tensor.Set, and inference over a mapped model), attack
// (label flipping, update scaling), serving and cmd/digits-serve (HTTP inference with atomic
// model reload). federation and cmd/federation (make federation) put them together with
// wattagg's aggregation server: a federation run end to end on loopback, and the attack table.
//
// Views are only as writable and as long-lived as what they view: a Dense over a Set opened
// from a file is read-only (writing to it faults) and becomes empty when the Set is closed.
// Clone the Set first when a Dense must be written, as training does.
package gorgonia
