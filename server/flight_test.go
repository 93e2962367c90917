package server

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"io"
	"math"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow/flight"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/wattagg/wattagg/server/api"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/arrowio"
)

// flightClient connects to the server's Flight endpoint, serving it on a loopback port.
func flightClient(t *testing.T, ts *testServer) flight.Client {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ts.ServeFlight(ctx, ln, 5*time.Second) }()
	c, err := flight.NewClientWithMiddleware(ln.Addr().String(), nil, nil, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); cancel(); <-done })
	return c
}

// flightPut sends s as an update of round over Flight with token (and weight, when not "");
// stall stops after the schema message and waits for the server.
func flightPut(t *testing.T, c flight.Client, token string, round string, s *tensor.Set, weight string, stall bool) (api.Ack, error) {
	t.Helper()
	md := metadata.New(nil)
	if token != "" {
		md.Set("authorization", "Bearer "+token)
	}
	if weight != "" {
		md.Set("x-wattagg-weight", weight)
	}
	ctx := metadata.NewOutgoingContext(context.Background(), md)
	stream, err := c.DoPut(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := arrowio.WriteSet(&buf, s, arrowio.WithBatchBytes(4096)); err != nil {
		t.Fatal(err)
	}
	first := true
	err = SendIPC(&buf, func(d *flight.FlightData) error {
		if first {
			d.FlightDescriptor = &flight.FlightDescriptor{Type: flight.DescriptorPATH, Path: []string{"rounds", round}}
		} else if stall {
			return io.EOF
		}
		first = false
		return stream.Send(d)
	})
	// A Send that fails with io.EOF means the server ended the call (a refusal before the
	// body): Recv tells why.
	if err != nil && err != io.EOF {
		t.Fatal(err)
	}
	if !stall {
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
