// Package cuda holds wattagg's CUDA kernels: the CUDA C sources (*.cu, beside this file) and the
// PTX that `make ptx` generates from them for the virtual architectures compute_80 and
// compute_90, embedded here so that no binary needs a CUDA toolkit. The driver JIT-compiles the
// PTX for the GPU it runs on (and caches the result).
//
// The kernels' semantics are documented in their sources; package cgo/cuda launches them.
package cuda

import (
	"embed"
	"fmt"
	"slices"
)

//go:embed ptx/*.ptx
var ptxFiles embed.FS

// Modules are the kernel modules, one per source file: acc.cu is module "acc".
var Modules = []string{"acc", "reduce", "order", "optim", "noise", "exact"}

// Arches are the compute capabilities (major·10 + minor) PTX is generated for, oldest first.
var Arches = []int{80, 90}

// Arch returns the PTX architecture to load on a GPU of compute capability major.minor: the
// newest of Arches that is not newer than the GPU (PTX runs on its own architecture and later
// ones, never earlier), or 0 when the GPU is older than all of them.
func Arch(major, minor int) int {
	cc := major*10 + minor
	best := 0
	for _, a := range Arches {
		if a <= cc {
			best = a
		}
	}
	return best
}

// PTX returns the PTX text of module for architecture arch (one of Arches).
func PTX(module string, arch int) ([]byte, error) {
	if !slices.Contains(Modules, module) || !slices.Contains(Arches, arch) {
		return nil, fmt.Errorf("kernels/cuda: no PTX for module %q, compute_%d", module, arch)
	}
	return ptxFiles.ReadFile(fmt.Sprintf("ptx/%s.compute_%d.ptx", module, arch))
}
