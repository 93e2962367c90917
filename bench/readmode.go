package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/wattagg/wattagg/aggregate"
	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/tensor"
	"github.com/wattagg/wattagg/tensor/safetensors"
)

// ReadModes is what MeasureReadModes measured: the best time of each way of reading the same
// cached files, and the faster of the two: ReadAuto's choice for files in large folios.
type ReadModes struct {
	Files  int
	Bytes  int64
	MapS   float64 // open mapped, FedAvg into a reused output, close (unmap)
	CopyS  float64 // the same, every file read with pread (safetensors.ReadCopy)
	Choice safetensors.ReadMode
}

// MeasureReadModes writes files f32 updates of params parameters under dir (removed after), as
// a client's large writes leave them in the page cache, and times wattagg reading them both
// ways, alternating, runs times each: Open, FedAvg on dev into a reused output, Close. This is
// the whole cost that differs between the two (the faults and unmapping of a mapping against
// the copy of pread), which the probe of ReadAuto cannot see in its two 128 KiB windows: on a
// Zen 4 VM (2026-12-03) the windows raced within 0.7-1.3 of each other while `wattagg
// aggregate` of 32 × 4M f32 ran in 35-48 ms mapped against 46-61 ms copied.
func MeasureReadModes(ctx context.Context, dir string, dev device.Device, files, params, runs int) (ReadModes, error) {
	fed := Federation{Model: Flat(params), Seed: 11}
	for range files {
		fed.Clients = append(fed.Clients, Client{DType: tensor.F32})
	}
	dir, err := os.MkdirTemp(dir, "wattagg-read-")
	if err != nil {
		return ReadModes{}, err
	}
	defer os.RemoveAll(dir)
	paths, err := fed.Write(ctx, filepath.Join(dir, "inputs"), nil)
	if err != nil {
		return ReadModes{}, err
	}
	first, err := safetensors.OpenAll(paths)
	if err != nil {
		return ReadModes{}, err
	}
	out, _, err := aggregate.WeightedMean(ctx, first, nil, aggregate.WithDevices(dev)) // the output, reused
	for _, s := range first {
		s.Close()
	}
	if err != nil {
		return ReadModes{}, err
	}
	m := ReadModes{Files: files, Bytes: int64(files) * int64(params) * 4, MapS: 1e9, CopyS: 1e9}
	for range max(1, runs) {
		for _, mode := range []safetensors.ReadMode{safetensors.ReadMap, safetensors.ReadCopy} {
			if err := warm(paths); err != nil {
				return ReadModes{}, err
			}
			s, err := timeRead(ctx, paths, mode, dev, out)
			if err != nil {
				return ReadModes{}, err
			}
			if mode == safetensors.ReadMap {
				m.MapS = min(m.MapS, s)
			} else {
				m.CopyS = min(m.CopyS, s)
			}
		}
	}
	// The faster: the choice only ever applies to files in large folios, the case measured
	// here (ReadAuto still copies files it finds in small folios, where mapping loses most).
	m.Choice = safetensors.ReadCopy
	if m.MapS < m.CopyS {
		m.Choice = safetensors.ReadMap
	}
	return m, nil
}

func timeRead(ctx context.Context, paths []string, mode safetensors.ReadMode, dev device.Device, out *tensor.Set) (float64, error) {
	start := time.Now()
	sets, err := safetensors.OpenAll(paths, safetensors.WithReadMode(mode))
	if err != nil {
		return 0, err
	}
	_, _, err = aggregate.WeightedMean(ctx, sets, nil, aggregate.WithDevices(dev), aggregate.WithOutput(out))
	for _, s := range sets {
		s.Close()
	}
	if err != nil {
		return 0, fmt.Errorf("timing %s reads: %w", mode, err)
	}
	return time.Since(start).Seconds(), nil
}
