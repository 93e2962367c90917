package aggregate

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

	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// f32Set makes a Set of f32 tensors from name/values pairs, in order.
func f32Set(src string, kv ...any) *tensor.Set {
	s := &tensor.Set{Source: src, Metadata: map[string]string{}}
	for i := 0; i < len(kv); i += 2 {
		v := kv[i+1].([]float32)
		t, err := tensor.FromF32(kv[i].(string), []int{len(v)}, append([]float32(nil), v...))
		if err != nil {
			panic(err)
		}
		if err := s.Add(t); err != nil {
			panic(err)
		}
	}
	return s
}

// plus returns the f32 tensor "w" of s plus off, as a client model.
func plus(src string, s *tensor.Set, off ...float32) *tensor.Set {
	t, _ := s.Tensor("w")
	x, _ := t.F32()
	v := make([]float32, len(x))
	for j := range v {
		v[j] = x[j] + off[j]
	}
	return f32Set(src, "w", v)
}

func f32Of(t *testing.T, s *tensor.Set, name string) []float32 {
	t.Helper()
	tt, ok := s.Tensor(name)
	if !ok {
		t.Fatalf("no tensor %q in %s", name, s.Source)
	}
	v, err := tt.F32()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func near(got float32, want float64, rel float64) bool {
	return math.Abs(float64(got)-want) <= rel*math.Max(math.Abs(want), 1e-3)
}

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
	opts   []RoundOption
	x, m   [2][2]float64 // per round
	v      [2][2]float64
	second bool
}{
	{"fedavgm", []RoundOption{WithServerLR(0.5), WithBeta1(0.9)},
		[2][2]float64{{1.1, -1.85}, {1.29, -1.69}}, [2][2]float64{{0.2, 0.3}, {0.38, 0.32}}, [2][2]float64{}, false},
	{"fedadagrad", []RoundOption{WithServerLR(0.1), WithBeta1(0.9), WithTau(0.01)},
		[2][2]float64{{1.009512492, -1.990327779}, {1.022480915, -1.980146504}},
		[2][2]float64{{0.02, 0.03}, {0.038, 0.032}}, [2][2]float64{{0.0401, 0.0901}, {0.0801, 0.0926}}, true},
	{"fedadam", []RoundOption{WithServerLR(0.1), WithBeta1(0.9), WithBeta2(0.99), WithTau(0.01)},
		[2][2]float64{{1.061846155, -1.927896681}, {1.15708425, -1.851421286}},
		[2][2]float64{{0.02, 0.03}, {0.038, 0.032}}, [2][2]float64{{0.000499, 0.000999}, {0.00089401, 0.00101401}}, true},
	{"fedyogi", []RoundOption{WithServerLR(0.1), WithBeta1(0.9), WithBeta2(0.99), WithTau(0.01)},
		[2][2]float64{{1.061803399, -1.927924078}, {1.156803399, -1.851761929}},
		[2][2]float64{{0.02, 0.03}, {0.038, 0.032}}, [2][2]float64{{0.0005, 0.001}, {0.0009, 0.001025}}, true},
}

