package safetensors

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/wattagg/wattagg/tensor"
)

// fileOf builds a file from header JSON and data, with the length prefix.
func fileOf(js string, data []byte) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(js)))
	return append(append(b, js...), data...)
}

// one F32 tensor "w" of shape [2] and 8 bytes.
const goodEntry = `"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}`

var badHeaders = []struct {
	name     string
	js       string
	data     int // bytes of data section
	sentinel error
	tensor   string // the tensor the message must name, if any
	msg      string // a substring of the message
}{
	// ErrFormat: JSON and types.
	{"not JSON", `{"w":{"dtype":"F32",}}`, 8, ErrFormat, "", "invalid JSON at header byte 21: invalid character '}'"},
	{"cut JSON", `{"w":{"dtype":"F32"`, 8, ErrFormat, "", "invalid JSON at header byte 19: unexpected end of JSON input"},
	{"empty header", ``, 0, ErrFormat, "", "does not start with '{'"},
	{"array", `[1,2]`, 0, ErrFormat, "", "does not start with '{'"},
	{"leading space", ` {}`, 0, ErrFormat, "", "does not start with '{'"},
	{"string", `"{}"`, 0, ErrFormat, "", "does not start with '{'"},
	{"trailing data", `{}x`, 0, ErrFormat, "", "invalid character 'x' after top-level value"},
	{"second object", `{}{}`, 0, ErrFormat, "", "after top-level value"},
	{"invalid UTF-8", "{\"w\xff\":{}}", 0, ErrFormat, "", "UTF-8"},
	{"entry not object", `{"w":[0,8]}`, 8, ErrFormat, "w", `found "[", want an object`},
	{"entry null", `{"w":null}`, 8, ErrFormat, "w", "found null"},
	{"missing dtype", `{"w":{"shape":[2],"data_offsets":[0,8]}}`, 8, ErrFormat, "w", "missing dtype"},
	{"missing shape", `{"w":{"dtype":"F32","data_offsets":[0,8]}}`, 8, ErrFormat, "w", "missing shape"},
	{"missing offsets", `{"w":{"dtype":"F32","shape":[2]}}`, 8, ErrFormat, "w", "missing data_offsets"},
	{"dtype number", `{"w":{"dtype":4,"shape":[2],"data_offsets":[0,8]}}`, 8, ErrFormat, "w", "number 4"},
	{"shape not array", `{"w":{"dtype":"F32","shape":2,"data_offsets":[0,8]}}`, 8, ErrFormat, "w", "shape array"},
	{"shape negative", `{"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}`, 8, ErrFormat, "w", "-2"},
	{"shape fraction", `{"w":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}}`, 8, ErrFormat, "w", "2.0"},
	{"shape exponent", `{"w":{"dtype":"F32","shape":[2e0],"data_offsets":[0,8]}}`, 8, ErrFormat, "w", "2e0"},
	{"shape string", `{"w":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}}`, 8, ErrFormat, "w", `string "2"`},
	{"shape nested", `{"w":{"dtype":"F32","shape":[[2]],"data_offsets":[0,8]}}`, 8, ErrFormat, "w", `"["`},
	{"shape 2^64", `{"w":{"dtype":"F32","shape":[18446744073709551616],"data_offsets":[0,8]}}`, 8, ErrFormat, "w", "not a natural number below 2^64"},
	{"shape over 2^48", `{"w":{"dtype":"F32","shape":[16777216,16777217],"data_offsets":[0,8]}}`, 8, ErrLimit, "w", "2^48"},
	{"dimension over 2^48", `{"w":{"dtype":"F32","shape":[281474976710657],"data_offsets":[0,8]}}`, 8, ErrLimit, "w", "dimension 281474976710657 is over 2^48"},
	{"rank over 64", `{"w":{"dtype":"F32","shape":[` + strings.Repeat("1,", 64) + `2],"data_offsets":[0,8]}}`, 8, ErrLimit, "w", "more than 64 dimensions"},
	{"name over 4096", `{"` + strings.Repeat("n", 4097) + `":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, 8, ErrLimit, "", "name of 4097 bytes is over the limit of 4096"},
	{"shape product wraps", `{"w":{"dtype":"F32","shape":[4294967296,4294967296,0],"data_offsets":[0,0]}}`, 0, ErrLimit, "w", "2^48"},
	{"offsets three", `{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8,8]}}`, 8, ErrFormat, "w", "3 numbers"},
	{"offsets one", `{"w":{"dtype":"F32","shape":[2],"data_offsets":[8]}}`, 8, ErrFormat, "w", "1 numbers"},
	{"offsets negative", `{"w":{"dtype":"F32","shape":[2],"data_offsets":[-1,8]}}`, 8, ErrFormat, "w", "-1"},
	{"offsets object", `{"w":{"dtype":"F32","shape":[2],"data_offsets":{"a":0}}}`, 8, ErrFormat, "w", "data_offsets array"},
	{"duplicate tensor", `{` + goodEntry + `,` + goodEntry + `}`, 8, ErrFormat, "w", "duplicate tensor name"},
	{"duplicate key", `{"w":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, 8, ErrFormat, "w", `duplicate key "dtype"`},
	{"duplicate metadata", `{"__metadata__":{},"__metadata__":{}}`, 0, ErrFormat, "", "duplicate __metadata__"},
	{"duplicate metadata key", `{"__metadata__":{"a":"1","a":"2"}}`, 0, ErrFormat, "", `duplicate __metadata__ key "a"`},
	{"metadata number", `{"__metadata__":{"a":1}}`, 0, ErrFormat, "", `value of "a"`},
	{"metadata object", `{"__metadata__":{"a":{}}}`, 0, ErrFormat, "", `value of "a"`},
	{"metadata array", `{"__metadata__":["a"]}`, 0, ErrFormat, "", "__metadata__ object"},
	{"metadata null", `{"__metadata__":null}`, 0, ErrFormat, "", "found null"},
	// ErrFormat: I8 scales.
	{"scale text", `{"__metadata__":{"wattagg.i8_scale.q":"x"},"q":{"dtype":"I8","shape":[1],"data_offsets":[0,1]}}`, 1, ErrFormat, "q", `"x"`},
	{"scale zero", `{"__metadata__":{"wattagg.i8_scale.q":"0"},"q":{"dtype":"I8","shape":[1],"data_offsets":[0,1]}}`, 1, ErrFormat, "q", `"0"`},
	{"scale inf", `{"__metadata__":{"wattagg.i8_scale.q":"+Inf"},"q":{"dtype":"I8","shape":[1],"data_offsets":[0,1]}}`, 1, ErrFormat, "q", "finite"},
	{"scale NaN", `{"__metadata__":{"wattagg.i8_scale.q":"NaN"},"q":{"dtype":"I8","shape":[1],"data_offsets":[0,1]}}`, 1, ErrFormat, "q", "finite"},
	{"scale overflow", `{"__metadata__":{"wattagg.i8_scale.q":"1e39"},"q":{"dtype":"I8","shape":[1],"data_offsets":[0,1]}}`, 1, ErrFormat, "q", "1e39"},
	{"scale underflow", `{"__metadata__":{"wattagg.i8_scale.q":"1e-50"},"q":{"dtype":"I8","shape":[1],"data_offsets":[0,1]}}`, 1, ErrFormat, "q", "1e-50"},
	{"scale missing", `{"q":{"dtype":"I8","shape":[1],"data_offsets":[0,1]}}`, 1, ErrFormat, "q", `I8 tensor without a scale (no __metadata__ key "wattagg.i8_scale.q")`},
	{"scale missing for one", `{"__metadata__":{"wattagg.i8_scale.q":"2"},"q":{"dtype":"I8","shape":[1],"data_offsets":[0,1]},"r":{"dtype":"I8","shape":[1],"data_offsets":[1,2]}}`, 2, ErrFormat, "r", "without a scale"},
	{"scale negative", `{"__metadata__":{"wattagg.i8_scale.q":"-0.5"},"q":{"dtype":"I8","shape":[1],"data_offsets":[0,1]}}`, 1, ErrFormat, "q", `I8 scale "-0.5" is not a finite positive float32`},
	{"scale negative zero", `{"__metadata__":{"wattagg.i8_scale.q":"-0"},"q":{"dtype":"I8","shape":[1],"data_offsets":[0,1]}}`, 1, ErrFormat, "q", `"-0"`},
	{"scale no tensor", `{"__metadata__":{"wattagg.i8_scale.r":"2"},"q":{"dtype":"I8","shape":[1],"data_offsets":[0,1]}}`, 1, ErrFormat, "r", "not in the file"},
	{"scale not I8", `{"__metadata__":{"wattagg.i8_scale.w":"2"},` + goodEntry + `}`, 8, ErrFormat, "w", "dtype F32"},
	// ErrOffset.
	{"begin after end", `{"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}`, 8, ErrOffset, "w", "end before they begin"},
	{"end beyond data", `{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, 4, ErrOffset, "w", "beyond the 4-byte data section"},
	{"end 2^64-1", `{"w":{"dtype":"F32","shape":[2],"data_offsets":[18446744073709551607,18446744073709551615]}}`, 8, ErrOffset, "w", "beyond"},
	{"too few bytes", `{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}`, 4, ErrOffset, "w", "hold 4 bytes, shape [2] of F32 needs 8"},
	{"too many bytes", `{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,12]}}`, 12, ErrOffset, "w", "needs 8"},
	{"overlap", `{` + goodEntry + `,"v":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, 8, ErrOffset, "v", `overlap tensor "w"`},
	{"empty inside", `{` + goodEntry + `,"e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}}`, 8, ErrOffset, "e", `overlap tensor "w"`},
	{"gap first", `{"w":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}`, 12, ErrOffset, "w", "gap: data bytes [0, 4)"},
	{"gap between", `{` + goodEntry + `,"v":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}}`, 16, ErrOffset, "v", "gap: data bytes [8, 12)"},
	{"bytes after", `{` + goodEntry + `}`, 9, ErrOffset, "", "data bytes [8, 9) at the end"},
	{"data without tensors", `{}`, 3, ErrOffset, "", "data bytes [0, 3)"},
	// tensor.ErrDType.
	{"unsupported dtype", `{"w":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}}`, 8, tensor.ErrDType, "w", "U8 is a safetensors dtype wattagg does not read"},
	{"unsupported fp8", `{"w":{"dtype":"F8_E4M3","shape":[8],"data_offsets":[0,8]}}`, 8, tensor.ErrDType, "w", "F8_E4M3 is a safetensors dtype"},
	{"unknown dtype", `{"w":{"dtype":"F31","shape":[2],"data_offsets":[0,8]}}`, 8, tensor.ErrDType, "w", `unknown dtype "F31"`},
	{"lower case dtype", `{"w":{"dtype":"f32","shape":[2],"data_offsets":[0,8]}}`, 8, tensor.ErrDType, "w", `unknown dtype "f32"`},
}

