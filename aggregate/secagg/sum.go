package secagg

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/tensor"
)

// Option configures Sum.
type Option func(*Sum) error

// WithBits sets the bit width clients quantised with (1 to 32; default 16).
func WithBits(bits int) Option {
	return func(s *Sum) error {
		q, err := NewQuantizer(bits, s.q.c)
		if err != nil {
			return err
		}
		s.q = q
		return nil
	}
}

// WithRange sets the clipping range [-c, c] clients quantised over (> 0; default 1).
func WithRange(c float64) Option {
	return func(s *Sum) error {
		q, err := NewQuantizer(s.q.bits, c)
		if err != nil {
			return err
		}
		s.q = q
		return nil
	}
}

// WithRecovery gives the seeds revealed in the unmasking round: the survivors' self-mask seeds
// and the dropped clients' pairwise seeds. Without it the rule only adds and decodes, which is
// right when clients add no self masks and nobody dropped out (all pairwise masks cancel).
func WithRecovery(r *Recovery) Option {
	return func(s *Sum) error {
		if r == nil {
			return fmt.Errorf("%w: nil secure-sum recovery", aggregate.ErrOption)
		}
		s.rec = r
		return nil
	}
}

// WithLateRecovery makes the rule take its recovery at the end of the round instead of at New:
// a server learns the seeds in the unmasking round, after the updates arrived. Every update must
// then carry its client ID (ClientKey, as Client.Mask records it), and Recover must give the
// seeds before the round's result is made.
func WithLateRecovery() Option {
	return func(s *Sum) error {
		s.late = true
		return nil
	}
}

// Sum is the server side of mask-based secure aggregation (Bonawitz et al., 2017) as a Rule:
// the updates are clients' masked, quantised vectors (u32 tensors from Quantizer.QuantizeSet
// and Client.Mask); the engine adds them modulo 2^32 as they arrive (VPADDD, device.ModSummer;
// exact, so the order does not matter), and each chunk of the sum is unmasked — the survivors'
// self masks, the pairwise masks toward dropped clients (WithRecovery) — and decoded into the
// f32 mean of what the clients quantised while it is in cache. Weights cannot be applied to
// masked vectors: clients weight their updates before quantising, and weights given must be
// equal. Composed before a server optimizer ("secagg,fedadam") the decoded mean is the
// optimizer's averaged delta: clients then mask their deltas.
type Sum struct {
	q    *Quantizer
	rec  *Recovery
	late bool
	// cur is the round Begin began last: Recover checks a late recovery against the clients
	// it admitted.
	cur *sumRound
}

// Recover gives a rule built WithLateRecovery the seeds of its round's unmasking, once every
// update of the round is in: it checks that rec unmasks exactly the clients admitted (a
// self-mask seed for each unless NoSelfMasks, and for each client of rec.Clients that sent no
// update the seeds it shared with every one that did) and keeps it for the result. An error
// says what is missing and leaves the rule as it was, so that a corrected recovery can follow.
func (s *Sum) Recover(rec *Recovery) error {
	switch {
	case !s.late:
		return fmt.Errorf("%w: secure sum built without WithLateRecovery", aggregate.ErrOption)
	case rec == nil:
		return fmt.Errorf("%w: nil secure-sum recovery", aggregate.ErrOption)
	case s.cur == nil:
		return fmt.Errorf("%w: secure-sum recovery before the round began", aggregate.ErrOption)
	}
	if _, _, err := rec.removal(s.cur.order); err != nil {
		return err
	}
	s.rec = rec
	return nil
}

// New builds the rule (16 bits over [-1, 1] unless WithBits and WithRange).
func New(opts ...Option) (*Sum, error) {
	s := &Sum{q: &Quantizer{bits: 16, c: 1}}
	for _, o := range opts {
		if o == nil {
			return nil, fmt.Errorf("%w: nil option", aggregate.ErrOption)
		}
		if err := o(s); err != nil {
			return nil, err
		}
	}
	if s.late && s.rec != nil {
		return nil, fmt.Errorf("%w: secure sum with both WithRecovery and WithLateRecovery: give the seeds at New or with Recover", aggregate.ErrOption)
	}
	return s, nil
}

// Name is "secagg".
func (*Sum) Name() string { return "secagg" }

// Requirements: a modular sum of u32 updates, every client counted once.
func (*Sum) Requirements() aggregate.Requirements {
	return aggregate.Requirements{Kind: aggregate.KindModSum, Weights: aggregate.WeightsEqual, DTypes: []tensor.DType{tensor.U32}}
}

