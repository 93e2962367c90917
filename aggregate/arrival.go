package aggregate

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
)

// Arrivals: an update added to an incremental exact sum piece by piece, as its bytes arrive
// from the network, instead of whole with Add. A server that adds each piece as it arrives
// never holds an update and never reads it back: its spool is written once and read only to
// recover. Pieces of concurrent arrivals are added at once (the sum is locked in stripes of
// elements, not as a whole), and an arrival that fails midway is taken out again exactly
// (Cancel): the exact sum of w·x and −w·x is zero term for term (device.PieceAccumulator). An
// arrival counts in the round once it is committed, with the bits Add would have given it: the
// terms are the same, and an exact sum does not depend on their order.
//
//	a, err := round.BeginArrival(ctx, client, layout, metadata, nil, weight, aggregate.WeightsGiven)
//	for each piece as it arrives { err = a.Add(ctx, tensor, element, bytes) }
//	err = a.Commit()                       // counted: in the round's result and report
//	// or, on any failure:
//	a.Cancel(ctx, readBack)                // the pieces added are subtracted again
//
// The round's meters (WithMeters) measure from the first arrival to the close: with pieces added
// on the callers' goroutines, many at once, that window is what the arrivals cost, and it takes
// in whatever else the machine did meanwhile (for a server, its ingest: the network, the hashing,
// the spool).
//
// Arrivals need a round that sums exactly and adds on arrival (WithExactSum, not a batch), on a
// device whose accumulator takes pieces (the CPU's), and a rule whose stages neither weigh nor
// admit clients one by one (clipping needs the whole update before its first element is added).

// pieceStripe is the number of elements one lock of the sum covers: pieces of 1 MiB of f32
// take at most 5 locks, and the arrivals of 64 clients rarely meet.
const pieceStripe = 1 << 16

// pieceLocks lock the accumulator of a round with arrivals in stripes of the flattened element
// space. Every holder of more than one lock takes them in increasing order.
type pieceLocks struct {
	base   []int // the first element of each field
	locks  []sync.Mutex
	closed bool // set with every lock held: no piece is added any more
}

func newPieceLocks(fields []device.AccField) *pieceLocks {
	p := &pieceLocks{base: make([]int, len(fields))}
	n := 0
	for t, f := range fields {
		p.base[t] = n
		n += f.Len
	}
	p.locks = make([]sync.Mutex, max(1, (n+pieceStripe-1)/pieceStripe))
	return p
}

// lock takes the stripes of elements [lo, hi) of field t and returns what gives them back.
func (p *pieceLocks) lock(t, lo, hi int) func() {
	a, b := (p.base[t]+lo)/pieceStripe, (p.base[t]+max(hi, lo+1)-1)/pieceStripe
	for i := a; i <= b; i++ {
		p.locks[i].Lock()
	}
	return func() {
		for i := a; i <= b; i++ {
			p.locks[i].Unlock()
		}
	}
}

// lockAll takes every stripe (a whole-sum operation: Add of a whole update, the close).
func (p *pieceLocks) lockAll() func() {
	for i := range p.locks {
		p.locks[i].Lock()
	}
	return func() {
		for i := range p.locks {
			p.locks[i].Unlock()
		}
	}
}

// Arrival is one update entering a round piece by piece (BeginArrival).
type Arrival struct {
	r      *Round
	c      *Client
	from   WeightSource
	a      float64       // the weight the terms are added with
	field  []int         // the round's field of each of the update's tensors
	spans  []device.Span // each tensor's dtype and I8 scale (no data)
	next   []int         // the next element expected of each tensor
	pieces atomic.Int64  // elements of the update in the sum
	state  atomic.Int32  // arrivalOpen, arrivalCommitted, arrivalCancelled
	mu     sync.Mutex    // serialises Add, Commit and Cancel of this arrival
}

const (
	arrivalOpen int32 = iota
	arrivalCommitted
	arrivalCancelled
)

