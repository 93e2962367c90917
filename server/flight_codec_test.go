package server

import (
	"bytes"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/apache/arrow-go/v18/arrow/flight"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// framesOf cuts b into frames at random points (some empty), as gRPC hands a message to a
// codec; pooled frames (refcounted), so that a view kept past its frame's Free would panic.
func framesOf(b []byte, r *rand.Rand) mem.BufferSlice {
	var out mem.BufferSlice
	for len(b) > 0 || r.IntN(4) == 0 {
		n := min(len(b), r.IntN(40))
		if r.IntN(8) == 0 {
			n = min(len(b), r.IntN(3000)) // over gRPC's pooling threshold: a refcounted frame
		}
		buf := make([]byte, n)
		copy(buf, b[:n])
		out = append(out, mem.NewBuffer(&buf, mem.NopBufferPool{}))
		b = b[n:]
		if len(b) == 0 {
			break
		}
	}
	return out
}

// decodeFrames decodes b cut into random frames as the server does, and returns the message's
// fields with the body copied out, checking that every frame view is given back.
func decodeFrames(t *testing.T, b []byte, r *rand.Rand) (*flight.FlightData, error) {
	t.Helper()
	var held atomic.Int64
	c := flightCodec{proto: FlightCodec().(flightCodec).proto, held: &held}
	data := framesOf(b, r)
	var m putMessage
	if err := c.Unmarshal(data, &m); err != nil {
		t.Fatalf("Unmarshal of a putMessage failed (%v): it must leave refusals to the handler", err)
	}
	data.Free() // as gRPC does after Unmarshal: the views hold their own references
	if m.err != nil {
		if m.body != nil || held.Load() != 0 {
			t.Fatalf("a refused message holds %d frames", held.Load())
		}
		return nil, m.err
	}
	if held.Load() != int64(len(m.body)) {
		t.Fatalf("held %d, body of %d frames", held.Load(), len(m.body))
	}
	d := &flight.FlightData{FlightDescriptor: m.desc, DataHeader: m.header, AppMetadata: m.app}
	var body bytes.Buffer
	for len(m.body) > 0 {
		body.Write(m.body[0].ReadOnlyData())
		m.freeFirst()
	}
	if body.Len() > 0 {
		d.DataBody = body.Bytes()
	}
	if held.Load() != 0 {
		t.Fatalf("%d frames held after the body was read", held.Load())
	}
	return d, nil
}

// sameData compares two FlightData field by field (nil and empty alike, as on the wire).
func sameData(a, b *flight.FlightData) bool {
	return proto.Equal(a.GetFlightDescriptor(), b.GetFlightDescriptor()) && bytes.Equal(a.GetDataHeader(), b.GetDataHeader()) &&
		bytes.Equal(a.GetAppMetadata(), b.GetAppMetadata()) && bytes.Equal(a.GetDataBody(), b.GetDataBody())
}

// TestFlightCodecRoundTrip: FlightData marshalled by the codec (body not copied) is what
// protobuf reads, and what protobuf writes the codec reads back, from any cut into frames; the
// DoGet path (Unmarshal into a FlightData) too. Other messages go through protobuf.
func TestFlightCodecRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	c := FlightCodec()
	cases := []*flight.FlightData{
		{DataHeader: []byte{1, 2, 3}, DataBody: bytes.Repeat([]byte{7}, 300)},
		{DataHeader: []byte{1, 2, 3}, DataBody: bytes.Repeat([]byte{8, 9, 10}, 5000)},
		{FlightDescriptor: &flight.FlightDescriptor{Type: flight.DescriptorPATH, Path: []string{"rounds", "3"}},
			DataHeader: bytes.Repeat([]byte{9}, 200), AppMetadata: []byte("meta"), DataBody: []byte{0}},
		{FlightDescriptor: &flight.FlightDescriptor{Type: flight.DescriptorCMD, Cmd: []byte("x")}, DataHeader: []byte{4}},
		{AppMetadata: []byte("only metadata")},
		{},
	}
	for i, d := range cases {
		bs, err := c.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		wire := bs.Materialize()
		var viaProto flight.FlightData
		if err := proto.Unmarshal(wire, &viaProto); err != nil || !sameData(&viaProto, d) {
			t.Fatalf("case %d: protobuf reads %v (%v), want %v", i, &viaProto, err, d)
		}
		std, err := proto.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		for range 20 {
			got, err := decodeFrames(t, std, r)
			if err != nil || !sameData(got, d) {
				t.Fatalf("case %d: decoded %v (%v), want %v", i, got, err, d)
			}
			var fd flight.FlightData
			if err := c.Unmarshal(framesOf(std, r), &fd); err != nil || !sameData(&fd, d) {
				t.Fatalf("case %d: FlightData %v (%v), want %v", i, &fd, err, d)
			}
		}
	}
	// A message that is not FlightData goes through protobuf both ways.
	res := &flight.PutResult{AppMetadata: []byte(`{"seq":1}`)}
	bs, err := c.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	var back flight.PutResult
	if err := c.Unmarshal(bs, &back); err != nil || !proto.Equal(&back, res) {
		t.Fatalf("PutResult %v (%v)", &back, err)
	}
}

