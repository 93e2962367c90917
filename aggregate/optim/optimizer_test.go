package optim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/internal/tensortest"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// twoRounds is the hand-computed example of every optimizer: a model w = [1, -2], two clients
// weighted 1 and 3.
//
// Round 1: clients send [1.5, -2.0] and [1.1, -1.6]: their mean is [1.2, -1.7], Δ1 = [0.2, 0.3].
// Round 2: clients send x1 + [-0.1, 0.2] and x1 + [0.3, 0]: Δ2 = [(-0.1+0.9)/4, 0.2/4] = [0.2, 0.05].
//
// From m0 = 0, v0 = τ². For FedAdam (η 0.1, β1 0.9, β2 0.99, τ 0.01), element 0:
//
//	m1 = 0.1·0.2 = 0.02;  v1 = 0.99·1e-4 + 0.01·0.04 = 0.000499
//	x1 = 1 + 0.1·0.02/(√0.000499 + 0.01) = 1 + 0.002/0.032338308 = 1.061846155
//	m2 = 0.9·0.02 + 0.1·0.2 = 0.038;  v2 = 0.99·0.000499 + 0.01·0.04 = 0.00089401
//	x2 = x1 + 0.1·0.038/(√0.00089401 + 0.01) = 1.061846155 + 0.0038/0.039899997 = 1.15708425
//
// FedYogi, element 0 of round 1: v0 = 1e-4 < Δ² = 0.04, so sign = -1 and v1 = 1e-4 + 0.01·0.04
// = 0.0005. FedAdagrad: v1 = 1e-4 + 0.04 = 0.0401. FedAvgM (η 0.5, β 0.9): m1 = Δ1, x1 = 1 +
// 0.5·0.2 = 1.1; m2 = 0.9·0.2 + 0.2 = 0.38, x2 = 1.1 + 0.19 = 1.29. The other figures follow
// the same way.
var twoRounds = []struct {
	name   string
	opts   []Option
	x, m   [2][2]float64 // per round
	v      [2][2]float64
	second bool
}{
	{"fedavgm", []Option{WithServerLR(0.5), WithBeta1(0.9)},
		[2][2]float64{{1.1, -1.85}, {1.29, -1.69}}, [2][2]float64{{0.2, 0.3}, {0.38, 0.32}}, [2][2]float64{}, false},
	{"fedadagrad", []Option{WithServerLR(0.1), WithBeta1(0.9), WithTau(0.01)},
		[2][2]float64{{1.009512492, -1.990327779}, {1.022480915, -1.980146504}},
		[2][2]float64{{0.02, 0.03}, {0.038, 0.032}}, [2][2]float64{{0.0401, 0.0901}, {0.0801, 0.0926}}, true},
	{"fedadam", []Option{WithServerLR(0.1), WithBeta1(0.9), WithBeta2(0.99), WithTau(0.01)},
		[2][2]float64{{1.061846155, -1.927896681}, {1.15708425, -1.851421286}},
		[2][2]float64{{0.02, 0.03}, {0.038, 0.032}}, [2][2]float64{{0.000499, 0.000999}, {0.00089401, 0.00101401}}, true},
	{"fedyogi", []Option{WithServerLR(0.1), WithBeta1(0.9), WithBeta2(0.99), WithTau(0.01)},
		[2][2]float64{{1.061803399, -1.927924078}, {1.156803399, -1.851761929}},
		[2][2]float64{{0.02, 0.03}, {0.038, 0.032}}, [2][2]float64{{0.0005, 0.001}, {0.0009, 0.001025}}, true},
}

func checkRound(t *testing.T, name string, round int, x []float32, st *State, wantX, wantM, wantV [2]float64, second bool) {
	t.Helper()
	if st == nil {
		t.Fatalf("%s round %d: no state", name, round)
	}
	m := tensortest.F32Of(t, st.M, "w")
	for j := range 2 {
		if !near(x[j], wantX[j], 2e-6) || !near(m[j], wantM[j], 2e-5) {
			t.Fatalf("%s round %d: x[%d] = %v, m = %v; want %v, %v", name, round, j, x[j], m[j], wantX[j], wantM[j])
		}
		if second {
			if v := tensortest.F32Of(t, st.V, "w"); !near(v[j], wantV[j], 2e-5) {
				t.Fatalf("%s round %d: v[%d] = %v, want %v", name, round, j, v[j], wantV[j])
			}
		} else if st.V != nil {
			t.Fatalf("%s keeps a second moment", name)
		}
	}
	if st.Round != round {
		t.Fatalf("%s: state round %d, want %d", name, st.Round, round)
	}
}

