package main

import (
	"testing"

	"github.com/wattagg/wattagg/kernels/_gen/internal/gencheck"
)

// TestGeneratedUpToDate fails if kernels/optim_amd64.s and kernels/optim_stubs_amd64.go are not what this program generates.
func TestGeneratedUpToDate(t *testing.T) {
	gencheck.UpToDate(t, "optim", "optim_amd64.s", "optim_stubs_amd64.go")
}
