package aggregate_test

import (
	"context"
	"encoding/binary"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
)

// piece is a run of elements of one tensor of an update, as a server receives it.
type piece struct{ j, off, n int }

// arrivalPieces cuts an update into pieces of 1–300 elements; each tensor's pieces stay in order,
// the tensors' pieces are interleaved at random.
func arrivalPieces(r *rand.Rand, u *tensor.Set) []piece {
	var per [][]piece
	for j := range u.Len() {
		var ps []piece
		for off := 0; off < u.At(j).Len(); {
			n := min(1+r.IntN(300), u.At(j).Len()-off)
			ps = append(ps, piece{j, off, n})
			off += n
		}
		per = append(per, ps)
	}
	var out []piece
	for {
		var left []int
		for j, ps := range per {
			if len(ps) > 0 {
				left = append(left, j)
			}
		}
		if len(left) == 0 {
			return out
		}
		j := left[r.IntN(len(left))]
		out = append(out, per[j][0])
		per[j] = per[j][1:]
	}
}

// bytesOf is the bytes of elements [off, off+n) of tensor j of u.
func bytesOf(u *tensor.Set, j, off, n int) []byte {
	t := u.At(j)
	es := t.DType.Size()
	return t.Bytes()[off*es : (off+n)*es]
}

func scalesOf(u *tensor.Set) []float32 {
	s := make([]float32, u.Len())
	for j := range s {
		s[j] = u.At(j).Scale
		if s[j] == 0 {
			s[j] = 1
		}
	}
	return s
}

// arrive adds every piece of u to a (in the order of ps) and reports the first error.
func arrive(ctx context.Context, a *aggregate.Arrival, u *tensor.Set, ps []piece) error {
	for _, p := range ps {
		if err := a.Add(ctx, p.j, p.off, bytesOf(u, p.j, p.off, p.n)); err != nil {
			return err
		}
	}
	return nil
}

func readBack(u *tensor.Set) func(j, off int, dst []byte) error {
	return func(j, off int, dst []byte) error {
		copy(dst, bytesOf(u, j, off, len(dst)/u.At(j).DType.Size()))
		return nil
	}
}

