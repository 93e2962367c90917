package mlp

import (
	"context"
	"errors"
	"math"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/wattagg/wattagg/interop/gorgonia/digits"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// TestTrainStepMatchesReference: one epoch over 20 samples with a batch of 32 is one SGD step
// on one short (padded) batch; gorgonia's autodiff must land where the float64 backprop
// written in the test does. Tolerance: each gradient element is a float32 sum of at most
// 20·64 products of O(1) terms, so its error is ~1e-5 relative at worst; times the step size
// that is far below 1e-5 absolute on weights of size ~0.1, while a wrong gradient (a missing
// term, a wrong sign, padding rows counted) moves weights by ~lr·|g| ~ 1e-2.
func TestTrainStepMatchesReference(t *testing.T) {
	train, _ := splitDigits(t)
	shard := train.Subset([]int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19})
	global := initModel(t, 16, 3)
	const lr = 0.5
	got, err := Train(context.Background(), global, shard, WithEpochs(1), WithBatchSize(32), WithLearningRate(lr))
	if err != nil {
		t.Fatal(err)
	}
	want := refSGDStep(refFrom(t, global), shard.X, shard.Y, lr)
	gp := refFrom(t, got)
	moved := 0.0
	for i, pair := range [][2][]float64{{gp.w1, want.w1}, {gp.b1, want.b1}, {gp.w2, want.w2}, {gp.b2, want.b2}} {
		before := [][]float64{refFrom(t, global).w1, refFrom(t, global).b1, refFrom(t, global).w2, refFrom(t, global).b2}[i]
		for j := range pair[0] {
			if d := math.Abs(pair[0][j] - pair[1][j]); d > 1e-5 {
				t.Fatalf("%s[%d]: %v after the step, reference %v", Names[i], j, pair[0][j], pair[1][j])
			}
			moved = max(moved, math.Abs(pair[1][j]-before[j]))
		}
	}
	if moved < 1e-3 {
		t.Fatalf("the reference step moved no weight by more than %v: the test proves nothing", moved)
	}
	if n := got.Metadata[NumExamplesKey]; n != "20" {
		t.Fatalf("num_examples %q, want 20", n)
	}
	if !got.Layout().Equal(global.Layout()) {
		t.Fatalf("layout %v, want the global's %v", got.Layout(), global.Layout())
	}
}

// TestTrainLearns: both optimizers lower the training loss of a client from a random start.
func TestTrainLearns(t *testing.T) {
	train, _ := splitDigits(t)
	shard := train.Subset(seq(150))
	global := initModel(t, 32, 4)
	before := refLoss(refFrom(t, global), shard.X, shard.Y)
	for _, opt := range []Optimizer{SGD, Adam} {
		got, err := Train(context.Background(), global, shard, WithOptimizer(opt), WithEpochs(10), WithSeed(9))
		if err != nil {
			t.Fatal(err)
		}
		after := refLoss(refFrom(t, got), shard.X, shard.Y)
		t.Logf("optimizer %d: loss %.3f -> %.3f", opt, before, after)
		if after > before/2 {
			t.Fatalf("optimizer %d: loss %.3f -> %.3f, want at least halved", opt, before, after)
		}
	}
}

func seq(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}

// TestTrainDeterministic: the same seed gives the same bits, another seed other bits, and the
// global model (here mapped read-only from a file) is left untouched.
func TestTrainDeterministic(t *testing.T) {
	train, _ := splitDigits(t)
	shard := train.Subset(seq(100))
	path := filepath.Join(t.TempDir(), "g.safetensors")
	if err := safetensors.WriteFile(path, initModel(t, 32, 5)); err != nil {
		t.Fatal(err)
	}
	global, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer global.Close()
	before := setBytes(global)
	run := func(seed uint64) [][]byte {
		m, err := Train(context.Background(), global, shard, WithSeed(seed), WithEpochs(3), WithBatchSize(10))
		if err != nil {
			t.Fatal(err)
		}
		return setBytes(m)
	}
	a, b, c := run(1), run(1), run(2)
	if !equalBytes(a, b) {
		t.Fatal("same seed, different models")
	}
	if equalBytes(a, c) {
		t.Fatal("seeds 1 and 2 gave the same model")
	}
	if !equalBytes(before, setBytes(global)) {
		t.Fatal("training changed the global model")
	}
}

func TestTrainRejects(t *testing.T) {
	global := initModel(t, 8, 1)
	one := digits.Dataset{X: make([]float32, Inputs), Y: []int{3}}
	ctx := context.Background()
	for name, o := range map[string]Option{
		"0 epochs":   WithEpochs(0),
		"batch 0":    WithBatchSize(0),
		"lr 0":       WithLearningRate(0),
		"lr NaN":     WithLearningRate(math.NaN()),
		"lr -1":      WithLearningRate(-1),
		"optimizer":  WithOptimizer(Optimizer(7)),
		"huge batch": WithBatchSize(1 << 20),
	} {
		if _, err := Train(ctx, global, one, o); !errors.Is(err, ErrOption) {
			t.Errorf("%s: %v, want ErrOption", name, err)
		}
	}
	if _, err := Train(ctx, global, digits.Dataset{}); !errors.Is(err, ErrInput) {
		t.Errorf("no data: %v, want ErrInput", err)
	}
	if _, err := Train(ctx, global, digits.Dataset{X: make([]float32, 10), Y: []int{1}}); !errors.Is(err, ErrInput) {
		t.Errorf("ragged data: %v, want ErrInput", err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := Train(cancelled, global, one); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v, want context.Canceled", err)
	}
}

func TestNumExamples(t *testing.T) {
	train, _ := splitDigits(t)
	got, err := Train(context.Background(), initModel(t, 8, 1), train.Subset(seq(37)), WithEpochs(1))
	if err != nil {
		t.Fatal(err)
	}
	if n, err := strconv.Atoi(got.Metadata[NumExamplesKey]); err != nil || n != 37 {
		t.Fatalf("num_examples %q", got.Metadata[NumExamplesKey])
	}
}
