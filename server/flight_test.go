package server

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow/flight"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/wattagg/wattagg/server/api"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/arrowio"
)

// serveFlight serves the server's Flight endpoint on a loopback port until the test ends and
// returns its address.
func serveFlight(t *testing.T, ts *testServer) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ts.ServeFlight(ctx, ln, 5*time.Second) }()
	t.Cleanup(func() { cancel(); <-done })
	return ln.Addr().String()
}

// flightClient connects to the server's Flight endpoint, serving it on a loopback port.
func flightClient(t *testing.T, ts *testServer) flight.Client {
	t.Helper()
	c, err := flight.NewClientWithMiddleware(serveFlight(t, ts), nil, nil, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// flightPut sends s as an update of round over Flight with token (and weight, when not "");
// stall stops after the schema message and waits for the server.
func flightPut(t *testing.T, c flight.Client, token string, round string, s *tensor.Set, weight string, stall bool) (api.Ack, error) {
	t.Helper()
	msgs := flightMessages(t, s, round, 4096)
	if stall {
		msgs = msgs[:1]
	}
	return flightSend(t, c, token, msgs, weight, !stall)
}

// flightMessages cuts s's IPC stream, in batches of batch bytes of tensor data, into Flight
// messages, the first with round's descriptor.
func flightMessages(t testing.TB, s *tensor.Set, round string, batch int) []*flight.FlightData {
	t.Helper()
	var buf bytes.Buffer
	if err := arrowio.WriteSet(&buf, s, arrowio.WithBatchBytes(batch)); err != nil {
		t.Fatal(err)
	}
	var msgs []*flight.FlightData
	if err := SendIPC(&buf, func(d *flight.FlightData) error {
		msgs = append(msgs, d)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	msgs[0].FlightDescriptor = &flight.FlightDescriptor{Type: flight.DescriptorPATH, Path: []string{"rounds", round}}
	return msgs
}

// flightSend sends msgs on a DoPut with token (and weight, when not "") and returns the
// acknowledgement or the call's status; without end, it does not close its side and waits.
func flightSend(t testing.TB, c flight.Client, token string, msgs []*flight.FlightData, weight string, end bool) (api.Ack, error) {
	t.Helper()
	md := metadata.New(nil)
	if token != "" {
		md.Set("authorization", "Bearer "+token)
	}
	if weight != "" {
		md.Set("x-wattagg-weight", weight)
	}
	ctx, cancel := context.WithCancel(metadata.NewOutgoingContext(context.Background(), md))
	defer cancel()
	stream, err := c.DoPut(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range msgs {
		// A Send that fails (io.EOF) means the server ended the call: Recv tells why.
		if err := stream.Send(d); err != nil {
			if err != io.EOF {
				t.Fatal(err)
			}
			break
		}
	}
	if end {
		stream.CloseSend()
	}
	res, err := stream.Recv()
	if err != nil {
		return api.Ack{}, err
	}
	var ack api.Ack
	if err := json.Unmarshal(res.GetAppMetadata(), &ack); err != nil {
		t.Fatal(err)
	}
	return ack, nil
}

// wantCode checks a gRPC status code and message.
func wantCode(t *testing.T, err error, code codes.Code, msg string) {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != code || !strings.Contains(st.Message(), msg) {
		t.Fatalf("error %v, want %s with %q", err, code, msg)
	}
}

// TestFlight pushes updates over Arrow Flight beside HTTP into one round: the same checks and
// statuses (as gRPC codes), a stalled stream cut at the idle timeout, and the model read back
// with DoGet equal to the one served over HTTP.
func TestFlight(t *testing.T) {
	leakCheck(t)
	cfg, tokens, admin := testConfig(t, 3)
	cfg.Round.MaxClients = 2
	cfg.Limits.IdleTimeout = Duration(300 * time.Millisecond)
	ts := startServer(t, cfg, tokens, admin)
	c := flightClient(t, ts)
	shapes := [][]int{{64, 32}, {100}}
	u0 := f32Set(t, shapes, func(tn, i int) float32 { return float32(tn*1000+i) * 0.5 })

	_, err := flightPut(t, c, "", "1", u0, "", false)
	wantCode(t, err, codes.Unauthenticated, "no bearer token")
	_, err = flightPut(t, c, tokens["c0"], "9", u0, "", false)
	wantCode(t, err, codes.NotFound, "round 9")
	nan := f32Set(t, shapes, func(tn, i int) float32 {
		if tn == 1 && i == 42 {
			return float32(math.NaN())
		}
		return 1
	})
	_, err = flightPut(t, c, tokens["c0"], "1", nan, "", false)
	wantCode(t, err, codes.InvalidArgument, `tensor "w1": non-finite value NaN at element 42`)
	_, err = flightPut(t, c, tokens["c0"], "1", u0, "", true)
	wantCode(t, err, codes.DeadlineExceeded, "idle_timeout")

	// Garbage where the schema message should be.
	md := metadata.Pairs("authorization", "Bearer "+tokens["c0"])
	gs, err := c.DoPut(metadata.NewOutgoingContext(context.Background(), md))
	if err != nil {
		t.Fatal(err)
	}
	gs.Send(&flight.FlightData{FlightDescriptor: &flight.FlightDescriptor{Type: flight.DescriptorPATH, Path: []string{"rounds", "1"}},
		DataHeader: []byte("definitely not a flatbuffer"), DataBody: []byte{1, 2, 3}})
	gs.CloseSend()
	_, err = gs.Recv()
	wantCode(t, err, codes.InvalidArgument, "c0")
	if st, _ := ts.Status(1); st.Clients != 0 || st.Arriving != 0 {
		t.Fatalf("round changed: %+v", st)
	}

	ack, err := flightPut(t, c, tokens["c0"], "1", u0, "2", false)
	if err != nil || ack.Client != "c0" || ack.Weight != 2 || ack.Seq != 0 {
		t.Fatalf("flight push: %+v %v", ack, err)
	}
	other := f32Set(t, [][]int{{64, 32}, {99}}, func(int, int) float32 { return 1 })
	_, err = flightPut(t, c, tokens["c1"], "1", other, "1", false)
	wantCode(t, err, codes.InvalidArgument, "w1")
	ts.push(t, "c1", 1, encode(t, f32Set(t, shapes, func(tn, i int) float32 { return float32(i) }), nil), map[string]string{api.WeightHeader: "1"})
	ts.waitState(t, 1, api.StateClosed)

	// DoGet: the model as an IPC stream, equal to the model file.
	stream, err := c.DoGet(context.Background(), &flight.Ticket{Ticket: []byte("rounds/1")})
	if err != nil {
		t.Fatal(err)
	}
	var ipc bytes.Buffer
	for {
		d, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		h := d.GetDataHeader()
		pad := (8 - len(h)%8) % 8
		var pre [8]byte
		binary.LittleEndian.PutUint32(pre[:], 0xFFFFFFFF)
		binary.LittleEndian.PutUint32(pre[4:], uint32(len(h)+pad))
		ipc.Write(pre[:])
		ipc.Write(h)
		ipc.Write(make([]byte, pad))
		ipc.Write(d.GetDataBody())
	}
	ipc.Write([]byte{0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0})
	got, err := arrowio.ReadStream(&ipc)
	if err != nil {
		t.Fatal(err)
	}
	want := ts.readModel(t, 1)
	if got.Len() != want.Len() {
		t.Fatalf("%d tensors, want %d", got.Len(), want.Len())
	}
	for i := range want.Len() {
		if !bytes.Equal(got.At(i).Bytes(), want.At(i).Bytes()) {
			t.Fatalf("tensor %s differs", want.At(i).Name)
		}
	}
	// ListFlights: round 1.
	lf, err := c.ListFlights(context.Background(), &flight.Criteria{})
	if err != nil {
		t.Fatal(err)
	}
	info, err := lf.Recv()
	if err != nil || string(info.GetEndpoint()[0].GetTicket().GetTicket()) != "rounds/1" {
		t.Fatalf("list: %v %v", info, err)
	}
	if _, err := lf.Recv(); err != io.EOF {
		t.Fatalf("a second flight: %v", err)
	}
	// DoAction: status for anyone; open needs the admin.
	act, err := c.DoAction(context.Background(), &flight.Action{Type: "status", Body: []byte("1")})
	if err != nil {
		t.Fatal(err)
	}
	res, err := act.Recv()
	var st api.Round
	if err != nil || json.Unmarshal(res.GetBody(), &st) != nil || st.State != api.StateClosed || len(st.Updates) != 2 {
		t.Fatalf("status action: %+v %v", st, err)
	}
	for {
		if _, err := act.Recv(); err != nil {
			break
		}
	}
	act, err = c.DoAction(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tokens["c0"]), &flight.Action{Type: "close", Body: []byte("2")})
	if err == nil {
		_, err = act.Recv()
	}
	wantCode(t, err, codes.PermissionDenied, "not the admin")
}

// flightServe serves ts's Flight on a loopback port until the test ends, and returns a client
// (dialled with opts) and the service, whose buffers the test can count.
func flightServe(t *testing.T, ts *testServer, opts ...grpc.DialOption) (flight.Client, *flightService) {
	t.Helper()
	gs, svc, err := ts.flightServer()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- gs.Serve(ln) }()
	opts = append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)
	c, err := flight.NewClientWithMiddleware(ln.Addr().String(), nil, nil, opts...)
	if err != nil {
		gs.Stop()
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); gs.Stop(); <-done })
	return c, svc
}