// checkError checks that err wraps sentinel and is one line "SRC: ..." naming the tensor.
func checkError(t *testing.T, err, sentinel error, src, tensorName, msg string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %v", sentinel)
	}
	s := err.Error()
	if !errors.Is(err, sentinel) {
		t.Errorf("error %q does not wrap %q", s, sentinel)
	}
	if !strings.HasPrefix(s, src+": ") || strings.Contains(s, "\n") {
		t.Errorf("error %q is not one line starting with %q", s, src+": ")
	}
	if tensorName != "" && !strings.HasSuffix(s, "(tensor "+strconv.Quote(tensorName)+")") {
		t.Errorf("error %q does not name tensor %q", s, tensorName)
	}
	if !strings.Contains(s, msg) {
		t.Errorf("error %q does not say %q", s, msg)
	}
}

func TestBadHeaders(t *testing.T) {
	dir := t.TempDir()
	for _, c := range badHeaders {
		t.Run(c.name, func(t *testing.T) {
			b := fileOf(c.js, make([]byte, c.data))
			_, err := Parse(b, WithSource("upload"))
			checkError(t, err, c.sentinel, "upload", c.tensor, c.msg)

			path := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "_")+".safetensors")
			if err := os.WriteFile(path, b, 0o644); err != nil {
				t.Fatal(err)
			}
			_, err = Open(path)
			checkError(t, err, c.sentinel, path, c.tensor, c.msg)
			_, err = ReadHeader(path)
			checkError(t, err, c.sentinel, path, c.tensor, c.msg)
		})
	}
}

