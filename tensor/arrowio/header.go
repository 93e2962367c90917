package arrowio

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/wattagg/wattagg/tensor"
)

// LayoutKey is the schema metadata key whose value is the layout JSON: an array, in the Set's
// tensor order, of {"name": string, "dtype": "F32"|"F64"|"F16"|"BF16"|"I8"|"U32", "shape":
// [int, ...], "scale": number (I8 only, optional, default 1)}. Every other metadata key of the
// schema is an entry of the Set's Metadata.
const LayoutKey = "wattagg.layout"

// Header is what the schema message of an update carries, so that a receiver knows the whole
// update before the first byte of tensor data: the layout, the I8 scales and the metadata.
type Header struct {
	// Layout lists the tensors in the Set's order.
	Layout tensor.Layout
	// Scales holds one dequantisation scale per tensor: the I8 scale, 1 for other dtypes. A nil
	// Scales means 1 for every tensor.
	Scales []float32
	// Metadata is the Set's string metadata.
	Metadata map[string]string
}

// HeaderOf describes s: its layout, scales and metadata (shared with s, not copied).
func HeaderOf(s *tensor.Set) Header {
	h := Header{Layout: s.Layout(), Scales: make([]float32, s.Len()), Metadata: s.Metadata}
	for i, t := range s.Tensors() {
		h.Scales[i] = 1
		if t.DType == tensor.I8 {
			h.Scales[i] = t.Scale
		}
	}
	return h
}

// DataBytes is the size of the tensor data the layout declares.
func (h Header) DataBytes() int64 {
	var n int64
	for _, f := range h.Layout {
		elems, err := elements(f.Shape)
		b := elems * int64(f.DType.Size()) // at most 2^51
		if err != nil || n > math.MaxInt64-b {
			return math.MaxInt64 // saturates: a hostile layout is simply over every limit
		}
		n += b
	}
	return n
}

// scale is the scale of tensor i.
func (h Header) scale(i int) float32 {
	if h.Scales == nil || h.Layout[i].DType != tensor.I8 {
		return 1
	}
	return h.Scales[i]
}

// check validates h for writing, with the rules the reader applies, so that a Writer never
// produces a stream that this package would refuse to read.
func (h Header) check() error {
	if h.Scales != nil && len(h.Scales) != len(h.Layout) {
		return fmt.Errorf("%w: %d scales for %d tensors", ErrSchema, len(h.Scales), len(h.Layout))
	}
	seen := make(map[string]bool, len(h.Layout))
	for i, f := range h.Layout {
		if err := checkName(f.Name); err != nil {
			return fmt.Errorf("%w: tensor %d: %v", ErrSchema, i, err)
		}
		if seen[f.Name] {
			return fmt.Errorf("%w: %w: %s", ErrSchema, tensor.ErrDuplicateName, quote(f.Name))
		}
		seen[f.Name] = true
		if !f.DType.Valid() {
			return fmt.Errorf("%w: %w: tensor %s: %v", ErrSchema, tensor.ErrDType, quote(f.Name), f.DType)
		}
		if _, err := elements(f.Shape); err != nil {
			return fmt.Errorf("%w: %w: tensor %s: %v", ErrSchema, tensor.ErrShape, quote(f.Name), err)
		}
		if s := float64(h.scale(i)); s == 0 || math.IsInf(s, 0) || math.IsNaN(s) {
			return fmt.Errorf("%w: tensor %s: I8 scale %v is not finite and non-zero", ErrSchema, quote(f.Name), s)
		}
	}
	for k, v := range h.Metadata {
		switch {
		case k == LayoutKey:
			return fmt.Errorf("%w: metadata key %q is reserved for the layout", ErrSchema, k)
		case !utf8.ValidString(k) || !utf8.ValidString(v):
			return fmt.Errorf("%w: metadata %s is not valid UTF-8", ErrSchema, quote(k))
		}
	}
	return nil
}

func checkName(name string) error {
	switch {
	case name == "":
		return errors.New("empty tensor name")
	case !utf8.ValidString(name):
		return fmt.Errorf("tensor name %s is not valid UTF-8", quote(name))
	}
	return nil
}

// elements is the element count of shape, with the bounds of tensor.New.
func elements(shape []int) (int64, error) {
	n := int64(1)
	for _, d := range shape {
		if d < 0 {
			return 0, fmt.Errorf("negative dimension in %v", shape)
		}
		if d != 0 && n > tensor.MaxElements/int64(d) {
			return 0, fmt.Errorf("%v has more than 2^48 elements", shape)
		}
		n *= int64(d)
	}
	return n, nil
}

