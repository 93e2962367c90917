package mlp

import (
	"context"
	"slices"
	"sync"
	"testing"

	"github.com/wattagg/wattagg/interop/gorgonia/digits"
	"github.com/wattagg/wattagg/tensor"
)

// TestConcurrentUse: a federation driver trains its clients in parallel and an inference node
// answers requests in parallel. Both must give the bits they give one at a time (run with
// -race: gorgonia's graph construction has shared state, see graphMu).
func TestConcurrentUse(t *testing.T) {
	train, test := splitDigits(t)
	shards, err := train.DirichletShards(4, 0.5, 20, 3)
	if err != nil {
		t.Fatal(err)
	}
	global := initModel(t, 16, 8)
	trainOne := func(k int, d digits.Dataset) *tensor.Set {
		m, err := Train(context.Background(), global, d, WithEpochs(1), WithSeed(uint64(k)))
		if err != nil {
			t.Error(err)
			return nil
		}
		return m
	}
	want := make([][][]byte, len(shards))
	for k, d := range shards {
		want[k] = setBytes(trainOne(k, d))
	}
	model, err := Load(global)
	if err != nil {
		t.Fatal(err)
	}
	rows := test.X[:20*Inputs]
	wantLogits, _, err := model.Predict(rows)
	if err != nil {
		t.Fatal(err)
	}

	got := make([][][]byte, len(shards))
	var wg sync.WaitGroup
	for k, d := range shards {
		wg.Go(func() {
			if m := trainOne(k, d); m != nil {
				got[k] = setBytes(m)
			}
		})
	}
	for range 4 {
		wg.Go(func() {
			for range 10 {
				l, _, err := model.Predict(rows)
				if err != nil {
					t.Error(err)
					return
				}
				if !slices.Equal(l, wantLogits) {
					t.Error("concurrent Predict differs from a lone one")
					return
				}
			}
		})
	}
	wg.Wait()
	for k := range shards {
		if !equalBytes(got[k], want[k]) {
			t.Fatalf("client %d trained concurrently differs from alone", k)
		}
	}
}