// Unknown keys in a tensor entry are skipped, as serde skips them in the reference.
func TestUnknownKeysIgnored(t *testing.T) {
	js := `{"w":{"extra":{"a":[1,{"b":null}]},"dtype":"F32","shape":[2],"more":"x","data_offsets":[0,8]}}`
	s, err := Parse(fileOf(js, make([]byte, 8)))
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Layout(); len(got) != 1 || got[0].Name != "w" {
		t.Errorf("layout %v", got)
	}
}

// JSON whitespace may pad the header, as the reference's serde_json allows.
func TestTrailingWhitespace(t *testing.T) {
	if _, err := Parse(fileOf("{"+goodEntry+"} \t\r\n ", make([]byte, 8))); err != nil {
		t.Error(err)
	}
}

// Tensors are in header order, whatever their data offsets (issue 9 item 7: WriteFile lists
// them in Set order and lays the data out widest first); each views its own bytes.
func TestHeaderOrder(t *testing.T) {
	js := `{"c":{"dtype":"F16","shape":[1],"data_offsets":[12,14]},` +
		`"e2":{"dtype":"F32","shape":[0],"data_offsets":[12,12]},` +
		`"a":{"dtype":"F64","shape":[1],"data_offsets":[0,8]},` +
		`"e1":{"dtype":"F32","shape":[0],"data_offsets":[12,12]},` +
		`"b":{"dtype":"F32","shape":[],"data_offsets":[8,12]}}`
	data := make([]byte, 14)
	for i := range data {
		data[i] = byte(i)
	}
	s, err := Parse(fileOf(js, data))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range s.Layout() {
		names = append(names, f.Name)
	}
	if got := strings.Join(names, " "); got != "c e2 a e1 b" {
		t.Errorf("order %q, want c e2 a e1 b", got)
	}
	for _, c := range []struct {
		name string
		data []byte
	}{{"c", data[12:14]}, {"a", data[0:8]}, {"b", data[8:12]}, {"e1", nil}} {
		x, _ := s.Tensor(c.name)
		if !bytes.Equal(x.Bytes(), c.data) {
			t.Errorf("tensor %q views %v, want %v", c.name, x.Bytes(), c.data)
		}
	}
}