func checkRound(t *testing.T, name string, round int, x []float32, st *OptimizerState, wantX, wantM, wantV [2]float64, second bool) {
	t.Helper()
	m := f32Of(t, st.M, "w")
	for j := range 2 {
		if !near(x[j], wantX[j], 2e-6) || !near(m[j], wantM[j], 2e-5) {
			t.Fatalf("%s round %d: x[%d] = %v, m = %v; want %v, %v", name, round, j, x[j], m[j], wantX[j], wantM[j])
		}
		if second {
			if v := f32Of(t, st.V, "w"); !near(v[j], wantV[j], 2e-5) {
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

func TestServerOptimizerTwoRounds(t *testing.T) {
	ctx := context.Background()
	for _, c := range twoRounds {
		t.Run(c.name, func(t *testing.T) {
			x0 := f32Set("x0", "w", []float32{1, -2})
			r, err := NewServerOptimizer(c.name, append(c.opts, WithGlobal(x0))...)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			w := []float64{1, 3}
			x1, rep, err := r.Aggregate(ctx, []*tensor.Set{f32Set("a", "w", []float32{1.5, -2.0}), f32Set("b", "w", []float32{1.1, -1.6})}, w)
			if err != nil {
				t.Fatal(err)
			}
			checkRound(t, c.name, 1, f32Of(t, x1, "w"), r.State(), c.x[0], c.m[0], c.v[0], c.second)
			if rep.Rule != c.name || rep.Details["round"] != 1 || math.Abs(rep.Details["delta_norm"]-math.Hypot(0.2, 0.3)) > 1e-6 {
				t.Fatalf("report %+v", rep)
			}
			if r.Global() != x1 || x1.Metadata["wattagg.rule"] != c.name || x1.Metadata["wattagg.round"] != "1" {
				t.Fatalf("the new model is not the next global model, or lacks metadata %v", x1.Metadata)
			}
			x2, _, err := r.Aggregate(ctx, []*tensor.Set{plus("a", x1, -0.1, 0.2), plus("b", x1, 0.3, 0)}, w)
			if err != nil {
				t.Fatal(err)
			}
			checkRound(t, c.name, 2, f32Of(t, x2, "w"), r.State(), c.x[1], c.m[1], c.v[1], c.second)
		})
	}
}

// The same two rounds through files, with a new rule built for round 2 from the model and the
// state round 1 wrote: the state round-trips through its file.
func TestServerOptimizerFiles(t *testing.T) {
	ctx := context.Background()
	for _, c := range twoRounds {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			g0, g1, g2 := filepath.Join(dir, "g0.safetensors"), filepath.Join(dir, "g1.safetensors"), filepath.Join(dir, "g2.safetensors")
			state := filepath.Join(dir, "state.safetensors")
			if err := safetensors.WriteFile(g0, f32Set("", "w", []float32{1, -2})); err != nil {
				t.Fatal(err)
			}
			w := []float64{1, 3}
			r1, err := NewServerOptimizer(c.name, append(c.opts, WithGlobalFile(g0), WithStateFile(state))...)
			if err != nil {
				t.Fatal(err)
			}
			rep, err := r1.AggregateFile(ctx, g1, []*tensor.Set{f32Set("a", "w", []float32{1.5, -2.0}), f32Set("b", "w", []float32{1.1, -1.6})}, w)
			if err != nil {
				t.Fatal(err)
			}
			if rep.Output != g1 {
				t.Fatalf("report output %q", rep.Output)
			}
			r1.Close()

			st, err := LoadOptimizerState(state)
			if err != nil {
				t.Fatal(err)
			}
			x1, err := safetensors.Open(g1)
			if err != nil {
				t.Fatal(err)
			}
			defer x1.Close()
			checkRound(t, c.name, 1, f32Of(t, x1, "w"), st, c.x[0], c.m[0], c.v[0], c.second)
			st.Close()

			r2, err := NewServerOptimizer(c.name, append(c.opts, WithGlobalFile(g1), WithStateFile(state))...)
			if err != nil {
				t.Fatal(err)
			}
			defer r2.Close()
			if r2.Round() != 1 {
				t.Fatalf("loaded state at round %d", r2.Round())
			}
			if _, err := r2.AggregateFile(ctx, g2, []*tensor.Set{plus("a", x1, -0.1, 0.2), plus("b", x1, 0.3, 0)}, w); err != nil {
				t.Fatal(err)
			}
			x2, err := safetensors.Open(g2)
			if err != nil {
				t.Fatal(err)
			}
			defer x2.Close()
			checkRound(t, c.name, 2, f32Of(t, x2, "w"), r2.State(), c.x[1], c.m[1], c.v[1], c.second)
			// The rule moved on to the file it wrote.
			if r2.Global().Source != g2 {
				t.Fatalf("global model is now %q", r2.Global().Source)
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
			g := update(r, "global", tensor.F32, order)
			ref := &referenceOptimizer{name: name, lr: 0.05, beta1: 0.8, beta2: 0.9, tau: 1e-2,
				x: map[string][]float64{}, m: map[string][]float64{}, v: map[string][]float64{}}
			for _, tt := range g.Tensors() {
				ref.x[tt.Name] = tt.Float64s()
			}
			opts := []RoundOption{WithGlobal(g), WithServerLR(0.05), WithBeta1(0.8),
				WithRuleOptions(WithChunkBytes(4096), WithMixedDTypes(true))} // many chunks; a bf16 client
			if name == "fedadam" || name == "fedyogi" {
				opts = append(opts, WithBeta2(0.9))
			}
			if name != "fedavgm" {
				opts = append(opts, WithTau(1e-2))
			}
			rule, err := NewServerOptimizer(name, opts...)
			if err != nil {
				t.Fatal(err)
			}
			defer rule.Close()
			for round := range 3 {
				global := rule.Global()
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
						nt, _ := tensor.New(n, dt, gt.Shape...)
						for j := range nt.Len() {
							setValue(nt, j, gt.Value(j)+r.NormFloat64()*0.01)
						}
						u.Add(nt)
					}
					updates = append(updates, u)
				}
				weights := []float64{1, 2, 3, 4, 5}
				got, _, err := rule.Aggregate(ctx, updates, weights)
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
			}
		})
	}
}

// FedAvgM with β = 0 and η = 1 is FedAvg.
func TestFedAvgMIsFedAvg(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 9))
	order := []string{"embed", "bias", "norm", "scalar"}
	g := update(r, "global", tensor.F32, order)
	updates := []*tensor.Set{update(r, "a", tensor.F32, order), update(r, "b", tensor.F32, order)}
	rule, err := NewFedAvgM(WithGlobal(g), WithServerLR(1), WithBeta1(0))
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := rule.Aggregate(context.Background(), updates, []float64{1, 2})
	if err != nil {
		t.Fatal(err)
	}
	mean, _, _ := WeightedMean(context.Background(), updates, []float64{1, 2})
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
	g := f32Set("g", "w", []float32{1})
	for _, c := range []struct {
		name string
		opts []RoundOption
		want string
	}{
		{"fedadam", []RoundOption{WithServerLR(-0.1)}, "server learning rate -0.1"},
		{"fedadam", []RoundOption{WithServerLR(math.NaN())}, "server learning rate NaN"},
		{"fedadam", []RoundOption{WithBeta1(1)}, "β1 1: want a value in [0, 1)"},
		{"fedadam", []RoundOption{WithBeta1(-0.5)}, "β1 -0.5"},
		{"fedyogi", []RoundOption{WithBeta2(1.5)}, "β2 1.5"},
		{"fedadam", []RoundOption{WithTau(0)}, "τ 0: want a finite value > 0"},
		{"fedadagrad", []RoundOption{WithTau(-1)}, "τ -1"},
		{"fedavgm", []RoundOption{WithTau(0.1)}, "fedavgm has no τ"},
		{"fedavgm", []RoundOption{WithBeta2(0.9)}, "fedavgm has no β2"},
		{"fedadagrad", []RoundOption{WithBeta2(0.9)}, "fedadagrad has no β2"},
		{"fedadam", []RoundOption{WithClipBound(1)}, "fedadam has no clipping bound"},
		{"fedsgd", nil, `unknown server optimizer "fedsgd"`},
		{"fedadam", []RoundOption{WithRuleOptions(WithChunkBytes(3))}, "chunk of 3 bytes"},
	} {
		_, err := NewServerOptimizer(c.name, append(c.opts, WithGlobal(g))...)
		if !errors.Is(err, ErrOption) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s %d options: %v, want ErrOption saying %q", c.name, len(c.opts), err, c.want)
		}
	}
	if _, err := NewFedAdam(); !errors.Is(err, ErrOption) || !strings.Contains(err.Error(), "needs the global model") {
		t.Errorf("no global model: %v", err)
	}
	if _, err := NewFedAdam(WithGlobal(g), WithGlobalFile("x")); !errors.Is(err, ErrOption) {
		t.Errorf("two global models: %v", err)
	}
}

