package aggregate

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"math/bits"
	"slices"
	"strconv"
	"unsafe"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// Partial is a partial aggregate of an exact sum: the integer sums of some clients' weighted
// updates on the round's grid, the clients (sources and weights) and the exact totals of their
// weights. It is a value: it can be written to a .safetensors file and read back, and partials of
// disjoint clients merge (MergePartials), in any grouping and order, into exactly the partial a
// single round over all of them would make. A round of the same rule and exact configuration
// takes partials with AddPartial, and its result has the bits of one round over every client.
//
// A partial holds no global-model term and no rule stage ran on it (no noise, no optimizer step):
// the round that takes it does all of that once, at its close.
type Partial struct {
	Rule        string
	WeightsFrom WeightSource
	MaxWeight   float64
	Tensors     []PartialTensor
	Clients     []PartialClient

	sumW, sumA *big.Float
	sums       [][]int64 // per tensor: 2 words per element (a 128-bit integer, low word first)
}

// PartialTensor describes one tensor of a partial: its layout, the dtypes its updates came in
// (which decide the output dtype), and the grid and bound of its exact sum.
type PartialTensor struct {
	Name   string         `json:"name"`
	Shape  []int          `json:"shape"`
	DTypes []tensor.DType `json:"dtypes"`
	Grid   int            `json:"grid"`
	Bound  float64        `json:"bound"`
}

// PartialClient is one client of a partial, as the round's report shows it.
type PartialClient struct {
	Source string  `json:"source"`
	Weight float64 `json:"weight"` // as given (1 under WeightsEqual)
}

// TotalWeight is the clients' total weight, rounded once from the exact total.
func (p *Partial) TotalWeight() float64 {
	f, _ := p.sumW.Float64()
	return f
}

// Sums returns the integer sums of tensor t (2 words per element: a little-endian 128-bit two's
// complement integer, in units of 2^Grid). The slice is the partial's: do not modify it.
func (p *Partial) Sums(t int) []int64 { return p.sums[t] }

// Partial closes an incremental or batch round of an exact sum into a partial aggregate of its
// clients, instead of a result: no global model is added and no stage finishes. The round takes
// no update afterwards; Close it as usual.
func (r *Round) Partial(ctx context.Context) (*Partial, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.acceptingUpdates(); err != nil {
		return nil, err
	}
	if !r.exactSum() {
		return nil, fmt.Errorf("%w: partial aggregates are exact sums: the round needs WithExactSum", ErrOption)
	}
	if r.counted() == 0 {
		return nil, r.noInputs()
	}
	r.state = roundClosing
	s := r.sum
	if err := r.ensureSumPlan(ctx); err != nil {
		return nil, err
	}
	acc := s.acc
	if s.deferred { // a batch holds its clients' spans: add them up now, each scanned first
		dev := r.cfg.dev()
		a, err := dev.NewAccumulator(r.plan.fields)
		if err != nil {
			return nil, err
		}
		defer a.Close()
		for k, in := range s.inputs {
			if err := r.checkExactRange(ctx, r.plan.ref, in); err != nil {
				c := &Client{Source: s.names[k]}
				return nil, c.blame(err)
			}
			if err := a.Add(ctx, in, s.a[k]); err != nil {
				return nil, r.blameRange(r.blame(err, s.inputs[k:k+1], s.names[k:k+1]), s.inputs[k:k+1], s.names[k:k+1])
			}
		}
		acc = a
	}
	p := &Partial{Rule: r.rule.Name(), WeightsFrom: r.weights.source(r.req.Weights), MaxWeight: r.cfg.exact.maxWeight,
		sumW: new(big.Float).SetPrec(exactPrec).Set(s.exactTotals().sumW), sumA: new(big.Float).SetPrec(exactPrec).Set(s.exactTotals().sumA)}
	dts := r.dtypesOf(nil)
	for t, f := range r.plan.fields {
		p.Tensors = append(p.Tensors, PartialTensor{Name: f.Name, Shape: slices.Clone(r.plan.ref[t].Shape),
			DTypes: uniqueDTypes(dts(t)), Grid: f.Grid, Bound: f.Bound})
		sums := make([]int64, 2*f.Len)
		if acc != nil {
			ea, ok := acc.(device.ExactAccumulator)
			if !ok {
				return nil, fmt.Errorf("%w: %s cannot read out exact sums", device.ErrUnsupported, r.cfg.dev().Name())
			}
			if err := ea.ReadSums(ctx, t, sums); err != nil {
				return nil, err
			}
		}
		p.sums = append(p.sums, sums)
	}
	for _, c := range r.clients {
		if c.excluded == "" {
			p.Clients = append(p.Clients, PartialClient{Source: c.Source, Weight: c.given})
		}
	}
	return p, nil
}

