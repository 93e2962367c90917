package safetensors

import (
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
	// Fields describe the tensors in file order (by data offset), which is also Set order.
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
// ScaleKeyPrefix + tensor name.
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
func dtypeOf(name string) (tensor.DType, bool) {
	for d := tensor.F32; d.Valid(); d++ {
		if d.SafetensorsName() == name {
			return d, true
		}
	}
	return tensor.Invalid, false
}

// entry is one tensor of the header as parsed, before the offsets are checked as a whole.
type entry struct {
	field      tensor.Field
	begin, end int64
}

// headerParser decodes the header JSON token by token, so that key order and duplicate keys
// are seen (a decode into a map would merge duplicates silently).
type headerParser struct {
	src      string
	sc       jsonScanner
	dataSize int64
	entries  []entry
	index    map[string]int // tensor name to entry, and to Header position once sorted
	meta     [][2]string    // __metadata__ in header order, so errors are deterministic
	hasMeta  bool
	// inTensor is set while the entry of tensor current is parsed, so errors name it.
	inTensor bool
	current  string
}

// parseHeader validates the header JSON js of a file whose data section holds dataSize bytes.
func parseHeader(src string, js []byte, dataSize int64) (*Header, error) {
	p := &headerParser{src: src, dataSize: dataSize, index: map[string]int{}}
	if !utf8.Valid(js) {
		return nil, p.fail(ErrFormat, "header is not valid UTF-8")
	}
	if len(js) == 0 || js[0] != '{' {
		return nil, p.fail(ErrFormat, "header does not start with '{'")
	}
	if !json.Valid(js) {
		return nil, p.syntax(js)
	}
	p.sc = jsonScanner{js: js}
	if err := p.object(); err != nil {
		return nil, err
	}
	return p.header()
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
			return p.fail(ErrFormat, fmt.Sprintf("found %s, want a string as __metadata__ value of %q", v.describe(), k))
		}
		if seen[k] {
			return p.fail(ErrFormat, fmt.Sprintf("duplicate __metadata__ key %q", k))
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
	if _, dup := p.index[name]; dup {
		return p.fail(ErrFormat, "duplicate tensor name")
	}
	p.index[name] = len(p.entries)
	if err := p.delim('{', "an object"); err != nil {
		return err
	}
	e := entry{field: tensor.Field{Name: name}}
	var dims, offsets []uint64
	var seen [len(entryKeys)]bool // unknown keys are skipped, duplicates and all, as by serde
	for p.sc.more() {
		key := p.sc.next().str()
		if k := slices.Index(entryKeys[:], key); k >= 0 {
			if seen[k] {
				return p.fail(ErrFormat, fmt.Sprintf("duplicate key %q", key))
			}
			seen[k] = true
		}
		var err error
		switch key {
		case "dtype":
			e.field.DType, err = p.dtype()
		case "shape":
			dims, err = p.naturals("shape")
		case "data_offsets":
			offsets, err = p.naturals("data_offsets")
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
	if len(offsets) != 2 {
		return p.fail(ErrFormat, fmt.Sprintf("data_offsets has %d numbers, want [begin, end]", len(offsets)))
	}
	if err := p.checkEntry(&e, dims, offsets[0], offsets[1]); err != nil {
		return err
	}
	p.entries = append(p.entries, e)
	return nil
}

// checkEntry checks the shape and the byte range of one tensor on its own.
func (p *headerParser) checkEntry(e *entry, dims []uint64, begin, end uint64) error {
	e.field.Shape = make([]int, len(dims))
	for i, d := range dims {
		if d > tensor.MaxElements {
			return p.fail(ErrFormat, fmt.Sprintf("shape %v has more than 2^48 elements", dims))
		}
		e.field.Shape[i] = int(d)
	}
	n, ok := numElements(e.field.Shape)
	if !ok {
		return p.fail(ErrFormat, fmt.Sprintf("shape %v has more than 2^48 elements", dims))
	}
	switch {
	case begin > end:
		return p.fail(ErrOffset, fmt.Sprintf("data_offsets [%d, %d] end before they begin", begin, end))
	case end > uint64(p.dataSize):
		return p.fail(ErrOffset, fmt.Sprintf("data_offsets [%d, %d] end beyond the %d-byte data section", begin, end, p.dataSize))
	}
	e.begin, e.end = int64(begin), int64(end)
	// n <= 2^48 and element sizes are <= 8, so the product cannot overflow.
	if want := n * int64(e.field.DType.Size()); e.end-e.begin != want {
		return p.fail(ErrOffset, fmt.Sprintf("data_offsets [%d, %d] hold %d bytes, shape %v of %s needs %d",
			begin, end, e.end-e.begin, e.field.Shape, e.field.DType.SafetensorsName(), want))
	}
	return nil
}

// numElements is the element count of shape, or false past tensor.MaxElements. It bounds
// every partial product as tensor.New does, so a shape accepted here is accepted there.
func numElements(shape []int) (int64, bool) {
	n := int64(1)
	for _, d := range shape {
		if d < 0 || d > tensor.MaxElements || d != 0 && n > tensor.MaxElements/int64(d) {
			return 0, false
		}
		n *= int64(d)
	}
	return n, true
}

// header sorts the entries by offset (the reference's order), checks that they tile the data
// section and takes the I8 scales out of the metadata.
func (p *headerParser) header() (*Header, error) {
	slices.SortStableFunc(p.entries, func(a, b entry) int {
		if c := cmp.Compare(a.begin, b.begin); c != 0 {
			return c
		}
		return cmp.Compare(a.end, b.end)
	})
	h := &Header{Metadata: map[string]string{}}
	var pos int64
	for i, e := range p.entries {
		switch {
		case e.begin < pos:
			return nil, p.failTensor(ErrOffset, e.field.Name, fmt.Sprintf("data_offsets [%d, %d] overlap tensor %q",
				e.begin, e.end, p.entries[i-1].field.Name))
		case e.begin > pos:
			return nil, p.failTensor(ErrOffset, e.field.Name, fmt.Sprintf("gap: data bytes [%d, %d) before it belong to no tensor",
				pos, e.begin))
		}
		pos = e.end
		p.index[e.field.Name] = i
		h.Fields = append(h.Fields, e.field)
		h.Begin = append(h.Begin, e.begin)
		h.End = append(h.End, e.end)
		h.Scales = append(h.Scales, 1)
	}
	if pos != p.dataSize {
		return nil, p.fail(ErrOffset, fmt.Sprintf("data bytes [%d, %d) at the end belong to no tensor", pos, p.dataSize))
	}
	for _, kv := range p.meta {
		if name, ok := strings.CutPrefix(kv[0], ScaleKeyPrefix); ok {
			i, ok := p.index[name]
			if !ok {
				return nil, p.failTensor(ErrFormat, name, "I8 scale for a tensor that is not in the file")
			}
			if err := p.scale(h, i, kv[1]); err != nil {
				return nil, err
			}
			continue
		}
		h.Metadata[kv[0]] = kv[1]
	}
	return h, nil
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

// parseScale reads an I8 scale as formatScale writes it; it must be finite and non-zero.
func parseScale(v string) (float32, error) {
	f, err := strconv.ParseFloat(v, 32)
	if err != nil || f == 0 || math.IsInf(f, 0) || math.IsNaN(f) {
		return 0, fmt.Errorf("I8 scale %q is not a finite non-zero float32", v)
	}
	return float32(f), nil
}

// formatScale is the shortest decimal that parses back to s exactly.
func formatScale(s float32) string { return strconv.FormatFloat(float64(s), 'g', -1, 32) }

func (p *headerParser) dtype() (tensor.DType, error) {
	s, err := p.str("a string as dtype")
	if err != nil {
		return tensor.Invalid, err
	}
	if d, ok := dtypeOf(s); ok {
		return d, nil
	}
	if slices.Contains(otherDTypes, s) {
		return tensor.Invalid, p.fail(tensor.ErrDType, s+" is a safetensors dtype wattagg does not read")
	}
	return tensor.Invalid, p.fail(tensor.ErrDType, fmt.Sprintf("unknown dtype %q", s))
}

// naturals parses an array of natural numbers below 2^64.
func (p *headerParser) naturals(what string) ([]uint64, error) {
	if t := p.sc.next(); t.delim != '[' {
		return nil, p.fail(ErrFormat, fmt.Sprintf("found %s, want a %s array", t.describe(), what))
	}
	v := make([]uint64, 0, 4)
	for p.sc.more() {
		t := p.sc.next()
		if !t.isNumber() {
			return nil, p.fail(ErrFormat, fmt.Sprintf("%s holds %s, not a natural number", what, t.describe()))
		}
		n, err := strconv.ParseUint(string(t.raw), 10, 64)
		if err != nil {
			return nil, p.fail(ErrFormat, fmt.Sprintf("%s holds %s, not a natural number below 2^64", what, t.raw))
		}
		v = append(v, n)
	}
	p.sc.next() // the closing bracket, as more said
	return v, nil
}

// str reads a string token; want says what was expected, for the error.
func (p *headerParser) str(want string) (string, error) {
	t := p.sc.next()
	if !t.isString() {
		return "", p.fail(ErrFormat, fmt.Sprintf("found %s, want %s", t.describe(), want))
	}
	return t.str(), nil
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
	return p.fail(ErrFormat, msg)
}

// fail makes "SRC: SENTINEL: msg", naming the tensor whose entry is being parsed, if any.
func (p *headerParser) fail(sentinel error, msg string) error {
	if p.inTensor {
		return p.failTensor(sentinel, p.current, msg)
	}
	return fmt.Errorf("%s: %w: %s", p.src, sentinel, msg)
}

func (p *headerParser) failTensor(sentinel error, name, msg string) error {
	return fmt.Errorf("%s: %w: %s (tensor %q)", p.src, sentinel, msg, name)
}