// Each round takes the global model the clients trained from (WithGlobal); the model a round
// returns is the next round's global model.
func TestServerOptimizerTwoRounds(t *testing.T) {
	ctx := context.Background()
	for _, c := range twoRounds {
		t.Run(c.name, func(t *testing.T) {
			x0 := tensortest.F32Set(t, "x0", "w", []float32{1, -2})
			r := tensortest.Must(New(c.name, c.opts...))(t)
			defer r.Close()
			w := []float64{1, 3}
			x1, rep, err := aggregate.Aggregate(ctx, r, []*tensor.Set{tensortest.F32Set(t, "a", "w", []float32{1.5, -2.0}), tensortest.F32Set(t, "b", "w", []float32{1.1, -1.6})}, w,
				aggregate.WithGlobal(x0))
			if err != nil {
				t.Fatal(err)
			}
			checkRound(t, c.name, 1, tensortest.F32Of(t, x1, "w"), r.State(), c.x[0], c.m[0], c.v[0], c.second)
			if rep.Rule != c.name || rep.Details["round"] != 1 || math.Abs(rep.Details["delta_norm"]-math.Hypot(0.2, 0.3)) > 1e-6 {
				t.Fatalf("report %+v", rep)
			}
			if x1.Metadata["wattagg.rule"] != c.name || x1.Metadata["wattagg.round"] != "1" {
				t.Fatalf("the new model lacks metadata: %v", x1.Metadata)
			}
			x2, _, err := aggregate.Aggregate(ctx, r, []*tensor.Set{plus(t, "a", x1, -0.1, 0.2), plus(t, "b", x1, 0.3, 0)}, w,
				aggregate.WithGlobal(x1))
			if err != nil {
				t.Fatal(err)
			}
			checkRound(t, c.name, 2, tensortest.F32Of(t, x2, "w"), r.State(), c.x[1], c.m[1], c.v[1], c.second)
		})
	}
}

// The same two rounds through files, with a new optimizer built for round 2 from the model and
// the state round 1 wrote: the state round-trips through its file.
func TestServerOptimizerFiles(t *testing.T) {
	ctx := context.Background()
	for _, c := range twoRounds {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			g0, g1, g2 := filepath.Join(dir, "g0.safetensors"), filepath.Join(dir, "g1.safetensors"), filepath.Join(dir, "g2.safetensors")
			state := filepath.Join(dir, "state.safetensors")
			if err := safetensors.WriteFile(g0, tensortest.F32Set(t, "", "w", []float32{1, -2})); err != nil {
				t.Fatal(err)
			}
			w := []float64{1, 3}
			r1 := tensortest.Must(New(c.name, append(c.opts, WithStateFile(state))...))(t)
			rep, err := aggregate.AggregateFile(ctx, r1, g1, []*tensor.Set{tensortest.F32Set(t, "a", "w", []float32{1.5, -2.0}), tensortest.F32Set(t, "b", "w", []float32{1.1, -1.6})}, w,
				aggregate.WithGlobalFile(g0))
			if err != nil {
				t.Fatal(err)
			}
			if rep.Output != g1 {
				t.Fatalf("report output %q", rep.Output)
			}
			if err := r1.Close(); err != nil {
				t.Fatal(err)
			}

			st, err := LoadState(state)
			if err != nil {
				t.Fatal(err)
			}
			x1, err := safetensors.Open(g1)
			if err != nil {
				t.Fatal(err)
			}
			defer x1.Close()
			checkRound(t, c.name, 1, tensortest.F32Of(t, x1, "w"), st, c.x[0], c.m[0], c.v[0], c.second)
			st.Close()

			// The state is loaded when the new optimizer begins its first round.
			r2 := tensortest.Must(New(c.name, append(c.opts, WithStateFile(state))...))(t)
			defer r2.Close()
			if _, err := aggregate.AggregateFile(ctx, r2, g2, []*tensor.Set{plus(t, "a", x1, -0.1, 0.2), plus(t, "b", x1, 0.3, 0)}, w,
				aggregate.WithGlobalFile(g1)); err != nil {
				t.Fatal(err)
			}
			x2, err := safetensors.Open(g2)
			if err != nil {
				t.Fatal(err)
			}
			defer x2.Close()
			checkRound(t, c.name, 2, tensortest.F32Of(t, x2, "w"), r2.State(), c.x[1], c.m[1], c.v[1], c.second)
			if r2.Round() != 2 {
				t.Fatalf("continued the state to round %d", r2.Round())
			}
		})
	}
}