// BeginArrival checks an update's header as CheckHeader does, and its weight as Add would
// (weight and from as the caller resolved them: WeightsGiven, or num_examples and its source),
// and returns the Arrival its pieces are added through. scales are the I8 dequantisation
// scales of the update's tensors, in the update's order (nil: 1). An update from a source that
// is in the round or arriving is refused (ErrDuplicate).
func (r *Round) BeginArrival(ctx context.Context, source string, layout tensor.Layout, metadata map[string]string, scales []float32, weight float64, from WeightSource) (*Arrival, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.acceptingUpdates(); err != nil {
		return nil, err
	}
	if err := r.takesArrivals(); err != nil {
		return nil, err
	}
	if scales != nil && len(scales) != len(layout) {
		return nil, fmt.Errorf("%w: %d scales for %d tensors", ErrOption, len(scales), len(layout))
	}
	who, w, err := r.checkArrival(source, metadata, weight, from)
	if err != nil {
		return nil, err
	}
	ref, perm, err := r.matchHeader(who, layout)
	if err != nil {
		return nil, err
	}
	arr := r.newArrival(who, metadata, w, from, layout, ref, perm, scales)
	if arr.a, err = r.exactWeight(arr.c); err != nil {
		return nil, err
	}
	if err := r.ensurePieceAccumulator(ctx, arr.c); err != nil {
		return nil, err
	}
	r.startArrival(arr)
	return arr, nil
}

// checkArrival checks what an arriving update's header says of its source (not in the round
// nor arriving), its weight and what it holds; it returns the update's name and the weight it
// enters the sum with (before scaling).
func (r *Round) checkArrival(source string, metadata map[string]string, weight float64, from WeightSource) (string, float64, error) {
	u := &tensor.Set{Source: source, Metadata: metadata}
	who := sourceName(u, len(r.clients))
	w, err := r.weights.check(r.req.Weights, weight, from, who, r.rule.Name())
	if err != nil {
		return "", 0, err
	}
	if err := r.checkDuplicate(u, who); err != nil {
		return "", 0, err
	}
	if _, ok := r.arrivals[who]; ok && source != "" {
		return "", 0, fmt.Errorf("%s: %w: an update from %s is already arriving", who, ErrDuplicate, source)
	}
	if r.req.Global {
		if err := checkUpdateKind(u, who, r.rule.Name()); err != nil {
			return "", 0, err
		}
	}
	return who, w, nil
}

// newArrival makes the client of an update whose header matched the round's layout (ref; perm
// its tensor of each field) and the arrival its pieces are added through: each tensor's field,
// dtype and I8 scale (nil scales: 1).
func (r *Round) newArrival(who string, metadata map[string]string, w float64, from WeightSource, layout, ref tensor.Layout, perm []int, scales []float32) *Arrival {
	c := &Client{Source: who, Metadata: metadata, given: w, bytes: layoutBytes(layout), round: r, layout: ref,
		dtypes: make([]tensor.DType, len(perm))}
	c.diag.Source = who
	arr := &Arrival{r: r, c: c, from: from, field: make([]int, len(layout)), spans: make([]device.Span, len(layout)),
		next: make([]int, len(layout))}
	for t, j := range perm {
		c.dtypes[t] = layout[j].DType
		arr.field[j] = t
		arr.spans[j] = device.Span{DType: layout[j].DType, Scale: 1}
		if scales != nil {
			arr.spans[j].Scale = scales[j]
		}
	}
	c.weight = r.weights.scaled(w)
	c.factor = 1
	return arr
}

// ensurePieceAccumulator makes the plan and the accumulator at the round's first update and
// checks that its device adds updates piece by piece.
func (r *Round) ensurePieceAccumulator(ctx context.Context, first *Client) error {
	if err := r.ensureAccumulator(ctx, first); err != nil {
		return err
	}
	if _, ok := r.sum.acc.(device.PieceAccumulator); !ok {
		return fmt.Errorf("%w: %s does not add updates piece by piece", device.ErrUnsupported, r.sum.accDev)
	}
	return nil
}