// waitBuffers waits until DoPut messages hold no frame and readers no body buffer.
func waitBuffers(t *testing.T, svc *flightService) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for svc.held.Load() != 0 || svc.bodies.out.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("buffers not given back: %d frames, %d bodies", svc.held.Load(), svc.bodies.out.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitUnchanged waits until round 1 has no upload arriving and checks it has no update.
func waitUnchanged(t *testing.T, ts *testServer) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := ts.Status(1)
		if err != nil || st.Clients != 0 {
			t.Fatalf("round changed: %+v %v", st, err)
		}
		if st.Arriving == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("an upload still arriving: %+v", st)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestFlightBatchOverLimit sends batches, and a schema, larger than a Flight message may be
// (limits.chunk_bytes + 64 KiB): the call is refused with ResourceExhausted naming the limit,
// from the message's length prefix (nothing of it is read), and the round is unchanged; the
// same update in batches within the limit is then accepted.
func TestFlightBatchOverLimit(t *testing.T) {
	leakCheck(t)
	cfg, tokens, admin := testConfig(t, 2)
	cfg.Limits.ChunkBytes = 64 << 10
	ts := startServer(t, cfg, tokens, admin)
	c, svc := flightServe(t, ts)
	u := f32Set(t, [][]int{{256 << 10}}, func(_, i int) float32 { return float32(i % 13) })

	_, err := flightSend(t, c, tokens["c0"], flightMessages(t, u, "1", 256<<10), "", true)
	wantCode(t, err, codes.ResourceExhausted, "received message larger than max (262")
	// gRPC answers from the length prefix, while the handler lets the upload go.
	waitUnchanged(t, ts)
	spool, err := os.ReadDir(filepath.Join(cfg.DataDir, "rounds", "000001", "spool"))
	if err != nil {
		t.Fatal(err)
	}
	if len(spool) != 0 {
		t.Fatalf("spool files left: %v", spool)
	}

	// A layout whose schema message is over the limit (3000 tensors of long names).
	shapes := make([][]int, 3000)
	for i := range shapes {
		shapes[i] = []int{1}
	}
	many := f32Set(t, shapes, func(int, int) float32 { return 1 })
	for i := range many.Len() {
		many.At(i).Name = fmt.Sprintf("encoder.layers.%04d.self_attention.query_key_value.weight", i)
	}
	_, err = flightSend(t, c, tokens["c1"], flightMessages(t, many, "1", 4096), "", true)
	wantCode(t, err, codes.ResourceExhausted, "received message larger than max")
	waitUnchanged(t, ts)

	ack, err := flightSend(t, c, tokens["c0"], flightMessages(t, u, "1", 64<<10), "", true)
	if err != nil || ack.Client != "c0" || ack.Seq != 0 {
		t.Fatalf("push within the limit: %+v %v", ack, err)
	}
	waitBuffers(t, svc)
}

// TestFlightFloodHeap floods the server with 48 Flight clients pushing 4 MiB updates in 1 MiB
// batches at once through 6 stream slots: the others are told ResourceExhausted (busy) and
// retry; every update ends up in the round, every buffer is given back, and the heap never
// grows by more than the streams' messages and buffers and a margin, far below the 192 MiB
// sent.
func TestFlightFloodHeap(t *testing.T) {
	if testing.Short() {
		t.Skip("flood")
	}
	leakCheck(t)
	const clients, streams = 48, 6
	cfg, tokens, admin := testConfig(t, clients)
	cfg.Limits.MaxStreams = streams
	ts := startServer(t, cfg, tokens, admin)
	c, svc := flightServe(t, ts, grpc.WithDefaultCallOptions(grpc.ForceCodecV2(FlightCodec())))
	u := f32Set(t, [][]int{{1 << 20}}, func(_, i int) float32 { return float32(i % 7) })
	msgs := flightMessages(t, u, "1", DefaultChunkBytes)
	// The heap measured is what is held, not how late the collector runs: refused attempts
	// leave garbage that a loaded machine (CI running other tests) collects late, which the
	// default GOGC lets grow to the size of the live heap.
	defer debug.SetGCPercent(debug.SetGCPercent(20))
	growth := sampleHeapGrowth()
	var busy atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(60 * time.Second)
	errs := make(chan error, clients)
	for k := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("c%d", k)
			for try := 0; ; try++ {
				_, err := flightSend(t, c, tokens[id], msgs, "", true)
				st, _ := status.FromError(err)
				switch {
				case err == nil:
					return
				case st.Code() == codes.ResourceExhausted && strings.Contains(st.Message(), "max_streams") && try < 2000 && time.Now().Before(deadline):
					busy.Add(1)
					time.Sleep(time.Duration(5+k%10) * time.Millisecond)
				default:
					errs <- fmt.Errorf("%s: %v", id, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	grown := growth()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	st := ts.waitState(t, 1, api.StateClosed)
	if st.Clients != clients {
		t.Fatalf("%d updates in the round, want %d", st.Clients, clients)
	}
	if busy.Load() == 0 {
		t.Fatal("no upload was told the server was busy")
	}
	waitBuffers(t, svc)
	// Per stream: the message being read, the batch buffer it is copied into, the window of
	// the next. The margin covers the test's own clients (same process) and the runtime.
	limit := int64(streams*(2*ts.flightMessageLimit()+flightWindow)) + 48<<20
	t.Logf("%d busy answers; heap grew by at most %d MiB (limit %d MiB) while %d MiB arrived",
		busy.Load(), grown>>20, limit>>20, clients*4)
	if grown > limit {
		t.Fatalf("heap grew by %d MiB, over %d MiB", grown>>20, limit>>20)
	}
}

// rawMessage is sent as it is by rawCodec: bytes that need not be a FlightData.
type rawMessage []byte

type rawCodec struct{ encoding.CodecV2 }

func (c rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	if r, ok := v.(rawMessage); ok {
		return mem.BufferSlice{mem.SliceBuffer(r)}, nil
	}
	return c.CodecV2.Marshal(v)
}

// TestFlightBadMessages: messages that cannot be part of an update are refused with
// InvalidArgument naming what is wrong, a client that sends nothing is cut at the idle
// timeout, and none of them changes the round or keeps a buffer; a message of app_metadata
// alone is passed over.
func TestFlightBadMessages(t *testing.T) {
	leakCheck(t)
	cfg, tokens, admin := testConfig(t, 2)
	cfg.Limits.IdleTimeout = Duration(300 * time.Millisecond)
	ts := startServer(t, cfg, tokens, admin)
	c, svc := flightServe(t, ts)
	u := f32Set(t, [][]int{{3000}}, func(_, i int) float32 { return float32(i) })
	msgs := flightMessages(t, u, "1", 4096)
	if len(msgs) < 3 {
		t.Fatalf("%d messages, want a schema and at least 2 batches", len(msgs))
	}
	with := func(i int, d *flight.FlightData) []*flight.FlightData {
		out := append([]*flight.FlightData(nil), msgs...)
		out[i] = d
		return out
	}
	n := len(msgs[1].DataBody)
	_, err := flightSend(t, c, tokens["c0"], with(1, &flight.FlightData{DataHeader: msgs[1].DataHeader, DataBody: msgs[1].DataBody[:n-8]}), "", true)
	wantCode(t, err, codes.InvalidArgument, fmt.Sprintf("Flight message 2 has a data_body of %d bytes, its data_header declares %d", n-8, n))
	_, err = flightSend(t, c, tokens["c0"], with(1, &flight.FlightData{DataBody: msgs[1].DataBody}), "", true)
	wantCode(t, err, codes.InvalidArgument, "Flight message 2 has a data_body but no data_header")

	// Not protobuf at all, as the second message.
	md := metadata.Pairs("authorization", "Bearer "+tokens["c0"])
	stream, err := c.DoPut(metadata.NewOutgoingContext(context.Background(), md), grpc.ForceCodecV2(rawCodec{FlightCodec()}))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(msgs[0]); err != nil {
		t.Fatal(err)
	}
	stream.SendMsg(rawMessage{0xC2, 0x3E, 0x7F, 1, 2})
	stream.CloseSend()
	_, err = stream.Recv()
	wantCode(t, err, codes.InvalidArgument, "malformed FlightData: field 1000 of 127 bytes, 2 left")

	// Nothing after the call's headers: cut at the idle timeout, the stream slot given back.
	stream, err = c.DoPut(metadata.NewOutgoingContext(context.Background(), md))
	if err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	wantCode(t, err, codes.DeadlineExceeded, "no message arrived for 300ms")
	waitUnchanged(t, ts)
	if n := len(ts.streams); n != 0 {
		t.Fatalf("%d stream slots still taken", n)
	}

	// app_metadata alone, between batches, is no part of the update.
	out := append(append(append([]*flight.FlightData(nil), msgs[:2]...), &flight.FlightData{AppMetadata: []byte("progress")}), msgs[2:]...)
	ack, err := flightSend(t, c, tokens["c0"], out, "", true)
	if err != nil || ack.Client != "c0" {
		t.Fatalf("push with app_metadata: %+v %v", ack, err)
	}
	waitBuffers(t, svc)
}

// A DoPut's batches, as arrowio and pyarrow lay them out, go from gRPC's frames to the spool
// without a body buffer in between (arrowio's NextInto), several chunks to a batch and batches
// of several tensors, and the round's model has the bits of the same updates pushed over HTTP.
func TestFlightReceivesInPlace(t *testing.T) {
	shapes := [][]int{{300, 7}, {5}, {1000}}
	updates := []*tensor.Set{
		f32Set(t, shapes, func(tn, i int) float32 { return float32(tn*1000+i) * 0.25 }),
		f32Set(t, shapes, func(tn, i int) float32 { return float32(i%17) - 3 }),
	}
	models := make([]*tensor.Set, 2)
	for way := range 2 {
		cfg, tokens, admin := testConfig(t, 2)
		cfg.Round.MaxClients = 2
		ts := startServer(t, cfg, tokens, admin)
		c, svc := flightServe(t, ts)
		for k, u := range updates {
			id := fmt.Sprintf("c%d", k)
			if way == 0 {
				ts.push(t, id, 1, encode(t, u, nil), map[string]string{api.WeightHeader: fmt.Sprint(k + 1)})
				continue
			}
			if _, err := flightSend(t, c, tokens[id], flightMessages(t, u, "1", 1000), fmt.Sprint(k+1), true); err != nil {
				t.Fatal(err)
			}
		}
		ts.waitState(t, 1, api.StateClosed)
		models[way] = ts.readModel(t, 1)
		if n := svc.bodies.lent.Load(); n != 0 {
			t.Fatalf("%d message bodies were decoded by Arrow", n)
		}
		waitBuffers(t, svc)
	}
	for i := range models[0].Len() {
		if !bytes.Equal(models[0].At(i).Bytes(), models[1].At(i).Bytes()) {
			t.Fatalf("tensor %s: the Flight round's bits differ from the HTTP round's", models[0].At(i).Name)
		}
	}
}