// referenceOptimizer is Algorithm 2 written plainly in float64, by tensor name.
type referenceOptimizer struct {
	name                  string
	lr, beta1, beta2, tau float64
	x, m, v               map[string][]float64
}

func (o *referenceOptimizer) step(updates []*tensor.Set, weights []float64) {
	mean := referenceMean(updates, weights)
	for name, x := range o.x {
		if o.m[name] == nil {
			o.m[name] = make([]float64, len(x))
			o.v[name] = make([]float64, len(x))
			for j := range x {
				o.v[name][j] = o.tau * o.tau
			}
		}
		m, v := o.m[name], o.v[name]
		for j := range x {
			d := mean[name][j] - x[j]
			if o.name == "fedavgm" {
				m[j] = o.beta1*m[j] + d
				x[j] += o.lr * m[j]
				continue
			}
			m[j] = o.beta1*m[j] + (1-o.beta1)*d
			switch o.name {
			case "fedadagrad":
				v[j] += d * d
			case "fedadam":
				v[j] = o.beta2*v[j] + (1-o.beta2)*d*d
			case "fedyogi":
				s := 0.0
				if v[j] > d*d {
					s = 1
				} else if v[j] < d*d {
					s = -1
				}
				v[j] -= (1 - o.beta2) * d * d * s
			}
			x[j] += o.lr * m[j] / (math.Sqrt(v[j]) + o.tau)
		}
	}
}

// Every optimizer against the float64 reference over three rounds of five clients (one of them
// bf16) on a model of several tensors, with tensors in other orders in some clients.
func TestServerOptimizerReference(t *testing.T) {
	ctx := context.Background()
	r := rand.New(rand.NewPCG(5, 6))
	order := []string{"embed", "bias", "norm", "scalar"}
	for _, name := range []string{"fedavgm", "fedadagrad", "fedadam", "fedyogi"} {
		t.Run(name, func(t *testing.T) {
			g := tensortest.Update(t, r, "global", tensor.F32, order)
			ref := &referenceOptimizer{name: name, lr: 0.05, beta1: 0.8, beta2: 0.9, tau: 1e-2,
				x: map[string][]float64{}, m: map[string][]float64{}, v: map[string][]float64{}}
			for _, tt := range g.Tensors() {
				ref.x[tt.Name] = tt.Float64s()
			}
			opts := []Option{WithServerLR(0.05), WithBeta1(0.8)}
			if name == "fedadam" || name == "fedyogi" {
				opts = append(opts, WithBeta2(0.9))
			}
			if name != "fedavgm" {
				opts = append(opts, WithTau(1e-2))
			}
			rule := tensortest.Must(New(name, opts...))(t)
			defer rule.Close()
			global := g
			for round := range 3 {
				var updates []*tensor.Set
				for k := range 5 {
					u := &tensor.Set{Source: fmt.Sprintf("client%d", k), Metadata: map[string]string{}}
					dt := tensor.F32
					if k == 4 {
						dt = tensor.BF16
					}
					o := order
					if k == 2 {
						o = []string{"norm", "scalar", "embed", "bias"}
					}
					for _, n := range o {
						gt, _ := global.Tensor(n)
						nt := tensortest.New(t, n, dt, gt.Shape...)
						for j := range nt.Len() {
							tensortest.SetValue(nt, j, gt.Value(j)+r.NormFloat64()*0.01)
						}
						tensortest.Add(t, u, nt)
					}
					updates = append(updates, u)
				}
				weights := []float64{1, 2, 3, 4, 5}
				// Many chunks; a bf16 client.
				got, _, err := aggregate.Aggregate(ctx, rule, updates, weights,
					aggregate.WithGlobal(global), aggregate.WithChunkBytes(4096), aggregate.WithMixedDTypes(true))
				if err != nil {
					t.Fatal(err)
				}
				ref.step(updates, weights)
				for _, tt := range got.Tensors() {
					for j := range tt.Len() {
						want := ref.x[tt.Name][j]
						if d := math.Abs(tt.Value(j) - want); d > 1e-6*(1+math.Abs(want)) {
							t.Fatalf("round %d: %s[%d] = %v, float64 reference %v", round, tt.Name, j, tt.Value(j), want)
						}
					}
				}
				global = got
			}
		})
	}
}

