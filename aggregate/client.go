package aggregate

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
)

// Client is one update of a round as the rule's stages see it: who sent it, its weight, its
// data (in the round's field order) and what the rule saw of it (Diag).
type Client struct {
	// Source names the update in messages and reports (a file path, a client id).
	Source string
	// Index is the client's position in the round, in arrival order.
	Index int
	// Metadata is the update's metadata.
	Metadata map[string]string

	given    float64 // the weight as given
	weight   float64 // the weight the client enters sums with (given, 1 under WeightsEqual), scaled
	factor   float64 // the product of the weighers' factors
	excluded string
	diag     ClientDiag
	spans    []device.Span // in plan field order; nil once the round no longer holds it
	set      *tensor.Set
	spool    string // the spool file holding the update (whole-set rules)
	bytes    int64
	dtypes   []tensor.DType
	layout   tensor.Layout // the layout it was matched against (its own, for the first)
	round    *Round
	sqNorm   *float64 // ‖x‖², once computed
	sqDelta  *float64 // ‖x − x_t‖², once computed
}

// Spans is the update's data, one span per field of the round in field order. It is valid
// while the round holds the update: during Admit and Weigh, and for the whole round in a
// whole-set rule.
func (c *Client) Spans() []device.Span { return c.spans }

// Weight is the client's weight as given (1 for every client under WeightsEqual).
func (c *Client) Weight() float64 { return c.given }

// Bytes is the size of the update's data.
func (c *Client) Bytes() int64 { return c.bytes }

// Diag is what the rule reports of the client (Report.PerClient); stages fill it in.
func (c *Client) Diag() *ClientDiag { return &c.diag }

// Exclude leaves the client out of the round (it stays in the report with the reason).
func (c *Client) Exclude(reason string) {
	c.excluded = reason
	c.diag.Excluded = reason
}

// ExcludeNonFinite leaves the client out for the first NaN or Inf of its update (what a
// non-finite norm of a robust rule's input means), saying where it is.
func (c *Client) ExcludeNonFinite(ctx context.Context) {
	reason := "its norm overflows"
	if err := c.round.checkFinite(ctx, c.layout, c.spans); err != nil {
		reason = err.Error()
	}
	c.diag = ClientDiag{Source: c.Source}
	c.Exclude(reason)
}

// Excluded is why the client was left out, or "".
func (c *Client) Excluded() string { return c.excluded }

// Norm is ‖x‖ over every tensor of the update, accumulated in f64 on the round's device (I8
// scaled). It is NaN or Inf when the update holds a NaN or Inf.
func (c *Client) Norm(ctx context.Context) (float64, error) {
	if c.sqNorm == nil {
		sq, err := c.round.sqNorms(ctx, c.layout, [][]device.Span{c.spans}, nil)
		if err != nil {
			return 0, err
		}
		c.sqNorm = &sq[0]
	}
	return math.Sqrt(*c.sqNorm), nil
}

// DeltaNorm is ‖x − x_t‖, the norm of what the client changed in the global model (rules with
// a global model only). It is NaN or Inf when the update holds a NaN or Inf.
func (c *Client) DeltaNorm(ctx context.Context) (float64, error) {
	if c.round.global == nil {
		return 0, fmt.Errorf("%w: %s: a delta norm needs the global model", ErrOption, c.Source)
	}
	if c.sqDelta == nil {
		sq, err := c.round.sqNorms(ctx, c.layout, [][]device.Span{c.spans}, c.round.global.spans)
		if err != nil {
			return 0, err
		}
		c.sqDelta = &sq[0]
	}
	return math.Sqrt(*c.sqDelta), nil
}

// NonFinite explains a non-finite norm of the client: the first NaN or Inf of its update as a
// *tensor.NonFiniteError naming it, or an ErrOverflow error when every value is finite.
func (c *Client) NonFinite(ctx context.Context, what string, v float64) error {
	if err := c.round.checkFinite(ctx, c.layout, c.spans); err != nil {
		return c.blame(err)
	}
	return fmt.Errorf("%s: %w: %s is %v", c.Source, ErrOverflow, what, v)
}

// blame puts the client's name on a non-finite or out-of-range error.
func (c *Client) blame(err error) error {
	var nf *tensor.NonFiniteError
	if errors.As(err, &nf) && nf.Source == "" {
		nf.Source = c.Source
	}
	var re *device.RangeError
	if errors.As(err, &re) && re.Source == "" {
		re.Source = c.Source
	}
	return err
}

