package aggregate

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
)

// SecAggOption configures SecureSum.
type SecAggOption func(*SecureSum) error

// WithSecAggBits sets the bit width clients quantised with (1 to 32; default 16).
func WithSecAggBits(bits int) SecAggOption {
	return func(s *SecureSum) error {
		q, err := NewSecAggQuantizer(bits, s.q.c)
		if err != nil {
			return err
		}
		s.q = q
		return nil
	}
}

// WithSecAggRange sets the clipping range [-c, c] clients quantised over (> 0; default 1).
func WithSecAggRange(c float64) SecAggOption {
	return func(s *SecureSum) error {
		q, err := NewSecAggQuantizer(s.q.bits, c)
		if err != nil {
			return err
		}
		s.q = q
		return nil
	}
}

// WithSecAggRecovery gives the seeds revealed in the unmasking round: the survivors' self-mask
// seeds and the dropped clients' pairwise seeds. Without it the rule only adds and decodes, which
// is right when clients add no self masks and nobody dropped out (all pairwise masks cancel).
func WithSecAggRecovery(r *SecAggRecovery) SecAggOption {
	return func(s *SecureSum) error {
		if r == nil {
			return fmt.Errorf("%w: nil secure-sum recovery", ErrOption)
		}
		s.rec = r
		return nil
	}
}

// WithSecAggRuleOptions passes the common options (the device that adds, progress).
func WithSecAggRuleOptions(opts ...Option) SecAggOption {
	return func(s *SecureSum) error {
		s.common = append(s.common, opts...)
		return nil
	}
}

// SecureSum is the server side of mask-based secure aggregation (Bonawitz et al., 2017) as a
// Rule: the updates are clients' masked, quantised vectors (u32 tensors from
// SecAggQuantizer.QuantizeSet and SecAggClient.Mask); the rule adds them modulo 2^32 (AVX2
// VPADDD over all inputs, device.ModSummer), removes the masks that did not cancel (the
// survivors' self masks, the pairwise masks toward dropped clients, from WithSecAggRecovery),
// and decodes the sum into the f32 mean of what the clients quantised. The server never sees an
// individual update in the clear. Weights cannot be applied to masked vectors: clients weight
// their updates before quantising, and weights given here must be equal.
type SecureSum struct {
	q      *SecAggQuantizer
	rec    *SecAggRecovery
	common []Option
}

// NewSecureSum builds the rule.
func NewSecureSum(opts ...SecAggOption) (*SecureSum, error) {
	s := &SecureSum{q: &SecAggQuantizer{bits: 16, c: 1}}
	for _, o := range opts {
		if err := o(s); err != nil {
			return nil, err
		}
	}
	if _, err := newConfig(s.common); err != nil {
		return nil, err
	}
	return s, nil
}

// Name is "secagg".
func (*SecureSum) Name() string { return "secagg" }