// FedAvgM with β = 0 and η = 1 is FedAvg.
func TestFedAvgMIsFedAvg(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 9))
	order := []string{"embed", "bias", "norm", "scalar"}
	g := tensortest.Update(t, r, "global", tensor.F32, order)
	updates := []*tensor.Set{tensortest.Update(t, r, "a", tensor.F32, order), tensortest.Update(t, r, "b", tensor.F32, order)}
	rule := tensortest.Must(NewFedAvgM(WithServerLR(1), WithBeta1(0)))(t)
	defer rule.Close()
	got, _, err := aggregate.Aggregate(context.Background(), rule, updates, []float64{1, 2}, aggregate.WithGlobal(g))
	if err != nil {
		t.Fatal(err)
	}
	mean, _, err := aggregate.WeightedMean(context.Background(), updates, []float64{1, 2})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range mean.Tensors() {
		gt, _ := got.Tensor(tt.Name)
		for j := range tt.Len() {
			// x + (mean - x) rounds twice; a few f32 ulps of the values involved.
			if d := math.Abs(gt.Value(j) - tt.Value(j)); d > 1e-6*(math.Abs(tt.Value(j))+8) {
				t.Fatalf("%s[%d] = %v, FedAvg %v", tt.Name, j, gt.Value(j), tt.Value(j))
			}
		}
	}
}

func TestServerOptimizerOptionErrors(t *testing.T) {
	ctx := context.Background()
	g := tensortest.F32Set(t, "g", "w", []float32{1})
	for _, c := range []struct {
		name string
		opts []Option
		want string
	}{
		{"fedadam", []Option{WithServerLR(-0.1)}, "server learning rate -0.1"},
		{"fedadam", []Option{WithServerLR(math.NaN())}, "server learning rate NaN"},
		{"fedadam", []Option{WithBeta1(1)}, "β1 1: want a value in [0, 1)"},
		{"fedadam", []Option{WithBeta1(-0.5)}, "β1 -0.5"},
		{"fedyogi", []Option{WithBeta2(1.5)}, "β2 1.5"},
		{"fedadam", []Option{WithTau(0)}, "τ 0: want a finite value > 0"},
		{"fedadagrad", []Option{WithTau(-1)}, "τ -1"},
		{"fedavgm", []Option{WithTau(0.1)}, "fedavgm has no τ"},
		{"fedavgm", []Option{WithBeta2(0.9)}, "fedavgm has no β2"},
		{"fedadagrad", []Option{WithBeta2(0.9)}, "fedadagrad has no β2"},
		{"fedadam", []Option{WithStateFile("")}, "empty state path"},
		{"fedadam", []Option{nil}, "nil option"},
		{"fedsgd", nil, `unknown server optimizer "fedsgd"`},
	} {
		_, err := New(c.name, c.opts...)
		if !errors.Is(err, aggregate.ErrOption) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s %d options: %v, want ErrOption saying %q", c.name, len(c.opts), err, c.want)
		}
	}
	// The engine's options are checked by the round.
	clients := []*tensor.Set{tensortest.F32Set(t, "a", "w", []float32{2})}
	r := tensortest.Must(NewFedAdam())(t)
	defer r.Close()
	for _, c := range []struct {
		opts []aggregate.Option
		want string
	}{
		{[]aggregate.Option{aggregate.WithGlobal(g), aggregate.WithChunkBytes(3)}, "chunk of 3 bytes"},
		{nil, "needs the global model"},
		{[]aggregate.Option{aggregate.WithGlobal(g), aggregate.WithGlobalFile("x")}, "both WithGlobal and WithGlobalFile"},
	} {
		if _, _, err := aggregate.Aggregate(ctx, r, clients, nil, c.opts...); !errors.Is(err, aggregate.ErrOption) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%d engine options: %v, want ErrOption saying %q", len(c.opts), err, c.want)
		}
	}
	if r.Round() != 0 {
		t.Fatalf("refused rounds advanced the optimizer to round %d", r.Round())
	}
}

