package servebench

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"time"

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
	dir := filepath.Join(c.Dir, "flight")
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
	data := float64(c.Params*4) * float64(c.Clients)
	before, err := measureFloors(filepath.Join(dir, "floor"), body, c.Clients, c.direct(), false)
	if err != nil {
		return nil, err
	}
	cfgPath, tokens, err := serverConfig(dir, c.Clients, c.Clients, c.Sum, nil, map[string]any{"flight_listen": "127.0.0.1:0"})
	if err != nil {
		return nil, err
	}
	p, err := startProcess(ctx, c.Start, cfgPath, filepath.Join(dir, "addr"))
	if err != nil {
		return nil, err
	}
	defer p.stop()
	if p.flight == "" {
		return nil, fmt.Errorf("the server serves no Flight")
	}
	took, err := timed(c.Clients, c.Clients, func(k int) error {
		return flightPush(ctx, p.flight, tokens[k], 1, msgs)
	})
	if err != nil {
		return nil, err
	}
	closedSt, err := waitClosedStatus(ctx, p.url, 1)
	if err != nil {
		return nil, err
	}
	hwm, anon := peakRSS(p.cmd.Process.Pid)
	p.stop()
	after, err := measureFloors(filepath.Join(dir, "floor"), body, c.Clients, c.direct(), false)
	if err != nil {
		return nil, err
	}
	best := before.best(after)
	floor, floorIs := best.ingest()
	model := float64(c.Params * 4)
	budget := c.rssBudget()
	gb := func(d time.Duration) float64 { return data / d.Seconds() / 1e9 }
	return []Row{
		{What: fmt.Sprintf("Flight DoPut ingest, %d clients × %d f32 params, durable (%d KiB batches)", c.Clients, c.Params, server.DefaultChunkBytes>>10),
			Measured: gb(took), Unit: "GB/s", Floor: gb(floor), FloorIs: "min(loopback TCP, disk durable): " + floorIs, Ratio: floor.Seconds() / took.Seconds(),
			Note: fmt.Sprintf("TCP %.2f GB/s (before %.2f, after %.2f), disk %.2f GB/s (before %.2f, after %.2f; %s); tensor bytes counted",
				gb(best.tcp), gb(before.tcp), gb(after.tcp), gb(best.disk), gb(before.disk), gb(after.disk), c.diskWay())},
		{What: "server peak RSS (VmHWM) during the Flight round", Measured: hwm / (1 << 20), Unit: "MiB",
			Floor: budget / (1 << 20), FloorIs: "budget 1.3 × model + streams × 2 chunks + 128 MiB", Ratio: hwm / budget,
			Note: fmt.Sprintf("RssAnon at the end %.0f MiB; model %.0f MiB; %s", anon/(1<<20), model/(1<<20), c.sumNote(closedSt, c.Params))},
	}, nil
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
