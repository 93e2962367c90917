package device

import (
	"context"
	"sync"
	"sync/atomic"
)

// partBytes bounds the input bytes of one part of a chunk of an order statistic or a weighted
// sum: a chunk whose inputs hold more (many clients: 1000 f32 inputs of a chunk of 256Ki
// elements are 1 GiB) is cut into parts that run on different workers, so that a model of one
// chunk keeps every core busy. The cut depends on the chunk and the inputs only, never on the
// workers, and a chunk of up to 64 MiB of inputs is one part, as before.
var partBytes int64 = 64 << 20

// chunkPart is a part of chunk c: ranges of its pieces.
type chunkPart struct {
	c      int
	pieces []partPiece
}

// partPiece is elements [lo, hi) of piece p of a chunk.
type partPiece struct{ p, lo, hi int }

// inputBytesPerElem is, per field of fields, the bytes all inputs hold per element.
func inputBytesPerElem(fields int, inputs [][]Span) []int64 {
	b := make([]int64, fields)
	for t := range b {
		for _, in := range inputs {
			b[t] += int64(in[t].DType.Size())
		}
	}
	return b
}

// cutParts cuts every chunk into parts of at most partBytes of inputs (inBytesPerElem per
// element of each field), in chunk order, at multiples of align elements from the chunk's start
// (its pieces one after another). A chunk of up to partBytes is one part holding its pieces
// whole.
func cutParts(chunks []Chunk, inBytesPerElem []int64, align int) []chunkPart {
	var parts []chunkPart
	for ci, ch := range chunks {
		var elems int
		var in int64
		for _, pc := range ch.Pieces {
			elems += pc.Hi - pc.Lo
			in += int64(pc.Hi-pc.Lo) * inBytesPerElem[pc.Field]
		}
		aligned := (elems + align - 1) / align
		k := int(min(int64(max(1, aligned)), max(1, (in+partBytes-1)/partBytes)))
		for j := range k {
			from, to := j*aligned/k*align, min(elems, (j+1)*aligned/k*align)
			part := chunkPart{c: ci}
			base := 0 // the piece's first element in the chunk
			for p, pc := range ch.Pieces {
				if lo, hi := max(from, base), min(to, base+pc.Hi-pc.Lo); lo < hi {
					part.pieces = append(part.pieces, partPiece{p, pc.Lo + lo - base, pc.Lo + hi - base})
				}
				base += pc.Hi - pc.Lo
			}
			parts = append(parts, part)
		}
	}
	return parts
}

// sharedChunk is a chunk's state shared by its parts: its destinations, requested by the part
// that takes the chunk first (Output.Dest: one goroutine per chunk), and the parts left, the
// last of which calls Output.Done.
type sharedChunk struct {
	once  sync.Once
	dests [][]byte
	err   error
	left  atomic.Int64
}

// sharedChunks is the state of the n chunks that parts cut.
func sharedChunks(n int, parts []chunkPart) []sharedChunk {
	chunks := make([]sharedChunk, n)
	for _, pt := range parts {
		chunks[pt.c].left.Add(1)
	}
	return chunks
}

func (st *sharedChunk) destinations(out Output, ci int, ch Chunk) ([][]byte, error) {
	st.once.Do(func() {
		st.dests = make([][]byte, len(ch.Pieces))
		for p := range ch.Pieces {
			if st.dests[p], st.err = out.Dest(ci, p); st.err != nil {
				return
			}
		}
	})
	return st.dests, st.err
}

// finish counts a part of the chunk done and, if it was the last, calls out.Done(c).
func (st *sharedChunk) finish(out Output, c int) (last bool, err error) {
	if st.left.Add(-1) != 0 {
		return false, nil
	}
	return true, out.Done(c)
}

// partWork computes part pt (number pi) of chunk ch into the chunk's destinations (dests, by
// piece) and returns the elements and input bytes it covered.
type partWork func(s *cpuScratch, pi int, pt chunkPart, ch Chunk, dests [][]byte) (elems, read int64, err error)

// runParts runs the parts of chunks on the workers (parallelChunks, inputs as there): each
// part's work between its chunk's destinations, requested by the chunk's first part, and
// out.Done, called by its last; each part's input bytes are reported to progress (if not nil)
// and, with its elements, added to stats.
func (c *CPU) runParts(ctx context.Context, chunks []Chunk, parts []chunkPart, out Output, progress func(int64), inputs int, stats *chunkStats, work partWork) error {
	shared := sharedChunks(len(chunks), parts)
	return c.parallelChunks(ctx, len(parts), func(s *cpuScratch, pi int) error {
		pt := parts[pi]
		ch, st := chunks[pt.c], &shared[pt.c]
		dests, err := st.destinations(out, pt.c, ch)
		if err != nil {
			return err
		}
		elems, read, err := work(s, pi, pt, ch, dests)
		if err != nil {
			return err
		}
		last, err := st.finish(out, pt.c)
		if err != nil {
			return err
		}
		if progress != nil {
			progress(read)
		}
		stats.addPart(elems, read, ch.Len, last)
		return ctx.Err()
	}, inputs)
}