// A state is only continued by the rule and hyperparameters that made it, for the same model.
func TestOptimizerStateMismatch(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	g0 := filepath.Join(dir, "g0.safetensors")
	state := filepath.Join(dir, "state.safetensors")
	if err := safetensors.WriteFile(g0, tensortest.F32Set(t, "", "w", []float32{1, -2})); err != nil {
		t.Fatal(err)
	}
	r := tensortest.Must(NewFedAdam(WithStateFile(state), WithBeta1(0.9)))(t)
	if _, err := aggregate.AggregateFile(ctx, r, filepath.Join(dir, "g1.safetensors"), []*tensor.Set{tensortest.F32Set(t, "a", "w", []float32{1.5, -2})}, nil,
		aggregate.WithGlobalFile(g0)); err != nil {
		t.Fatal(err)
	}
	r.Close()
	other := filepath.Join(dir, "other.safetensors")
	if err := safetensors.WriteFile(other, tensortest.F32Set(t, "", "w", []float32{1, 2, 3})); err != nil {
		t.Fatal(err)
	}
	// The state is read when a round begins: the round is refused.
	for _, c := range []struct {
		name   string
		opts   []Option
		global string
		want   string
	}{
		{"fedyogi", nil, g0, "made by fedadam, this rule is fedyogi"},
		{"fedadam", []Option{WithBeta1(0.95)}, g0, "made with β1 0.9, this rule has 0.95"},
		{"fedadam", []Option{WithTau(0.5)}, g0, "made with τ 0.001, this rule has 0.5"},
		{"fedadam", nil, other, `tensor "w" has shape [2], the model [3]`},
	} {
		rule := tensortest.Must(New(c.name, append(c.opts, WithStateFile(state))...))(t)
		_, err := aggregate.NewRound(ctx, rule, aggregate.WithGlobalFile(c.global))
		if !errors.Is(err, aggregate.ErrState) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), state) {
			t.Errorf("%s: %v, want ErrState naming the file and saying %q", c.name, err, c.want)
		}
		rule.Close()
	}
	// Not a state at all: a model file.
	rule := tensortest.Must(NewFedAdam(WithStateFile(g0)))(t)
	defer rule.Close()
	if _, err := aggregate.NewRound(ctx, rule, aggregate.WithGlobalFile(g0)); !errors.Is(err, aggregate.ErrState) || !strings.Contains(err.Error(), "not a server-optimizer state") {
		t.Errorf("model file as state: %v", err)
	}
	// A FedAvgM state has no second moment; a FedAdam one read as FedAvgM is refused above by
	// the rule; a hand-made state with a stray tensor is refused here.
	bad := tensortest.F32Set(t, "", "m/w", []float32{0, 0}, "x/w", []float32{0, 0})
	bad.Metadata = (&State{Rule: "fedavgm", LR: 1, Beta1: 0.9, Round: 1}).metadata()
	badPath := filepath.Join(dir, "bad.safetensors")
	if err := safetensors.WriteFile(badPath, bad); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadState(badPath); !errors.Is(err, aggregate.ErrState) || !strings.Contains(err.Error(), `unexpected tensor "x/w"`) {
		t.Errorf("stray tensor: %v", err)
	}
}

