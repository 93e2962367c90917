package main

import (
	"testing"

	"github.com/wattagg/wattagg/kernels/_gen/internal/gencheck"
)

// TestGeneratedUpToDate fails if kernels/kernels_amd64.s and kernels/stubs_amd64.go are not what this program generates.
func TestGeneratedUpToDate(t *testing.T) {
	gencheck.UpToDate(t, ".", "kernels_amd64.s", "stubs_amd64.go")
}
