package servebench

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"time"

	"github.com/apache/arrow-go/v18/arrow/flight"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/wattagg/wattagg/server"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/arrowio"
)

// flightRows: the ingest row over Arrow Flight DoPut, against the same floors measured again
// around it.
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
	data := float64(c.Params*4) * float64(c.Clients)
	tcp, err := tcpFloor(body, c.Clients)
	if err != nil {
		return nil, err
	}
	disk, err := diskFloor(filepath.Join(dir, "floor"), len(body), c.Clients)
	if err != nil {
		return nil, err
	}
	cfgPath, tokens, err := serverConfig(dir, c.Clients, c.Clients, nil, map[string]any{"flight_listen": "127.0.0.1:0"})
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
	t0 := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, c.Clients)
	for k := range c.Clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := flightPush(ctx, p.flight, tokens[k], 1, set); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	took := time.Since(t0)
	close(errs)
	for err := range errs {
		return nil, err
	}
	if err := waitClosed(ctx, p.url, 1); err != nil {
		return nil, err
	}
	hwm, _ := peakRSS(p.cmd.Process.Pid)
	floor, floorIs := tcp, "loopback TCP"
	if disk > tcp {
		floor, floorIs = disk, "disk durable writes"
	}
	gb := func(d time.Duration) float64 { return data / d.Seconds() / 1e9 }
	return []Row{{What: fmt.Sprintf("Flight DoPut ingest, %d clients × %d f32 params, durable", c.Clients, c.Params), Measured: gb(took), Unit: "GB/s",
		Floor: gb(floor), FloorIs: "min(loopback TCP, disk durable): " + floorIs, Ratio: floor.Seconds() / took.Seconds(),
		Note: fmt.Sprintf("TCP %.2f GB/s, disk %.2f GB/s; server peak RSS %.0f MiB; tensor bytes counted", gb(tcp), gb(disk), hwm/(1<<20))}}, nil
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

// flightPush sends s as an update over Flight DoPut and waits for its acknowledgement.
func flightPush(ctx context.Context, addr, token string, round int, s *tensor.Set) error {
	c, err := flight.NewClientWithMiddleware(addr, nil, nil, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer c.Close()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	stream, err := c.DoPut(ctx)
	if err != nil {
		return err
	}
	pr, pw := io.Pipe()
	// 1 MiB batches: the server holds about two messages per stream.
	go func() { pw.CloseWithError(arrowio.WriteSet(pw, s, arrowio.WithBatchBytes(1<<20))) }()
	defer pr.Close()
	first := true
	err = server.SendIPC(pr, func(d *flight.FlightData) error {
		if first {
			d.FlightDescriptor = &flight.FlightDescriptor{Type: flight.DescriptorPATH, Path: []string{"rounds", fmt.Sprint(round)}}
			first = false
		}
		return stream.Send(d)
	})
	if err != nil && err != io.EOF {
		return err
	}
	if err := stream.CloseSend(); err != nil {
		return err
	}
	_, err = stream.Recv()
	return err
}