// A state is only continued by the rule and hyperparameters that made it, for the same model.
func TestOptimizerStateMismatch(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	g0 := filepath.Join(dir, "g0.safetensors")
	state := filepath.Join(dir, "state.safetensors")
	if err := safetensors.WriteFile(g0, f32Set("", "w", []float32{1, -2})); err != nil {
		t.Fatal(err)
	}
	r, err := NewFedAdam(WithGlobalFile(g0), WithStateFile(state), WithBeta1(0.9))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.AggregateFile(ctx, filepath.Join(dir, "g1.safetensors"), []*tensor.Set{f32Set("a", "w", []float32{1.5, -2})}, nil); err != nil {
		t.Fatal(err)
	}
	r.Close()
	other := filepath.Join(dir, "other.safetensors")
	if err := safetensors.WriteFile(other, f32Set("", "w", []float32{1, 2, 3})); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		opts []RoundOption
		want string
	}{
		{"fedyogi", []RoundOption{WithGlobalFile(g0)}, "made by fedadam, this rule is fedyogi"},
		{"fedadam", []RoundOption{WithGlobalFile(g0), WithBeta1(0.95)}, "made with β1 0.9, this rule has 0.95"},
		{"fedadam", []RoundOption{WithGlobalFile(g0), WithTau(0.5)}, "made with τ 0.001, this rule has 0.5"},
		{"fedadam", []RoundOption{WithGlobalFile(other)}, `tensor "w" has shape [3], want [2]`},
	} {
		_, err := NewServerOptimizer(c.name, append(c.opts, WithStateFile(state))...)
		if !errors.Is(err, ErrState) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), state) {
			t.Errorf("%s: %v, want ErrState naming the file and saying %q", c.name, err, c.want)
		}
	}
	// Not a state at all: a model file.
	if _, err := NewFedAdam(WithGlobalFile(g0), WithStateFile(g0)); !errors.Is(err, ErrState) || !strings.Contains(err.Error(), "not a server-optimizer state") {
		t.Errorf("model file as state: %v", err)
	}
	// A FedAvgM state has no second moment; a FedAdam one read as FedAvgM is refused above by
	// the rule; a hand-made state with a stray tensor is refused here.
	bad := f32Set("", "m/w", []float32{0, 0}, "x/w", []float32{0, 0})
	bad.Metadata = (&OptimizerState{Rule: "fedavgm", LR: 1, Beta1: 0.9, Round: 1}).metadata()
	badPath := filepath.Join(dir, "bad.safetensors")
	if err := safetensors.WriteFile(badPath, bad); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOptimizerState(badPath); !errors.Is(err, ErrState) || !strings.Contains(err.Error(), `unexpected tensor "x/w"`) {
		t.Errorf("stray tensor: %v", err)
	}
}

