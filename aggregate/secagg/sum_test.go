package secagg

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/internal/tensortest"
	"github.com/wattagg/wattagg/tensor"
)

// Quantisation is unbiased: for each value, the mean of M dequantised draws is within five
// standard deviations of the clipped value. One draw is clip(x) + Δ·(B - p) with Δ = 2c/L the
// step, p the fractional part and B ~ Bernoulli(p): its standard deviation is Δ·√(p(1-p)) ≤ Δ/2,
// so the mean of M draws is within 5·Δ/(2√M) of clip(x) but for one seed in two million.
func TestQuantizeUnbiased(t *testing.T) {
	r := rand.NewChaCha8([32]byte{1})
	for _, bits := range []int{1, 4, 8, 16} {
		q := tensortest.Must(NewQuantizer(bits, 0.5))(t)
		const m = 20000
		step := 2 * 0.5 / q.levels()
		values := []float32{-0.5, -0.4999, -0.3, -0.0123, 0, 0.01, 0.2499, 0.33, 0.5, 0.7, -3, float32(math.Inf(1))}
		x := make([]float32, m)
		dst := make([]uint32, m)
		mean := make([]float32, m)
		for _, v := range values {
			for j := range x {
				x[j] = v
			}
			q.Quantize(dst, x, r)
			for _, d := range dst {
				if float64(d) > q.levels() {
					t.Fatalf("bits %d: %d out of range", bits, d)
				}
			}
			// Dequantize one client at a time: each element is one draw.
			q.Dequantize(mean, dst, 1)
			var s float64
			for _, d := range mean {
				s += float64(d)
			}
			got := s / m
			want := math.Max(-0.5, math.Min(0.5, float64(v)))
			if math.Abs(got-want) > 5*step/(2*math.Sqrt(m))+1e-6 {
				t.Errorf("bits %d, x = %v: mean of %d dequantised draws %v, want %v ± %v", bits, v, m, got, want, 5*step/(2*math.Sqrt(m)))
			}
		}
	}
	// Values on the grid are exact: no randomness reaches them.
	q := tensortest.Must(NewQuantizer(2, 1.5))(t) // grid -1.5, -0.5, 0.5, 1.5
	dst := make([]uint32, 4)
	q.Quantize(dst, []float32{-1.5, -0.5, 0.5, 1.5}, r)
	if !slices.Equal(dst, []uint32{0, 1, 2, 3}) {
		t.Errorf("grid values quantised to %v", dst)
	}
}

// seeds makes the pairwise seeds of clients 0..n-1 (s_ij = s_ji) and self seeds, from r.
func seeds(r *rand.ChaCha8, n int) (self []Seed, pairs []map[int]Seed) {
	self = make([]Seed, n)
	pairs = make([]map[int]Seed, n)
	for i := range n {
		r.Read(self[i][:])
		pairs[i] = map[int]Seed{}
	}
	for i := range n {
		for j := i + 1; j < n; j++ {
			var s Seed
			r.Read(s[:])
			pairs[i][j], pairs[j][i] = s, s
		}
	}
	return self, pairs
}