// A failed round changes nothing: no output, the state file untouched, the rule where it was.
func TestServerOptimizerFailureLeavesState(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	g0, g1 := filepath.Join(dir, "g0.safetensors"), filepath.Join(dir, "g1.safetensors")
	state := filepath.Join(dir, "state.safetensors")
	if err := safetensors.WriteFile(g0, tensortest.F32Set(t, "", "w", []float32{1, -2})); err != nil {
		t.Fatal(err)
	}
	r := tensortest.Must(NewFedYogi(WithStateFile(state)))(t)
	defer r.Close()
	if _, err := aggregate.AggregateFile(ctx, r, g1, []*tensor.Set{tensortest.F32Set(t, "a", "w", []float32{1.5, -2})}, nil, aggregate.WithGlobalFile(g0)); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "g2.safetensors")
	from := aggregate.WithGlobalFile(g1)
	nan := tensortest.F32Set(t, "evil", "w", []float32{float32(math.NaN()), 0})
	_, err = aggregate.AggregateFile(ctx, r, out, []*tensor.Set{tensortest.F32Set(t, "a", "w", []float32{1, 1}), nan}, nil, from)
	var nf *tensor.NonFiniteError
	if !errors.As(err, &nf) || nf.Source != "evil" {
		t.Fatalf("NaN client: %v", err)
	}
	delta := tensortest.F32Set(t, "d", "w", []float32{0.1, 0.1})
	delta.Metadata[aggregate.UpdateKindKey] = "delta"
	if _, err := aggregate.AggregateFile(ctx, r, out, []*tensor.Set{delta}, nil, from); !errors.Is(err, aggregate.ErrUpdateKind) || !strings.Contains(err.Error(), "d: ") {
		t.Fatalf("delta update: %v", err)
	}
	if _, err := aggregate.AggregateFile(ctx, r, out, []*tensor.Set{tensortest.F32Set(t, "o", "v", []float32{1, 1})}, nil, from); !errors.Is(err, tensor.ErrLayoutMismatch) {
		t.Fatalf("other layout: %v", err)
	}
	after, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) || r.Round() != 1 {
		t.Fatalf("a failed round changed the state (round %d)", r.Round())
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatalf("output exists after failures: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".*tmp*")); len(left) > 0 {
		t.Fatalf("temporary files left: %v", left)
	}
	// The round that overflows: an enormous learning rate makes the model infinite.
	huge := tensortest.Must(NewFedAvgM(WithServerLR(3e38)))(t)
	defer huge.Close()
	_, _, err = aggregate.Aggregate(ctx, huge, []*tensor.Set{tensortest.F32Set(t, "a", "w", []float32{3, 3})}, nil,
		aggregate.WithGlobal(tensortest.F32Set(t, "g", "w", []float32{1, 1})))
	if !errors.Is(err, aggregate.ErrOverflow) || !strings.Contains(err.Error(), `tensor "w" element 0`) {
		t.Fatalf("overflow: %v", err)
	}
	if huge.Round() != 0 {
		t.Fatal("a failed round advanced the rule")
	}
}

func TestServerOptimizerGlobalChecks(t *testing.T) {
	ctx := context.Background()
	gs, err := tensor.NewSet(tensortest.New(t, "w", tensor.BF16, 2))
	if err != nil {
		t.Fatal(err)
	}
	r := tensortest.Must(NewFedAdam())(t)
	defer r.Close()
	a := []*tensor.Set{tensortest.F32Set(t, "a", "w", []float32{1, 1})}
	if _, _, err := aggregate.Aggregate(ctx, r, a, nil, aggregate.WithGlobal(gs)); !errors.Is(err, tensor.ErrDType) || !strings.Contains(err.Error(), "must be f32") {
		t.Fatalf("bf16 global: %v", err)
	}
	g := tensortest.F32Set(t, "g", "w", []float32{1, 1})
	if _, _, err := aggregate.Aggregate(ctx, r, a, nil, aggregate.WithGlobal(g), aggregate.WithOutDType(tensor.BF16)); !errors.Is(err, aggregate.ErrOption) {
		t.Fatalf("bf16 output: %v", err)
	}
	// bf16 clients are fine: they are widened in the sum.
	c16 := tensortest.New(t, "w", tensor.BF16, 2)
	tensortest.SetValue(c16, 0, 2)
	tensortest.SetValue(c16, 1, 2)
	cs, err := tensor.NewSet(c16)
	if err != nil {
		t.Fatal(err)
	}
	r3 := tensortest.Must(NewFedAvgM(WithBeta1(0)))(t)
	defer r3.Close()
	got, _, err := aggregate.Aggregate(ctx, r3, []*tensor.Set{cs}, nil, aggregate.WithGlobal(g))
	if err != nil || tensortest.F32Of(t, got, "w")[0] != 2 {
		t.Fatalf("bf16 client: %v", err)
	}
}