// encodeLayout writes the layout JSON of h (checked).
func encodeLayout(h Header) string {
	var b bytes.Buffer
	b.WriteByte('[')
	for i, f := range h.Layout {
		if i > 0 {
			b.WriteByte(',')
		}
		name, _ := json.Marshal(f.Name) // a string always marshals
		b.WriteString(`{"name":`)
		b.Write(name)
		b.WriteString(`,"dtype":"` + f.DType.SafetensorsName() + `","shape":[`)
		for j, d := range f.Shape {
			if j > 0 {
				b.WriteByte(',')
			}
			b.WriteString(strconv.Itoa(d))
		}
		b.WriteByte(']')
		if f.DType == tensor.I8 {
			// 'g' with float32 precision: the shortest text that reads back as the same float32.
			b.WriteString(`,"scale":` + strconv.FormatFloat(float64(h.scale(i)), 'g', -1, 32))
		}
		b.WriteByte('}')
	}
	b.WriteByte(']')
	return b.String()
}

// otherDTypes are safetensors dtype names wattagg does not read: reported as unsupported
// rather than unknown.
var otherDTypes = []string{
	"BOOL", "U8", "I16", "U16", "I32", "I64", "U64", "C64",
	"F4", "F6_E2M3", "F6_E3M2", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ",
}

// parseLayout decodes the layout JSON strictly: token by token, so that a duplicate or
// unknown key inside an entry is an error instead of silently winning or being ignored.
// Errors wrap ErrSchema (and tensor.ErrDType, tensor.ErrShape, tensor.ErrDuplicateName or
// ErrLimit where those say more) and name the tensor.
func parseLayout(js string, maxTensors int) (tensor.Layout, []float32, error) {
	if !utf8.ValidString(js) {
		return nil, nil, fmt.Errorf("%w: %s is not valid UTF-8", ErrSchema, LayoutKey)
	}
	dec := json.NewDecoder(strings.NewReader(js))
	dec.UseNumber()
	if err := delim(dec, '['); err != nil {
		return nil, nil, err
	}
	var (
		layout tensor.Layout
		scales []float32
		seen   = map[string]bool{}
	)
	for dec.More() {
		if len(layout) == maxTensors {
			return nil, nil, fmt.Errorf("%w: %s lists more than %d tensors", ErrLimit, LayoutKey, maxTensors)
		}
		f, scale, err := parseEntry(dec, len(layout))
		if err != nil {
			return nil, nil, err
		}
		if seen[f.Name] {
			return nil, nil, fmt.Errorf("%w: %w: %s in %s", ErrSchema, tensor.ErrDuplicateName, quote(f.Name), LayoutKey)
		}
		seen[f.Name] = true
		layout = append(layout, f)
		scales = append(scales, scale)
	}
	if err := delim(dec, ']'); err != nil {
		return nil, nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, nil, fmt.Errorf("%w: %s: data after the closing bracket", ErrSchema, LayoutKey)
	}
	return layout, scales, nil
}

// delim reads the next token, which must be the delimiter want.
func delim(dec *json.Decoder, want json.Delim) error {
	tok, err := dec.Token()
	if err != nil {
		return fmt.Errorf("%w: %s is not JSON: %v", ErrSchema, LayoutKey, err)
	}
	if d, ok := tok.(json.Delim); !ok || d != want {
		return fmt.Errorf("%w: %s: found %v, want %q", ErrSchema, LayoutKey, tok, string(want))
	}
	return nil
}

// parseEntry reads one {"name", "dtype", "shape", "scale"} object, the i-th.
func parseEntry(dec *json.Decoder, i int) (tensor.Field, float32, error) {
	p := entryParser{dec: dec, i: i, scale: 1}
	seen := map[string]bool{}
	if err := delim(dec, '{'); err != nil {
		return p.f, 0, err
	}
	for dec.More() {
		key, raw, err := p.member(seen)
		if err != nil {
			return p.f, 0, err
		}
		if err := p.set(key, raw); err != nil {
			return p.f, 0, err
		}
	}
	if err := delim(dec, '}'); err != nil {
		return p.f, 0, err
	}
	if err := p.complete(seen); err != nil {
		return p.f, 0, err
	}
	if err := p.resolveDType(seen["scale"]); err != nil {
		return p.f, 0, err
	}
	return p.f, p.scale, nil
}

// entryParser is the state of parseEntry: the field and scale read so far and the dtype name,
// resolved once the object is closed. The keys seen are a local map of parseEntry, not a
// field, so that the map stays on the stack.
type entryParser struct {
	dec   *json.Decoder
	i     int
	f     tensor.Field
	scale float32
	dtype string
}

// where names the entry in an error: by its tensor name once known, else by its index.
func (p *entryParser) where() string {
	if p.f.Name != "" {
		return "tensor " + quote(p.f.Name)
	}
	return fmt.Sprintf("entry %d", p.i)
}

// bad is an error about the entry, wrapping ErrSchema and then each of extra.
func (p *entryParser) bad(msg string, extra ...error) error {
	args := []any{ErrSchema}
	format := "%w: "
	for _, e := range extra {
		format += "%w: "
		args = append(args, e)
	}
	return fmt.Errorf(format+"%s of %s: %s", append(args, p.where(), LayoutKey, msg)...)
}