func uniqueDTypes(dts []tensor.DType) []tensor.DType {
	out := slices.Clone(dts)
	slices.Sort(out)
	return slices.Compact(out)
}

// MergePartials adds partials of disjoint clients into one, exactly: the result does not depend
// on their order or on how earlier merges grouped them. They must come from rounds of the same
// rule with the same tensors, grids, bounds and weight cap; a client in two of them is an
// ErrDuplicate error, a total beyond the cap or beyond what the sums hold an ErrOutOfRange one.
func MergePartials(ps ...*Partial) (*Partial, error) {
	if len(ps) == 0 {
		return nil, fmt.Errorf("%w: no partials to merge", ErrOption)
	}
	for _, p := range ps {
		if p == nil {
			return nil, fmt.Errorf("%w: nil partial", ErrOption)
		}
	}
	out := &Partial{Rule: ps[0].Rule, WeightsFrom: ps[0].WeightsFrom, MaxWeight: ps[0].MaxWeight,
		sumW: new(big.Float).SetPrec(exactPrec), sumA: new(big.Float).SetPrec(exactPrec)}
	for _, t := range ps[0].Tensors {
		out.Tensors = append(out.Tensors, t)
		out.Tensors[len(out.Tensors)-1].DTypes = nil
		out.sums = append(out.sums, make([]int64, 2*numElements(t.Shape)))
	}
	seen := map[string]bool{}
	for k, p := range ps {
		if err := out.compatible(p); err != nil {
			return nil, fmt.Errorf("partial %d: %w", k+1, err)
		}
		for _, c := range p.Clients {
			if seen[c.Source] {
				return nil, fmt.Errorf("partial %d: %w: %s is in another partial", k+1, ErrDuplicate, c.Source)
			}
			seen[c.Source] = true
		}
		out.Clients = append(out.Clients, p.Clients...)
		out.sumW.Add(out.sumW, p.sumW)
		out.sumA.Add(out.sumA, p.sumA)
		for t := range out.Tensors {
			j := p.tensor(out.Tensors[t].Name)
			out.Tensors[t].DTypes = uniqueDTypes(append(out.Tensors[t].DTypes, p.Tensors[j].DTypes...))
			if err := addInt128(out.sums[t], p.sums[j], out.Tensors[t].Name); err != nil {
				return nil, err
			}
		}
	}
	if out.sumA.Cmp(big.NewFloat(out.MaxWeight)) > 0 {
		a, _ := out.sumA.Float64()
		return nil, fmt.Errorf("%w: the merged partials' weights total %v, beyond the exact sums' cap %v", ErrOutOfRange, a, out.MaxWeight)
	}
	return out, nil
}

// tensor is the index of the named tensor, or -1.
func (p *Partial) tensor(name string) int {
	return slices.IndexFunc(p.Tensors, func(t PartialTensor) bool { return t.Name == name })
}