// In memory the optimizer writes each round's moments into the buffers of the state before last
// (double buffering); a round that fails half way, having written some chunks there, must leave
// the current state as it was, and the next round must compute from it: bit for bit what an
// optimizer that never saw the failed rounds computes.
func TestServerOptimizerInMemoryFailure(t *testing.T) {
	ctx := context.Background()
	r := rand.New(rand.NewPCG(8, 9))
	g := tensortest.Update(t, r, "global", tensor.F32, []string{"embed", "norm"})
	rule := tensortest.Must(NewFedAdam())(t)
	defer rule.Close()
	twin := tensortest.Must(NewFedAdam())(t) // sees only the successful rounds
	defer twin.Close()
	opts := func(global *tensor.Set) []aggregate.Option {
		return []aggregate.Option{aggregate.WithGlobal(global), aggregate.WithChunkBytes(4096)}
	}
	global := g
	for range 2 {
		cs := tensortest.AroundGlobal(t, r, global, 3, 0.1)
		x, _, err := aggregate.Aggregate(ctx, rule, cs, nil, opts(global)...)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := aggregate.Aggregate(ctx, twin, cs, nil, opts(global)...); err != nil {
			t.Fatal(err)
		}
		global = x
	}
	before := rule.State()
	m := append([]float32(nil), tensortest.F32Of(t, before.M, "norm")...)
	v := append([]float32(nil), tensortest.F32Of(t, before.V, "norm")...)
	x := append([]float32(nil), tensortest.F32Of(t, global, "norm")...)
	unchanged := func(what string) {
		t.Helper()
		if rule.Round() != 2 || !tensortest.EqualF32(tensortest.F32Of(t, rule.State().M, "norm"), m) || !tensortest.EqualF32(tensortest.F32Of(t, rule.State().V, "norm"), v) ||
			!tensortest.EqualF32(tensortest.F32Of(t, global, "norm"), x) {
			t.Fatalf("a failed in-memory round (%s) changed the state or the model", what)
		}
	}
	// A NaN client fails the round (found where its block is summed, or when it is added).
	bad := tensortest.AroundGlobal(t, r, global, 3, 0.1)
	nt, _ := bad[1].Tensor("norm")
	tensortest.SetValue(nt, 1000, math.NaN())
	if _, _, err := aggregate.Aggregate(ctx, rule, bad, nil, opts(global)...); !errors.Is(err, tensor.ErrNonFinite) {
		t.Fatalf("NaN client: %v", err)
	}
	unchanged("NaN client")
	// Finite clients whose delta overflows the second moment in the last chunk (Δ² beyond the
	// f32 range): the other chunks are stepped, into the retired state's buffers, before the
	// round fails.
	bad = tensortest.AroundGlobal(t, r, global, 3, 0.1)
	for _, c := range bad {
		nt, _ := c.Tensor("norm")
		tensortest.SetValue(nt, 1000, 3e38)
	}
	if _, _, err := aggregate.Aggregate(ctx, rule, bad, nil, opts(global)...); !errors.Is(err, aggregate.ErrOverflow) || !strings.Contains(err.Error(), "second moment") {
		t.Fatalf("overflowing delta: %v", err)
	}
	unchanged("overflow")
	cs := tensortest.AroundGlobal(t, r, global, 3, 0.1)
	got, _, err := aggregate.Aggregate(ctx, rule, cs, nil, opts(global)...)
	if err != nil || rule.Round() != 3 {
		t.Fatalf("round 3: %v", err)
	}
	want, _, err := aggregate.Aggregate(ctx, twin, cs, nil, opts(global)...)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"embed", "norm"} {
		if !tensortest.EqualF32(tensortest.F32Of(t, got, name), tensortest.F32Of(t, want, name)) || !tensortest.EqualF32(tensortest.F32Of(t, rule.State().M, name), tensortest.F32Of(t, twin.State().M, name)) ||
			!tensortest.EqualF32(tensortest.F32Of(t, rule.State().V, name), tensortest.F32Of(t, twin.State().V, name)) {
			t.Fatalf("%s: round 3 after the failures differs from round 3 without them", name)
		}
	}
}

