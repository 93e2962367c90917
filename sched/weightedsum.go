package sched

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
)

// WeightedSum is the op class of FedAvg: out = Σ_i w_i·x_i, element by element.
const WeightedSum = "weighted-sum"

func weightedSumClass() OpClass {
	return OpClass{
		Name: WeightedSum,
		Doc:  "FedAvg's weighted sum: every input read once, the output written once (memory-bound)",
		Counts: func(w Workload) Counts {
			n := float64(max(w.Clients, 1))
			io := n*float64(w.In.Size()) + float64(w.Out.Size())
			// A multiply and an add per input and element.
			return Counts{FLOPs: 2 * n, Bytes: io, Transfer: io}
		},
		Prepare: prepareWeightedSum,
		DTypes:  []tensor.DType{tensor.F32, tensor.BF16},
		Clients: 16,
	}
}

// calibrationChunkBytes is the chunk of calibration jobs: aggregate's default.
const calibrationChunkBytes = 256 << 10

func prepareWeightedSum(dev device.Device, w Workload) (Runner, error) {
	if w.Clients < 1 || w.Elements < 1 || !w.In.Real() || !w.Out.Real() || w.Out == tensor.I8 {
		return nil, fmt.Errorf("%w: weighted sum of %d x %d %s -> %s", ErrOption, w.Clients, w.Elements, w.In, w.Out)
	}
	acc := tensor.F64
	if w.In == tensor.F32 && w.Out != tensor.F64 {
		acc = tensor.F32
	}
	n := int(w.Elements)
	fields := []device.AccField{{Name: "calibration", Len: n, Acc: acc, Out: w.Out}}
	chunks, err := device.CutChunks(fields, []int64{0}, calibrationChunkBytes)
	if err != nil {
		return nil, err
	}
	job := &device.SumJob{
		Fields:  fields,
		Inputs:  make([][]device.Span, w.Clients),
		Weights: make([]float64, w.Clients),
		Chunks:  chunks,
	}
	var total float64
	for k := range w.Clients {
		sp, err := syntheticSpan(w.In, n, k)
		if err != nil {
			return nil, err
		}
		job.Inputs[k] = []device.Span{sp}
		job.Weights[k] = float64(1 + k%7)
		total += job.Weights[k]
	}
	job.Scale = 1 / total
	out := tensor.AlignedBytes(n * w.Out.Size())
	clear(out) // touch the pages now, not during a measured run
	job.Output = &bufferOutput{buf: out, fields: fields, chunks: chunks}
	return &sumRunner{dev: dev, job: job}, nil
}

type sumRunner struct {
	dev device.Device
	job *device.SumJob
}

func (r *sumRunner) Run(ctx context.Context) (device.Stats, error) {
	return r.dev.WeightedSum(ctx, r.job)
}
func (r *sumRunner) Close() error { r.job = nil; return nil }

// bufferOutput writes a single-field job into one buffer.
type bufferOutput struct {
	buf    []byte
	fields []device.AccField
	chunks []device.Chunk
}

func (o *bufferOutput) Dest(c, p int) ([]byte, error) {
	pc := o.chunks[c].Pieces[p]
	es := o.fields[pc.Field].Out.Size()
	return o.buf[pc.Lo*es : pc.Hi*es], nil
}

func (o *bufferOutput) Done(int) error { return nil }

// syntheticSpan returns n finite values of client k in dtype dt, in fresh aligned memory that
// is written (so no page fault is left for the measured runs).
func syntheticSpan(dt tensor.DType, n, k int) (device.Span, error) {
	es := dt.Size()
	b := tensor.AlignedBytes(n * es)
	const pattern = 4096 // elements written one by one; the rest is copied
	m := min(n, pattern)
	for j := range m {
		v := float32(k+1)*1e-3 + float32(j%97)*1e-4
		switch dt {
		case tensor.F32:
			binary.LittleEndian.PutUint32(b[4*j:], math.Float32bits(v))
		case tensor.F64:
			binary.LittleEndian.PutUint64(b[8*j:], math.Float64bits(float64(v)))
		case tensor.BF16:
			binary.LittleEndian.PutUint16(b[2*j:], tensor.F32ToBF16(v))
		case tensor.F16:
			binary.LittleEndian.PutUint16(b[2*j:], tensor.F32ToF16(v))
		case tensor.I8:
			b[j] = byte(int8(j%127 - 63))
		default:
			return device.Span{}, fmt.Errorf("%w: synthetic %s input", ErrOption, dt)
		}
	}
	for off := m * es; off < len(b); {
		off += copy(b[off:], b[:m*es])
	}
	sp := device.Span{DType: dt, Data: b}
	if dt == tensor.I8 {
		sp.Scale = 1.0 / 127
	}
	return sp, nil
}
