package aggregate_test

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// The pin test fixes every rule's output bits on small inputs, so that restructuring the
// aggregation code cannot change a result unnoticed. testdata/pin.golden.json was written by
// the code before the round engine existed (go test -run TestPinned -update-pins).

var updatePins = flag.Bool("update-pins", false, "rewrite testdata/pin.golden.json")

// pinCase is one rule run: it returns the outputs to fingerprint (one per round for stateful
// rules) and the reports.
type pinCase struct {
	name string
	run  func(t *testing.T, m pinMode) ([]*tensor.Set, []*aggregate.Report)
}

// pinMode is how a pinned case runs its rounds: every mode must give the pinned bits.
type pinMode int

const (
	modeBatch       pinMode = iota // aggregate.Aggregate
	modeFile                       // aggregate.AggregateFile, read back
	modeRound                      // a Round fed one update at a time (WithExpected), Result
	modeRoundFile                  // the same, WriteFile, read back
	modeRoundGroups                // a Round fed groups of 3 updates (AddGroup), Result
)

var pinModes = map[pinMode]string{modeBatch: "batch", modeFile: "file", modeRound: "round", modeRoundFile: "round-file",
	modeRoundGroups: "round-groups"}

// runMode runs one round of rule over updates in mode m.
func runMode(t *testing.T, m pinMode, rule aggregate.Rule, updates []*tensor.Set, weights []float64, opts ...aggregate.Option) (*tensor.Set, *aggregate.Report) {
	t.Helper()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "out.safetensors")
	var set *tensor.Set
	var rep *aggregate.Report
	var err error
	switch m {
	case modeBatch:
		set, rep, err = aggregate.Aggregate(ctx, rule, updates, weights, opts...)
	case modeFile:
		rep, err = aggregate.AggregateFile(ctx, rule, path, updates, weights, opts...)
	default:
		set, rep, err = incremental(ctx, rule, m == modeRoundFile, m == modeRoundGroups, path, updates, weights, opts)
	}
	if err != nil {
		t.Fatal(err)
	}
	if set == nil {
		if set, err = safetensors.Open(path); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { set.Close() })
	}
	return set, rep
}

// incremental feeds updates one at a time (or in groups of 3) to a Round told what to expect.
func incremental(ctx context.Context, rule aggregate.Rule, file, groups bool, path string, updates []*tensor.Set, weights []float64, opts []aggregate.Option) (*tensor.Set, *aggregate.Report, error) {
	exp := aggregate.Expected{Weights: weights}
	for _, u := range updates {
		exp.Layouts = append(exp.Layouts, u.Layout())
	}
	if weights == nil {
		w, _, err := aggregate.ResolveWeights(updates, nil)
		if err != nil {
			return nil, nil, err
		}
		exp.Weights = w
	}
	r, err := aggregate.NewRound(ctx, rule, append(opts, aggregate.WithExpected(exp))...)
	if err != nil {
		return nil, nil, err
	}
	defer r.Close()
	for k, u := range updates {
		switch {
		case groups && k%3 != 0:
			continue
		case groups && weights != nil:
			err = r.AddGroup(ctx, updates[k:min(k+3, len(updates))], weights[k:min(k+3, len(updates))])
		case groups:
			err = r.AddGroup(ctx, updates[k:min(k+3, len(updates))], nil)
		case weights != nil:
			err = r.Add(ctx, u, weights[k])
		default:
			err = r.AddByExamples(ctx, u)
		}
		if err != nil {
			return nil, nil, err
		}
	}
	if file {
		rep, err := r.WriteFile(ctx, path)
		return nil, rep, err
	}
	return r.Result(ctx)
}

// pinRNG is the generator of every pinned input: its sequence never changes.
func pinRNG(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 0x5eed)) }

// pinLayout is the tensors of a pinned update: an odd-sized matrix spread over several 4 KiB
// chunks, a vector and a small 3-d tensor.
var pinLayout = []struct {
	name  string
	shape []int
}{{"a", []int{61, 53}}, {"b", []int{13}}, {"c", []int{2, 3, 4}}}