// An optimizer's rounds are serialised: a second round is refused while the first is open, and
// an abandoned round (closed without a result) moves nothing.
func TestServerOptimizerRoundsAreSerialised(t *testing.T) {
	ctx := context.Background()
	g := tensortest.F32Set(t, "g", "w", []float32{1, -2})
	rule := tensortest.Must(NewFedAdam())(t)
	defer rule.Close()
	first, err := aggregate.NewRound(ctx, rule, aggregate.WithGlobal(g))
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Add(ctx, tensortest.F32Set(t, "a", "w", []float32{1.5, -2}), 1); err != nil {
		t.Fatal(err)
	}
	if _, err := aggregate.NewRound(ctx, rule, aggregate.WithGlobal(g)); !errors.Is(err, aggregate.ErrOption) || !strings.Contains(err.Error(), "in another round") {
		t.Fatalf("second open round: %v", err)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	if rule.Round() != 0 || rule.State() != nil {
		t.Fatalf("an abandoned round moved the optimizer to round %d", rule.Round())
	}
	clients := func() []*tensor.Set {
		return []*tensor.Set{tensortest.F32Set(t, "a", "w", []float32{1.5, -2}), tensortest.F32Set(t, "b", "w", []float32{1.1, -1.6})}
	}
	x1, _, err := aggregate.Aggregate(ctx, rule, clients(), []float64{1, 3}, aggregate.WithGlobal(g))
	if err != nil {
		t.Fatalf("a round after the abandoned one: %v", err)
	}
	if rule.Round() != 1 || x1.Metadata[aggregate.RoundKey] != "1" {
		t.Fatalf("round %d, metadata %v", rule.Round(), x1.Metadata)
	}
	// Bit for bit the first round of an optimizer that never began another.
	fresh := tensortest.Must(NewFedAdam())(t)
	defer fresh.Close()
	want, _, err := aggregate.Aggregate(ctx, fresh, clients(), []float64{1, 3}, aggregate.WithGlobal(g))
	if err != nil {
		t.Fatal(err)
	}
	if !tensortest.EqualF32(tensortest.F32Of(t, x1, "w"), tensortest.F32Of(t, want, "w")) || !tensortest.EqualF32(tensortest.F32Of(t, rule.State().M, "w"), tensortest.F32Of(t, fresh.State().M, "w")) {
		t.Fatal("the round after an abandoned one differs from a first round")
	}
}

// The two rounds of TestServerOptimizerFiles through incremental rounds (NewRound, Add as the
// updates arrive, WriteFile): the state file moves on with every model written, as with
// AggregateFile.
func TestServerOptimizerIncrementalFiles(t *testing.T) {
	ctx := context.Background()
	for _, c := range twoRounds {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			g0, g1, g2 := filepath.Join(dir, "g0.safetensors"), filepath.Join(dir, "g1.safetensors"), filepath.Join(dir, "g2.safetensors")
			state := filepath.Join(dir, "state.safetensors")
			if err := safetensors.WriteFile(g0, tensortest.F32Set(t, "", "w", []float32{1, -2})); err != nil {
				t.Fatal(err)
			}
			round := func(r *Optimizer, global, out string, clients ...*tensor.Set) {
				t.Helper()
				rd, err := aggregate.NewRound(ctx, r, aggregate.WithGlobalFile(global))
				if err != nil {
					t.Fatal(err)
				}
				defer rd.Close()
				for k, u := range clients {
					if err := rd.Add(ctx, u, []float64{1, 3}[k]); err != nil {
						t.Fatal(err)
					}
				}
				if _, err := rd.WriteFile(ctx, out); err != nil {
					t.Fatal(err)
				}
			}
			r1 := tensortest.Must(New(c.name, append(c.opts, WithStateFile(state))...))(t)
			round(r1, g0, g1, tensortest.F32Set(t, "a", "w", []float32{1.5, -2.0}), tensortest.F32Set(t, "b", "w", []float32{1.1, -1.6}))
			if err := r1.Close(); err != nil {
				t.Fatal(err)
			}
			x1, err := safetensors.Open(g1)
			if err != nil {
				t.Fatal(err)
			}
			defer x1.Close()
			st, err := LoadState(state)
			if err != nil {
				t.Fatalf("the state after round 1: %v", err)
			}
			checkRound(t, c.name, 1, tensortest.F32Of(t, x1, "w"), st, c.x[0], c.m[0], c.v[0], c.second)
			st.Close()
			r2 := tensortest.Must(New(c.name, append(c.opts, WithStateFile(state))...))(t)
			defer r2.Close()
			round(r2, g1, g2, plus(t, "a", x1, -0.1, 0.2), plus(t, "b", x1, 0.3, 0))
			x2, err := safetensors.Open(g2)
			if err != nil {
				t.Fatal(err)
			}
			defer x2.Close()
			if st, err = LoadState(state); err != nil {
				t.Fatalf("the state after round 2: %v", err)
			}
			defer st.Close()
			checkRound(t, c.name, 2, tensortest.F32Of(t, x2, "w"), st, c.x[1], c.m[1], c.v[1], c.second)
		})
	}
}