// plainU32 is a quantised-looking update: random u32 tensors "b" (odd length) and "a", listed
// out of name order. (TestMaskStreamSeek covers vectors longer than a mask block.)
func plainU32(t *testing.T, r *rand.ChaCha8, k int) *tensor.Set {
	t.Helper()
	s := &tensor.Set{Source: fmt.Sprintf("client%d", k), Metadata: map[string]string{}}
	for _, f := range []struct {
		name string
		n    int
	}{{"b", 1001}, {"a", 13}} {
		tt, err := tensor.New(f.name, tensor.U32, f.n)
		if err != nil {
			t.Fatal(err)
		}
		v, err := tt.U32()
		if err != nil {
			t.Fatal(err)
		}
		for j := range v {
			v[j] = uint32(r.Uint64()) & 0xffff
		}
		if err := s.Add(tt); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func sumU32(t *testing.T, sets []*tensor.Set, name string) []uint32 {
	t.Helper()
	var out []uint32
	for _, s := range sets {
		tt, _ := s.Tensor(name)
		v, err := tt.U32()
		if err != nil {
			t.Fatal(err)
		}
		if out == nil {
			out = make([]uint32, len(v))
		}
		for j := range v {
			out[j] += v[j]
		}
	}
	return out
}

// The pairwise masks of 50 clients cancel exactly in the modular sum, while each masked vector
// looks nothing like its plain one.
func TestMasksCancel(t *testing.T) {
	ctx := context.Background()
	r := rand.NewChaCha8([32]byte{2})
	const n = 50
	_, pairs := seeds(r, n)
	var plain, masked []*tensor.Set
	for k := range n {
		p := plainU32(t, r, k)
		plain = append(plain, p)
		m := p.Clone()
		c := &Client{ID: k, Pairs: pairs[k]}
		if err := c.Mask(ctx, m); err != nil {
			t.Fatal(err)
		}
		masked = append(masked, m)
	}
	for _, name := range []string{"a", "b"} {
		if !slices.Equal(sumU32(t, masked, name), sumU32(t, plain, name)) {
			t.Fatalf("tensor %s: the masks of %d clients do not cancel", name, n)
		}
	}
	same := 0
	pv, _ := plain[7].At(0).U32()
	mv, _ := masked[7].At(0).U32()
	for j := range pv {
		if pv[j] == mv[j] {
			same++
		}
	}
	if same > 10 {
		t.Fatalf("a masked vector equals its plain one at %d of %d elements", same, len(pv))
	}
	// The server's rule adds them and decodes without any recovery.
	rule := tensortest.Must(New(WithBits(16), WithRange(1)))(t)
	got, _, err := aggregate.Aggregate(ctx, rule, masked, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := make([]float32, 13)
	rule.q.Dequantize(want, sumU32(t, plain, "a"), n)
	if a := tensortest.F32Of(t, got, "a"); !slices.Equal(a, want) {
		t.Fatalf("decoded %v, want %v", a[:3], want[:3])
	}
}

// 50 clients with self masks, 7 of whom drop out after masking: the server removes the
// survivors' self masks and the pairwise masks toward the dropped clients from their seeds, and
// gets exactly the survivors' sum; the decoded mean is the mean of their real inputs within the
// quantisation step.
func TestDropout(t *testing.T) {
	ctx := context.Background()
	r := rand.NewChaCha8([32]byte{3})
	const n = 50
	self, pairs := seeds(r, n)
	q := tensortest.Must(NewQuantizer(20, 0.25))(t)
	dropped := map[int]bool{0: true, 3: true, 17: true, 18: true, 30: true, 48: true, 49: true}
	var survivors []*tensor.Set
	var reals []*tensor.Set
	rec := &Recovery{Self: map[int]Seed{}, Dropped: map[int]map[int]Seed{}}
	for k := range n {
		rec.Clients = append(rec.Clients, k)
		x := tensortest.F32Set(t, fmt.Sprintf("client%d", k), "w", make([]float32, 5003), "bias", make([]float32, 7))
		for _, tt := range x.Tensors() {
			v, err := tt.F32()
			if err != nil {
				t.Fatal(err)
			}
			for j := range v {
				v[j] = float32((float64(r.Uint64()>>11)*0x1p-53 - 0.5) * 0.6) // some beyond ±0.25: clipped
			}
		}
		u, err := q.QuantizeSet(x, r)
		if err != nil {
			t.Fatal(err)
		}
		u.Source = x.Source
		c := &Client{ID: k, Self: &self[k], Pairs: pairs[k]}
		if err := c.Mask(ctx, u); err != nil {
			t.Fatal(err)
		}
		if dropped[k] {
			continue // masked, then lost
		}
		survivors = append(survivors, u)
		reals = append(reals, x)
		rec.Self[k] = self[k]
	}
	for d := range dropped {
		rec.Dropped[d] = map[int]Seed{}
		for k := range n {
			if !dropped[k] {
				rec.Dropped[d][k] = pairs[d][k]
			}
		}
	}
	rule := tensortest.Must(New(WithBits(20), WithRange(0.25), WithRecovery(rec)))(t)
	got, rep, err := aggregate.Aggregate(ctx, rule, survivors, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Details["dropped"] != 7 || rep.Details["masks_removed"] != float64(43+7*43) || rep.Clients != 43 {
		t.Fatalf("report %+v", rep.Details)
	}
	step := 0.5 / q.levels()
	for _, name := range []string{"w", "bias"} {
		g := tensortest.F32Of(t, got, name)
		for j := range g {
			var want float64
			for _, x := range reals {
				want += math.Max(-0.25, math.Min(0.25, float64(tensortest.F32Of(t, x, name)[j])))
			}
			want /= 43
			// Each client's value is off by less than one step; their mean too.
			if math.Abs(float64(g[j])-want) > step+1e-7 {
				t.Fatalf("%s[%d] = %v, mean of the clipped inputs %v (step %v)", name, j, g[j], want, step)
			}
		}
	}
	// Without the dropped clients' seeds the server cannot unmask.
	delete(rec.Dropped[17], 5)
	if _, _, err := aggregate.Aggregate(ctx, rule, survivors, nil); !errors.Is(err, aggregate.ErrOption) || !strings.Contains(err.Error(), "dropped client 17 and survivor 5") {
		t.Fatalf("missing seed: %v", err)
	}
}

func TestSecureSumErrors(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		opt  Option
		want string
	}{
		{WithBits(0), "bit width 0"},
		{WithBits(33), "bit width 33"},
		{WithRange(0), "range 0"},
		{WithRange(math.Inf(1)), "range +Inf"},
		{WithRecovery(nil), "nil secure-sum recovery"},
		{nil, "nil option"},
	} {
		if _, err := New(c.opt); !errors.Is(err, aggregate.ErrOption) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v, want ErrOption saying %q", err, c.want)
		}
	}
	u := func(src string, v ...uint32) *tensor.Set {
		tt, err := tensor.New("w", tensor.U32, len(v))
		if err != nil {
			t.Fatal(err)
		}
		d, err := tt.U32()
		if err != nil {
			t.Fatal(err)
		}
		copy(d, v)
		s, err := tensor.NewSet(tt)
		if err != nil {
			t.Fatal(err)
		}
		s.Source = src
		return s
	}
	rule := tensortest.Must(New(WithBits(31)))(t)
	if _, _, err := aggregate.Aggregate(ctx, rule, []*tensor.Set{u("a", 1), u("b", 2), u("c", 3)}, nil); !errors.Is(err, aggregate.ErrOverflow) || !strings.Contains(err.Error(), "at most 2") {
		t.Errorf("3 clients at 31 bits: %v", err)
	}
	rule = tensortest.Must(New())(t)
	if _, _, err := aggregate.Aggregate(ctx, rule, []*tensor.Set{tensortest.F32Set(t, "f", "w", []float32{1})}, nil); !errors.Is(err, tensor.ErrDType) {
		t.Errorf("f32 update: %v", err)
	}
	if _, _, err := aggregate.Aggregate(ctx, rule, []*tensor.Set{u("a", 1), u("b", 2)}, []float64{1, 2}); !errors.Is(err, aggregate.ErrWeight) {
		t.Errorf("weights: %v", err)
	}
	other := u("b", 2)
	other.Metadata[BitsKey], other.Metadata[RangeKey] = "12", "1"
	if _, _, err := aggregate.Aggregate(ctx, rule, []*tensor.Set{u("a", 1), other}, nil); !errors.Is(err, aggregate.ErrOption) || !strings.Contains(err.Error(), "quantised with 12 bits") {
		t.Errorf("other bits: %v", err)
	}
	rule = tensortest.Must(New(WithRecovery(&Recovery{Clients: []int{0, 1}, NoSelfMasks: true})))(t)
	if _, _, err := aggregate.Aggregate(ctx, rule, []*tensor.Set{u("a", 1)}, nil); !errors.Is(err, aggregate.ErrOption) || !strings.Contains(err.Error(), "no client ID") {
		t.Errorf("no ID: %v", err)
	}
	// One client's update twice is a duplicate (ErrDuplicate since the round engine: it was an
	// ErrOption error).
	a, b := u("a", 1), u("b", 2)
	a.Metadata[ClientKey], b.Metadata[ClientKey] = "1", "1"
	if _, _, err := aggregate.Aggregate(ctx, rule, []*tensor.Set{a, b}, nil); !errors.Is(err, aggregate.ErrDuplicate) || !strings.Contains(err.Error(), "client 1 sent twice") {
		t.Errorf("duplicate ID: %v", err)
	}
	q := tensortest.Must(NewQuantizer(8, 1))(t)
	if _, err := q.QuantizeSet(tensortest.F32Set(t, "nan", "w", []float32{float32(math.NaN())}), rand.NewChaCha8([32]byte{})); !errors.Is(err, tensor.ErrNonFinite) {
		t.Errorf("NaN quantised: %v", err)
	}
}

// Counter mode is seekable: a mask generated from any element offset, in any block, equals the
// same elements of the whole stream, and applyMasks, which works block by block over tensors on
// all cores, adds the stream in the flat (name) order.
func TestMaskStreamSeek(t *testing.T) {
	var seed Seed
	rand.NewChaCha8([32]byte{5}).Read(seed[:])
	const n = 2*maskBlock + 1001
	whole := make([]uint32, n)
	maskStream(&seed, 0, whole)
	for _, k0 := range []int{0, 1, 2, 3, 4, 5, 17, maskBlock - 1, maskBlock, maskBlock + 3, n - 9} {
		part := make([]uint32, min(40000, n-k0))
		maskStream(&seed, k0, part)
		if !slices.Equal(part, whole[k0:k0+len(part)]) {
			t.Fatalf("the stream from element %d differs from the whole stream", k0)
		}
	}
	a, b := make([]uint32, 13), make([]uint32, n-13) // tensors "a" and "b" of the flat space
	if err := applyMasks(context.Background(), [][]uint32{a, b}, []maskTerm{{&seed, +1}, {&seed, +1}, {&seed, -1}}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(append(a, b...), whole) {
		t.Fatal("applyMasks does not add the stream in flat order")
	}
}

// TestLateRecovery checks the server's way: the rule built without seeds, the updates added to
// a round one by one, the recovery given once they are in (checked against who arrived, a
// wrong one refused without harm), then the result.
func TestLateRecovery(t *testing.T) {
	ctx := context.Background()
	r := rand.NewChaCha8([32]byte{9})
	const n = 5
	self, pairs := seeds(r, n)
	q := tensortest.Must(NewQuantizer(16, 1))(t)
	rule := tensortest.Must(New(WithBits(16), WithRange(1), WithLateRecovery()))(t)
	round := tensortest.Must(aggregate.NewRound(ctx, rule))(t)
	rec := &Recovery{Clients: []int{0, 1, 2, 3, 4}, Self: map[int]Seed{}, Dropped: map[int]map[int]Seed{2: {}}}
	var reals [][]float32
	for k := range n {
		x := tensortest.F32Set(t, fmt.Sprintf("client%d", k), "w", []float32{float32(k) / 8, -float32(k) / 16, 0.5})
		u := tensortest.Must(q.QuantizeSet(x, r))(t)
		u.Source = x.Source
		if err := (&Client{ID: k, Self: &self[k], Pairs: pairs[k]}).Mask(ctx, u); err != nil {
			t.Fatal(err)
		}
		if k == 2 {
			continue // dropped out
		}
		if err := round.Add(ctx, u, 1); err != nil {
			t.Fatal(err)
		}
		reals = append(reals, tensortest.F32Of(t, x, "w"))
		rec.Self[k] = self[k]
		rec.Dropped[2][k] = pairs[2][k]
	}
	// An update without its client ID cannot be unmasked: refused at Add.
	anon := tensortest.Must(q.QuantizeSet(tensortest.F32Set(t, "anon", "w", []float32{0, 0, 0}), r))(t)
	if err := round.Add(ctx, anon, 1); !errors.Is(err, aggregate.ErrOption) || !strings.Contains(err.Error(), "no client ID") {
		t.Fatalf("update without a client ID: %v", err)
	}
	// A recovery short of a seed is refused and changes nothing; the full one is taken.
	short := &Recovery{Clients: rec.Clients, Self: rec.Self, Dropped: map[int]map[int]Seed{2: {0: pairs[2][0]}}}
	if err := rule.Recover(short); !errors.Is(err, aggregate.ErrOption) || !strings.Contains(err.Error(), "no seed shared by dropped client 2 and survivor 1") {
		t.Fatalf("short recovery: %v", err)
	}
	if err := rule.Recover(rec); err != nil {
		t.Fatal(err)
	}
	got, _, err := round.Result(ctx)
	if err != nil {
		t.Fatal(err)
	}
	g := tensortest.F32Of(t, got, "w")
	step := 2.0 / q.levels()
	for j := range g {
		var want float64
		for _, x := range reals {
			want += float64(x[j])
		}
		want /= float64(len(reals))
		if math.Abs(float64(g[j])-want) > step+1e-7 {
			t.Errorf("w[%d] = %v, mean of the survivors' inputs %v (step %v)", j, g[j], want, step)
		}
	}
	// Built without WithLateRecovery, Recover is an error; with both ways, New is.
	if err := tensortest.Must(New())(t).Recover(rec); !errors.Is(err, aggregate.ErrOption) {
		t.Errorf("Recover without WithLateRecovery: %v", err)
	}
	if _, err := New(WithRecovery(rec), WithLateRecovery()); !errors.Is(err, aggregate.ErrOption) || !strings.Contains(err.Error(), "both WithRecovery and WithLateRecovery") {
		t.Errorf("both recoveries: %v", err)
	}
}

func TestRecoveryJSON(t *testing.T) {
	r := rand.NewChaCha8([32]byte{5})
	self, pairs := seeds(r, 3)
	rec := &Recovery{Clients: []int{0, 1, 2}, Self: map[int]Seed{0: self[0], 1: self[1]}, Dropped: map[int]map[int]Seed{2: {0: pairs[2][0], 1: pairs[2][1]}}}
	b, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	var back Recovery
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(back.Clients, rec.Clients) || back.Self[1] != self[1] || back.Dropped[2][1] != pairs[2][1] || len(back.Self) != 2 || back.NoSelfMasks {
		t.Fatalf("round trip: %s -> %+v", b, back)
	}
	for _, c := range []struct{ in, msg string }{
		{`{"clients": [0], "self": {"0": "abcd"}}`, "self seed of client 0: want 64 hex digits"},
		{`{"clients": [0], "self": {"x": "00"}}`, `self "x" is not a client ID`},
		{`{"clients": [0], "dropped": {"1": {"y": "00"}}}`, `survivor "y" is not a client ID`},
		{`{"clients": [0], "selfs": {}}`, `unknown field "selfs"`},
	} {
		var got Recovery
		if err := json.Unmarshal([]byte(c.in), &got); !errors.Is(err, aggregate.ErrOption) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: %v, want %q", c.in, err, c.msg)
		}
	}
}