// A failed round changes nothing: no output, the state file untouched, the rule where it was.
func TestServerOptimizerFailureLeavesState(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	g0 := filepath.Join(dir, "g0.safetensors")
	state := filepath.Join(dir, "state.safetensors")
	if err := safetensors.WriteFile(g0, f32Set("", "w", []float32{1, -2})); err != nil {
		t.Fatal(err)
	}
	r, err := NewFedYogi(WithGlobalFile(g0), WithStateFile(state))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := r.AggregateFile(ctx, filepath.Join(dir, "g1.safetensors"), []*tensor.Set{f32Set("a", "w", []float32{1.5, -2})}, nil); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(state)
	out := filepath.Join(dir, "g2.safetensors")
	nan := f32Set("evil", "w", []float32{float32(math.NaN()), 0})
	_, err = r.AggregateFile(ctx, out, []*tensor.Set{f32Set("a", "w", []float32{1, 1}), nan}, nil)
	var nf *tensor.NonFiniteError
	if !errors.As(err, &nf) || nf.Source != "evil" {
		t.Fatalf("NaN client: %v", err)
	}
	delta := f32Set("d", "w", []float32{0.1, 0.1})
	delta.Metadata[UpdateKindKey] = "delta"
	if _, err := r.AggregateFile(ctx, out, []*tensor.Set{delta}, nil); !errors.Is(err, ErrUpdateKind) || !strings.Contains(err.Error(), "d: ") {
		t.Fatalf("delta update: %v", err)
	}
	if _, err := r.AggregateFile(ctx, out, []*tensor.Set{f32Set("o", "v", []float32{1, 1})}, nil); !errors.Is(err, tensor.ErrLayoutMismatch) {
		t.Fatalf("other layout: %v", err)
	}
	after, _ := os.ReadFile(state)
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
	huge, err := NewFedAvgM(WithGlobal(f32Set("g", "w", []float32{1, 1})), WithServerLR(3e38))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := huge.Aggregate(ctx, []*tensor.Set{f32Set("a", "w", []float32{3, 3})}, nil); !errors.Is(err, ErrOverflow) || !strings.Contains(err.Error(), `tensor "w" element 0`) {
		t.Fatalf("overflow: %v", err)
	}
	if huge.Round() != 0 {
		t.Fatal("a failed round advanced the rule")
	}
}

