package server

import (
	"cmp"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/wattagg/wattagg/internal/durable"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/arrowio"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// A round can own a part of the model: the coordinates [lo, hi) of its flattened coordinate
// space, so that one model can be spread over several servers, each aggregating its part. The
// flattened space is the concatenation of the tensors sorted by name (byte order): every
// client, server and writer agrees on it whatever order a file lists its tensors in. Clients
// push their whole update; the server keeps only its part: each tensor that lies wholly in the
// range as it is, and a tensor the range cuts as a 1-D tensor of the same name holding the
// elements it owns, whose first element's offset in the whole tensor is in the metadata under
// RangeOffsetKeyPrefix + name. The round's model is that part.
const (
	// ModelRangeKey is the metadata of a part: "lo,hi".
	ModelRangeKey = "wattagg.model_range"
	// RangeOffsetKeyPrefix + tensor name: the element offset of a cut tensor's first element.
	RangeOffsetKeyPrefix = "wattagg.range."
)

// rangeSource presents the part [lo, hi) of a source: its header describes the part, and its
// chunks are the parts of the source's chunks that fall in it (the rest is read and dropped).
type rangeSource struct {
	src   Source
	hdr   arrowio.Header
	index []int   // source tensor -> part tensor, or -1
	from  []int64 // source tensor -> first element kept
	to    []int64 // source tensor -> end of the elements kept
}

// newRangeSource describes the part [lo, hi) of src's update. An update with fewer than hi
// coordinates is an error: it is not the model the range was cut from.
func newRangeSource(src Source, lo, hi int64, who string) (*rangeSource, error) {
	in := src.Header()
	order := make([]int, len(in.Layout))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return cmp.Compare(in.Layout[a].Name, in.Layout[b].Name) })
	r := &rangeSource{src: src, index: make([]int, len(in.Layout)), from: make([]int64, len(in.Layout)), to: make([]int64, len(in.Layout))}
	md := make(map[string]string, len(in.Metadata)+2)
	for k, v := range in.Metadata {
		md[k] = v
	}
	md[ModelRangeKey] = fmt.Sprintf("%d,%d", lo, hi)
	var pos int64
	for _, i := range order {
		f := in.Layout[i]
		n := int64(f.Len())
		a, b := max(lo-pos, 0), min(hi-pos, n)
		r.index[i] = -1
		if a < b {
			r.index[i], r.from[i], r.to[i] = len(r.hdr.Layout), a, b
			part := f
			if a != 0 || b != n {
				part = tensor.Field{Name: f.Name, DType: f.DType, Shape: []int{int(b - a)}}
				md[RangeOffsetKeyPrefix+f.Name] = strconv.FormatInt(a, 10)
			}
			r.hdr.Layout = append(r.hdr.Layout, part)
			scale := float32(1)
			if in.Scales != nil {
				scale = in.Scales[i]
			}
			r.hdr.Scales = append(r.hdr.Scales, scale)
		}
		pos += n
	}
	if pos < hi {
		return nil, fmt.Errorf("%s: %w: the round owns coordinates [%d, %d) of the model, but the update has %d",
			who, tensor.ErrLayoutMismatch, lo, hi, pos)
	}
	r.hdr.Metadata = md
	return r, nil
}

func (r *rangeSource) Header() arrowio.Header { return r.hdr }

// Next returns the next chunk of the part, skipping what falls outside it.
func (r *rangeSource) Next() (arrowio.Chunk, error) {
	for {
		c, err := r.src.Next()
		if err != nil {
			return c, err
		}
		t := c.Tensor
		if t < 0 || t >= len(r.index) {
			return c, fmt.Errorf("%w: chunk of tensor %d", arrowio.ErrChunk, t)
		}
		if r.index[t] < 0 {
			continue
		}
		es := int64(r.src.Header().Layout[t].DType.Size())
		first, end := c.Offset, c.Offset+int64(len(c.Data))/es
		a, b := max(first, r.from[t]), min(end, r.to[t])
		if a >= b {
			continue
		}
		return arrowio.Chunk{Tensor: r.index[t], Offset: a - r.from[t], Data: c.Data[(a-first)*es : (b-first)*es]}, nil
	}
}

// setSource presents a Set as a Source: one chunk per tensor (views of its memory).
type setSource struct {
	s *tensor.Set
	i int
}

func (s *setSource) Header() arrowio.Header { return arrowio.HeaderOf(s.s) }

func (s *setSource) Next() (arrowio.Chunk, error) {
	for s.i < s.s.Len() {
		t := s.s.At(s.i)
		s.i++
		if len(t.Bytes()) > 0 {
			return arrowio.Chunk{Tensor: s.i - 1, Data: t.Bytes()}, nil
		}
	}
	return arrowio.Chunk{}, io.EOF
}

// globalPartFile is the part of the initial global model a ranged round starts from.
const globalPartFile = "global-part.safetensors"

// writeGlobalPart writes the part [lo, hi) of the model at path into dir, durably, and returns
// its file name.
func writeGlobalPart(dir, path string, m [2]int64) (string, error) {
	g, err := safetensors.Open(path)
	if err != nil {
		return "", err
	}
	defer g.Close()
	rs, err := newRangeSource(&setSource{s: g}, m[0], m[1], path)
	if err != nil {
		return "", err
	}
	sp, err := createSpool(filepath.Join(dir, globalPartFile), rs.Header(), path, false, false)
	if err != nil {
		return "", err
	}
	for {
		c, err := rs.Next()
		if err == io.EOF {
			break
		}
		if err == nil {
			err = sp.write(c)
		}
		if err != nil {
			sp.abort()
			return "", err
		}
	}
	if _, err := sp.finish(); err != nil {
		sp.abort()
		return "", err
	}
	return globalPartFile, durable.SyncDir(dir)
}
