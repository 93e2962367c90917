package server

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/wattagg/wattagg/aggregate"
)

// metrics are the server's Prometheus metrics, in a registry of its own (several servers in
// one process, as in tests, do not collide). /metrics serves them with the Go runtime's.
type metrics struct {
	reg         *prometheus.Registry
	bytesIn     *prometheus.CounterVec
	accepted    prometheus.Counter
	rejected    *prometheus.CounterVec
	streams     prometheus.Gauge
	ackLatency  prometheus.Histogram
	commitGroup prometheus.Histogram
	commitSync  prometheus.Histogram
	roundDur    *prometheus.HistogramVec
	roundJoules *prometheus.GaugeVec
	joulesTotal *prometheus.CounterVec
	current     prometheus.Gauge
	rate        *rateWindow
}

func newMetrics(s *Server) *metrics {
	m := &metrics{reg: prometheus.NewRegistry(), rate: newRateWindow(10)}
	f := func(c prometheus.Collector) { m.reg.MustRegister(c) }
	m.bytesIn = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "wattagg_ingest_bytes_total",
		Help: "Tensor bytes received, by protocol."}, []string{"protocol"})
	m.accepted = prometheus.NewCounter(prometheus.CounterOpts{Name: "wattagg_updates_accepted_total",
		Help: "Updates acknowledged (durable and added to their round)."})
	m.rejected = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "wattagg_updates_rejected_total",
		Help: "Update uploads refused, by reason (unauthorized, layout, non_finite, truncated, conflict, too_large, busy, stalled, ...)."},
		[]string{"reason"})
	m.streams = prometheus.NewGauge(prometheus.GaugeOpts{Name: "wattagg_streams_in_flight",
		Help: "Uploads in progress."})
	m.ackLatency = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "wattagg_ack_latency_seconds",
		Help:    "Time from an update's last byte to its acknowledgement (fdatasync, group commit, add to the round).",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)})
	m.commitGroup = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "wattagg_commit_group_updates",
		Help: "Updates per group commit (one log append and fdatasync).", Buckets: prometheus.ExponentialBuckets(1, 2, 10)})
	m.commitSync = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "wattagg_commit_sync_seconds",
		Help: "Time of a group commit's spool-directory fsync and log append + fdatasync.", Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)})
	m.roundDur = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "wattagg_round_duration_seconds",
		Help: "Rounds from open to close, by outcome (closed, failed).", Buckets: prometheus.ExponentialBuckets(1, 2, 16)}, []string{"outcome"})
	m.roundJoules = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "wattagg_round_joules",
		Help: "Joules the last closed round's aggregation spent, by meter source (rapl, nvml-energy, estimate, ...)."}, []string{"source"})
	m.joulesTotal = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "wattagg_joules_total",
		Help: "Joules spent aggregating, over all rounds, by meter source."}, []string{"source"})
	m.current = prometheus.NewGauge(prometheus.GaugeOpts{Name: "wattagg_round_current", Help: "The open round (0: none)."})
	for _, c := range []prometheus.Collector{m.bytesIn, m.accepted, m.rejected, m.streams, m.ackLatency, m.commitGroup,
		m.commitSync, m.roundDur, m.roundJoules, m.joulesTotal, m.current} {
		f(c)
	}
	f(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "wattagg_ingest_gbps",
		Help: "Tensor bytes received per second over the last 10 s, in GB/s."}, func() float64 { return m.rate.perSecond() / 1e9 }))
	f(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "wattagg_round_clients",
		Help: "Updates acknowledged in the open round."}, s.ofCurrent(func(r *round) float64 { return float64(len(r.records)) })))
	f(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "wattagg_round_sum_bytes",
		Help: "Memory the open round's running sums held after its last group commit (exact sums: 8 bytes per parameter, 16 where a second limb was needed)."},
		s.ofCurrent(func(r *round) float64 { return float64(r.sumBytes) })))
	f(collectors.NewGoCollector())
	f(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// ofCurrent is a gauge's reading of the open round: v under the round's lock, 0 when none is open.
func (s *Server) ofCurrent(v func(r *round) float64) func() float64 {
	return func() float64 {
		s.mu.Lock()
		r := s.current
		s.mu.Unlock()
		if r == nil {
			return 0
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		return v(r)
	}
}

// received counts n tensor bytes in.
func (m *metrics) received(protocol string, n int) {
	m.bytesIn.WithLabelValues(protocol).Add(float64(n))
	m.rate.add(int64(n))
}

// roundEnded records a round's duration and energy.
func (m *metrics) roundEnded(outcome string, d time.Duration, rep *aggregate.Report) {
	m.roundDur.WithLabelValues(outcome).Observe(d.Seconds())
	m.current.Set(0)
	if rep == nil || rep.Joules == nil {
		return
	}
	src := rep.JoulesSource
	if src == "" {
		src = "unknown"
	}
	m.roundJoules.Reset()
	m.roundJoules.WithLabelValues(src).Set(*rep.Joules)
	m.joulesTotal.WithLabelValues(src).Add(*rep.Joules)
}

// rateWindow counts bytes in one-second buckets over the last few seconds.
type rateWindow struct {
	mu      sync.Mutex
	buckets []int64
	stamp   []int64 // the second each bucket counts
}

func newRateWindow(seconds int) *rateWindow {
	return &rateWindow{buckets: make([]int64, seconds), stamp: make([]int64, seconds)}
}

func (w *rateWindow) add(n int64) {
	now := time.Now().Unix()
	w.mu.Lock()
	i := int(now % int64(len(w.buckets)))
	if w.stamp[i] != now {
		w.stamp[i], w.buckets[i] = now, 0
	}
	w.buckets[i] += n
	w.mu.Unlock()
}

// perSecond is the mean rate over the window's complete seconds and the current one.
func (w *rateWindow) perSecond() float64 {
	now := time.Now().Unix()
	w.mu.Lock()
	defer w.mu.Unlock()
	var sum int64
	for i, s := range w.stamp {
		if now-s < int64(len(w.buckets)) {
			sum += w.buckets[i]
		}
	}
	return float64(sum) / float64(len(w.buckets))
}