// admit validates update u and runs the stages' admission and weighing: the client it returns
// is ready to be added, or excluded. Nothing of the round changes here.
func (r *Round) admit(ctx context.Context, u *tensor.Set, weight float64, from WeightSource) (*Client, error) {
	who := sourceName(u, len(r.clients))
	name := r.rule.Name()
	w, err := r.weights.check(r.req.Weights, weight, from, who, name)
	if err != nil {
		return nil, err
	}
	if err := r.checkDuplicate(u, who); err != nil {
		return nil, err
	}
	if r.req.Global {
		if err := checkUpdateKind(u, who, name); err != nil {
			return nil, err
		}
	}
	c := &Client{Source: who, Index: len(r.clients), Metadata: u.Metadata, given: w, set: u, bytes: u.NumBytes(), round: r}
	c.diag.Source = who
	if err := r.matchLayout(c, u); err != nil {
		return nil, err
	}
	if r.scansOnAdmit() {
		check := r.checkFinite
		if r.exactSum() {
			check = r.checkExactRange // |x| ≤ the bound, which implies finite (exact.go)
		}
		if err := check(ctx, c.layout, c.spans); err != nil {
			return nil, c.blame(err)
		}
	}
	c.weight = r.weights.scaled(w)
	c.factor = 1
	for _, s := range r.stages {
		if a, ok := s.(Admitter); ok {
			if err := a.Admit(ctx, c); err != nil {
				return nil, err
			}
		}
	}
	for _, s := range r.stages {
		wg, ok := s.(Weigher)
		if !ok || c.excluded != "" {
			continue
		}
		f, err := wg.Weigh(ctx, c)
		if err != nil {
			return nil, err
		}
		if !(f >= 0) || math.IsInf(f, 0) {
			return nil, fmt.Errorf("%s: %s weighed the update by %v", who, name, f)
		}
		c.factor *= f
	}
	return c, nil
}

// scansOnAdmit reports whether an update is scanned for NaN and Inf when it is added. A sum that
// adds on arrival must scan first (a rejected update must leave the sum as it was); a batch sum
// does not, since it checks every converted block of its result anyway and then names the input
// that holds the NaN or Inf: that saves a whole pass over the inputs. Rules that exclude such
// updates find them from the norms they compute; u32 values are always finite.
func (r *Round) scansOnAdmit() bool {
	switch {
	case r.req.ExcludeNonFinite, r.req.Kind == KindModSum:
		return false
	case r.sum != nil && r.sum.deferred, r.checksOnAdd():
		return false
	}
	return true
}

// checksOnAdd reports whether updates are checked for NaN and Inf while they are added
// (WithFailFast) rather than scanned first: a float sum that adds on arrival.
func (r *Round) checksOnAdd() bool {
	return r.cfg.failFast && r.addsInGroups()
}

// checkDuplicate refuses an update already in the round: one from the same source (a file
// path, a client id), or, while the round holds the updates (WithRetainedUpdates), the same Set
// or a Set viewing the same memory. (A file opened twice under two names is caught by the CLI,
// which compares inodes.)
func (r *Round) checkDuplicate(u *tensor.Set, who string) error {
	for _, c := range r.clients {
		switch {
		case u.Source != "" && c.Source == u.Source:
			return fmt.Errorf("%s: %w: an update from %s is already in the round", who, ErrDuplicate, u.Source)
		case c.set != nil && (c.set == u || sameData(c.set, u)):
			return fmt.Errorf("%s: %w: it is the update already added as %s", who, ErrDuplicate, c.Source)
		}
	}
	return nil
}

// sameData reports whether two sets view the same bytes (the first non-empty tensor's).
func sameData(a, b *tensor.Set) bool {
	for i := range min(a.Len(), b.Len()) {
		x, y := a.At(i).Bytes(), b.At(i).Bytes()
		if len(x) > 0 && len(y) > 0 {
			return &x[0] == &y[0]
		}
	}
	return false
}

// checkUpdateKind refuses a file that says it holds a delta where a model is expected.
func checkUpdateKind(u *tensor.Set, who, rule string) error {
	switch kind := u.Metadata[UpdateKindKey]; kind {
	case "", UpdateModel:
		return nil
	case UpdateDelta:
		return fmt.Errorf("%s: %w: %s=delta, but %s takes full client models and subtracts the global model itself",
			who, ErrUpdateKind, UpdateKindKey, rule)
	default:
		return fmt.Errorf("%s: %w: %s=%q (want model or delta)", who, ErrUpdateKind, UpdateKindKey, kind)
	}
}

// matchLayout matches the update's tensors to the round's layout (fixing it from the first
// update when no global model did) and checks their dtypes; it sets c.spans and c.dtypes.
func (r *Round) matchLayout(c *Client, u *tensor.Set) error {
	ref, perm, err := r.matchHeader(c.Source, u.Layout())
	if err != nil {
		return err
	}
	c.spans = make([]device.Span, len(perm))
	c.dtypes = make([]tensor.DType, len(perm))
	for t, j := range perm {
		tt := u.At(j)
		c.spans[t] = device.SpanOf(tt)
		c.dtypes[t] = tt.DType
	}
	c.layout = ref
	return nil
}