// TestFlightCodecRefuses: what the decoder refuses, with errWire, and what it takes as
// protobuf does (unknown fields skipped, the last of a repeated bytes field, descriptors
// merged).
func TestFlightCodecRefuses(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	body := protowire.AppendTag(nil, fdDataBody, protowire.BytesType)
	body = protowire.AppendBytes(body, []byte("abcdef"))
	for _, tc := range []struct {
		name string
		b    []byte
		msg  string
	}{
		{"truncated tag", []byte{0xC2}, "truncated varint"},
		{"field 0", protowire.AppendTag(nil, 0, protowire.VarintType), "field number 0"},
		{"long varint", bytes.Repeat([]byte{0xFF}, 11), "varint over 64 bits"},
		{"body past the end", body[:len(body)-1], "field 1000 of 6 bytes, 5 left"},
		{"group", protowire.AppendTag(nil, 7, protowire.StartGroupType), "wire type 3"},
		{"short fixed64", append(protowire.AppendTag(nil, 9, protowire.Fixed64Type), 1, 2, 3), "truncated fixed-size field"},
		{"bad descriptor", append(protowire.AppendTag(nil, fdDescriptor, protowire.BytesType), 2, 0xFF, 0xFF), "flight_descriptor"},
	} {
		_, err := decodeFrames(t, tc.b, r)
		if err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Fatalf("%s: %v, want %q", tc.name, err, tc.msg)
		}
		if proto.Unmarshal(tc.b, &flight.FlightData{}) == nil && tc.name != "group" {
			t.Fatalf("%s: protobuf takes it", tc.name)
		}
	}
	// Unknown fields of every wire type but groups, a second header and body, two descriptors.
	var b []byte
	b = protowire.AppendTag(b, 50, protowire.VarintType)
	b = protowire.AppendVarint(b, 1<<40)
	b = protowire.AppendTag(b, 51, protowire.Fixed32Type)
	b = protowire.AppendFixed32(b, 5)
	b = protowire.AppendTag(b, 52, protowire.Fixed64Type)
	b = protowire.AppendFixed64(b, 6)
	b = protowire.AppendTag(b, 53, protowire.BytesType)
	b = protowire.AppendBytes(b, []byte("unknown"))
	for _, h := range []string{"first", "second"} {
		b = protowire.AppendTag(b, fdDataHeader, protowire.BytesType)
		b = protowire.AppendBytes(b, []byte(h))
		b = protowire.AppendTag(b, fdDataBody, protowire.BytesType)
		b = protowire.AppendBytes(b, []byte(h+" body"))
	}
	for _, d := range []*flight.FlightDescriptor{{Type: flight.DescriptorPATH}, {Path: []string{"rounds", "2"}}} {
		db, err := proto.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		b = protowire.AppendTag(b, fdDescriptor, protowire.BytesType)
		b = protowire.AppendBytes(b, db)
	}
	var want flight.FlightData
	if err := proto.Unmarshal(b, &want); err != nil {
		t.Fatal(err)
	}
	got, err := decodeFrames(t, b, r)
	if err != nil || !sameData(got, &want) || string(got.DataBody) != "second body" || got.FlightDescriptor.GetType() != flight.DescriptorPATH {
		t.Fatalf("decoded %v (%v), protobuf %v", got, err, &want)
	}
}

// FuzzFlightDecode compares the DoPut decoder with protobuf on any bytes cut into any frames:
// what one takes the other takes, with the same fields (groups, which no FlightData has, the
// decoder refuses), and no frame is held after a refusal or after the body is read.
func FuzzFlightDecode(f *testing.F) {
	d := &flight.FlightData{FlightDescriptor: &flight.FlightDescriptor{Type: flight.DescriptorPATH, Path: []string{"rounds", "1"}},
		DataHeader: []byte("header"), AppMetadata: []byte("app"), DataBody: bytes.Repeat([]byte{3}, 100)}
	seed, err := proto.Marshal(d)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed, uint64(1))
	f.Add(seed[:len(seed)-3], uint64(2))
	f.Add([]byte{0xC2, 0x3E, 0x02, 1, 2}, uint64(3))
	f.Fuzz(func(t *testing.T, b []byte, cut uint64) {
		r := rand.New(rand.NewPCG(cut, 0))
		got, err := decodeFrames(t, b, r)
		var want flight.FlightData
		perr := proto.Unmarshal(b, &want)
		switch {
		case err == nil && perr != nil:
			t.Fatalf("decoded %v; protobuf refuses: %v", got, perr)
		case err != nil && perr == nil && !strings.Contains(err.Error(), "wire type"):
			t.Fatalf("refused (%v); protobuf reads %v", err, &want)
		case err == nil && !sameData(got, &want):
			t.Fatalf("decoded %v, protobuf %v", got, &want)
		}
	})
}

// The Flight server's buffer pool hands back what it was given for both sizes gRPC asks for
// (frames and connection reads), without clearing, and makes other sizes.
func TestFramePoolReusesFramesAndReads(t *testing.T) {
	var p framePool
	for _, n := range []int{100, frameBytes, frameBytes + 1, flightReadBuffer} {
		// A sync.Pool may drop what it is given (a collection, or at random under -race):
		// try until a buffer comes back.
		reused := false
		for range 100 {
			b := p.Get(n)
			if len(*b) != n {
				t.Fatalf("Get(%d): %d bytes", n, len(*b))
			}
			(*b)[0] = 42
			p.Put(b)
			c := p.Get(n)
			if reused = &(*c)[0] == &(*b)[0] && (*c)[0] == 42; reused {
				break
			}
			p.Put(c)
		}
		if !reused {
			t.Fatalf("a %d-byte buffer was never reused", n)
		}
	}
	if b := p.Get(flightReadBuffer + 1); len(*b) != flightReadBuffer+1 {
		t.Fatal("a larger buffer")
	}
}
