package device_test

import (
	"context"
	"testing"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
)

func BenchmarkAddPiece(b *testing.B) {
	for _, limbs := range []string{"two-limbs", "one-limb"} {
		b.Run(limbs, func(b *testing.B) { benchAddPiece(b, limbs == "one-limb") })
	}
}

func benchAddPiece(b *testing.B, oneLimb bool) {
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
	off := 0
	for b.Loop() {
		if off+pe > n {
			off = 0
		}
		if err := pa.AddPiece(context.Background(), 0, off, device.Span{DType: tensor.F32, Data: piece}, 1); err != nil {
			b.Fatal(err)
		}
		off += pe
	}
}
