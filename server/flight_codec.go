package server

import (
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/apache/arrow-go/v18/arrow/flight"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// flightCodec is the gRPC codec of the Flight service: protobuf, as gRPC's own codec, except
// for the messages that carry tensor bytes. gRPC's proto codec copies a received message twice
// (its frames into one buffer, then the bytes fields out of it) and a sent one once (into a
// buffer); for FlightData those copies are most of the work a DoPut costs beyond the socket.
// So:
//
//   - a DoPut message (putMessage) is decoded in place: its data_body stays in the frames gRPC
//     received it in (pooled buffers, referenced until the reader has copied them into the
//     update's batch buffer, then freed one by one);
//   - a FlightData is sent with its data_body as it is: only the fields before it are encoded,
//     the body follows as the caller's slice (do not modify it until Send has returned);
//   - a FlightData is received (a DoGet client) with one copy of its body, from the frames.
//
// Every other message is gRPC's proto codec's.
type flightCodec struct {
	proto encoding.CodecV2
	held  *atomic.Int64 // frames DoPut messages hold (nil: not counted)
}

// FlightCodec is the codec the server's Flight service uses, for Go clients too:
// grpc.WithDefaultCallOptions(grpc.ForceCodecV2(server.FlightCodec())) sends DoPut messages
// without copying their bodies (and receives DoGet's with one copy instead of two).
func FlightCodec() encoding.CodecV2 {
	return flightCodec{proto: encoding.GetCodecV2("proto")}
}

// Name is "proto": the wire format is protobuf's, so peers see no difference.
func (flightCodec) Name() string { return "proto" }

// FlightData's fields (Flight.proto).
const (
	fdDescriptor  protowire.Number = 1
	fdDataHeader  protowire.Number = 2
	fdAppMetadata protowire.Number = 3
	fdDataBody    protowire.Number = 1000
)

func (c flightCodec) Marshal(v any) (mem.BufferSlice, error) {
	d, ok := v.(*flight.FlightData)
	if !ok || len(d.GetDataBody()) == 0 {
		return c.proto.Marshal(v)
	}
	var head []byte
	if d.FlightDescriptor != nil {
		desc, err := proto.Marshal(d.FlightDescriptor)
		if err != nil {
			return nil, err
		}
		head = protowire.AppendTag(head, fdDescriptor, protowire.BytesType)
		head = protowire.AppendBytes(head, desc)
	}
	if len(d.DataHeader) > 0 {
		head = protowire.AppendTag(head, fdDataHeader, protowire.BytesType)
		head = protowire.AppendBytes(head, d.DataHeader)
	}
	if len(d.AppMetadata) > 0 {
		head = protowire.AppendTag(head, fdAppMetadata, protowire.BytesType)
		head = protowire.AppendBytes(head, d.AppMetadata)
	}
	head = protowire.AppendTag(head, fdDataBody, protowire.BytesType)
	head = protowire.AppendVarint(head, uint64(len(d.DataBody)))
	return mem.BufferSlice{mem.SliceBuffer(head), mem.SliceBuffer(d.DataBody)}, nil
}

func (c flightCodec) Unmarshal(data mem.BufferSlice, v any) error {
	switch m := v.(type) {
	case *putMessage:
		// A malformed message is the client's fault, said by the DoPut handler: an error here
		// would reach the client as gRPC's Internal.
		m.held = c.held
		m.err = m.decode(data)
		return nil
	case *flight.FlightData:
		var pm putMessage
		if err := pm.decode(data); err != nil {
			return err
		}
		defer pm.free()
		m.Reset()
		m.FlightDescriptor, m.DataHeader, m.AppMetadata = pm.desc, pm.header, pm.app
		if n := pm.body.Len(); n > 0 {
			m.DataBody = make([]byte, n)
			pm.body.CopyTo(m.DataBody)
		}
		return nil
	}
	return c.proto.Unmarshal(data, v)
}

// putMessage is a FlightData as a DoPut receives it: the small fields copied out, the body
// views of the frames it arrived in, each holding its frame until freed.
type putMessage struct {
	desc   *flight.FlightDescriptor
	header []byte
	app    []byte
	body   mem.BufferSlice
	held   *atomic.Int64
	err    error // the message is not a valid FlightData
}

// freeFirst lets the body's first frame go back to gRPC's pool.
func (m *putMessage) freeFirst() {
	m.body[0].Free()
	m.body = m.body[1:]
	if m.held != nil {
		m.held.Add(-1)
	}
}

// free lets the rest of the body's frames go.
func (m *putMessage) free() {
	if m.held != nil {
		m.held.Add(-int64(len(m.body)))
	}
	m.body.Free()
	m.body = nil
}

// errWire: a FlightData that is not valid protobuf.
var errWire = errors.New("malformed FlightData")

// decode reads the protobuf encoding of a FlightData from the frames in data. Like protobuf, it
// takes fields in any order, the last of a repeated scalar field, merges repeated descriptors
// and skips unknown fields.
func (m *putMessage) decode(data mem.BufferSlice) (err error) {
	defer func() {
		if err != nil {
			m.free()
		}
	}()
	w := wire{bufs: data, left: data.Len()}
	for w.left > 0 {
		tag, err := w.varint()
		if err != nil {
			return err
		}
		num, typ := protowire.DecodeTag(tag)
		if num < protowire.MinValidNumber || num > protowire.MaxValidNumber {
			return fmt.Errorf("%w: field number %d", errWire, num)
		}
		if typ != protowire.BytesType {
			if err := w.skip(typ); err != nil {
				return err
			}
			continue
		}
		n, err := w.varint()
		if err != nil {
			return err
		}
		if n > uint64(w.left) {
			return fmt.Errorf("%w: field %d of %d bytes, %d left in the message", errWire, num, n, w.left)
		}
		switch num {
		case fdDescriptor:
			if m.desc == nil {
				m.desc = &flight.FlightDescriptor{}
			}
			if err := (proto.UnmarshalOptions{Merge: true}).Unmarshal(w.copy(int(n)), m.desc); err != nil {
				return fmt.Errorf("%w: flight_descriptor: %v", errWire, err)
			}
		case fdDataHeader:
			m.header = w.copy(int(n))
		case fdAppMetadata:
			m.app = w.copy(int(n))
		case fdDataBody:
			m.free()
			m.body = w.view(int(n))
			if m.held != nil {
				m.held.Add(int64(len(m.body)))
			}
		default:
			w.advance(int(n))
		}
	}
	return nil
}

// wire walks the protobuf encoding of a message spread over gRPC's frames.
type wire struct {
	bufs mem.BufferSlice
	i    int // frame
	off  int // in bufs[i]
	left int // bytes after the position
}

func (w *wire) byte() byte {
	for w.off == w.bufs[w.i].Len() {
		w.i, w.off = w.i+1, 0
	}
	b := w.bufs[w.i].ReadOnlyData()[w.off]
	w.off++
	w.left--
	return b
}

func (w *wire) varint() (uint64, error) {
	var v uint64
	for shift := 0; shift < 64; shift += 7 {
		if w.left == 0 {
			return 0, fmt.Errorf("%w: truncated varint", errWire)
		}
		b := w.byte()
		if shift == 63 && b > 1 {
			return 0, fmt.Errorf("%w: varint over 64 bits", errWire)
		}
		v |= uint64(b&0x7f) << shift
		if b < 0x80 {
			return v, nil
		}
	}
	return 0, fmt.Errorf("%w: varint over 64 bits", errWire) // not reached: the 10th byte ends it
}

// skip passes over a field of wire type typ that is not BytesType.
func (w *wire) skip(typ protowire.Type) error {
	switch typ {
	case protowire.VarintType:
		_, err := w.varint()
		return err
	case protowire.Fixed32Type, protowire.Fixed64Type:
		n := 4
		if typ == protowire.Fixed64Type {
			n = 8
		}
		if w.left < n {
			return fmt.Errorf("%w: truncated fixed-size field", errWire)
		}
		w.advance(n)
		return nil
	}
	return fmt.Errorf("%w: wire type %d", errWire, typ)
}

// advance moves n bytes on (n <= w.left).
func (w *wire) advance(n int) {
	w.left -= n
	for n > 0 {
		k := min(n, w.bufs[w.i].Len()-w.off)
		w.off += k
		n -= k
		if w.off == w.bufs[w.i].Len() && n > 0 {
			w.i, w.off = w.i+1, 0
		}
	}
}

// copy returns the next n bytes (n <= w.left) in a new slice.
func (w *wire) copy(n int) []byte {
	out := make([]byte, n)
	for k := 0; k < n; {
		if w.off == w.bufs[w.i].Len() {
			w.i, w.off = w.i+1, 0
			continue
		}
		c := copy(out[k:], w.bufs[w.i].ReadOnlyData()[w.off:])
		k += c
		w.off += c
	}
	w.left -= n
	return out
}

// view returns the next n bytes (n <= w.left) as views of the frames, each holding a
// reference to its frame.
func (w *wire) view(n int) mem.BufferSlice {
	var out mem.BufferSlice
	w.left -= n
	for n > 0 {
		if w.off == w.bufs[w.i].Len() {
			w.i, w.off = w.i+1, 0
			continue
		}
		k := min(n, w.bufs[w.i].Len()-w.off)
		out = append(out, w.bufs[w.i].Slice(w.off, w.off+k))
		w.off += k
		n -= k
	}
	return out
}
