package safetensors

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/wattagg/wattagg/tensor"
)

// Header is the validated header of a .safetensors file.
type Header struct {
	// Fields describe the tensors in header order, which is also Set order. The reference
	// writer lists tensors in data order; WriteFile lists them in Set order and lays the data
	// out widest element first, so a Set survives a round trip in its own order.
	Fields []tensor.Field
	// Begin and End are the byte range of each field within the data section.
	Begin, End []int64
	// Scales are the I8 dequantisation scales (1 for every other dtype).
	Scales []float32
	// Metadata is __metadata__ without the scale keys.
	Metadata map[string]string
	// DataOffset is the absolute file offset of the data section.
	DataOffset int64
}

// ScaleKeyPrefix starts the __metadata__ key under which the scale of an I8 tensor is stored:
// ScaleKeyPrefix + tensor name. Every I8 tensor must have one: wattagg's writer always writes
// it, and an I8 tensor without its scale cannot be dequantised, so reading one is an error
// rather than a silent scale of 1.
const ScaleKeyPrefix = "wattagg.i8_scale."

// metadataKey is the reserved top-level key of the header.
const metadataKey = "__metadata__"

// otherDTypes are the valid safetensors dtype names that wattagg does not read, so that they
// are reported as unsupported rather than unknown.
var otherDTypes = []string{
	"BOOL", "U8", "I16", "U16", "I32", "I64", "U64", "C64",
	"F4", "F6_E2M3", "F6_E3M2", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ",
}

// dtypeOf maps a header dtype name to a DType. Names are case sensitive, as in the reference.
func dtypeOf(name []byte) (tensor.DType, bool) {
	for d := tensor.F32; d.Valid(); d++ {
		if d.SafetensorsName() == string(name) {
			return d, true
		}
	}
	return tensor.Invalid, false
}

// minEntry is the size of the smallest tensor entry, `"":{"dtype":"I8","shape":[],"data_offsets":[0,0]},`.
const minEntry = 50

// entries is the part of a header that __metadata__ does not touch: the tensors, in header
// order. It is what files of the same layout share (see layoutCache).
type entries struct {
	fields     []tensor.Field
	begin, end []int64
	index      map[string]int // tensor name to position
}

// headerParser decodes the header JSON token by token, so that key order and duplicate keys
// are seen (a decode into a map would merge duplicates silently), and so that nothing is built
// but the result: names, one array of all dimensions, offsets. Its allocations are a small
// multiple of the header's bytes whatever the header holds (shapes are bounded by
// Limits.Rank while they are read).
type headerParser struct {
	src      string
	sc       jsonScanner
	dataSize int64
	lim      Limits
	e        entries
	dims     []int       // every shape's dimensions back to back
	dimEnd   []int       // shape i is dims[dimEnd[i-1]:dimEnd[i]]
	meta     [][2]string // __metadata__ in header order, so errors are deterministic
	hasMeta  bool
	// inTensor is set while the entry of tensor current is parsed, so errors name it.
	inTensor bool
	current  string
}

// parseHeader validates the header JSON js of a file whose data section holds dataSize bytes.
// A non-nil cache shares the tensor entries of identical layouts (see layoutCache).
func parseHeader(src string, js []byte, dataSize int64, lim Limits, cache *layoutCache) (*Header, error) {
	p := &headerParser{src: src, dataSize: dataSize, lim: lim}
	if !utf8.Valid(js) {
		return nil, p.fail(ErrFormat, "header is not valid UTF-8")
	}
	if len(js) == 0 || js[0] != '{' {
		return nil, p.fail(ErrFormat, "header does not start with '{'")
	}
	if !json.Valid(js) {
		return nil, p.syntax(js)
	}
	if cache != nil {
		return cache.parse(p, js)
	}
	return p.parse(js)
}

// parse parses the whole header.
func (p *headerParser) parse(js []byte) (*Header, error) {
	p.sc = jsonScanner{js: js}
	// Every entry has a data_offsets key, so this is about the tensor count (fewer if keys
	// are escaped; append copes). Sizing up front keeps the allocations near the final sizes:
	// append grows large slices by a quarter at a time, which allocated 5 times the final size
	// of each array. The count is capped by the size of the smallest entry, so that names full
	// of the word cannot inflate it.
	n := min(bytes.Count(js, []byte(`"data_offsets"`)), len(js)/minEntry)
	p.e = entries{fields: make([]tensor.Field, 0, n), begin: make([]int64, 0, n), end: make([]int64, 0, n),
		index: make(map[string]int, n)}
	p.dims, p.dimEnd = make([]int, 0, 2*n), make([]int, 0, n)
	if err := p.object(); err != nil {
		return nil, err
	}
	if err := p.finish(); err != nil {
		return nil, err
	}
	return p.header(&p.e)
}