func TestHeaderSize(t *testing.T) {
	huge := binary.LittleEndian.AppendUint64(nil, 1<<63)
	cases := []struct {
		name string
		file []byte
		opts []Option
		msg  string
	}{
		{"empty file", nil, nil, "truncated: 0 bytes"},
		{"7 bytes", make([]byte, 7), nil, "truncated: 7 bytes"},
		{"2^63", append(huge, "{}"...), nil, "header length 9223372036854775808 is over the limit"},
		{"2^64-1", append(binary.LittleEndian.AppendUint64(nil, 1<<64-1), "{}"...), nil, "over the limit"},
		{"over max", fileOf(`{}          `, nil), []Option{WithMaxHeaderSize(8)}, "header length 12 is over the limit of 8"},
		{"beyond file", binary.LittleEndian.AppendUint64(nil, 3), nil, "truncated: header length 3 but only 0 bytes"},
	}
	dir := t.TempDir()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse(c.file, c.opts...)
			checkError(t, err, ErrHeaderSize, "safetensors", "", c.msg)
			path := filepath.Join(dir, "f")
			os.WriteFile(path, c.file, 0o644)
			_, err = Open(path, c.opts...)
			checkError(t, err, ErrHeaderSize, path, "", c.msg)
			_, err = ReadHeader(path, c.opts...)
			checkError(t, err, ErrHeaderSize, path, "", c.msg)
		})
	}
	if _, err := Parse(fileOf(`{}`, nil), WithMaxHeaderSize(0)); !errors.Is(err, ErrOption) || err.Error() != "invalid safetensors option: header size limit 0 is not positive" {
		t.Errorf("WithMaxHeaderSize(0): %v", err)
	}
}

// Every proper prefix of a valid file is rejected with a header size or offset error.
func TestTruncated(t *testing.T) {
	b := referenceFile(t, 0)
	dir := t.TempDir()
	path := filepath.Join(dir, "t.safetensors")
	for n := range len(b) {
		_, err := Parse(b[:n])
		if !errors.Is(err, ErrHeaderSize) && !errors.Is(err, ErrOffset) {
			t.Fatalf("prefix of %d bytes: %v, want ErrHeaderSize or ErrOffset", n, err)
		}
		os.WriteFile(path, b[:n], 0o644)
		if _, err := Open(path); !errors.Is(err, ErrHeaderSize) && !errors.Is(err, ErrOffset) {
			t.Fatalf("Open of a prefix of %d bytes: %v", n, err)
		}
	}
}

func TestOpenNotRegular(t *testing.T) {
	dir := t.TempDir()
	if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("Open of a directory: %v", err)
	}
	if _, err := Open(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Open of a missing file: %v", err)
	}
}

func TestCloseEmptiesTensors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.safetensors")
	if err := os.WriteFile(path, referenceFile(t, 0), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, populate := range []bool{true, false} {
		s, err := Open(path, WithPopulate(populate))
		if err != nil {
			t.Fatal(err)
		}
		if s.Source != path {
			t.Errorf("Source %q, want %q", s.Source, path)
		}
		w, _ := s.Tensor("layer.weight")
		if got := w.Float64s(); got[3] != 3.25 {
			t.Errorf("populate=%v: %v", populate, got)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if len(w.Bytes()) != 0 {
			t.Error("tensor still views the unmapped file after Close")
		}
	}
}