// compatible checks that q can be merged with p: same rule, weighting, cap, tensors and grids.
func (p *Partial) compatible(q *Partial) error {
	switch {
	case q.Rule != p.Rule:
		return fmt.Errorf("%w: a partial of %s, not %s", ErrOption, q.Rule, p.Rule)
	case q.WeightsFrom != p.WeightsFrom:
		return fmt.Errorf("%w: clients weighted by %s, not %s", ErrWeight, q.WeightsFrom, p.WeightsFrom)
	case q.MaxWeight != p.MaxWeight:
		return fmt.Errorf("%w: weight cap %v, not %v: partials merge on the same grid", ErrOption, q.MaxWeight, p.MaxWeight)
	case len(q.Tensors) != len(p.Tensors):
		return fmt.Errorf("%w: %d tensors, not %d", tensor.ErrLayoutMismatch, len(q.Tensors), len(p.Tensors))
	}
	for _, t := range p.Tensors {
		j := q.tensor(t.Name)
		if j < 0 {
			return fmt.Errorf("%w: no tensor %q", tensor.ErrLayoutMismatch, t.Name)
		}
		u := q.Tensors[j]
		if !slices.Equal(u.Shape, t.Shape) {
			return fmt.Errorf("%w: tensor %q has shape %v, not %v", tensor.ErrLayoutMismatch, t.Name, u.Shape, t.Shape)
		}
		if u.Grid != t.Grid || u.Bound != t.Bound {
			return fmt.Errorf("%w: tensor %q on grid 2^%d within ±%v, not 2^%d within ±%v: partials merge on the same grid",
				ErrOption, t.Name, u.Grid, u.Bound, t.Grid, t.Bound)
		}
	}
	return nil
}

// addInt128 adds the 128-bit sums of src to dst, refusing (before changing anything) a total
// beyond 2^115 grid units, which no limbs could take back.
func addInt128(dst, src []int64, name string) error {
	for pass := range 2 {
		for j := 0; j < len(dst); j += 2 {
			lo, c := bits.Add64(uint64(dst[j]), uint64(src[j]), 0)
			hi, _ := bits.Add64(uint64(dst[j+1]), uint64(src[j+1]), c)
			if h := int64(hi); h>>51 != 0 && h>>51 != -1 || (dst[j+1] >= 0) == (src[j+1] >= 0) && (h >= 0) != (dst[j+1] >= 0) {
				return fmt.Errorf("tensor %q element %d: %w: the merged sum is beyond 2^115 grid units", name, j/2, ErrOutOfRange)
			}
			if pass == 1 {
				dst[j], dst[j+1] = int64(lo), int64(hi)
			}
		}
	}
	return nil
}

