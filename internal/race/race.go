// Package race tells the race detector about memory that assembly reads and writes: the
// detector instruments Go code only, so a kernel in assembly is invisible to it unless its
// wrapper reports the ranges first. In builds without -race every function is an empty call
// that the compiler inlines away.
package race
