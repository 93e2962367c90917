package energy

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// countingMeter counts its reads and asks to be polled.
type countingMeter struct {
	reads atomic.Int64
	every time.Duration
}

func (m *countingMeter) Name() string { return "counting" }
func (m *countingMeter) Read() (Reading, error) {
	n := m.reads.Add(1)
	return Reading{Joules: float64(n), Time: time.Now(), Provenance: Provenance{Source: SourceEstimate, Meter: "counting"}}, nil
}
func (m *countingMeter) Close() error             { return nil }
func (m *countingMeter) PollEvery() time.Duration { return m.every }

func TestWindowPollsInTheBackground(t *testing.T) {
	m := &countingMeter{every: time.Millisecond}
	w, err := Start(m)
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); m.reads.Load() < 5 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	ms, err := w.Stop()
	if err != nil {
		t.Fatal(err)
	}
	if n := m.reads.Load(); n < 5 {
		t.Fatalf("%d reads in 5 s with a 1 ms poll", n)
	}
	if ms[0].Joules < 4 {
		t.Fatalf("measurement %+v", ms[0])
	}
	if _, err := w.Stop(); err == nil {
		t.Fatal("second Stop accepted")
	}
	if _, err := Start(nil); err == nil {
		t.Fatal("nil meter accepted")
	}
}

func TestTotalAndAccumulate(t *testing.T) {
	rapl := Measurement{Joules: 10, Seconds: 2, Provenance: Provenance{Source: SourceRAPL, Meter: "rapl", Domains: []string{"package-0"}, Granularity: 1e-3}}
	gpu := Measurement{Joules: 30, Seconds: 1.5, Provenance: Provenance{Source: SourceNVMLEnergy, Meter: "nvml:0", Domains: []string{"gpu:0"}, Granularity: 0.1, Resets: 1}}
	tot := Total([]Measurement{rapl, gpu})
	if tot.Joules != 40 || tot.Seconds != 2 || tot.Watts != 20 || tot.Source != "rapl+nvml-energy" || tot.Resets != 1 || len(tot.Domains) != 2 {
		t.Fatalf("total %+v", tot)
	}
	acc := Accumulate(nil, []Measurement{rapl})
	acc = Accumulate(acc, []Measurement{rapl, gpu})
	if len(acc) != 2 || acc[0].Joules != 20 || acc[0].Seconds != 4 || acc[1].Joules != 30 {
		t.Fatalf("accumulated %+v", acc)
	}
}

func TestShortWindowsSayHowCoarseTheyAre(t *testing.T) {
	t0 := time.Unix(0, 0)
	a := Reading{Time: t0, Provenance: Provenance{Source: SourceEstimate, Granularity: 0.01}}
	b := Reading{Joules: 0.5, Time: t0.Add(20 * time.Millisecond), Provenance: a.Provenance}
	m := Between(a, b)
	if !strings.Contains(strings.Join(m.Notes, ";"), "shorter than 10 counter updates") {
		t.Fatalf("notes %v", m.Notes)
	}
}

// A measurement of several meters over one window: the joules add up and the provenance names
// every source.
func ExampleTotal() {
	cpu := Measurement{Joules: 12.5, Seconds: 0.5, Provenance: Provenance{Source: SourceRAPL, Meter: "rapl", Domains: []string{"package-0", "dram-0"}}}
	gpu := Measurement{Joules: 80, Seconds: 0.5, Provenance: Provenance{Source: SourceNVMLEnergy, Meter: "nvml:0", Domains: []string{"gpu:0 NVIDIA H100"}}}
	t := Total([]Measurement{cpu, gpu})
	fmt.Printf("%.1f J at %.0f W from %s over %v\n", t.Joules, t.Watts, t.Source, t.Domains)
	// Output: 92.5 J at 185 W from rapl+nvml-energy over [package-0 dram-0 gpu:0 NVIDIA H100]
}