// Begin begins a round.
func (s *Sum) Begin(context.Context, *aggregate.Env) (aggregate.Stage, error) {
	r := &sumRound{s: s, ids: map[int]string{}, scratch: sync.Pool{New: func() any { return new([2][]uint32) }}}
	if s.late {
		s.rec, s.cur = nil, r
	}
	return r, nil
}

// sumRound is one round of the secure sum.
type sumRound struct {
	s       *Sum
	ids     map[int]string // client ID -> source, to refuse a second update of one client
	order   []int          // client IDs in arrival order
	n       int
	terms   []maskTerm
	dropped []int
	maskOff []int // per field: where its elements start in the mask order (tensors by name)
	scratch sync.Pool
}

// Admit checks the client's quantiser parameters and, with a recovery, its client ID.
func (r *sumRound) Admit(_ context.Context, c *aggregate.Client) error {
	q := r.s.q
	if r.n+1 > q.MaxClients() {
		return fmt.Errorf("%s: %w: %d clients at %d bits overflow the 32-bit field (at most %d): quantise with fewer bits",
			c.Source, aggregate.ErrOverflow, r.n+1, q.bits, q.MaxClients())
	}
	if bits, rng, ok, err := quantizerOf(c.Metadata); err != nil {
		return fmt.Errorf("%s: %w", c.Source, err)
	} else if ok && (bits != q.bits || rng != q.c) {
		return fmt.Errorf("%s: %w: quantised with %d bits over ±%v, the rule decodes %d bits over ±%v",
			c.Source, aggregate.ErrOption, bits, rng, q.bits, q.c)
	}
	if r.s.rec != nil || r.s.late {
		v, ok := c.Metadata[ClientKey]
		id, err := strconv.Atoi(v)
		if !ok || err != nil {
			return fmt.Errorf("%s: %w: no client ID (%s) to unmask it with", c.Source, aggregate.ErrOption, ClientKey)
		}
		if prev, dup := r.ids[id]; dup {
			return fmt.Errorf("%s: %w: client %d sent twice (also %s)", c.Source, aggregate.ErrDuplicate, id, prev)
		}
		r.ids[id] = c.Source
		r.order = append(r.order, id)
	}
	r.n++
	return nil
}

// Finish works out the masks to remove from the survivors and where each tensor starts in the
// mask order.
func (r *sumRound) Finish(_ context.Context, info *aggregate.SumInfo) error {
	if r.s.late && r.s.rec == nil {
		return fmt.Errorf("%w: secure sum without its recovery: Recover gives the seeds of the unmasking round", aggregate.ErrOption)
	}
	if r.s.rec != nil {
		var err error
		if r.terms, r.dropped, err = r.s.rec.removal(r.order); err != nil {
			return err
		}
	}
	order := make([]int, len(info.Layout))
	for t := range order {
		order[t] = t
	}
	slices.SortFunc(order, func(a, b int) int { return strings.Compare(info.Layout[a].Name, info.Layout[b].Name) })
	r.maskOff = make([]int, len(info.Layout))
	k := 0
	for _, t := range order {
		r.maskOff[t] = k
		k += info.Layout[t].Len()
	}
	return nil
}

// Sides: none.
func (r *sumRound) Sides() *aggregate.Sides { return nil }

// Process unmasks and decodes a chunk of the modular sum in place: u32 sums in, f32 means out.
func (r *sumRound) Process(_ context.Context, c *aggregate.Chunk) error {
	sc := r.scratch.Get().(*[2][]uint32)
	defer r.scratch.Put(sc)
	for _, p := range c.Pieces {
		sum := u32View(p.Bytes)
		if len(r.terms) > 0 {
			if cap(sc[0]) < len(sum) {
				sc[0], sc[1] = make([]uint32, len(sum)), make([]uint32, len(sum))
			}
			addMasks(sum, r.maskOff[p.Field]+p.Lo, r.terms, sc[0], sc[1])
		}
		r.s.q.Dequantize(p.X, sum, r.n)
	}
	return nil
}

// Report gives the quantiser and what was unmasked.
func (r *sumRound) Report(rep *aggregate.Report) {
	rep.Detail("bits", float64(r.s.q.bits))
	rep.Detail("range", r.s.q.c)
	rep.Detail("dropped", float64(len(r.dropped)))
	rep.Detail("masks_removed", float64(len(r.terms)))
}
