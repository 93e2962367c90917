//go:build !amd64 || purego || noasm || !gc

package kernels

// robustAsm returns nil: this build has no assembly.
func robustAsm() *robustKernels { return nil }
