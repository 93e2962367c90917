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
	if err := c.mixSupports(job); err != nil {
		return Stats{}, err
	}
	start := time.Now()
	outs, widest := mixOutputs(job.Fields, sums)
	inBytes := mixInputBytes(job)
	var stats chunkStats
	m := mixWork{c: c, job: job, outs: outs, sub: c.mixBlock(inBytes), inBytes: inBytes, stats: &stats}
	err = c.parallelChunks(ctx, len(job.Chunks), func(s *cpuScratch, ci int) error { return m.chunk(ctx, s, ci) }, widest)
	return stats.total(c.Name(), start), err
}

// mixSupports checks that the device can mix every field of job: a mix has no exact
// accumulator.
func (c *CPU) mixSupports(job *MixJob) error {
	for t, f := range job.Fields {
		if f.Acc == tensor.I64 {
			return fmt.Errorf("%w: field %q: a mix has no exact accumulator", ErrUnsupported, f.Name)
		}
		if err := c.supports(t, f, job.Inputs); err != nil {
			return err
		}
	}
	return nil
}

// mixOutput is one output of a mix: the inputs its row weighs and their groups, per field.
type mixOutput struct {
	inputs [][]Span
	groups [][]group // per field
}

// mixOutputs returns each output of a mix of fields from its SumJob (sums, from mixJobs), and
// the most inputs that one output weighs (at least 1).
func mixOutputs(fields []AccField, sums []*SumJob) ([]mixOutput, int) {
	outs := make([]mixOutput, len(sums))
	widest := 1
	for o, sj := range sums {
		// Inputs are read in place even where their files are registered for copying
		// (fileread.go): a block copied from the file would be copied once per output.
		outs[o] = mixOutput{inputs: sj.Inputs, groups: make([][]group, len(fields))}
		for t, f := range fields {
			outs[o].groups[t] = groupInputs(t, f.Acc, sj.Inputs, sj.Weights, 1)
		}
		widest = max(widest, len(sj.Inputs))
	}
	return outs, widest
}

// mixInputBytes is the bytes of all of job's inputs per element, over the fields' widest input
// dtype.
func mixInputBytes(job *MixJob) int64 {
	var inBytes int64
	for _, in := range job.Inputs {
		for t := range job.Fields {
			inBytes = max(inBytes, int64(in[t].DType.Size()))
		}
	}
	return inBytes * int64(len(job.Inputs))
}

// mixBlock is the elements of one block of a mix whose inputs hold inBytes per element:
// mixBlockBytes of them, at least 1024 and at most the device's block.
func (c *CPU) mixBlock(inBytes int64) int {
	return max(1024, min(c.block, mixBlockBytes/max(1, int(inBytes))))
}

// mixWork is what the workers of a mix share. It is passed by value (the closure that
// parallelChunks runs holds it without an allocation of its own); its slices and stats are
// shared.
type mixWork struct {
	c       *CPU
	job     *MixJob
	outs    []mixOutput
	sub     int   // the elements of one block (mixBlock)
	inBytes int64 // mixInputBytes
	stats   *chunkStats
}

// chunk computes chunk ci of every output, piece by piece, and tells the outputs it is done.
func (m mixWork) chunk(ctx context.Context, s *cpuScratch, ci int) error {
	ch := m.job.Chunks[ci]
	var elems int64
	for p, pc := range ch.Pieces {
		if err := m.piece(ctx, s, ci, p); err != nil {
			return err
		}
		elems += int64(pc.Hi - pc.Lo)
	}
	for o := range m.outs {
		if err := m.job.Outputs[o].Done(ci); err != nil {
			return err
		}
	}
	m.stats.add(elems, elems*m.inBytes, ch.Len*len(m.outs))
	return nil
}

// piece computes piece p of chunk ci of every output, block by block: each block of the inputs
// is summed into every output while it is in cache.
func (m mixWork) piece(ctx context.Context, s *cpuScratch, ci, p int) error {
	pc := m.job.Chunks[ci].Pieces[p]
	f := m.job.Fields[pc.Field]
	dsts, err := m.dests(ci, p)
	if err != nil {
		return err
	}
	for lo := pc.Lo; lo < pc.Hi; lo += m.sub {
		b := Piece{Field: pc.Field, Lo: lo, Hi: min(lo+m.sub, pc.Hi)}
		for o, out := range m.outs {
			dst := dsts[o][(b.Lo-pc.Lo)*f.Out.Size() : (b.Hi-pc.Lo)*f.Out.Size()]
			if err := m.c.sumPiece(ctx, s, f, out.groups[pc.Field], out.inputs, nil, b, dst); err != nil {
				return err
			}
		}
	}
	return nil
}

// dests returns every output's destination of piece p of chunk ci.
func (m mixWork) dests(ci, p int) ([][]byte, error) {
	dsts := make([][]byte, len(m.outs))
	for o := range m.outs {
		d, err := m.job.Outputs[o].Dest(ci, p)
		if err != nil {
			return nil, err
		}
		dsts[o] = d
	}
	return dsts, nil
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
