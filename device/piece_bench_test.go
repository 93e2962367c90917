package device_test

import (
	"context"
	"testing"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
)

// BenchmarkAddPiece adds 1 MiB pieces of f32 to 25M exact sums: two-limb sums that stay in one
// limb (terms of 2^30 grid units), two-limb sums whose blocks have their high limb (terms of
// 2^70), and one-limb sums on a coarse grid.
func BenchmarkAddPiece(b *testing.B) {
	b.Run("two-limbs", func(b *testing.B) { benchAddPiece(b, false, 1) })
	b.Run("two-limbs-high", func(b *testing.B) { benchAddPiece(b, false, 0x1p40) })
	b.Run("one-limb", func(b *testing.B) { benchAddPiece(b, true, 1) })
}

func benchAddPiece(b *testing.B, oneLimb bool, w float64) {
	const n = 25_000_000
	cpu, err := device.NewCPU()
	if err != nil {
		b.Fatal(err)
	}
	acc, err := cpu.NewAccumulator([]device.AccField{{Name: "w", Len: n, Acc: tensor.I64, Out: tensor.F32, Grid: -30, Bound: 1000, OneLimb: oneLimb}})
	if err != nil {
		b.Fatal(err)
	}
	defer acc.Close()
	pa := acc.(device.PieceAccumulator)
	piece := make([]byte, 1<<20)
	for i := 0; i < len(piece); i += 4 {
		piece[i+2] = 0x80
		piece[i+3] = 0x3f
	}
	pe := len(piece) / 4
	b.SetBytes(int64(len(piece)))
	// One pass before the clock: every block takes the form it keeps (its high limb, for the
	// large terms), so the loop measures the steady state.
	for off := 0; off+pe <= n; off += pe {
		if err := pa.AddPiece(context.Background(), 0, off, device.Span{DType: tensor.F32, Data: piece}, w); err != nil {
			b.Fatal(err)
		}
	}
	off := 0
	for b.Loop() {
		if off+pe > n {
			off = 0
		}
		if err := pa.AddPiece(context.Background(), 0, off, device.Span{DType: tensor.F32, Data: piece}, w); err != nil {
			b.Fatal(err)
		}
		off += pe
	}
}
