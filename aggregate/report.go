package aggregate

import (
	"slices"
	"time"

	"github.com/wattagg/wattagg/device"
	"github.com/wattagg/wattagg/energy"
	"github.com/wattagg/wattagg/sched"
)

// Report says what an aggregation did and what it cost.
type Report struct {
	Rule        string       `json:"rule"`
	Clients     int          `json:"clients"`
	Tensors     int          `json:"tensors"`
	Params      int64        `json:"params"`
	InDTypes    []string     `json:"input_dtypes"`
	AccDType    string       `json:"acc_dtype"` // "f32", "f64" or "mixed"
	OutDType    string       `json:"out_dtype"` // one dtype or "mixed"
	TotalWeight float64      `json:"total_weight"`
	WeightsFrom WeightSource `json:"weights_from"`
	Weights     []float64    `json:"weights"` // normalised: the share of each client, in input order
	Output      string       `json:"output,omitempty"`

	Seconds      float64 `json:"seconds"`
	BytesRead    int64   `json:"bytes_read"`
	BytesWritten int64   `json:"bytes_written"`
	GBps         float64 `json:"gb_per_s"` // (read + written) / seconds / 1e9
	ParamsPerSec float64 `json:"params_per_s"`
	// SumBytes is the memory an incremental round's running sums held at its close (0 for a
	// batch, or a device that does not tell): for exact sums on the CPU 8 bytes per parameter,
	// plus 8 for each parameter whose sums needed a second limb.
	SumBytes int64 `json:"sum_bytes,omitempty"`

	Devices []DeviceShare `json:"devices"`

	// PerClient is what the rule saw of each client, in input order (robust and private
	// rules fill it; FedAvg leaves it empty).
	PerClient []ClientDiag `json:"per_client,omitempty"`
	// Details holds the rule's own figures: iterations and residual of a geometric median,
	// the clipping bound, epsilon and delta of a private round, ...
	Details map[string]float64 `json:"details,omitempty"`

	// Joules is the energy the aggregation spent, with JoulesReason saying why it is null.
	Joules       *float64 `json:"joules"`
	JoulesReason string   `json:"joules_reason,omitempty"`

	// Energy is what each meter measured around the work, with its provenance; JoulesSource
	// names the sources summed into Joules ("rapl", "estimate", "rapl+nvml-energy").
	Energy         []energy.Measurement `json:"energy,omitempty"`
	JoulesSource   string               `json:"joules_source,omitempty"`
	JoulesPerParam *float64             `json:"joules_per_param,omitempty"`
	// Plan is where the planner placed the work (WithPlanner), with its prediction;
	// PredictedJoules and PredictedSeconds repeat it beside the measured figures, and Learning
	// says whether the profile learned from the difference.
	Plan             *sched.Plan    `json:"plan,omitempty"`
	PredictedJoules  *float64       `json:"predicted_joules,omitempty"`
	PredictedSeconds *float64       `json:"predicted_seconds,omitempty"`
	Learning         *sched.Learned `json:"learning,omitempty"`
}

// ClientDiag is what a rule saw of one client. Optional figures are pointers so that a rule
// that does not compute one leaves it out of the JSON instead of reporting zero.
type ClientDiag struct {
	Source   string   `json:"source"`
	Weight   float64  `json:"weight"`
	Norm     *float64 `json:"norm,omitempty"`    // L2 norm of the update
	Clipped  *bool    `json:"clipped,omitempty"` // whether clipping scaled it down
	Score    *float64 `json:"score,omitempty"`   // e.g. the Krum score
	Selected *bool    `json:"selected,omitempty"`
	// Distance is the L2 distance from the update to the aggregate.
	Distance *float64 `json:"distance_to_aggregate,omitempty"`
	// Excluded says why a robust rule left the client out (a NaN or Inf in its update); empty
	// for a client the rule used.
	Excluded string `json:"excluded,omitempty"`
}

// DeviceShare is one device's part of the work.
type DeviceShare struct {
	device.Stats
	Share float64 `json:"share"` // fraction of the elements
}

// noMeterReason is reported when no meter was given (WithMeters).
const noMeterReason = "no energy meter given (aggregate.WithMeters; the CLI uses RAPL, NVML or the estimate)"

// report assembles a closed round's report: what the engine saw, what each stage adds, what the
// devices did and the meters measured.
func (r *Round) report(out *sink, closing time.Duration) *Report {
	rep := &Report{Rule: r.rule.Name(), Clients: len(r.clients), WeightsFrom: r.weights.source(r.req.Weights),
		BytesWritten: out.written, Output: out.path}
	rep.BytesRead = r.acct.bytesIn
	if r.sum != nil && r.sum.acc != nil {
		rep.SumBytes = max(0, device.SumBytes(r.sum.acc))
	}
	if r.global != nil {
		rep.BytesRead += r.global.bytes
	}
	r.plan.describe(rep, r.dtypesOf(nil))
	var total float64
	for _, c := range r.clients {
		if c.excluded == "" {
			total += c.weight
		}
	}
	rep.TotalWeight = r.weights.unscaled(total)
	rep.Weights = make([]float64, len(r.clients))
	rep.PerClient = make([]ClientDiag, len(r.clients))
	for k, c := range r.clients {
		if c.excluded == "" {
			rep.Weights[k] = c.weight / total
		}
		c.diag.Weight = rep.Weights[k]
		rep.PerClient[k] = c.diag
	}
	if r.req.ExcludeNonFinite {
		rep.Details = map[string]float64{"excluded": float64(len(r.clients) - r.counted())}
	}
	r.stage.Report(rep)
	if _, plain := r.rule.(*FedAvg); plain {
		rep.PerClient = nil // a client's weight is all FedAvg sees of it: Weights has it
	}
	seconds := (r.acct.busy + closing).Seconds()
	rep.Seconds = seconds
	stats := perDevice(r.acct.stats)
	var elems int64
	for _, s := range stats {
		elems += s.Elements
	}
	for _, s := range stats {
		share := 0.0
		if elems > 0 {
			share = float64(s.Elements) / float64(elems)
		}
		rep.Devices = append(rep.Devices, DeviceShare{Stats: s, Share: share})
	}
	if seconds > 0 {
		rep.GBps = float64(rep.BytesRead+rep.BytesWritten) / seconds / 1e9
		rep.ParamsPerSec = float64(rep.Params) / seconds
	}
	var pl *placement
	if pl = r.acct.placed; pl == nil {
		pl = &placement{}
	}
	rep.setEnergy(r.acct.energy, r.acct.meterErr, pl.plan, pl.learned)
	if rep.Joules == nil && rep.JoulesReason == "" {
		rep.JoulesReason = noMeterReason
	}
	return rep
}

// Detail sets one of the rule's figures in the report.
func (r *Report) Detail(name string, v float64) {
	if r.Details == nil {
		r.Details = map[string]float64{}
	}
	r.Details[name] = v
}

// perDevice sums the stats of a round's passes device by device, in order of first use: the
// report has one share per device, not one per pass.
func perDevice(stats []device.Stats) []device.Stats {
	var out []device.Stats
	for _, st := range stats {
		i := slices.IndexFunc(out, func(o device.Stats) bool { return o.Device == st.Device })
		if i < 0 {
			out = append(out, device.Stats{Device: st.Device})
			i = len(out) - 1
		}
		out[i].Add(st)
	}
	return out
}

// Ptr returns a pointer to v, for the optional figures of ClientDiag.
func Ptr[T any](v T) *T { return &v }