// object parses the top-level object. The JSON is valid, so keys are strings and a closing
// brace or bracket is where more says.
func (p *headerParser) object() error {
	p.sc.next() // '{', checked by parseHeader
	for p.sc.more() {
		var err error
		if key := p.sc.next().str(); key == metadataKey {
			err = p.metadata()
		} else {
			err = p.entry(key)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (p *headerParser) metadata() error {
	if p.hasMeta {
		return p.fail(ErrFormat, "duplicate __metadata__")
	}
	p.hasMeta = true
	if err := p.delim('{', "the __metadata__ object"); err != nil {
		return err
	}
	seen := map[string]bool{}
	for p.sc.more() {
		k := p.sc.next().str()
		v := p.sc.next()
		if !v.isString() {
			return p.fail(ErrFormat, fmt.Sprintf("found %s, want a string as __metadata__ value of %s", v.describe(), quote(k)))
		}
		if seen[k] {
			return p.fail(ErrFormat, "duplicate __metadata__ key "+quote(k))
		}
		seen[k] = true
		p.meta = append(p.meta, [2]string{k, v.str()})
	}
	p.sc.next()
	return nil
}

// entryKeys are the keys of a tensor entry.
var entryKeys = [...]string{"dtype", "shape", "data_offsets"}

// entry parses {"dtype": ..., "shape": [...], "data_offsets": [begin, end]} of tensor name.
// Unknown keys are skipped, as serde skips them for the reference's TensorInfo.
func (p *headerParser) entry(name string) error {
	p.inTensor, p.current = true, name
	defer func() { p.inTensor = false }()
	if err := p.lim.checkName(name); err != nil {
		return p.failErr(ErrFormat, err)
	}
	if _, dup := p.e.index[name]; dup {
		return p.fail(ErrFormat, "duplicate tensor name")
	}
	p.e.index[name] = len(p.e.fields)
	if err := p.delim('{', "an object"); err != nil {
		return err
	}
	field := tensor.Field{Name: name}
	dimStart := len(p.dims)
	var offsets [2]uint64
	nOffsets := 0
	var seen [len(entryKeys)]bool // unknown keys are skipped, duplicates and all, as by serde
	for p.sc.more() {
		key := p.sc.next().strBytes()
		k := slices.IndexFunc(entryKeys[:], func(s string) bool { return string(key) == s })
		if k >= 0 {
			if seen[k] {
				return p.fail(ErrFormat, fmt.Sprintf("duplicate key %q", entryKeys[k]))
			}
			seen[k] = true
		}
		var err error
		switch k {
		case 0:
			field.DType, err = p.dtype()
		case 1:
			err = p.shape()
		case 2:
			nOffsets, err = p.offsets(&offsets)
		default:
			p.sc.skipValue()
		}
		if err != nil {
			return err
		}
	}
	p.sc.next()
	for k, key := range entryKeys {
		if !seen[k] {
			return p.fail(ErrFormat, "missing "+key)
		}
	}
	if nOffsets != 2 {
		return p.fail(ErrFormat, fmt.Sprintf("data_offsets has %d numbers, want [begin, end]", nOffsets))
	}
	field.Shape = p.dims[dimStart:len(p.dims):len(p.dims)] // replaced by finish, once dims stops growing
	begin, end, err := p.checkEntry(field, offsets[0], offsets[1])
	if err != nil {
		return err
	}
	p.e.fields = append(p.e.fields, field)
	p.e.begin = append(p.e.begin, begin)
	p.e.end = append(p.e.end, end)
	p.dimEnd = append(p.dimEnd, len(p.dims))
	return nil
}

// checkEntry checks the shape and the byte range of one tensor on its own.
func (p *headerParser) checkEntry(f tensor.Field, begin, end uint64) (int64, int64, error) {
	n, err := checkElements(f.Shape)
	if err != nil {
		return 0, 0, p.failErr(ErrFormat, err)
	}
	switch {
	case begin > end:
		return 0, 0, p.fail(ErrOffset, fmt.Sprintf("data_offsets [%d, %d] end before they begin", begin, end))
	case end > uint64(p.dataSize):
		return 0, 0, p.fail(ErrOffset, fmt.Sprintf("data_offsets [%d, %d] end beyond the %d-byte data section", begin, end, p.dataSize))
	}
	// n <= 2^48 and element sizes are <= 8, so the product cannot overflow.
	if want := n * int64(f.DType.Size()); int64(end-begin) != want {
		return 0, 0, p.fail(ErrOffset, fmt.Sprintf("data_offsets [%d, %d] hold %d bytes, shape %s of %s needs %d",
			begin, end, end-begin, formatShape(f.Shape), f.DType.SafetensorsName(), want))
	}
	return int64(begin), int64(end), nil
}

// finish points every shape into the final dims array and checks that the tensors tile the
// data section: sorted by offset (the reference's check), each begins where the one before
// ends, and the last ends where the data does.
func (p *headerParser) finish() error {
	start := 0
	for i, end := range p.dimEnd {
		p.e.fields[i].Shape = p.dims[start:end:end]
		start = end
	}
	p.dimEnd = nil
	byOffset := make([]int32, len(p.e.fields))
	sorted := true
	for i := range byOffset {
		byOffset[i] = int32(i)
		if i > 0 && p.before(i, i-1) {
			sorted = false
		}
	}
	if !sorted {
		// Equal ranges (empty tensors) keep header order, so errors are deterministic.
		slices.SortFunc(byOffset, func(a, b int32) int {
			if p.before(int(a), int(b)) {
				return -1
			}
			if p.before(int(b), int(a)) {
				return 1
			}
			return cmp.Compare(a, b)
		})
	}
	var pos int64
	prev := -1
	for _, i := range byOffset {
		begin, end, name := p.e.begin[i], p.e.end[i], p.e.fields[i].Name
		switch {
		case begin < pos:
			return p.failTensor(ErrOffset, name, fmt.Sprintf("data_offsets [%d, %d] overlap tensor %s",
				begin, end, quote(p.e.fields[prev].Name)))
		case begin > pos:
			return p.failTensor(ErrOffset, name, fmt.Sprintf("gap: data bytes [%d, %d) before it belong to no tensor",
				pos, begin))
		}
		pos, prev = end, int(i)
	}
	if pos != p.dataSize {
		return p.fail(ErrOffset, fmt.Sprintf("data bytes [%d, %d) at the end belong to no tensor", pos, p.dataSize))
	}
	return nil
}

// before orders tensors i and j by data range.
func (p *headerParser) before(i, j int) bool {
	if p.e.begin[i] != p.e.begin[j] {
		return p.e.begin[i] < p.e.begin[j]
	}
	return p.e.end[i] < p.e.end[j]
}

// header makes the Header of e with this file's metadata: the I8 scales taken out of it, and
// every I8 tensor checked to have one.
func (p *headerParser) header(e *entries) (*Header, error) {
	h := &Header{Fields: e.fields, Begin: e.begin, End: e.end, Scales: make([]float32, len(e.fields)),
		Metadata: make(map[string]string, len(p.meta))}
	for i := range h.Scales {
		h.Scales[i] = 1
	}
	scaled := 0
	for _, kv := range p.meta {
		if name, ok := strings.CutPrefix(kv[0], ScaleKeyPrefix); ok {
			i, ok := e.index[name]
			if !ok {
				return nil, p.failTensor(ErrFormat, name, "I8 scale for a tensor that is not in the file")
			}
			if err := p.scale(h, i, kv[1]); err != nil {
				return nil, err
			}
			scaled++
			continue
		}
		h.Metadata[kv[0]] = kv[1]
	}
	if n := countI8(e.fields); scaled != n {
		for _, f := range e.fields {
			if f.DType == tensor.I8 && !p.hasScale(f.Name) {
				return nil, p.failTensor(ErrFormat, f.Name, "I8 tensor without a scale (no __metadata__ key "+
					quote(ScaleKeyPrefix+f.Name)+"): it cannot be dequantised")
			}
		}
	}
	return h, nil
}

func countI8(fields []tensor.Field) int {
	n := 0
	for _, f := range fields {
		if f.DType == tensor.I8 {
			n++
		}
	}
	return n
}

// hasScale reports whether the metadata holds the scale of tensor name. Only called to name
// the tensor of an error, so a linear search is fine.
func (p *headerParser) hasScale(name string) bool {
	return slices.ContainsFunc(p.meta, func(kv [2]string) bool { return kv[0] == ScaleKeyPrefix+name })
}

// scale sets the scale of tensor i, which must be I8, from its metadata value.
func (p *headerParser) scale(h *Header, i int, value string) error {
	name := h.Fields[i].Name
	if dt := h.Fields[i].DType; dt != tensor.I8 {
		return p.failTensor(ErrFormat, name, "I8 scale for a tensor of dtype "+dt.SafetensorsName())
	}
	s, err := parseScale(value)
	if err != nil {
		return p.failTensor(ErrFormat, name, err.Error())
	}
	h.Scales[i] = s
	return nil
}

// parseScale reads an I8 scale as formatScale writes it; it must be finite and positive (the
// quantisation is symmetric, so a sign would only flip every value).
func parseScale(v string) (float32, error) {
	f, err := strconv.ParseFloat(v, 32)
	if err != nil || !validScale(f) {
		return 0, fmt.Errorf("I8 scale %s is not a finite positive float32", quote(v))
	}
	return float32(f), nil
}

// validScale is the rule for I8 scales, for reader and writer alike.
func validScale(s float64) bool { return s > 0 && !math.IsInf(s, 0) }

// formatScale is the shortest decimal that parses back to s exactly.
func formatScale(s float32) string { return strconv.FormatFloat(float64(s), 'g', -1, 32) }

func (p *headerParser) dtype() (tensor.DType, error) {
	t := p.sc.next()
	if !t.isString() {
		return tensor.Invalid, p.fail(ErrFormat, fmt.Sprintf("found %s, want a string as dtype", t.describe()))
	}
	name := t.strBytes()
	if d, ok := dtypeOf(name); ok {
		return d, nil
	}
	if slices.Contains(otherDTypes, string(name)) {
		return tensor.Invalid, p.fail(tensor.ErrDType, string(name)+" is a safetensors dtype wattagg does not read")
	}
	return tensor.Invalid, p.fail(tensor.ErrDType, "unknown dtype "+quote(t.str()))
}

// shape parses a shape array onto p.dims, refusing it as soon as it is over Limits.Rank.
func (p *headerParser) shape() error {
	if t := p.sc.next(); t.delim != '[' {
		return p.fail(ErrFormat, fmt.Sprintf("found %s, want a shape array", t.describe()))
	}
	start := len(p.dims)
	for p.sc.more() {
		if len(p.dims)-start == p.lim.Rank {
			return p.failErr(ErrFormat, p.lim.checkRank(p.lim.Rank+1))
		}
		d, err := p.natural("shape")
		if err != nil {
			return err
		}
		if d > tensor.MaxElements {
			return p.failErr(ErrFormat, fmt.Errorf("%w: shape dimension %d is over 2^48 elements", ErrLimit, d))
		}
		p.dims = append(p.dims, int(d))
	}
	p.sc.next() // the closing bracket, as more said
	return nil
}

// offsets parses the data_offsets array into o and returns how many numbers it holds; all
// must be naturals, only the first two are kept.
func (p *headerParser) offsets(o *[2]uint64) (int, error) {
	if t := p.sc.next(); t.delim != '[' {
		return 0, p.fail(ErrFormat, fmt.Sprintf("found %s, want a data_offsets array", t.describe()))
	}
	n := 0
	for ; p.sc.more(); n++ {
		v, err := p.natural("data_offsets")
		if err != nil {
			return 0, err
		}
		if n < len(o) {
			o[n] = v
		}
	}
	p.sc.next()
	return n, nil
}

// natural parses a natural number below 2^64, without allocating.
func (p *headerParser) natural(what string) (uint64, error) {
	t := p.sc.next()
	if !t.isNumber() {
		return 0, p.fail(ErrFormat, fmt.Sprintf("%s holds %s, not a natural number", what, t.describe()))
	}
	var n uint64
	for _, c := range t.raw {
		d := uint64(c - '0')
		if d > 9 || n > (math.MaxUint64-d)/10 {
			return 0, p.fail(ErrFormat, fmt.Sprintf("%s holds %s, not a natural number below 2^64", what, elide(string(t.raw))))
		}
		n = n*10 + d
	}
	return n, nil
}

func (p *headerParser) delim(d byte, want string) error {
	if t := p.sc.next(); t.delim != d {
		return p.fail(ErrFormat, fmt.Sprintf("found %s, want %s", t.describe(), want))
	}
	return nil
}

// syntax describes the JSON syntax error of js, which json.Valid rejected.
func (p *headerParser) syntax(js []byte) error {
	err := json.Unmarshal(js, new(json.RawMessage)) // validates first, so it stops at the error
	msg := "invalid JSON: " + err.Error()
	if se := (*json.SyntaxError)(nil); errors.As(err, &se) {
		msg = fmt.Sprintf("invalid JSON at header byte %d: %v", se.Offset, se)
	}
	return p.fail(ErrFormat, elide(msg))
}

// fail makes "SRC: SENTINEL: msg", naming the tensor whose entry is being parsed, if any.
func (p *headerParser) fail(sentinel error, msg string) error {
	if p.inTensor {
		return p.failTensor(sentinel, p.current, msg)
	}
	return fmt.Errorf("%s: %w: %s", p.src, sentinel, msg)
}

func (p *headerParser) failTensor(sentinel error, name, msg string) error {
	return fmt.Errorf("%s: %w: %s (tensor %s)", p.src, sentinel, msg, quote(name))
}

// failErr is fail for an error that wraps its own sentinels (a limit), plus sentinel.
func (p *headerParser) failErr(sentinel, err error) error {
	if p.inTensor {
		return fmt.Errorf("%s: %w: %w (tensor %s)", p.src, sentinel, err, quote(p.current))
	}
	return fmt.Errorf("%s: %w: %w", p.src, sentinel, err)
}