// pinSet makes one update of dtype dt with values base[i] + spread·N(0,1) (base nil: 0).
func pinSet(t *testing.T, r *rand.Rand, dt tensor.DType, base *tensor.Set, spread float64, source string) *tensor.Set {
	t.Helper()
	s := &tensor.Set{Source: source, Metadata: map[string]string{}}
	for i, l := range pinLayout {
		tt, err := tensor.New(l.name, dt, l.shape...)
		if err != nil {
			t.Fatal(err)
		}
		b := tt.Bytes()
		n := tt.Len()
		var bv []float64
		if base != nil {
			bv = base.At(i).Float64s()
		}
		vals := make([]float64, n)
		for j := range vals {
			vals[j] = spread * r.NormFloat64()
			if bv != nil {
				vals[j] += bv[j]
			}
		}
		switch dt {
		case tensor.F32:
			for j, v := range vals {
				binary.LittleEndian.PutUint32(b[4*j:], math.Float32bits(float32(v)))
			}
		case tensor.F64:
			for j, v := range vals {
				binary.LittleEndian.PutUint64(b[8*j:], math.Float64bits(v))
			}
		case tensor.BF16:
			for j, v := range vals {
				binary.LittleEndian.PutUint16(b[2*j:], tensor.F32ToBF16(float32(v)))
			}
		case tensor.F16:
			for j, v := range vals {
				binary.LittleEndian.PutUint16(b[2*j:], tensor.F32ToF16(float32(v)))
			}
		case tensor.I8:
			tt.Scale = float32(spread / 40)
			for j, v := range vals {
				b[j] = byte(int8(max(-127, min(127, math.Round(v/float64(tt.Scale))))))
			}
		}
		if err := s.Add(tt); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// pinClients makes n updates; dts cycles through the dtypes given.
func pinClients(t *testing.T, seed uint64, n int, dts []tensor.DType, base *tensor.Set, spread float64) []*tensor.Set {
	r := pinRNG(seed)
	out := make([]*tensor.Set, n)
	for k := range out {
		out[k] = pinSet(t, r, dts[k%len(dts)], base, spread, fmt.Sprintf("client%02d", k))
	}
	return out
}

// fingerprint hashes what a round produced, in two parts: the outputs (every output tensor's
// name, dtype, shape, scale and bytes, in order, and the output metadata) and the diagnostics
// (the report's weights, details and per-client figures). Kept apart, a change of the last
// digits of Krum's scores is told from a change of the model.
func fingerprint(t *testing.T, sets []*tensor.Set, reps []*aggregate.Report) pin {
	t.Helper()
	h := sha256.New()
	for _, s := range sets {
		for _, tt := range s.Tensors() {
			fmt.Fprintf(h, "%s|%s|%v|%v|", tt.Name, tt.DType, tt.Shape, tt.Scale)
			h.Write(tt.Bytes())
		}
		for _, k := range slices.Sorted(maps.Keys(s.Metadata)) {
			fmt.Fprintf(h, "%s=%s;", k, s.Metadata[k])
		}
	}
	d := sha256.New()
	for _, r := range reps {
		b, err := json.Marshal(struct {
			W []float64
			D map[string]float64
			P []aggregate.ClientDiag
		}{r.Weights, r.Details, r.PerClient})
		if err != nil {
			t.Fatal(err)
		}
		d.Write(b)
	}
	return pin{Outputs: hex.EncodeToString(h.Sum(nil)), Report: hex.EncodeToString(d.Sum(nil))}
}

// pin is a case's fingerprint as the golden file stores it.
type pin struct {
	Outputs string `json:"outputs"`
	Report  string `json:"report"`
}

func TestPinned(t *testing.T) {
	path := filepath.Join("testdata", "pin.golden.json")
	want := map[string]pin{}
	if !*updatePins {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, &want); err != nil {
			t.Fatal(err)
		}
	}
	got := map[string]pin{}
	for _, c := range pinCases() {
		for _, m := range []pinMode{modeBatch, modeFile, modeRound, modeRoundFile, modeRoundGroups} {
			t.Run(c.name+"/"+pinModes[m], func(t *testing.T) {
				sets, reps := c.run(t, m)
				fp := fingerprint(t, sets, reps)
				if m == modeBatch {
					got[c.name] = fp
				}
				switch w := want[c.name]; {
				case *updatePins:
				case w.Outputs != fp.Outputs:
					t.Errorf("output tensors changed: fingerprint %s, pinned %s", fp.Outputs, w.Outputs)
				case w.Report != fp.Report:
					t.Errorf("report's weights, details or per-client figures changed (the outputs are the same bits): fingerprint %s, pinned %s", fp.Report, w.Report)
				}
			})
		}
	}
	if *updatePins {
		b, err := json.MarshalIndent(got, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
