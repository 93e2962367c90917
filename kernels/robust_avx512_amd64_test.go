//go:build amd64 && !purego && !noasm && gc

package kernels

import (
	"math/rand/v2"
	"testing"
)

// On a CPU with AVX-512 the raw Gram gives the reference's bits whichever tiles fullWidth512
// chooses (the packed zmm ones or the avx2 ones), for even and odd counts from gramPackedMin,
// finite or not; and the measurement that chooses sees a zmm loop no slower than the ymm one.
func TestGramRawBothWays(t *testing.T) {
	if !hasAVX512 {
		t.Skip("no AVX-512 here")
	}
	if s := zmmFMASpeedup(); !(s > 0.5) {
		t.Fatalf("zmm FMA loop %.2fx the ymm one", s)
	}
	k, err := Lookup("avx512")
	if err != nil {
		t.Fatal(err)
	}
	saved := fullWidth512
	defer func() { fullWidth512 = saved }()
	r := rand.New(rand.NewPCG(11, 12))
	for _, full := range []bool{false, true} {
		fullWidth512 = func() bool { return full }
		for _, n := range []int{gramPackedMin, gramPackedMin + 1, gramPackedMin + 3, 130} {
			for i, l := range []int{8, 9, 16, 520, 1001} {
				checkGramRaw(t, k, r, n, l, i%2 == 0)
			}
		}
	}
}