// matchHeader checks an update's layout against the round's (or takes it as the round's, for
// the first update of a round without a global model) and its dtypes against the rule's and the
// first update's: everything about an update that its header says. It returns the round's
// layout and, per field, the index of the update's tensor.
func (r *Round) matchHeader(who string, layout tensor.Layout) (tensor.Layout, []int, error) {
	ref, refName := r.layoutRef()
	if ref == nil {
		ref, refName = layout, who
	}
	perm, err := ref.Match(layout, false)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w (as in %s)", who, err, refName)
	}
	first := r.firstDTypes()
	for t, j := range perm {
		f := layout[j]
		if err := r.checkDType(who, ref[t].Name, f.DType); err != nil {
			return nil, nil, err
		}
		if first != nil && !r.cfg.mixed && f.DType != first[t] {
			return nil, nil, fmt.Errorf("%s: %w: tensor %q has dtype %s, want %s (as in %s; --mixed-dtypes accepts it)",
				who, tensor.ErrLayoutMismatch, f.Name, f.DType, first[t], r.clients[0].Source)
		}
	}
	return ref, perm, nil
}

// CheckHeader checks what an update's header says — its source (not already in the round), its
// layout and dtypes, what it holds (UpdateKindKey) — before any of its data is read: a server
// refuses a bad update before it reads the body. Add checks all of it again, and the data.
func (r *Round) CheckHeader(source string, layout tensor.Layout, metadata map[string]string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.acceptingUpdates(); err != nil {
		return err
	}
	u := &tensor.Set{Source: source, Metadata: metadata}
	who := sourceName(u, len(r.clients))
	if err := r.checkDuplicate(u, who); err != nil {
		return err
	}
	if r.req.Global {
		if err := checkUpdateKind(u, who, r.rule.Name()); err != nil {
			return err
		}
	}
	_, _, err := r.matchHeader(who, layout)
	return err
}

// layoutRef is the round's layout and who fixed it (nil before the first update of a round
// without a global model).
func (r *Round) layoutRef() (tensor.Layout, string) { return r.refLayout, r.refName }

// firstDTypes are the dtypes of the first accepted update, per field (nil before it).
func (r *Round) firstDTypes() []tensor.DType {
	if len(r.clients) == 0 {
		return nil
	}
	return r.clients[0].dtypes
}

// checkDType refuses a dtype the rule cannot take, naming the update and the rule.
func (r *Round) checkDType(who, tensorName string, dt tensor.DType) error {
	name := r.rule.Name()
	switch {
	case r.req.DTypes != nil && !slices.Contains(r.req.DTypes, dt):
		var want []string
		for _, d := range r.req.DTypes {
			want = append(want, d.String())
		}
		return fmt.Errorf("%s: %w: tensor %q is %s: %s takes %v updates", who, tensor.ErrDType, tensorName, dt, name, want)
	case r.req.DTypes == nil && !dt.Real():
		return fmt.Errorf("%s: %w: tensor %q is %s: %s averages real values (u32 tensors are for the secure-sum rule)",
			who, tensor.ErrDType, tensorName, dt, name)
	case dt == tensor.F64 && r.plan != nil && r.plan.accOf(tensorName) == tensor.F32:
		return fmt.Errorf("%s: %w: tensor %q is f64 but the round accumulates it in f32 (accumulate in f64)", who, tensor.ErrLayoutMismatch, tensorName)
	case dt == tensor.F64 && r.cfg.acc == tensor.F32:
		return fmt.Errorf("%s: %w: tensor %q has f64 inputs: accumulate in f64", who, ErrOption, tensorName)
	case dt == tensor.F64 && r.exactSum():
		return fmt.Errorf("%s: %w: tensor %q is f64: exact sums take f32, bf16, f16 and i8", who, tensor.ErrDType, tensorName)
	}
	return nil
}

// checkFinite scans one update for NaN and Inf on the round's reducer.
func (r *Round) checkFinite(ctx context.Context, ref tensor.Layout, x []device.Span) error {
	red, err := r.reducer()
	if err != nil {
		return err
	}
	return red.CheckFinite(ctx, fieldsForScan(ref), x)
}

// sqNorms computes squared norms (to ref, if given) on the round's reducer, recording the pass.
func (r *Round) sqNorms(ctx context.Context, layout tensor.Layout, inputs [][]device.Span, ref []device.Span) ([]float64, error) {
	red, err := r.reducer()
	if err != nil {
		return nil, err
	}
	sq, st, err := red.SqNorms(ctx, fieldsForScan(layout), inputs, ref)
	r.acct.record(st)
	return sq, err
}

// fieldsForScan describes a layout's tensors for a reduction (names and lengths; the dtypes are
// the spans').
func fieldsForScan(ref tensor.Layout) []device.AccField {
	fields := make([]device.AccField, len(ref))
	for t, f := range ref {
		fields[t] = device.AccField{Name: f.Name, Len: f.Len(), Acc: tensor.F64, Out: tensor.F64}
	}
	return fields
}
