package tensor

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"math"
	"slices"
	"strings"
	"testing"
	"unsafe"
)

func TestDType(t *testing.T) {
	cases := []struct {
		d          DType
		size       int
		name, st   string
		real       bool
		parseNames []string
	}{
		{F32, 4, "f32", "F32", true, []string{"f32", "F32"}},
		{F64, 8, "f64", "F64", true, []string{"f64", "F64"}},
		{F16, 2, "f16", "F16", true, []string{"f16", "F16"}},
		{BF16, 2, "bf16", "BF16", true, []string{"bf16", "BF16", "Bf16"}},
		{I8, 1, "i8", "I8", true, []string{"i8", "I8"}},
		{U32, 4, "u32", "U32", false, []string{"u32", "U32"}},
		{I64, 8, "i64", "I64", false, []string{"i64", "I64"}},
	}
	for _, c := range cases {
		if c.d.Size() != c.size || c.d.String() != c.name || c.d.SafetensorsName() != c.st || c.d.Real() != c.real || !c.d.Valid() {
			t.Errorf("%d: size %d name %q st %q real %v", c.d, c.d.Size(), c.d.String(), c.d.SafetensorsName(), c.d.Real())
		}
		for _, n := range c.parseNames {
			if d, err := ParseDType(n); d != c.d || err != nil {
				t.Errorf("ParseDType(%q) = %v, %v", n, d, err)
			}
		}
	}
	for _, d := range []DType{Invalid, DType(8), DType(255)} {
		if d.Valid() || d.Real() || d.Size() != 0 || d.SafetensorsName() != "" {
			t.Errorf("%v is valid", d)
		}
		if _, err := d.MarshalText(); !errors.Is(err, ErrDType) {
			t.Errorf("MarshalText(%v): %v", d, err)
		}
	}
	if s := DType(9).String(); s != "dtype(9)" {
		t.Errorf("String of an invalid dtype: %q", s)
	}
	if _, err := ParseDType("f8"); !errors.Is(err, ErrDType) || !strings.Contains(err.Error(), `"f8"`) {
		t.Errorf("ParseDType(f8): %v", err)
	}
	b, err := json.Marshal(map[string]DType{"x": BF16})
	if err != nil || string(b) != `{"x":"bf16"}` {
		t.Errorf("json: %s %v", b, err)
	}
	var m map[string]DType
	if err := json.Unmarshal([]byte(`{"x":"I8"}`), &m); err != nil || m["x"] != I8 {
		t.Errorf("json: %v %v", m, err)
	}
	if err := json.Unmarshal([]byte(`{"x":"int8"}`), &m); !errors.Is(err, ErrDType) {
		t.Errorf("json of a bad dtype: %v", err)
	}
}

func TestNew(t *testing.T) {
	shape := []int{3, 5}
	x, err := New("w", F16, shape...)
	if err != nil {
		t.Fatal(err)
	}
	shape[0] = 99
	if x.Name != "w" || x.DType != F16 || !slices.Equal(x.Shape, []int{3, 5}) || x.Scale != 1 || x.Len() != 15 {
		t.Errorf("New: %+v", x)
	}
	if len(x.Bytes()) != 30 || !IsAligned(x.Bytes(), Alignment) || slices.ContainsFunc(x.Bytes(), func(b byte) bool { return b != 0 }) {
		t.Errorf("New: %d bytes, aligned %v, want 30 zeroed aligned bytes", len(x.Bytes()), IsAligned(x.Bytes(), Alignment))
	}
	if f := x.Field(); f.Name != "w" || f.DType != F16 || f.Len() != 15 {
		t.Errorf("Field: %+v", f)
	}
	s, err := New("s", F64)
	if err != nil || s.Len() != 1 || len(s.Shape) != 0 {
		t.Errorf("scalar: %+v %v", s, err)
	}
	e, err := New("e", U32, 4, 0)
	if err != nil || e.Len() != 0 {
		t.Errorf("empty: %+v %v", e, err)
	}
	for _, c := range []struct {
		dt       DType
		shape    []int
		sentinel error
		msg      string
	}{
		{F32, []int{2, -1}, ErrShape, `tensor "x": invalid shape: negative dimension in [2 -1]`},
		{F32, []int{1 << 30, 1 << 30}, ErrShape, `tensor "x": invalid shape: [1073741824 1073741824] has more than 2^48 elements`},
		{F32, []int{1 << 62, 1 << 62, 0}, ErrShape, "more than 2^48"},
		{F32, []int{math.MaxInt, 2}, ErrShape, "more than 2^48"},
		{Invalid, []int{1}, ErrDType, `tensor "x": unsupported dtype: 0`},
		{DType(42), nil, ErrDType, "42"},
	} {
		_, err := New("x", c.dt, c.shape...)
		if !errors.Is(err, c.sentinel) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("New(%v, %v): %v, want %v saying %q", c.dt, c.shape, err, c.sentinel, c.msg)
		}
	}
	if _, err := FromBytes("x", I8, []int{1 << 24, 1 << 24}, nil); !errors.Is(err, ErrShape) || !strings.Contains(err.Error(), "needs 281474976710656 bytes") {
		t.Errorf("2^48 elements pass the shape check: %v", err)
	}
}