func TestServerOptimizerGlobalChecks(t *testing.T) {
	ctx := context.Background()
	g16, _ := tensor.New("w", tensor.BF16, 2)
	gs, _ := tensor.NewSet(g16)
	r, err := NewFedAdam(WithGlobal(gs))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.Aggregate(ctx, []*tensor.Set{f32Set("a", "w", []float32{1, 1})}, nil); !errors.Is(err, tensor.ErrDType) || !strings.Contains(err.Error(), "must be f32") {
		t.Fatalf("bf16 global: %v", err)
	}
	r2, _ := NewFedAdam(WithGlobal(f32Set("g", "w", []float32{1, 1})), WithRuleOptions(WithOutDType(tensor.BF16)))
	if _, _, err := r2.Aggregate(ctx, []*tensor.Set{f32Set("a", "w", []float32{1, 1})}, nil); !errors.Is(err, ErrOption) {
		t.Fatalf("bf16 output: %v", err)
	}
	// bf16 clients are fine: they are widened in the sum.
	c16, _ := tensor.New("w", tensor.BF16, 2)
	setValue(c16, 0, 2)
	setValue(c16, 1, 2)
	cs, _ := tensor.NewSet(c16)
	r3, _ := NewFedAvgM(WithGlobal(f32Set("g", "w", []float32{1, 1})), WithBeta1(0))
	got, _, err := r3.Aggregate(ctx, []*tensor.Set{cs}, nil)
	if err != nil || f32Of(t, got, "w")[0] != 2 {
		t.Fatalf("bf16 client: %v", err)
	}
}

// In memory the rule writes each round's moments into the buffers of the state before last
// (double buffering); a round that fails half way, having written some chunks there, must leave
// the current state and model as they were, and the next round must compute from them.
func TestServerOptimizerInMemoryFailure(t *testing.T) {
	ctx := context.Background()
	r := rand.New(rand.NewPCG(8, 9))
	order := []string{"embed", "norm"}
	g := update(r, "global", tensor.F32, order)
	rule, err := NewFedAdam(WithGlobal(g), WithRuleOptions(WithChunkBytes(4096)))
	if err != nil {
		t.Fatal(err)
	}
	clients := func() []*tensor.Set {
		return dpClients(r, rule.Global(), 3, 0.1)
	}
	for range 2 {
		if _, _, err := rule.Aggregate(ctx, clients(), nil); err != nil {
			t.Fatal(err)
		}
	}
	before := rule.State()
	m := append([]float32(nil), f32Of(t, before.M, "norm")...)
	v := append([]float32(nil), f32Of(t, before.V, "norm")...)
	x := append([]float32(nil), f32Of(t, rule.Global(), "norm")...)
	bad := clients()
	nt, _ := bad[1].Tensor("norm")
	setValue(nt, 1000, math.NaN()) // the last chunk: the chunks before it are post-processed
	if _, _, err := rule.Aggregate(ctx, bad, nil); !errors.Is(err, tensor.ErrNonFinite) {
		t.Fatalf("NaN client: %v", err)
	}
	if rule.Round() != 2 || !equalF32(f32Of(t, rule.State().M, "norm"), m) || !equalF32(f32Of(t, rule.State().V, "norm"), v) ||
		!equalF32(f32Of(t, rule.Global(), "norm"), x) {
		t.Fatal("a failed in-memory round changed the state or the model")
	}
	if _, _, err := rule.Aggregate(ctx, clients(), nil); err != nil || rule.Round() != 3 {
		t.Fatalf("round 3: %v", err)
	}
}