// AddPartial merges a partial aggregate into an incremental round of an exact sum: as if its
// clients had been added one by one (their sums, weights and counts; the report lists them).
// The partial must come from rounds of the same rule with the same tensors, grids and weight
// cap, its clients must be new to the round, and the rule's stages must not weigh or admit
// clients one by one (clipping, a secure sum's client IDs): those ran in the partial's rounds,
// whose per-client state this round cannot see. A refused partial leaves the round as it was.
func (r *Round) AddPartial(ctx context.Context, p *Partial) error {
	if p == nil {
		return fmt.Errorf("%w: nil partial", ErrOption)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.acceptingUpdates(); err != nil {
		return err
	}
	if err := r.checkPartial(p); err != nil {
		return err
	}
	if err := r.ensurePartialPlan(p); err != nil {
		return err
	}
	ea, err := r.exactAccumulator(ctx)
	if err != nil {
		return err
	}
	if r.pieces != nil {
		unlock := r.pieces.lockAll()
		defer unlock()
	}
	// Every check is done; AddSums refuses a field beyond the limbs before changing it, and the
	// partial's totals are below the cap, so only a device failure can stop this half-way.
	if err := r.addPartialSums(ctx, ea, p); err != nil {
		return err
	}
	r.countPartial(p)
	return nil
}

// ensurePartialPlan makes the round's plan from the partial when no update has: on the round's
// layout if it has one, else on the partial's tensors (in their one dtype, else f32).
func (r *Round) ensurePartialPlan(p *Partial) error {
	if r.plan != nil {
		return nil
	}
	layout := partialLayout(p)
	if r.refLayout != nil {
		layout = r.refLayout
	}
	pl, err := newPlan(layout, func(t int) []tensor.DType { return p.Tensors[p.tensor(layout[t].Name)].DTypes }, r.cfg, r.req)
	if err != nil {
		return err
	}
	r.plan = pl
	return nil
}

// partialLayout is the layout of the partial's tensors: each in the one dtype its updates came
// in, or f32 when they came in several.
func partialLayout(p *Partial) tensor.Layout {
	layout := make(tensor.Layout, len(p.Tensors))
	for t, pt := range p.Tensors {
		dt := tensor.F32
		if len(pt.DTypes) == 1 {
			dt = pt.DTypes[0]
		}
		layout[t] = tensor.Field{Name: pt.Name, DType: dt, Shape: slices.Clone(pt.Shape)}
	}
	return layout
}

// exactAccumulator makes the round's accumulator if no update has, and returns it as the exact
// accumulator partials are added to.
func (r *Round) exactAccumulator(ctx context.Context) (device.ExactAccumulator, error) {
	if err := r.ensureAccumulator(ctx, nil); err != nil {
		return nil, err
	}
	ea, ok := r.sum.acc.(device.ExactAccumulator)
	if !ok {
		return nil, fmt.Errorf("%w: %s cannot add exact sums", device.ErrUnsupported, r.cfg.dev().Name())
	}
	return ea, nil
}

// addPartialSums adds the partial's integer sums to the accumulator, field by field.
func (r *Round) addPartialSums(ctx context.Context, ea device.ExactAccumulator, p *Partial) error {
	for t, f := range r.plan.fields {
		if err := ea.AddSums(ctx, t, p.sums[p.tensor(f.Name)]); err != nil {
			return err
		}
	}
	return nil
}

// countPartial counts the partial's clients in the round once its sums are in: the layout they
// fix (at the first), the exact totals of their weights, and each client as Add records it.
func (r *Round) countPartial(p *Partial) {
	s := r.sum
	if r.refLayout == nil {
		r.refLayout, r.refName = r.plan.ref, "partial of "+p.Rule
	}
	e := s.exactTotals()
	e.sumW.Add(e.sumW, p.sumW)
	e.sumA.Add(e.sumA, p.sumA)
	for _, pc := range p.Clients {
		c := &Client{Source: pc.Source, Index: len(r.clients), given: pc.Weight, factor: 1, round: r}
		c.weight = r.weights.scaled(pc.Weight)
		c.diag.Source = pc.Source
		r.clients = append(r.clients, c)
		r.weights.add(c, p.WeightsFrom)
		s.n++
	}
}

// checkPartial refuses a partial the round cannot take, before anything changes.
func (r *Round) checkPartial(p *Partial) error {
	switch {
	case !r.exactSum():
		return fmt.Errorf("%w: partial aggregates are exact sums: the round needs WithExactSum", ErrOption)
	case r.sum.deferred:
		return fmt.Errorf("%w: a batch round sums the updates it holds: merge partials into an incremental round (NewRound)", ErrOption)
	case p.Rule != r.rule.Name():
		return fmt.Errorf("%w: a partial of %s, not %s", ErrOption, p.Rule, r.rule.Name())
	case p.MaxWeight != r.cfg.exact.maxWeight:
		return fmt.Errorf("%w: the partial's weight cap is %v, the round's %v: they must sum on the same grid", ErrOption, p.MaxWeight, r.cfg.exact.maxWeight)
	}
	for _, st := range r.stages {
		_, weighs := st.(Weigher)
		_, admits := st.(Admitter)
		if weighs || admits {
			return fmt.Errorf("%w: %s weighs or admits each client as it arrives: partials of it cannot be merged", ErrOption, r.rule.Name())
		}
	}
	ref := r.refLayout
	if ref != nil && len(ref) != len(p.Tensors) {
		return fmt.Errorf("%w: the partial has %d tensors, the round %d", tensor.ErrLayoutMismatch, len(p.Tensors), len(ref))
	}
	for _, pt := range p.Tensors {
		if pt.Grid != r.cfg.exact.grid(pt.Name) || pt.Bound != r.cfg.exact.boundOf(pt.Name) {
			return fmt.Errorf("%w: tensor %q: the partial's grid 2^%d within ±%v, the round's 2^%d within ±%v",
				ErrOption, pt.Name, pt.Grid, pt.Bound, r.cfg.exact.grid(pt.Name), r.cfg.exact.boundOf(pt.Name))
		}
		if ref != nil {
			t := slices.IndexFunc(ref, func(f tensor.Field) bool { return f.Name == pt.Name })
			if t < 0 || !slices.Equal(ref[t].Shape, pt.Shape) {
				return fmt.Errorf("%w: tensor %q of shape %v is not in the round's layout (as in %s)", tensor.ErrLayoutMismatch, pt.Name, pt.Shape, r.refName)
			}
		}
		if !r.cfg.mixed && r.plan != nil {
			if t := r.plan.field(pt.Name); t >= 0 {
				if first := r.firstDTypes(); first != nil && (len(pt.DTypes) != 1 || pt.DTypes[0] != first[t]) {
					return fmt.Errorf("%w: tensor %q came in %v, the round's in %s (WithMixedDTypes accepts it)", tensor.ErrLayoutMismatch, pt.Name, pt.DTypes, first[t])
				}
			}
		}
	}
	for _, pc := range p.Clients {
		for _, c := range r.clients {
			if c.Source == pc.Source {
				return fmt.Errorf("%s: %w: an update from %s is already in the round", pc.Source, ErrDuplicate, pc.Source)
			}
		}
	}
	if r.weights.who != "" && r.weights.from != p.WeightsFrom && r.req.Weights != WeightsEqual {
		return fmt.Errorf("%w: the partial's clients are weighted by %s, the round's by %s", ErrWeight, p.WeightsFrom, r.weights.from)
	}
	total := new(big.Float).SetPrec(exactPrec).Add(r.sum.exactTotals().sumA, p.sumA)
	if total.Cmp(big.NewFloat(r.cfg.exact.maxWeight)) > 0 {
		a, _ := total.Float64()
		return fmt.Errorf("%w: with the partial the round's weights total %v, beyond the exact sums' cap %v", ErrOutOfRange, a, r.cfg.exact.maxWeight)
	}
	return nil
}

// numElements is the number of elements of shape (-1 for a negative dimension or an overflow).
func numElements(shape []int) int {
	n := 1
	for _, d := range shape {
		if d < 0 || d > 0 && n > tensor.MaxElements/d {
			return -1
		}
		n *= d
	}
	return n
}

// The keys of a partial's file metadata.
const (
	partialKey        = "wattagg.partial" // the format's version
	partialRule       = "wattagg.partial.rule"
	partialFrom       = "wattagg.partial.weights_from"
	partialMaxWeight  = "wattagg.partial.max_weight"
	partialSumW       = "wattagg.partial.sum_weights"
	partialSumA       = "wattagg.partial.sum_terms"
	partialTensors    = "wattagg.partial.tensors"
	partialClients    = "wattagg.partial.clients"
	partialVersion    = "1"
	partialWordsShape = 2 // each element's sum: two int64 words
)

// WriteFile writes the partial to path as .safetensors, atomically: one I64 tensor per model
// tensor, shape [elements, 2] (each element's sum as a little-endian 128-bit integer, low word
// first), and the rest in __metadata__ (wattagg.partial.*: the rule, the tensors' shapes,
// dtypes, grids and bounds, the clients, and the exact totals of their weights in hexadecimal
// floating point).
func (p *Partial) WriteFile(path string) error {
	meta := map[string]string{
		partialKey: partialVersion, partialRule: p.Rule, partialFrom: string(p.WeightsFrom),
		partialMaxWeight: strconv.FormatFloat(p.MaxWeight, 'g', -1, 64),
		partialSumW:      p.sumW.Text('p', 0), partialSumA: p.sumA.Text('p', 0),
	}
	for key, v := range map[string]any{partialTensors: p.Tensors, partialClients: p.Clients} {
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		meta[key] = string(b)
	}
	ts := make([]*tensor.Tensor, len(p.Tensors))
	for t, pt := range p.Tensors {
		s := p.sums[t]
		raw := unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(s))), 8*len(s))
		tt, err := tensor.FromBytes(pt.Name, tensor.I64, []int{len(s) / partialWordsShape, partialWordsShape}, raw)
		if err != nil {
			return err
		}
		ts[t] = tt
	}
	set, err := tensor.NewSet(ts...)
	if err != nil {
		return err
	}
	set.Metadata = meta
	return safetensors.WriteFile(path, set)
}