// member reads the next key of the object, which must not be in seen, adds it to seen and
// reads its raw value.
func (p *entryParser) member(seen map[string]bool) (string, json.RawMessage, error) {
	tok, err := p.dec.Token()
	if err != nil {
		return "", nil, p.bad(err.Error())
	}
	key, _ := tok.(string) // inside an object, a token before a value is always its key
	if seen[key] {
		return "", nil, p.bad("duplicate key " + quote(key))
	}
	seen[key] = true
	var raw json.RawMessage
	if err := p.dec.Decode(&raw); err != nil {
		if err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) {
			return "", nil, p.bad("the JSON ends early")
		}
		return "", nil, p.bad(err.Error())
	}
	return key, raw, nil
}

// set stores the value raw of key in the entry; an unknown key is an error.
func (p *entryParser) set(key string, raw json.RawMessage) error {
	switch key {
	case "name":
		return p.setName(raw)
	case "dtype":
		return p.setDType(raw)
	case "shape":
		return p.setShape(raw)
	case "scale":
		return p.setScale(raw)
	default:
		return p.bad("unknown key " + quote(key))
	}
}

// setName reads the tensor name, a string that checkName accepts.
func (p *entryParser) setName(raw json.RawMessage) error {
	if err := json.Unmarshal(raw, &p.f.Name); err != nil || raw[0] != '"' {
		return p.bad("name is not a string")
	}
	if err := checkName(p.f.Name); err != nil {
		return p.bad(err.Error())
	}
	return nil
}

// setDType reads the dtype name, a string; resolveDType checks it once the object is closed.
func (p *entryParser) setDType(raw json.RawMessage) error {
	if err := json.Unmarshal(raw, &p.dtype); err != nil || raw[0] != '"' {
		return p.bad("dtype is not a string")
	}
	return nil
}

// setShape reads the shape, an array of integers within the bounds of elements.
func (p *entryParser) setShape(raw json.RawMessage) error {
	if raw[0] != '[' {
		return p.bad("shape is not an array", tensor.ErrShape)
	}
	var dims []json.Number
	if err := json.Unmarshal(raw, &dims); err != nil {
		return p.bad("shape is not an array of integers", tensor.ErrShape)
	}
	p.f.Shape = make([]int, len(dims))
	for j, d := range dims {
		v, err := strconv.ParseInt(d.String(), 10, 64)
		if err != nil {
			return p.bad("shape dimension "+quote(d.String())+" is not an integer", tensor.ErrShape)
		}
		p.f.Shape[j] = int(max(min(v, math.MaxInt), -1)) // elements rejects what is out of range
	}
	if _, err := elements(p.f.Shape); err != nil {
		return p.bad(err.Error(), tensor.ErrShape)
	}
	return nil
}

// setScale reads the I8 scale, a finite non-zero float32.
func (p *entryParser) setScale(raw json.RawMessage) error {
	var n json.Number
	if err := json.Unmarshal(raw, &n); err != nil {
		return p.bad("scale is not a number")
	}
	v, err := strconv.ParseFloat(n.String(), 32)
	if err != nil || v == 0 || math.IsInf(v, 0) || math.IsNaN(v) {
		return p.bad("scale " + n.String() + " is not a finite non-zero float32")
	}
	p.scale = float32(v)
	return nil
}

// complete checks that the closed object, whose keys are seen, had a name, a dtype and a shape.
func (p *entryParser) complete(seen map[string]bool) error {
	for _, k := range [...]string{"name", "dtype", "shape"} {
		if !seen[k] {
			return p.bad("no " + k)
		}
	}
	return nil
}

// resolveDType sets the field's dtype from its name, which must be one wattagg reads, and
// checks that only an I8 tensor has a scale (scaled: the entry had one).
func (p *entryParser) resolveDType(scaled bool) error {
	for d := tensor.F32; d.Valid(); d++ {
		if d.SafetensorsName() == p.dtype {
			p.f.DType = d
		}
	}
	switch {
	case p.f.DType == tensor.Invalid && slices.Contains(otherDTypes, p.dtype):
		return p.bad("dtype "+quote(p.dtype)+" is not one wattagg reads (F32 F64 F16 BF16 I8 U32)", tensor.ErrDType)
	case p.f.DType == tensor.Invalid:
		return p.bad("unknown dtype "+quote(p.dtype)+" (want F32 F64 F16 BF16 I8 U32)", tensor.ErrDType)
	case scaled && p.f.DType != tensor.I8:
		return p.bad("a scale for a " + p.dtype + " tensor")
	}
	return nil
}

// quote quotes s for an error message, cut to 64 bytes so that hostile names stay one
// readable line.
func quote(s string) string {
	if len(s) > 64 {
		return strconv.Quote(s[:64]) + "..."
	}
	return strconv.Quote(s)
}
