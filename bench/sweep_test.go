package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"math"
	"slices"
	"testing"
	"unsafe"

	"github.com/wattagg/wattagg/tensor"
)

func TestSweepPoints(t *testing.T) {
	s := SweepSizes{Clients: []int{8, 16}, ClientParams: 4096, Params: []int{1024, 2048, 4096}, ParamClients: 3}
	want := []SweepPoint{{SweepClients, 8, 4096}, {SweepClients, 16, 4096}, {SweepParams, 3, 1024}, {SweepParams, 3, 2048}, {SweepParams, 3, 4096}}
	if got := s.Points(); !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if got, want := s.Bytes(tensor.BF16), int64(16*4096*2); got != want {
		t.Fatalf("Bytes = %d, want %d", got, want)
	}
	if got := (SweepSizes{Clients: []int{8}}).Points(); got != nil {
		t.Fatalf("a sweep without a model size has points: %v", got)
	}
}

// InMemoryUpdates (on all cores) holds Federation.Value for every client and coordinate.
func TestInMemoryUpdates(t *testing.T) {
	const clients, params = 5, 1000
	for _, dt := range []tensor.DType{tensor.F32, tensor.BF16} {
		sets, err := InMemoryUpdates(clients, params, dt)
		if err != nil {
			t.Fatal(err)
		}
		fed := Federation{Model: Flat(params), Seed: 1}
		for k, s := range sets {
			b := s.At(0).Bytes()
			for j := range params {
				want := fed.Value(k, int64(j))
				var got float32
				if dt == tensor.F32 {
					got = math.Float32frombits(binary.LittleEndian.Uint32(b[4*j:]))
				} else {
					got = tensor.BF16ToF32(binary.LittleEndian.Uint16(b[2*j:]))
					want = tensor.BF16ToF32(tensor.F32ToBF16(want))
				}
				if got != want {
					t.Fatalf("%s client %d coordinate %d: %v, want %v", dt, k, j, got, want)
				}
			}
		}
	}
	if _, err := InMemoryUpdates(2, 10, tensor.F64); err == nil || err.Error() != "bench: synthetic clients are f32, bf16 or f16, not f64" {
		t.Fatalf("f64: got %v", err)
	}
}

func TestPrefix(t *testing.T) {
	sets, err := InMemoryUpdates(4, 100, tensor.F32)
	if err != nil {
		t.Fatal(err)
	}
	views, err := Prefix(sets, 3, 40)
	if err != nil {
		t.Fatal(err)
	}
	if len(views) != 3 {
		t.Fatalf("%d views", len(views))
	}
	for k, v := range views {
		got, whole := v.At(0).Bytes(), sets[k].At(0).Bytes()
		if len(got) != 160 || unsafe.SliceData(got) != unsafe.SliceData(whole) || v.Source != sets[k].Source {
			t.Fatalf("view %d is not the first 40 params of client %d", k, k)
		}
	}
	for _, tc := range []struct {
		clients, params int
		msg             string
	}{
		{0, 10, "bench: 0 clients of 4"}, {5, 10, "bench: 5 clients of 4"},
		{2, 0, "bench: 0 params of 100"}, {2, 101, "bench: 101 params of 100"},
	} {
		if _, err := Prefix(sets, tc.clients, tc.params); err == nil || err.Error() != tc.msg {
			t.Errorf("Prefix(%d, %d): got %v, want %q", tc.clients, tc.params, err, tc.msg)
		}
	}
}

func TestRunSweep(t *testing.T) {
	s := SweepSizes{Clients: []int{2, 3}, ClientParams: 64, Params: []int{16, 32}, ParamClients: 2}
	var seen []SweepPoint
	err := RunSweep(context.Background(), s, tensor.F32, func(p SweepPoint, u []*tensor.Set) error {
		if len(u) != p.Clients || u[0].At(0).Len() != p.Params {
			t.Fatalf("%v: %d updates of %d params", p, len(u), u[0].At(0).Len())
		}
		seen = append(seen, p)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(seen, s.Points()) {
		t.Fatalf("measured %v, want %v", seen, s.Points())
	}
	stop := errors.New("stop")
	if err := RunSweep(context.Background(), s, tensor.F32, func(SweepPoint, []*tensor.Set) error { return stop }); !errors.Is(err, stop) {
		t.Fatalf("the measurement's error: got %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := RunSweep(ctx, s, tensor.F32, func(SweepPoint, []*tensor.Set) error { t.Fatal("measured after cancel"); return nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: got %v", err)
	}
}
