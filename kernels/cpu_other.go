//go:build !amd64 || purego || noasm || !gc

package kernels

// asmBuild reports whether this build holds the assembly kernels: not on this architecture or
// with the purego or noasm tag, where the generic implementation is the only one.
const asmBuild = false