// ReadPartial reads a partial written by WriteFile. A file that is not one, or whose sums do not
// match its description, is an ErrState error naming the file.
func ReadPartial(path string) (*Partial, error) {
	set, err := safetensors.Open(path)
	if err != nil {
		return nil, err
	}
	defer set.Close()
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%s: %w: not a partial aggregate: %s", path, ErrState, fmt.Sprintf(format, args...))
	}
	m := set.Metadata
	if v := m[partialKey]; v != partialVersion {
		return nil, bad("%s is %q, want %q", partialKey, v, partialVersion)
	}
	p := &Partial{Rule: m[partialRule], WeightsFrom: WeightSource(m[partialFrom])}
	if p.MaxWeight, err = strconv.ParseFloat(m[partialMaxWeight], 64); err != nil || checkPositive("", p.MaxWeight) != nil {
		return nil, bad("%s %q", partialMaxWeight, m[partialMaxWeight])
	}
	for key, dst := range map[string]**big.Float{partialSumW: &p.sumW, partialSumA: &p.sumA} {
		f, _, err := big.ParseFloat(m[key], 0, exactPrec, big.ToNearestEven)
		if err != nil || f.Sign() < 0 {
			return nil, bad("%s %q", key, m[key])
		}
		*dst = f
	}
	if err := json.Unmarshal([]byte(m[partialTensors]), &p.Tensors); err != nil {
		return nil, bad("%s: %v", partialTensors, err)
	}
	if err := json.Unmarshal([]byte(m[partialClients]), &p.Clients); err != nil {
		return nil, bad("%s: %v", partialClients, err)
	}
	if set.Len() != len(p.Tensors) {
		return nil, bad("%d tensors described, %d stored", len(p.Tensors), set.Len())
	}
	for _, pt := range p.Tensors {
		tt, ok := set.Tensor(pt.Name)
		n := numElements(pt.Shape)
		if !ok || tt.DType != tensor.I64 || !slices.Equal(tt.Shape, []int{n, partialWordsShape}) || n < 0 {
			return nil, bad("tensor %q is not %d×2 I64 sums", pt.Name, n)
		}
		if !(pt.Bound > 0) || math.IsInf(pt.Bound, 0) {
			return nil, bad("tensor %q: bound %v", pt.Name, pt.Bound)
		}
		sums := make([]int64, 2*n)
		copy(unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(sums))), 16*n), tt.Bytes())
		p.sums = append(p.sums, sums)
	}
	for _, c := range p.Clients {
		if err := checkWeight(c.Weight, c.Source); err != nil {
			return nil, bad("client %s: %v", c.Source, err)
		}
	}
	return p, nil
}
