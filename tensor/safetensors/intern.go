package safetensors

import (
	"bytes"
	"hash/maphash"
	"sync"
)

// layoutCache shares the tensor entries of headers that describe the same tensors. Clients of
// one federation send the same layout with different __metadata__ (num_examples, I8 scales),
// so OpenAll parses the entries of the first header and every other file with the same entry
// bytes reuses them: names, shapes and offsets are held once, not once per client, and the
// other headers cost a scan and a hash instead of a parse. Entries are keyed by a hash of the
// header without its __metadata__ member (and trailing whitespace, which a writer's padding
// varies), and a hit is only taken when those bytes and the data section size are equal.
//
// The shared Fields (and their Shape slices) are read-only: Header users must not write them.
type layoutCache struct {
	seed maphash.Seed
	mu   sync.Mutex
	m    map[uint64]*cachedLayout
}

// cachedLayout is one parsed layout; ready is closed once e is set (or left nil on error).
type cachedLayout struct {
	ready    chan struct{}
	rest     []byte // the header's bytes outside __metadata__
	dataSize int64
	e        *entries
}

func newLayoutCache() *layoutCache {
	return &layoutCache{seed: maphash.MakeSeed(), m: map[uint64]*cachedLayout{}}
}

// parse parses js (valid JSON) with p, reusing or recording its entries. Concurrent parses of
// one layout wait for the first instead of each holding a copy of the same entries.
func (c *layoutCache) parse(p *headerParser, js []byte) (*Header, error) {
	span, ok := metadataSpan(js)
	if !ok {
		return p.parse(js) // two __metadata__: the full parse reports it
	}
	before, after := js[:span.key], bytes.TrimRight(js[span.end:], " \t\r\n")
	if span.end == len(js) {
		before = bytes.TrimRight(before, " \t\r\n")
	}
	var h maphash.Hash
	h.SetSeed(c.seed)
	h.Write(before)
	h.WriteByte(0)
	h.Write(after)
	key := h.Sum64()

	c.mu.Lock()
	cl, found := c.m[key]
	if !found {
		cl = &cachedLayout{ready: make(chan struct{})}
		c.m[key] = cl
	}
	c.mu.Unlock()

	if !found {
		hd, err := p.parse(js)
		if err == nil {
			cl.rest = append(append(make([]byte, 0, len(before)+len(after)), before...), after...)
			cl.dataSize, cl.e = p.dataSize, &p.e
		}
		close(cl.ready)
		return hd, err
	}
	<-cl.ready
	if cl.e == nil || cl.dataSize != p.dataSize || len(cl.rest) != len(before)+len(after) ||
		!bytes.Equal(cl.rest[:len(before)], before) || !bytes.Equal(cl.rest[len(before):], after) {
		return p.parse(js) // the first failed (errors name their own file), or a hash collision
	}
	if span.value < span.end {
		p.sc = jsonScanner{js: js, pos: span.value}
		if err := p.metadata(); err != nil {
			return nil, err
		}
	}
	return p.header(cl.e)
}

// span is where the __metadata__ member of a header is: its key starts at key, its value at
// value, and the member ends at end. Without one, all three are the end of the header.
type span struct{ key, value, end int }

// metadataSpan finds the __metadata__ member of valid header JSON without allocating; ok is
// false if there are two.
func metadataSpan(js []byte) (s span, ok bool) {
	sc := jsonScanner{js: js}
	sc.next() // '{'
	found := false
	for sc.more() {
		start := sc.pos
		isMeta := string(sc.next().strBytes()) == metadataKey
		sc.skip()
		value := sc.pos
		sc.skipValue()
		if isMeta {
			if found {
				return span{}, false
			}
			found, s = true, span{key: start, value: value, end: sc.pos}
		}
	}
	if !found {
		s = span{key: len(js), value: len(js), end: len(js)}
	}
	return s, true
}
