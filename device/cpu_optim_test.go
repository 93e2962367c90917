package device

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"unsafe"

	"github.com/wattagg/wattagg/kernels"
	"github.com/wattagg/wattagg/tensor"
)

// stepRef is the element-wise rule of OptimJob's doc comment, written out in f32 for one
// element (the conversions keep Go from fusing multiply-adds).
func stepRef(s *OptimJob, j int) (x, m, v float32) {
	d := s.D[j]
	if s.Rule == OptimFedAvgM {
		m = float32(s.Beta1*s.M[j]) + d
		return s.X[j] + float32(s.LR*m), m, 0
	}
	m = float32(s.Beta1*s.M[j]) + float32((1-s.Beta1)*d)
	d2 := float32(d * d)
	switch s.Rule {
	case OptimFedAdagrad:
		v = s.V[j] + d2
	case OptimFedAdam:
		v = float32(s.Beta2*s.V[j]) + float32((1-s.Beta2)*d2)
	case OptimFedYogi:
		var sg float32
		if diff := s.V[j] - d2; diff > 0 {
			sg = 1
		} else if diff < 0 {
			sg = -1
		}
		v = s.V[j] - float32(float32((1-s.Beta2)*d2)*sg)
	}
	return s.X[j] + float32(s.LR*m)/(float32(math.Sqrt(float64(v)))+s.Tau), m, v
}

func TestCPUOptimize(t *testing.T) {
	c, err := NewCPU(WithWorkers(2), WithBlockElems(64))
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	for _, rule := range []OptimRule{OptimFedAvgM, OptimFedAdagrad, OptimFedAdam, OptimFedYogi} {
		for _, n := range []int{0, 1, 7, 63, 64, 128, 129, 1000, 4099} {
			in := make([][]float32, 4)
			for k := range in {
				in[k] = make([]float32, n)
				for j := range in[k] {
					in[k][j] = float32(r.NormFloat64())
				}
			}
			for j := range in[3] {
				in[3][j] = float32(math.Abs(float64(in[3][j])))
			}
			s := &OptimJob{Rule: rule, OptimParams: kernels.OptimParams{LR: 0.1, Beta1: 0.9, Beta2: 0.99, Tau: 1e-3},
				X: in[0], D: in[1], M: in[2], V: in[3],
				XOut: make([]float32, n), MOut: make([]float32, n), VOut: make([]float32, n)}
			if !rule.SecondMoment() {
				s.V, s.VOut = nil, nil
			}
			st, err := c.Optimize(context.Background(), s)
			if err != nil {
				t.Fatal(err)
			}
			if st.Elements != int64(n) {
				t.Errorf("%s n=%d: stats count %d elements", rule, n, st.Elements)
			}
			for j := range n {
				x, m, v := stepRef(s, j)
				if s.XOut[j] != x || s.MOut[j] != m || (rule.SecondMoment() && s.VOut[j] != v) {
					t.Fatalf("%s n=%d: element %d = (%v %v), want (%v %v %v)", rule, n, j, s.XOut[j], s.MOut[j], x, m, v)
				}
			}
		}
	}
}

func TestCPUOptimizeRejects(t *testing.T) {
	c, err := NewCPU()
	if err != nil {
		t.Fatal(err)
	}
	five := make([]float32, 5)
	for _, s := range []*OptimJob{
		{Rule: 0, X: five, D: five, M: five, XOut: five, MOut: five},
		{Rule: OptimFedAvgM, X: five, D: five[:4], M: five, XOut: five, MOut: five},
		{Rule: OptimFedAdam, X: five, D: five, M: five, XOut: five, MOut: five}, // no V
	} {
		if _, err := c.Optimize(context.Background(), s); !errors.Is(err, ErrJob) {
			t.Errorf("Step(%s): %v, want ErrJob", s.Rule, err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	big := make([]float32, 1<<20)
	s := &OptimJob{Rule: OptimFedAvgM, X: big, D: big, M: big, XOut: big, MOut: big}
	if _, err := c.Optimize(ctx, s); !errors.Is(err, context.Canceled) {
		t.Errorf("Step with a cancelled context: %v", err)
	}
}

// u32Output receives mod-sum pieces into one u32 slice per field.
type u32Output struct {
	dst    [][]uint32
	chunks []Chunk
	done   []bool
}

func (o *u32Output) Dest(c, p int) ([]byte, error) {
	pc := o.chunks[c].Pieces[p]
	v := o.dst[pc.Field][pc.Lo:pc.Hi]
	if len(v) == 0 {
		return []byte{}, nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&v[0])), 4*len(v)), nil
}

func (o *u32Output) Done(c int) error { o.done[c] = true; return nil }

func TestCPUModSum(t *testing.T) {
	c, err := NewCPU(WithWorkers(2), WithBlockElems(64))
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(3, 4))
	for _, lens := range [][]int{{0}, {1}, {63, 64, 65}, {1000, 7}} {
		for _, cnt := range []int{0, 1, 5, 9, 20} {
			fields := make([]AccField, len(lens))
			offsets := make([]int64, len(lens))
			var size int64
			for f, n := range lens {
				fields[f] = AccField{Name: fmt.Sprint("t", f), Len: n, Out: tensor.U32}
				offsets[f] = size
				size += 4 * int64(n)
			}
			chunks, err := CutChunks(fields, offsets, 256) // pieces across fields and blocks
			if err != nil {
				t.Fatal(err)
			}
			want := make([][]uint32, len(lens))
			out := &u32Output{dst: make([][]uint32, len(lens)), chunks: chunks, done: make([]bool, len(chunks))}
			for f, n := range lens {
				want[f] = make([]uint32, n)
				out.dst[f] = make([]uint32, n)
				for j := range out.dst[f] {
					out.dst[f][j] = r.Uint32() // garbage: ModSum starts from 0
				}
			}
			inputs := make([][]Span, cnt)
			for i := range inputs {
				for f, n := range lens {
					b := make([]byte, 4*n+1)[1:] // odd alignment
					for j := range n {
						v := r.Uint32()
						binary.LittleEndian.PutUint32(b[4*j:], v)
						want[f][j] += v
					}
					inputs[i] = append(inputs[i], Span{DType: tensor.U32, Data: b})
				}
			}
			if _, err := c.ModSum(context.Background(), fields, inputs, chunks, out); err != nil {
				t.Fatal(err)
			}
			for f := range lens {
				if !slices.Equal(out.dst[f], want[f]) {
					t.Fatalf("lens %v inputs=%d: field %d: wrong modular sum", lens, cnt, f)
				}
			}
			if slices.Contains(out.done, false) {
				t.Fatal("a chunk was not handed to Done")
			}
		}
	}
	fields := []AccField{{Name: "w", Len: 4, Out: tensor.U32}}
	chunks := must(CutChunks(fields, []int64{0}, 256))(t)
	out := &u32Output{dst: [][]uint32{make([]uint32, 4)}, chunks: chunks, done: make([]bool, 1)}
	for _, in := range []Span{{DType: tensor.U32, Data: make([]byte, 15)}, {DType: tensor.F32, Data: make([]byte, 16)}} {
		if _, err := c.ModSum(context.Background(), fields, [][]Span{{in}}, chunks, out); !errors.Is(err, ErrJob) && !errors.Is(err, ErrUnsupported) {
			t.Errorf("bad input %s of %d bytes: %v", in.DType, len(in.Data), err)
		}
	}
	fields[0].Out = tensor.F32
	if _, err := c.ModSum(context.Background(), fields, nil, chunks, out); !errors.Is(err, ErrUnsupported) {
		t.Errorf("f32 output: %v", err)
	}
}
