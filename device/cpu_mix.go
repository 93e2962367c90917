package device

import (
	"context"
	"fmt"
	"time"

	"github.com/wattagg/wattagg/tensor"
)

// MixJob asks for n weighted means of the same inputs: Outputs[o] = Σ_i Weights[o][i]·Inputs[i]
// over the inputs with a nonzero weight, in input order, converted to each field's output
// dtype, chunk by chunk (nearest-neighbour mixing's n mixed updates).
type MixJob struct {
	Fields  []AccField
	Inputs  [][]Span
	Weights [][]float64 // one row per output, one column per input
	Chunks  []Chunk     // the outputs' chunks (each output is laid out alike)
	Outputs []Output
}

// Mixer is a device that computes a MixJob reading each input from memory once: output o gets
// the bits of a WeightedSum (Scale 1) over the inputs its row weighs, every block of every input
// being read while it is in cache for all outputs, where n WeightedSum jobs read every input
// once per output that uses it.
type Mixer interface {
	Mix(ctx context.Context, job *MixJob) (Stats, error)
}

// mixBlockBytes is how many bytes of input one block of a mix holds, all inputs together: half
// an L2 of these CPUs, so that the block stays cached while every output is summed from it.
const mixBlockBytes = 512 << 10

// Mix implements Mixer.
func (c *CPU) Mix(ctx context.Context, job *MixJob) (Stats, error) {
	sums, err := mixJobs(job)
	if err != nil {
		return Stats{}, err
	}
	for t, f := range job.Fields {
		if f.Acc == tensor.I64 {
			return Stats{}, fmt.Errorf("%w: field %q: a mix has no exact accumulator", ErrUnsupported, f.Name)
		}
		if err := c.supports(t, f, job.Inputs); err != nil {
			return Stats{}, err
		}
	}
	start := time.Now()
	type output struct {
		inputs [][]Span
		groups [][]group // per field
	}
	outs := make([]output, len(sums))
	widest := 1
	for o, sj := range sums {
		// Inputs are read in place even where their files are registered for copying
		// (fileread.go): a block copied from the file would be copied once per output.
		outs[o] = output{inputs: sj.Inputs, groups: make([][]group, len(job.Fields))}
		for t, f := range job.Fields {
			outs[o].groups[t] = groupInputs(t, f.Acc, sj.Inputs, sj.Weights, 1)
		}
		widest = max(widest, len(sj.Inputs))
	}
	var inBytes int64 // of all inputs, per element, over the fields' widest input dtype
	for _, in := range job.Inputs {
		for t := range job.Fields {
			inBytes = max(inBytes, int64(in[t].DType.Size()))
		}
	}
	inBytes *= int64(len(job.Inputs))
	sub := max(1024, min(c.block, mixBlockBytes/max(1, int(inBytes))))
	var stats chunkStats
	err = c.parallelChunks(ctx, len(job.Chunks), func(s *cpuScratch, ci int) error {
		ch := job.Chunks[ci]
		var elems int64
		for p, pc := range ch.Pieces {
			f := job.Fields[pc.Field]
			dsts := make([][]byte, len(outs))
			for o := range outs {
				d, err := job.Outputs[o].Dest(ci, p)
				if err != nil {
					return err
				}
				dsts[o] = d
			}
			for lo := pc.Lo; lo < pc.Hi; lo += sub {
				b := Piece{Field: pc.Field, Lo: lo, Hi: min(lo+sub, pc.Hi)}
				for o, out := range outs {
					dst := dsts[o][(b.Lo-pc.Lo)*f.Out.Size() : (b.Hi-pc.Lo)*f.Out.Size()]
					if err := c.sumPiece(ctx, s, f, out.groups[pc.Field], out.inputs, nil, b, dst); err != nil {
						return err
					}
				}
			}
			elems += int64(pc.Hi - pc.Lo)
		}
		for o := range outs {
			if err := job.Outputs[o].Done(ci); err != nil {
				return err
			}
		}
		stats.add(elems, elems*inBytes, ch.Len*len(outs))
		return nil
	}, widest)
	return stats.total(c.Name(), start), err
}

// mixJobs checks a MixJob and returns each output's SumJob: the inputs its row weighs, in
// input order.
func mixJobs(job *MixJob) ([]*SumJob, error) {
	if len(job.Weights) != len(job.Outputs) {
		return nil, fmt.Errorf("%w: %d weight rows for %d outputs", ErrJob, len(job.Weights), len(job.Outputs))
	}
	if err := (&SumJob{Fields: job.Fields, Inputs: job.Inputs, Weights: make([]float64, len(job.Inputs)), Chunks: job.Chunks}).Validate(); err != nil {
		return nil, err
	}
	sums := make([]*SumJob, len(job.Outputs))
	for o, row := range job.Weights {
		if len(row) != len(job.Inputs) {
			return nil, fmt.Errorf("%w: output %d: %d weights for %d inputs", ErrJob, o, len(row), len(job.Inputs))
		}
		sj := &SumJob{Fields: job.Fields, Scale: 1, Chunks: job.Chunks, Output: job.Outputs[o]}
		for i, w := range row {
			if w != 0 {
				sj.Inputs, sj.Weights = append(sj.Inputs, job.Inputs[i]), append(sj.Weights, w)
			}
		}
		if len(sj.Inputs) == 0 {
			return nil, fmt.Errorf("%w: output %d weighs no input", ErrJob, o)
		}
		sums[o] = sj
	}
	return sums, nil
}