// Aggregate adds, unmasks and decodes the updates into their mean.
func (s *SecureSum) Aggregate(ctx context.Context, updates []*tensor.Set, weights []float64) (*tensor.Set, *Report, error) {
	start := time.Now()
	cfg, err := newConfig(s.common)
	if err != nil {
		return nil, nil, err
	}
	if len(updates) == 0 {
		return nil, nil, ErrNoInputs
	}
	if weights != nil && len(weights) != len(updates) {
		return nil, nil, fmt.Errorf("%w: %d weights for %d updates", ErrWeight, len(weights), len(updates))
	}
	for k, w := range weights {
		if w != weights[0] {
			return nil, nil, fmt.Errorf("%w: secagg cannot weight masked updates (weight %d is %v, weight 1 is %v): clients weight before quantising",
				ErrWeight, k+1, w, weights[0])
		}
	}
	n := len(updates)
	if n > s.q.MaxClients() {
		return nil, nil, fmt.Errorf("%w: %d clients at %d bits overflow the 32-bit field (at most %d): quantise with fewer bits",
			ErrOverflow, n, s.q.bits, s.q.MaxClients())
	}
	ref := updates[0].Layout()
	ids := make([]int, n)
	inputs := make([][]device.Span, n) // per update, per tensor of ref
	seen := map[int]int{}
	var bytesIn int64
	for k, u := range updates {
		perm, err := ref.Match(u.Layout(), true)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w (as in %s)", sourceName(u, k), err, sourceName(updates[0], 0))
		}
		for _, j := range perm {
			tt := u.At(j)
			if tt.DType != tensor.U32 {
				return nil, nil, fmt.Errorf("%s: %w: tensor %q is %s: secagg adds masked u32 vectors", sourceName(u, k), tensor.ErrDType, tt.Name, tt.DType)
			}
			inputs[k] = append(inputs[k], device.SpanOf(tt))
		}
		bytesIn += u.NumBytes()
		if bits, c, ok, err := quantizerOf(u); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", sourceName(u, k), err)
		} else if ok && (bits != s.q.bits || c != s.q.c) {
			return nil, nil, fmt.Errorf("%s: %w: quantised with %d bits over ±%v, the rule decodes %d bits over ±%v",
				sourceName(u, k), ErrOption, bits, c, s.q.bits, s.q.c)
		}
		if s.rec != nil {
			v, ok := u.Metadata[SecAggClientKey]
			id, err := strconv.Atoi(v)
			if !ok || err != nil {
				return nil, nil, fmt.Errorf("%s: %w: no client ID (%s) to unmask it with", sourceName(u, k), ErrOption, SecAggClientKey)
			}
			if prev, dup := seen[id]; dup {
				return nil, nil, fmt.Errorf("%s: %w: client %d sent twice (also %s)", sourceName(u, k), ErrOption, id, sourceName(updates[prev], prev))
			}
			seen[id], ids[k] = k, id
		}
	}
	var terms []maskTerm
	var dropped []int
	if s.rec != nil {
		if terms, dropped, err = s.rec.removal(ids); err != nil {
			return nil, nil, err
		}
	}

	// One device job: the modular sum of each chunk lands in the output tensors' memory (u32
	// and f32 are both 4 bytes) and, while it is in cache, is unmasked and decoded in place.
	summer, err := modSummerOf(cfg.dev)
	if err != nil {
		return nil, nil, err
	}
	fields := make([]device.AccField, len(ref))
	offsets := make([]int64, len(ref))
	var size int64
	for t, f := range ref {
		fields[t] = device.AccField{Name: f.Name, Len: f.Len(), Acc: tensor.U32, Out: tensor.U32}
		offsets[t] = size
		size += 4 * int64(f.Len())
	}
	chunks, err := device.CutChunks(fields, offsets, cfg.chunkBytes)
	if err != nil {
		return nil, nil, err
	}
	arena := tensor.AlignedBytes(int(size))
	out := &tensor.Set{Metadata: map[string]string{"wattagg.rule": "secagg", "wattagg.clients": strconv.Itoa(n)}}
	dst := make([][]byte, len(ref))
	for t, f := range ref {
		dst[t] = arena[offsets[t] : offsets[t]+4*int64(f.Len())]
		tt, err := tensor.FromBytes(f.Name, tensor.F32, f.Shape, dst[t])
		if err != nil {
			return nil, nil, err
		}
		if err := out.Add(tt); err != nil {
			return nil, nil, err
		}
	}
	// Where each tensor starts in the mask order (tensors by name).
	order := make([]int, len(ref))
	for t := range order {
		order[t] = t
	}
	slices.SortFunc(order, func(a, b int) int { return strings.Compare(ref[a].Name, ref[b].Name) })
	maskOff := make([]int, len(ref))
	k := 0
	for _, t := range order {
		maskOff[t] = k
		k += ref[t].Len()
	}
	scratch := sync.Pool{New: func() any { return new([2][]uint32) }}
	decode := func(c int) {
		sc := scratch.Get().(*[2][]uint32)
		defer scratch.Put(sc)
		for _, pc := range chunks[c].Pieces {
			b := dst[pc.Field][4*pc.Lo : 4*pc.Hi]
			sum := u32View(b)
			if len(terms) > 0 {
				if cap(sc[0]) < len(sum) {
					sc[0], sc[1] = make([]uint32, len(sum)), make([]uint32, len(sum))
				}
				addMasks(sum, maskOff[pc.Field]+pc.Lo, terms, sc[0], sc[1])
			}
			s.q.Dequantize(f32View(b), sum, n)
		}
	}
	stats, err := summer.ModSum(ctx, fields, inputs, chunks, &secaggOutput{dst: dst, chunks: chunks, done: decode})
	if err != nil {
		return nil, nil, err
	}
	rep := &Report{Rule: "secagg", Clients: n, Tensors: len(ref), Params: ref.NumParams(), InDTypes: []string{"u32"},
		AccDType: "u32", OutDType: "f32", TotalWeight: float64(n), WeightsFrom: WeightsUniform,
		BytesRead: bytesIn, BytesWritten: out.NumBytes()}
	rep.Weights = make([]float64, n)
	rep.PerClient = make([]ClientDiag, n)
	for k := range rep.Weights {
		rep.Weights[k] = 1 / float64(n)
		rep.PerClient[k] = ClientDiag{Source: sourceName(updates[k], k), Weight: rep.Weights[k]}
	}
	rep.Details = map[string]float64{"bits": float64(s.q.bits), "range": s.q.c, "dropped": float64(len(dropped)),
		"masks_removed": float64(len(terms))}
	rep.finish(time.Since(start).Seconds(), []device.Stats{stats})
	return out, rep, nil
}

// secaggOutput receives the mod-sum chunks in the output tensors' memory and decodes each
// finished chunk.
type secaggOutput struct {
	dst    [][]byte
	chunks []device.Chunk
	done   func(c int)
}

func (o *secaggOutput) Dest(c, p int) ([]byte, error) {
	pc := o.chunks[c].Pieces[p]
	return o.dst[pc.Field][4*pc.Lo : 4*pc.Hi], nil
}

func (o *secaggOutput) Done(c int) error { o.done(c); return nil }

// modSummerOf is the device's modular sum, or the host CPU's for a device without one.
func modSummerOf(dev device.Device) (device.ModSummer, error) {
	if m, ok := dev.(device.ModSummer); ok {
		return m, nil
	}
	cpu, err := defaultCPU()
	if err != nil {
		return nil, err
	}
	return cpu.(device.ModSummer), nil
}
