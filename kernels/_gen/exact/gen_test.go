package main

import (
	"testing"

	"github.com/wattagg/wattagg/kernels/_gen/internal/gencheck"
)

// TestGeneratedUpToDate fails if kernels/exact_amd64.s and kernels/exact_stubs_amd64.go are not what this program generates.
func TestGeneratedUpToDate(t *testing.T) {
	gencheck.UpToDate(t, "exact", "exact_amd64.s", "exact_stubs_amd64.go")
}