// startArrival lists the arrival in the round, making the sum's piece locks and starting the
// meters at the first.
func (r *Round) startArrival(arr *Arrival) {
	if r.pieces == nil {
		r.pieces = newPieceLocks(r.plan.fields)
		// Pieces are added on the callers' goroutines, many at once, between the round's own
		// calls: the meters run from the first arrival to the close and take in all of it.
		r.arrivalW = r.cfg.startMeters()
	}
	if r.arrivals == nil {
		r.arrivals = map[string]*Arrival{}
	}
	r.arrivals[arr.c.Source] = arr
}

// takesArrivals refuses arrivals in a round that cannot add pieces as they come.
func (r *Round) takesArrivals() error {
	switch {
	case !r.exactSum():
		return fmt.Errorf("%w: updates arrive piece by piece only into exact sums (WithExactSum)", ErrOption)
	case r.sum.deferred:
		return fmt.Errorf("%w: a batch round sums the updates it holds: arrivals need an incremental round (NewRound)", ErrOption)
	}
	for _, st := range r.stages {
		_, weighs := st.(Weigher)
		_, admits := st.(Admitter)
		if weighs || admits {
			return fmt.Errorf("%w: %s weighs or admits each update whole: add it with Add", ErrOption, r.rule.Name())
		}
	}
	return nil
}

// TakesArrivals reports whether the round adds updates piece by piece (BeginArrival): an
// incremental exact sum of a rule that needs no whole update. A device without piece adds is
// found only at the first BeginArrival.
func (r *Round) TakesArrivals() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.takesArrivals() == nil
}

func layoutBytes(l tensor.Layout) int64 {
	var n int64
	for _, f := range l {
		n += int64(f.Len()) * int64(f.DType.Size())
	}
	return n
}

// Add adds elements [off, off+n) of the update's tensor j (in the update's layout order), n the
// elements data holds. Pieces of a tensor come in order, each element once. A piece with a NaN,
// an infinity or a value beyond the exact sum's bound is refused before anything of it is added
// (the error names the element); the pieces before it stay added until Cancel.
func (a *Arrival) Add(ctx context.Context, j, off int, data []byte) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.state.Load() != arrivalOpen {
		return fmt.Errorf("%s: %w: the arrival was committed or cancelled", a.c.Source, ErrOption)
	}
	if j < 0 || j >= len(a.field) {
		return fmt.Errorf("%s: %w: tensor %d of %d", a.c.Source, ErrOption, j, len(a.field))
	}
	sp := a.spans[j]
	sp.Data = data
	es := sp.DType.Size()
	t := a.field[j]
	f := a.c.layout[t]
	n := len(data) / es
	if len(data)%es != 0 || off != a.next[j] || off+n > f.Len() {
		return fmt.Errorf("%s: %w: tensor %q: %d bytes at element %d do not continue it (next element %d of %d)",
			a.c.Source, ErrOption, f.Name, len(data), off, a.next[j], f.Len())
	}
	if n == 0 {
		return nil
	}
	if err := a.addPiece(ctx, t, off, sp, a.a); err != nil {
		return a.c.blame(err)
	}
	a.next[j] += n
	a.pieces.Add(int64(n))
	return nil
}

// addPiece adds w·sp at element off of field t under the stripes it touches.
func (a *Arrival) addPiece(ctx context.Context, t, off int, sp device.Span, w float64) error {
	r := a.r
	n := len(sp.Data) / sp.DType.Size()
	unlock := r.pieces.lock(t, off, off+n)
	defer unlock()
	if r.pieces.closed {
		return fmt.Errorf("%w: the round of %s is closing", ErrClosed, r.rule.Name())
	}
	return r.sum.acc.(device.PieceAccumulator).AddPiece(ctx, t, off, sp, w)
}

