package robust

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/internal/tensortest"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// refNNM mixes x as Allouah et al. (2023) define it, in plain float64: each x_i becomes the mean
// of the n−f vectors nearest to it (itself included).
func refNNM(x [][]float64, f int) [][]float64 {
	n := len(x)
	y := make([][]float64, n)
	for i := range x {
		order := make([]int, n)
		for j := range order {
			order[j] = j
		}
		sort.SliceStable(order, func(a, b int) bool { return sqDist(x[i], x[order[a]]) < sqDist(x[i], x[order[b]]) })
		y[i] = weightedMean(x, order[:n-f], uniform(n))
	}
	return y
}

// The rules NNM takes, run on mixed updates, match their float64 references applied to the
// float64 mixing, in memory and to a file (same bits), for every input dtype; the report says
// the mixing's f.
func TestNNMMatchesFloat64Reference(t *testing.T) {
	ctx := context.Background()
	for _, dt := range []tensor.DType{tensor.F32, tensor.BF16, tensor.I8} {
		r := rand.New(rand.NewPCG(31, uint64(dt)))
		const n, f = 11, 3
		updates := robustUpdates(t, r, n, dt)
		w := make([]float64, n)
		for k := range w {
			w[k] = 1 + float64(r.IntN(100))
		}
		y := refNNM(flats(updates), f)
		scale := magnitudes(y)
		_, krumWant := refKrum(y, w, 2, 1)
		_, multiWant := refKrum(y, w, 2, 3)
		_, bulyanWant := refBulyan(y, 2)
		for _, c := range []struct {
			inner aggregate.Rule
			want  []float64
		}{
			{NewMedian(), coordinatewise(y, refMedian)},
			{tensortest.Must(NewTrimmedMean(0.2))(t), coordinatewise(y, refTrimmed(0.2))},
			{tensortest.Must(NewKrum(2, 1))(t), krumWant},
			{tensortest.Must(NewKrum(2, 3))(t), multiWant},
			{tensortest.Must(NewBulyan(2))(t), bulyanWant},
		} {
			t.Run(fmt.Sprintf("%s/%s", dt, c.inner.Name()), func(t *testing.T) {
				rule := tensortest.Must(NewNNM(c.inner, f))(t)
				if rule.Name() != c.inner.Name()+"+nnm" {
					t.Fatalf("name %q", rule.Name())
				}
				got, rep, err := aggregate.Aggregate(ctx, rule, updates, w, aggregate.WithOutDType(tensor.F32))
				if err != nil {
					t.Fatal(err)
				}
				defer got.Close()
				checkClose(t, rule.Name(), got, c.want, scale, 1e-6)
				if rep.Details["nnm_f"] != f {
					t.Fatalf("details %v: want nnm_f %d", rep.Details, f)
				}
				path := filepath.Join(t.TempDir(), "out.safetensors")
				if _, err := aggregate.AggregateFile(ctx, rule, path, updates, w, aggregate.WithOutDType(tensor.F32)); err != nil {
					t.Fatal(err)
				}
				file := tensortest.Must(safetensors.Open(path))(t)
				defer file.Close()
				for _, tt := range got.Tensors() {
					ft, ok := file.Tensor(tt.Name)
					if !ok || !bytes.Equal(ft.Bytes(), tt.Bytes()) {
						t.Fatalf("tensor %q differs between Aggregate and AggregateFile", tt.Name)
					}
				}
			})
		}
	}
}

// NNM refuses the rules it does not take and an f below 1, needs more than f usable clients,
// and mixing that would not fit the memory budget is an option error, not an allocation.
func TestNNMRefusals(t *testing.T) {
	ctx := context.Background()
	gm := tensortest.Must(NewGeometricMedian())(t)
	for _, inner := range []aggregate.Rule{gm, nil, aggregate.NewFedAvg()} {
		if _, err := NewNNM(inner, 2); !errors.Is(err, aggregate.ErrOption) {
			t.Fatalf("NewNNM(%v): %v, want ErrOption", inner, err)
		}
	}
	if _, err := NewNNM(NewMedian(), 0); !errors.Is(err, aggregate.ErrOption) {
		t.Fatalf("f=0: %v, want ErrOption", err)
	}
	r := rand.New(rand.NewPCG(32, 1))
	updates := robustUpdates(t, r, 3, tensor.F32)
	rule := tensortest.Must(NewNNM(NewMedian(), 3))(t)
	if _, _, err := aggregate.Aggregate(ctx, rule, updates, nil); !errors.Is(err, aggregate.ErrTooFewClients) {
		t.Fatalf("3 clients, f=3: %v, want ErrTooFewClients", err)
	}
	rule = tensortest.Must(NewNNM(NewMedian(), 1))(t)
	_, _, err := aggregate.Aggregate(ctx, rule, updates, nil, aggregate.WithMemoryBudget(100))
	if !errors.Is(err, aggregate.ErrOption) || !strings.Contains(err.Error(), "memory budget") {
		t.Fatalf("a 100-byte budget: %v, want ErrOption naming the memory budget", err)
	}
}