func TestFromBytes(t *testing.T) {
	data := make([]byte, 24)
	x, err := FromBytes("v", F32, []int{2, 3}, data)
	if err != nil {
		t.Fatal(err)
	}
	binary.LittleEndian.PutUint32(data[4:], math.Float32bits(2.5))
	if x.Value(1) != 2.5 {
		t.Error("FromBytes copied the data")
	}
	_, err = FromBytes("v", F32, []int{2, 3}, data[:20])
	if want := `tensor "v": invalid shape: shape [2 3] of f32 needs 24 bytes, have 20`; !errors.Is(err, ErrShape) || err.Error() != want {
		t.Errorf("length mismatch: %v, want %s", err, want)
	}
	if _, err := FromBytes("v", F32, []int{-1}, nil); !errors.Is(err, ErrShape) {
		t.Errorf("negative dimension: %v", err)
	}
	if _, err := FromBytes("v", F32, []int{1 << 40, 1 << 40}, nil); !errors.Is(err, ErrShape) {
		t.Errorf("overflow: %v", err)
	}
	if _, err := FromBytes("v", Invalid, nil, nil); !errors.Is(err, ErrDType) {
		t.Errorf("invalid dtype: %v", err)
	}

	f := []float32{1, 2, 3}
	xf, err := FromF32("f", []int{3}, f)
	if err != nil {
		t.Fatal(err)
	}
	f[2] = 7
	if v, _ := xf.F32(); &v[0] != &f[0] || xf.Value(2) != 7 {
		t.Error("FromF32 does not view its slice")
	}
	d := []float64{1, 2}
	xd, err := FromF64("d", []int{2, 1}, d)
	if err != nil || xd.Value(1) != 2 {
		t.Fatal(err)
	}
	if _, err := FromF32("f", []int{4}, f); !errors.Is(err, ErrShape) {
		t.Errorf("FromF32 length mismatch: %v", err)
	}
	if x, err := FromF32("f", []int{0}, nil); err != nil || len(x.Bytes()) != 0 {
		t.Errorf("FromF32 of nothing: %v", err)
	}
}