func exactRound(t *testing.T, opts ...aggregate.Option) *aggregate.Round {
	t.Helper()
	opts = append([]aggregate.Option{aggregate.WithExactSum(aggregate.ExactSum{}), aggregate.WithMixedDTypes(true)}, opts...)
	r, err := aggregate.NewRound(context.Background(), aggregate.NewFedAvg(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// TestArrivalMatchesAdd: updates of every exact dtype arriving at once in random pieces, on
// concurrent goroutines, give the bits of the same updates added whole, and FedAvg's float64
// reference within f32 rounding.
func TestArrivalMatchesAdd(t *testing.T) {
	ctx := context.Background()
	dts := []tensor.DType{tensor.F32, tensor.BF16, tensor.F16, tensor.I8}
	ups := exactUpdates(t, 41, 9, dts, nil, 3)
	ws := exactWeights(rand.New(rand.NewPCG(5, 6)), len(ups), false)

	whole := exactRound(t)
	for k, u := range ups {
		if err := whole.Add(ctx, u, ws[k]); err != nil {
			t.Fatal(err)
		}
	}
	want, _, err := whole.Result(ctx)
	if err != nil {
		t.Fatal(err)
	}

	r := exactRound(t)
	if !r.TakesArrivals() {
		t.Fatal("an incremental exact FedAvg round does not take arrivals")
	}
	arrs := make([]*aggregate.Arrival, len(ups))
	for k, u := range ups {
		if arrs[k], err = r.BeginArrival(ctx, u.Source, u.Layout(), u.Metadata, scalesOf(u), ws[k], aggregate.WeightsGiven); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, len(ups))
	for k, u := range ups {
		wg.Go(func() {
			errs[k] = arrive(ctx, arrs[k], u, arrivalPieces(rand.New(rand.NewPCG(uint64(k), 9)), u))
		})
	}
	wg.Wait()
	for k := range ups {
		if errs[k] != nil {
			t.Fatal(errs[k])
		}
		if err := arrs[k].Commit(); err != nil {
			t.Fatal(err)
		}
	}
	if n := r.Arriving(); n != 0 {
		t.Fatalf("%d arrivals after every commit", n)
	}
	got, rep, err := r.Result(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sameBits(t, "arrivals against Add", want, got)
	if rep.Clients != len(ups) {
		t.Fatalf("report counts %d clients, want %d", rep.Clients, len(ups))
	}
	// FedAvg, plainly in float64.
	for i := range got.Len() {
		g := got.At(i).Float64s()
		for e := range g {
			var num, den float64
			for k, u := range ups {
				num += ws[k] * u.At(i).Float64s()[e]
				den += ws[k]
			}
			ref := num / den
			if math.Abs(g[e]-ref) > 1e-6*math.Max(1, math.Abs(ref)) {
				t.Fatalf("tensor %q element %d: %v, float64 reference %v", got.At(i).Name, e, g[e], ref)
			}
		}
	}
}

// TestArrivalCancelRestoresBits: an update cancelled after part of it was added leaves the sum
// with the bits of a round that never saw it, while others arrive around it.
func TestArrivalCancelRestoresBits(t *testing.T) {
	ctx := context.Background()
	ups := exactUpdates(t, 7, 3, []tensor.DType{tensor.F32, tensor.I8}, nil, 2)
	ws := []float64{3, 5, 7}

	want := func() *tensor.Set {
		r := exactRound(t)
		for _, k := range []int{0, 2} {
			if err := r.Add(ctx, ups[k], ws[k]); err != nil {
				t.Fatal(err)
			}
		}
		s, _, err := r.Result(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}()

	r := exactRound(t)
	rng := rand.New(rand.NewPCG(1, 2))
	var arrs []*aggregate.Arrival
	for k, u := range ups {
		a, err := r.BeginArrival(ctx, u.Source, u.Layout(), u.Metadata, scalesOf(u), ws[k], aggregate.WeightsGiven)
		if err != nil {
			t.Fatal(err)
		}
		arrs = append(arrs, a)
	}
	ps := arrivalPieces(rng, ups[1])
	if err := arrive(ctx, arrs[1], ups[1], ps[:len(ps)/2]); err != nil {
		t.Fatal(err)
	}
	for _, k := range []int{0, 2} {
		if err := arrive(ctx, arrs[k], ups[k], arrivalPieces(rng, ups[k])); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := r.Result(ctx); !errors.Is(err, aggregate.ErrOption) {
		t.Fatalf("closing with pieces of uncommitted updates in the sum: %v, want ErrOption", err)
	}
	r = exactRound(t) // Result refused above leaves that round closing: start over, same steps
	arrs = arrs[:0]
	for k, u := range ups {
		a, err := r.BeginArrival(ctx, u.Source, u.Layout(), u.Metadata, scalesOf(u), ws[k], aggregate.WeightsGiven)
		if err != nil {
			t.Fatal(err)
		}
		arrs = append(arrs, a)
	}
	if err := arrive(ctx, arrs[1], ups[1], ps[:len(ps)/2]); err != nil {
		t.Fatal(err)
	}
	for _, k := range []int{0, 2} {
		if err := arrive(ctx, arrs[k], ups[k], arrivalPieces(rng, ups[k])); err != nil {
			t.Fatal(err)
		}
	}
	if err := arrs[0].Commit(); err != nil {
		t.Fatal(err)
	}
	if err := arrs[1].Cancel(ctx, readBack(ups[1])); err != nil {
		t.Fatal(err)
	}
	if err := arrs[2].Commit(); err != nil {
		t.Fatal(err)
	}
	if err := arrs[1].Commit(); !errors.Is(err, aggregate.ErrOption) {
		t.Fatalf("commit after cancel: %v, want ErrOption", err)
	}
	got, _, err := r.Result(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sameBits(t, "after a cancelled arrival", want, got)
}

// TestArrivalRefusals: each misuse and bad piece gets its error, and a refused piece adds nothing.
func TestArrivalRefusals(t *testing.T) {
	ctx := context.Background()
	ups := exactUpdates(t, 3, 2, []tensor.DType{tensor.F32}, nil, 1)
	u := ups[0]
	begin := func(r *aggregate.Round, u *tensor.Set) *aggregate.Arrival {
		t.Helper()
		a, err := r.BeginArrival(ctx, u.Source, u.Layout(), u.Metadata, nil, 2, aggregate.WeightsGiven)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}

	t.Run("float sum", func(t *testing.T) {
		r, err := aggregate.NewRound(ctx, aggregate.NewFedAvg())
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		if r.TakesArrivals() {
			t.Fatal("a float sum says it takes arrivals")
		}
		if _, err := r.BeginArrival(ctx, u.Source, u.Layout(), nil, nil, 1, aggregate.WeightsGiven); !errors.Is(err, aggregate.ErrOption) {
			t.Fatalf("got %v, want ErrOption", err)
		}
	})
	t.Run("bad weight", func(t *testing.T) {
		r := exactRound(t)
		if _, err := r.BeginArrival(ctx, u.Source, u.Layout(), nil, nil, -1, aggregate.WeightsGiven); !errors.Is(err, aggregate.ErrWeight) {
			t.Fatalf("got %v, want ErrWeight", err)
		}
	})
	t.Run("duplicate arriving", func(t *testing.T) {
		r := exactRound(t)
		begin(r, u)
		if _, err := r.BeginArrival(ctx, u.Source, u.Layout(), nil, nil, 1, aggregate.WeightsGiven); !errors.Is(err, aggregate.ErrDuplicate) {
			t.Fatalf("got %v, want ErrDuplicate", err)
		}
	})
	t.Run("layout", func(t *testing.T) {
		r := exactRound(t)
		a := begin(r, u)
		if err := arrive(ctx, a, u, arrivalPieces(rand.New(rand.NewPCG(1, 1)), u)); err != nil {
			t.Fatal(err)
		}
		if err := a.Commit(); err != nil {
			t.Fatal(err)
		}
		l := u.Layout()
		l[0].Shape = []int{1, 2}
		if _, err := r.BeginArrival(ctx, "other", l, nil, nil, 1, aggregate.WeightsGiven); !errors.Is(err, tensor.ErrLayoutMismatch) {
			t.Fatalf("got %v, want ErrLayoutMismatch", err)
		}
		if _, err := r.BeginArrival(ctx, u.Source, u.Layout(), nil, nil, 1, aggregate.WeightsGiven); !errors.Is(err, aggregate.ErrDuplicate) {
			t.Fatalf("an update from a committed source: %v, want ErrDuplicate", err)
		}
	})
	t.Run("pieces out of order", func(t *testing.T) {
		r := exactRound(t)
		a := begin(r, u)
		if err := a.Add(ctx, 0, 5, bytesOf(u, 0, 5, 3)); !errors.Is(err, aggregate.ErrOption) {
			t.Fatalf("a piece at element 5 first: %v, want ErrOption", err)
		}
		if err := a.Add(ctx, 7, 0, bytesOf(u, 0, 0, 3)); !errors.Is(err, aggregate.ErrOption) {
			t.Fatalf("tensor 7 of 3: %v, want ErrOption", err)
		}
		if err := a.Add(ctx, 0, 0, bytesOf(u, 0, 0, 3)[:5]); !errors.Is(err, aggregate.ErrOption) {
			t.Fatalf("5 bytes of f32: %v, want ErrOption", err)
		}
		if err := a.Commit(); !errors.Is(err, aggregate.ErrOption) {
			t.Fatalf("commit of an incomplete update: %v, want ErrOption", err)
		}
	})
	t.Run("non-finite and beyond the bound", func(t *testing.T) {
		want := func() *tensor.Set {
			r := exactRound(t)
			if err := r.Add(ctx, ups[1], 1); err != nil {
				t.Fatal(err)
			}
			s, _, err := r.Result(ctx)
			if err != nil {
				t.Fatal(err)
			}
			return s
		}()
		for _, c := range []struct {
			v    float32
			want any
		}{{float32(math.NaN()), new(*tensor.NonFiniteError)}, {float32(math.Inf(-1)), new(*tensor.NonFiniteError)}, {1e30, new(*device.RangeError)}} {
			r := exactRound(t)
			good := begin(r, ups[1])
			bad := begin(r, u)
			ps := arrivalPieces(rand.New(rand.NewPCG(2, 2)), u)
			if err := arrive(ctx, bad, u, ps[:2]); err != nil {
				t.Fatal(err)
			}
			p := ps[2]
			data := slices.Clone(bytesOf(u, p.j, p.off, p.n))
			k := p.n / 2
			binary.LittleEndian.PutUint32(data[4*k:], math.Float32bits(c.v))
			err := bad.Add(ctx, p.j, p.off, data)
			if !errors.As(err, c.want) {
				t.Fatalf("%v in a piece: %v, want %T", c.v, err, c.want)
			}
			var ne *tensor.NonFiniteError
			var re *device.RangeError
			switch {
			case errors.As(err, &ne) && (ne.Index != p.off+k || ne.Source != u.Source):
				t.Fatalf("%v: names element %d of %q, want %d of %q", err, ne.Index, ne.Source, p.off+k, u.Source)
			case errors.As(err, &re) && (re.Index != p.off+k || re.Source != u.Source):
				t.Fatalf("%v: names element %d of %q, want %d of %q", err, re.Index, re.Source, p.off+k, u.Source)
			}
			if err := arrive(ctx, good, ups[1], arrivalPieces(rand.New(rand.NewPCG(3, 3)), ups[1])); err != nil {
				t.Fatal(err)
			}
			if err := bad.Cancel(ctx, readBack(u)); err != nil {
				t.Fatal(err)
			}
			if err := good.Commit(); err != nil {
				t.Fatal(err)
			}
			got, _, err := r.Result(ctx)
			if err != nil {
				t.Fatal(err)
			}
			sameBits(t, "after a refused piece", want, got)
		}
	})
	t.Run("read-back fails", func(t *testing.T) {
		r := exactRound(t)
		a := begin(r, u)
		if err := arrive(ctx, a, u, arrivalPieces(rand.New(rand.NewPCG(4, 4)), u)[:3]); err != nil {
			t.Fatal(err)
		}
		lost := errors.New("spool lost")
		err := a.Cancel(ctx, func(int, int, []byte) error { return lost })
		if !errors.Is(err, aggregate.ErrClosed) || !errors.Is(err, lost) {
			t.Fatalf("got %v, want ErrClosed wrapping the read error", err)
		}
		if err := r.Add(ctx, ups[1], 1); !errors.Is(err, aggregate.ErrClosed) {
			t.Fatalf("an Add to the broken round: %v, want ErrClosed", err)
		}
	})
	t.Run("after close", func(t *testing.T) {
		r := exactRound(t)
		a := begin(r, u)
		r.Close()
		if err := a.Add(ctx, 0, 0, bytesOf(u, 0, 0, 4)); !errors.Is(err, aggregate.ErrClosed) {
			t.Fatalf("a piece after Close: %v, want ErrClosed", err)
		}
		if _, err := r.BeginArrival(ctx, "x", u.Layout(), nil, nil, 1, aggregate.WeightsGiven); !errors.Is(err, aggregate.ErrClosed) {
			t.Fatalf("BeginArrival after Close: %v, want ErrClosed", err)
		}
	})
}
