package servebench

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"

	"github.com/apache/arrow-go/v18/arrow/flight"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/wattagg/wattagg/server"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/arrowio"
)

// flightRows: the ingest row over Arrow Flight DoPut, against the same floors (measured before
// and after the server's run, the faster of each counting, as for HTTP), and the server's peak
// RSS against the same budget.
func flightRows(ctx context.Context, c *Config) ([]Row, error) {
	r, err := newFlightRun(c)
	if err != nil {
		return nil, err
	}
	if r.before, err = r.measure(false); err != nil {
		return nil, err
	}
	if err := r.serve(ctx); err != nil {
		return nil, err
	}
	if r.after, err = r.measure(false); err != nil {
		return nil, err
	}
	return r.rows(), nil
}

// flightRun is the Flight row's run: the ingest row's, its update sent as Flight messages.
type flightRun struct {
	*ingestRun
	msgs []*flight.FlightData // the messages every client sends
}

// newFlightRun is the Flight row's run for c, its update encoded and cut into messages. Its
// floors send the update's .safetensors bytes; its rates count the tensor bytes.
func newFlightRun(c *Config) (*flightRun, error) {
	set, err := updateSet(c.Params, 0)
	if err != nil {
		return nil, err
	}
	body, err := encodeSet(set)
	if err != nil {
		return nil, err
	}
	// Every client sends the same messages, encoded once, as every HTTP client sends the same
	// body: the row measures the server, not the encoding.
	msgs, err := flightMessages(set)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(c.Dir, "flight")
	return &flightRun{ingestRun: &ingestRun{c: c, name: "Flight", dir: dir, floorDir: filepath.Join(dir, "floor"), body: body,
		total: float64(c.Params*4) * float64(c.Clients), model: float64(c.Params * 4)}, msgs: msgs}, nil
}

// serve starts the server with Flight served, measures a round of every client's DoPut and the
// server's peak RSS, and stops the server.
func (r *flightRun) serve(ctx context.Context) error {
	p, tokens, err := r.start(ctx, map[string]any{"flight_listen": "127.0.0.1:0"})
	if err != nil {
		return err
	}
	defer p.stop()
	if p.flight == "" {
		return fmt.Errorf("the server serves no Flight")
	}
	if err := r.putAll(ctx, p, tokens); err != nil {
		return err
	}
	r.hwm, r.anon = peakRSS(p.cmd.Process.Pid)
	return nil
}

// putAll has every client send the messages to the server p over Flight at once, times it to
// the last acknowledgement, and waits for the round's close.
func (r *flightRun) putAll(ctx context.Context, p *process, tokens []string) error {
	var err error
	r.ingest, err = timed(r.c.Clients, r.c.Clients, func(k int) error {
		return flightPush(ctx, p.flight, tokens[k], 1, r.msgs)
	})
	if err != nil {
		return err
	}
	r.closedSt, err = waitClosedStatus(ctx, p.url, 1)
	return err
}

// rows are the row's figures, each beside its floor.
func (r *flightRun) rows() []Row {
	return []Row{r.doPutRow(r.before.best(r.after)), r.rssRow()}
}

// doPutRow is the Flight DoPut ingest against the floor, min(TCP, disk).
func (r *flightRun) doPutRow(best ingestFloors) Row {
	c := r.c
	return r.ingestRow(fmt.Sprintf("Flight DoPut ingest, %d clients × %d f32 params, durable (%d KiB batches)", c.Clients, c.Params, server.DefaultChunkBytes>>10), best,
		"tensor bytes counted")
}

// updateSet is client k's update as a Set (the bytes of updateBytes).
func updateSet(params, k int) (*tensor.Set, error) {
	v := make([]float32, params)
	r := rand.New(rand.NewPCG(uint64(k), 7))
	for i := range v {
		v[i] = float32(r.NormFloat64())
	}
	t, err := tensor.FromF32("w", []int{params}, v)
	if err != nil {
		return nil, err
	}
	return tensor.NewSet(t)
}

// flightMessages cuts s's IPC stream, in batches of the server's default chunk size, into
// Flight messages.
func flightMessages(s *tensor.Set) ([]*flight.FlightData, error) {
	var buf bytes.Buffer
	if err := arrowio.WriteSet(&buf, s, arrowio.WithBatchBytes(server.DefaultChunkBytes)); err != nil {
		return nil, err
	}
	var msgs []*flight.FlightData
	err := server.SendIPC(&buf, func(d *flight.FlightData) error {
		msgs = append(msgs, d)
		return nil
	})
	return msgs, err
}

// flightPush sends msgs as an update over Flight DoPut, the first with the round's descriptor,
// and waits for the acknowledgement. The messages are shared between clients and only read:
// the Flight codec sends bodies from where they are. A 256 KiB write buffer (gRPC's default is
// 32 KiB: more write system calls) made a 64 × 5M-parameter row faster here: 0.71-0.73
// against 0.60-0.66 GB/s.
func flightPush(ctx context.Context, addr, token string, round int, msgs []*flight.FlightData) error {
	c, err := flight.NewClientWithMiddleware(addr, nil, nil, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(server.FlightCodec())), grpc.WithWriteBufferSize(256<<10))
	if err != nil {
		return err
	}
	defer c.Close()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	stream, err := c.DoPut(ctx)
	if err != nil {
		return err
	}
	for i, d := range msgs {
		if i == 0 {
			d = &flight.FlightData{DataHeader: d.DataHeader, DataBody: d.DataBody,
				FlightDescriptor: &flight.FlightDescriptor{Type: flight.DescriptorPATH, Path: []string{"rounds", fmt.Sprint(round)}}}
		}
		if err := stream.Send(d); err != nil {
			break // the server ended the call: Recv says why
		}
	}
	if err := stream.CloseSend(); err != nil {
		return err
	}
	_, err = stream.Recv()
	return err
}