func TestTypedViews(t *testing.T) {
	buf := AlignedBytes(64)
	mk := func(dt DType, data []byte) *Tensor {
		t.Helper()
		x, err := FromBytes("x", dt, []int{len(data) / dt.Size()}, data)
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	if v, err := mk(F32, buf[:16]).F32(); err != nil || len(v) != 4 {
		t.Errorf("F32: %v %v", v, err)
	}
	if v, err := mk(F64, buf[:16]).F64(); err != nil || len(v) != 2 {
		t.Errorf("F64: %v %v", v, err)
	}
	for _, dt := range []DType{F16, BF16} {
		if v, err := mk(dt, buf[:6]).U16(); err != nil || len(v) != 3 {
			t.Errorf("U16 of %v: %v %v", dt, v, err)
		}
	}
	if v, err := mk(I8, buf[1:4]).I8(); err != nil || len(v) != 3 {
		t.Errorf("I8 at an odd address: %v %v", v, err)
	}
	if v, err := mk(U32, buf[:8]).U32(); err != nil || len(v) != 2 {
		t.Errorf("U32: %v %v", v, err)
	}
	// Wrong dtype.
	f32 := mk(F32, buf[:16])
	wrong := []func() error{
		func() error { _, err := f32.F64(); return err },
		func() error { _, err := f32.U16(); return err },
		func() error { _, err := f32.I8(); return err },
		func() error { _, err := f32.U32(); return err },
		func() error { _, err := mk(U32, buf[:4]).F32(); return err },
	}
	for i, f := range wrong {
		if err := f(); !errors.Is(err, ErrDType) {
			t.Errorf("wrong view %d: %v", i, err)
		}
	}
	if _, err := f32.F64(); err.Error() != `tensor "x": unsupported dtype: f64 view of f32` {
		t.Errorf("message: %v", err)
	}
	// Unaligned data.
	unaligned := []func() error{
		func() error { _, err := mk(F32, buf[2:10]).F32(); return err },
		func() error { _, err := mk(F64, buf[4:12]).F64(); return err },
		func() error { _, err := mk(BF16, buf[1:3]).U16(); return err },
		func() error { _, err := mk(U32, buf[6:10]).U32(); return err },
	}
	for i, f := range unaligned {
		if err := f(); !errors.Is(err, ErrUnaligned) {
			t.Errorf("unaligned view %d: %v", i, err)
		}
	}
	// Empty tensors give empty, non-nil views whatever the address.
	if v, err := mk(F64, buf[3:3]).F64(); err != nil || v == nil || len(v) != 0 {
		t.Errorf("empty F64 view: %v %v", v, err)
	}
}

func TestValue(t *testing.T) {
	le := binary.LittleEndian
	cases := []struct {
		dt   DType
		enc  func(b []byte)
		want float64
	}{
		{F32, func(b []byte) { le.PutUint32(b, math.Float32bits(-1.5)) }, -1.5},
		{F64, func(b []byte) { le.PutUint64(b, math.Float64bits(1e300)) }, 1e300},
		{F16, func(b []byte) { le.PutUint16(b, 0xc500) }, -5},
		{F16, func(b []byte) { le.PutUint16(b, 0x0001) }, math.Ldexp(1, -24)},
		{BF16, func(b []byte) { le.PutUint16(b, 0x4049) }, 3.140625},
		{I8, func(b []byte) { b[0] = 0x83 }, -125 * 0.25},
		{U32, func(b []byte) { le.PutUint32(b, 0xffffffff) }, 4294967295},
	}
	for _, c := range cases {
		x, err := New("x", c.dt, 3)
		if err != nil {
			t.Fatal(err)
		}
		x.Scale = 1
		if c.dt == I8 {
			x.Scale = 0.25
		}
		c.enc(x.Bytes()[2*c.dt.Size():])
		if got := x.Value(2); got != c.want {
			t.Errorf("%v: Value = %v, want %v", c.dt, got, c.want)
		}
		if got := x.Float64s(); !slices.Equal(got, []float64{0, 0, c.want}) {
			t.Errorf("%v: Float64s = %v", c.dt, got)
		}
	}
}

func TestClone(t *testing.T) {
	x := must(New("x", I8, 2, 3))(t)
	x.Scale = 0.5
	x.Bytes()[4] = 9
	c := x.Clone()
	c.Bytes()[4] = 1
	c.Shape[0] = 7
	c.Name = "c"
	if x.Bytes()[4] != 9 || x.Shape[0] != 2 || x.Name != "x" {
		t.Error("changing the clone changed the original")
	}
	if c.Scale != 0.5 || c.DType != I8 || !IsAligned(c.Bytes(), Alignment) || len(c.Bytes()) != 6 {
		t.Errorf("clone %+v", c)
	}
	// A clone of a view owns its bytes.
	data := []byte{1, 2, 3, 4}
	v := must(FromBytes("v", U32, []int{1}, data))(t)
	vc := v.Clone()
	data[0] = 0
	if vc.Value(0) != 0x04030201 {
		t.Error("the clone of a view still views the data")
	}
}

func TestCheckFinite(t *testing.T) {
	le := binary.LittleEndian
	bad := []struct {
		dt  DType
		put func(b []byte, i int)
		v   float64
	}{
		{F32, func(b []byte, i int) { le.PutUint32(b[4*i:], math.Float32bits(float32(math.Inf(-1)))) }, math.Inf(-1)},
		{F32, func(b []byte, i int) { le.PutUint32(b[4*i:], 0x7fc00001) }, math.NaN()},
		{F64, func(b []byte, i int) { le.PutUint64(b[8*i:], math.Float64bits(math.Inf(1))) }, math.Inf(1)},
		{F64, func(b []byte, i int) { le.PutUint64(b[8*i:], 0xfff8000000000000) }, math.NaN()},
		{F16, func(b []byte, i int) { le.PutUint16(b[2*i:], 0x7c00) }, math.Inf(1)},
		{F16, func(b []byte, i int) { le.PutUint16(b[2*i:], 0xfe00) }, math.NaN()},
		{BF16, func(b []byte, i int) { le.PutUint16(b[2*i:], 0xff80) }, math.Inf(-1)},
		{BF16, func(b []byte, i int) { le.PutUint16(b[2*i:], 0x7f81) }, math.NaN()},
	}
	for _, c := range bad {
		for _, at := range []int{0, 5, 16} {
			x := must(New("w", c.dt, 17))(t)
			// Largest finite values around it must not count.
			for i := range 17 {
				switch c.dt {
				case F32:
					le.PutUint32(x.Bytes()[4*i:], math.Float32bits(-math.MaxFloat32))
				case F64:
					le.PutUint64(x.Bytes()[8*i:], math.Float64bits(math.MaxFloat64))
				case F16:
					le.PutUint16(x.Bytes()[2*i:], 0x7bff)
				case BF16:
					le.PutUint16(x.Bytes()[2*i:], 0xff7f)
				}
			}
			if err := x.CheckFinite(); err != nil {
				t.Fatalf("%v: finite tensor: %v", c.dt, err)
			}
			c.put(x.Bytes(), at)
			if later := at + 1; later < 17 {
				c.put(x.Bytes(), later) // only the first one is reported
			}
			err := x.CheckFinite()
			var nf *NonFiniteError
			if !errors.As(err, &nf) || !errors.Is(err, ErrNonFinite) {
				t.Fatalf("%v: %v, want a *NonFiniteError", c.dt, err)
			}
			if nf.Index != at || nf.Tensor != "w" || nf.Source != "" ||
				!(nf.Value == c.v || math.IsNaN(nf.Value) && math.IsNaN(c.v)) {
				t.Errorf("%v at %d: %+v", c.dt, at, nf)
			}
			if got := FirstNonFinite(c.dt, x.Bytes()); got != at {
				t.Errorf("FirstNonFinite(%v) = %d, want %d", c.dt, got, at)
			}
		}
	}
	for _, dt := range []DType{I8, U32} {
		x := must(New("q", dt, 8))(t)
		for i := range x.Bytes() {
			x.Bytes()[i] = 0xff
		}
		if err := x.CheckFinite(); err != nil {
			t.Errorf("%v: %v", dt, err)
		}
	}
	x := must(FromF32("w", []int{3}, []float32{1, float32(math.Inf(1)), 2}))(t)
	s := must(NewSet(x))(t)
	s.Source = "client-3"
	if err := s.CheckFinite(); err == nil || err.Error() != `client-3: tensor "w": non-finite value +Inf at element 1` {
		t.Errorf("Set.CheckFinite: %v", err)
	}
	if err := x.CheckFinite(); err.Error() != `tensor "w": non-finite value +Inf at element 1` {
		t.Errorf("Tensor.CheckFinite: %v", err)
	}
}

func TestAligned(t *testing.T) {
	for n := range 200 {
		b, f, d := AlignedBytes(n), AlignedF32(n), AlignedF64(n)
		if len(b) != n || cap(b) != n || len(f) != n || cap(f) != n || len(d) != n || cap(d) != n {
			t.Fatalf("n=%d: lengths %d %d %d", n, len(b), len(f), len(d))
		}
		if n > 0 && (!IsAligned(b, Alignment) || !IsAligned(asBytes(f), Alignment) || !IsAligned(asBytes(d), Alignment)) {
			t.Fatalf("n=%d: not %d-byte aligned", n, Alignment)
		}
	}
	for _, n := range []int{1, 100, PageSize - 1, PageSize, 3*PageSize + 5} {
		p := PageAligned(n)
		if len(p) != n || cap(p) != n || !IsAligned(p, PageSize) || slices.ContainsFunc(p, func(v byte) bool { return v != 0 }) {
			t.Fatalf("PageAligned(%d): %d bytes, cap %d, page-aligned %v", n, len(p), cap(p), IsAligned(p, PageSize))
		}
	}
	b := AlignedBytes(8)
	if IsAligned(b[1:], 2) || !IsAligned(b[2:], 2) || IsAligned(b[4:], 8) || !IsAligned(b[8:], 8) {
		t.Error("IsAligned")
	}
}

// TestAlignedColours checks that large buffers start on every colour in turn (Alignment·c
// bytes into a page, c < Colours), zeroed, with the length and capacity asked for.
func TestAlignedColours(t *testing.T) {
	offset := func(b []byte) int { return int(uintptr(unsafe.Pointer(unsafe.SliceData(b))) % PageSize) }
	seen := map[int]int{}
	for range 4 * Colours {
		for _, n := range []int{ColourFrom, ColourFrom + 3, 1 << 20} {
			b := AlignedBytes(n)
			f := AlignedF32(n / 4)
			d := AlignedF64(n / 8)
			for _, x := range [][]byte{b, asBytes(f), asBytes(d)} {
				off := offset(x)
				if off%Alignment != 0 || off >= Colours*Alignment || len(x) < n-7 || slices.ContainsFunc(x, func(v byte) bool { return v != 0 }) {
					t.Fatalf("n=%d: %d bytes at %d into a page", n, len(x), off)
				}
				seen[off/Alignment]++
			}
			if len(b) != n || cap(b) != n || len(f) != n/4 || cap(f) != n/4 || cap(d) != n/8 {
				t.Fatalf("n=%d: lengths %d %d %d, capacities %d %d %d", n, len(b), len(f), len(d), cap(b), cap(f), cap(d))
			}
		}
	}
	if len(seen) != Colours {
		t.Fatalf("colours used %v, want each of 0..%d", seen, Colours-1)
	}
}

func TestNewRefusesImpossibleAllocations(t *testing.T) {
	_, err := New("huge", F64, 1<<47)
	if !errors.Is(err, ErrShape) || err.Error() != `tensor "huge": invalid shape: [140737488355328] of f64 is more than 1 TiB` {
		t.Fatalf("err = %v", err)
	}
}