// Commit counts the update in the round once every element has been added: its weight in the
// totals, the client in the report, in commit order. It fails, leaving the arrival open for
// Cancel, when the update is incomplete, when the round no longer takes updates or when its
// weight would take the round beyond the exact sums' weight cap.
func (a *Arrival) Commit() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	r := a.r
	r.mu.Lock()
	defer r.mu.Unlock()
	if a.state.Load() != arrivalOpen {
		return fmt.Errorf("%s: %w: the arrival was committed or cancelled", a.c.Source, ErrOption)
	}
	if err := r.acceptingUpdates(); err != nil {
		return err
	}
	for j, t := range a.field {
		if f := a.c.layout[t]; a.next[j] != f.Len() {
			return fmt.Errorf("%s: %w: tensor %q has %d of its %d elements", a.c.Source, ErrOption, f.Name, a.next[j], f.Len())
		}
	}
	c := a.c
	if _, err := r.weights.check(r.req.Weights, c.given, a.from, c.Source, r.rule.Name()); err != nil {
		return err
	}
	if err := r.checkDuplicate(&tensor.Set{Source: c.Source}, c.Source); err != nil {
		return err
	}
	aw, err := r.exactWeight(c)
	if err != nil {
		return err
	}
	c.Index = len(r.clients)
	r.summed(c, aw)
	r.record(c, a.from)
	delete(r.arrivals, c.Source)
	a.state.Store(arrivalCommitted)
	return nil
}

// Cancel takes an arrival that will not be committed out of the round: every piece it added is
// subtracted again, its bytes asked of read (tensor j of the update, elements from off, into
// dst: the caller's copy of what it added, such as its spool). The sum is then as it was,
// bit for bit. If read fails, the sum can no longer be made right: the round is broken, and
// its error says why. Cancel after Commit, or twice, does nothing.
func (a *Arrival) Cancel(ctx context.Context, read func(j, off int, dst []byte) error) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.state.Load() != arrivalOpen {
		return nil
	}
	a.state.Store(arrivalCancelled)
	err := a.subtract(context.WithoutCancel(ctx), read)
	r := a.r
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.arrivals, a.c.Source)
	if err != nil && r.state == roundOpen {
		r.state = roundBroken
		r.broken = fmt.Errorf("%s could not be taken out of the sum: %w", a.c.Source, err)
		return fmt.Errorf("%w: the round of %s is given up: %w", ErrClosed, r.rule.Name(), r.broken)
	}
	return err
}

// subtract adds −a·x for every piece the arrival added, read back in pieces of 1 MiB.
func (a *Arrival) subtract(ctx context.Context, read func(j, off int, dst []byte) error) error {
	if a.pieces.Load() == 0 {
		return nil
	}
	var buf []byte
	for j, t := range a.field {
		sp := a.spans[j]
		es := sp.DType.Size()
		step := max(1, (1<<20)/es)
		for off := 0; off < a.next[j]; off += step {
			n := min(step, a.next[j]-off)
			if cap(buf) < n*es {
				buf = make([]byte, n*es)
			}
			sp.Data = buf[:n*es]
			if err := read(j, off, sp.Data); err != nil {
				return err
			}
			if err := a.addPiece(ctx, t, off, sp, -a.a); err != nil {
				return err
			}
			a.pieces.Add(-int64(n))
		}
	}
	return nil
}

// Arriving is the number of arrivals begun and neither committed nor cancelled.
func (r *Round) Arriving() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.arrivals)
}

// closePieces ends piece adds before the round's result is made (r.mu held): it fails while an
// arrival has pieces in the sum (they would be in the result without being counted), else no
// piece is added any more. Arrivals with nothing added are dropped.
func (r *Round) closePieces() error {
	if r.pieces == nil {
		return nil
	}
	unlock := r.pieces.lockAll()
	defer unlock()
	var busy []string
	for who, a := range r.arrivals {
		if a.pieces.Load() != 0 {
			busy = append(busy, who)
		}
	}
	if len(busy) > 0 {
		slices.Sort(busy)
		return fmt.Errorf("%w: %d updates are still arriving (%s): commit or cancel them first", ErrOption, len(busy), busy[0])
	}
	r.pieces.closed = true
	r.acct.meter(r.arrivalW)
	r.arrivalW = nil
	return nil
}
