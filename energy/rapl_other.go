//go:build !linux

package energy

import (
	"fmt"
	"time"
)

// RAPLMeter reads RAPL counters from powercap sysfs, which exists on Linux only.
type RAPLMeter struct{}

// NewRAPL fails with ErrUnavailable: powercap sysfs is Linux's.
func NewRAPL(opts ...Option) (*RAPLMeter, error) {
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	return newRAPL(cfg)
}

func newRAPL(*config) (*RAPLMeter, error) {
	return nil, fmt.Errorf("%w: rapl: powercap sysfs exists on Linux only", ErrUnavailable)
}

func (m *RAPLMeter) Name() string             { return "rapl" }
func (m *RAPLMeter) Domains() []string        { return nil }
func (m *RAPLMeter) PollEvery() time.Duration { return 0 }
func (m *RAPLMeter) Read() (Reading, error)   { return Reading{}, ErrUnavailable }
func (m *RAPLMeter) Close() error             { return nil }
func cpuFlags(*config) []string               { return nil }
