package sched

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/wattagg/wattagg/tensor"
)

// Policy is what a Planner minimises.
type Policy int

// The policies.
const (
	MinEnergy Policy = iota // joules of the whole machine over the round (default)
	MinTime                 // seconds
	MinEDP                  // energy-delay product: joules × seconds
)

var policyNames = [...]string{"min-energy", "min-time", "min-edp"}

func (p Policy) String() string {
	if p < 0 || int(p) >= len(policyNames) {
		return fmt.Sprintf("Policy(%d)", int(p))
	}
	return policyNames[p]
}

// MarshalText writes the policy's name.
func (p Policy) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText reads a policy's name.
func (p *Policy) UnmarshalText(b []byte) error {
	v, err := ParsePolicy(string(b))
	*p = v
	return err
}

// ParsePolicy reads "min-energy", "min-time" or "min-edp".
func ParsePolicy(s string) (Policy, error) {
	for i, n := range policyNames {
		if s == n {
			return Policy(i), nil
		}
	}
	return MinEnergy, fmt.Errorf("%w: policy %q: want %s", ErrOption, s, strings.Join(policyNames[:], ", "))
}

// planning is what NewPlanner's options set.
type planning struct {
	policy   Policy
	deadline time.Duration
	capW     float64
	only     []string
	alpha    float64
	frozen   bool
}

// WithPolicy sets what the planner minimises (default MinEnergy). It applies to NewPlanner.
func WithPolicy(p Policy) Option {
	return option("WithPolicy", forNewPlanner, func(o *options) error {
		if p < MinEnergy || p > MinEDP {
			return fmt.Errorf("%w: policy %d", ErrOption, int(p))
		}
		o.plan.policy = p
		return nil
	})
}

// WithDeadline makes plans finish within d (0: no deadline). A plan that cannot is returned
// with Feasible false and the fastest plan found. It applies to NewPlanner.
func WithDeadline(d time.Duration) Option {
	return option("WithDeadline", forNewPlanner, func(o *options) error {
		if d < 0 {
			return fmt.Errorf("%w: deadline %v: want a positive duration, or 0 for none", ErrOption, d)
		}
		o.plan.deadline = d
		return nil
	})
}

// WithPowerCap keeps the machine's predicted draw at or below watts while a plan runs (0: no
// cap). Devices are slowed (duty-cycled) or work moved to more frugal ones to fit. It applies
// to NewPlanner.
func WithPowerCap(watts float64) Option {
	return option("WithPowerCap", forNewPlanner, func(o *options) error {
		if watts < 0 || math.IsNaN(watts) || math.IsInf(watts, 0) {
			return fmt.Errorf("%w: power cap %v W: want a positive number of watts, or 0 for none", ErrOption, watts)
		}
		o.plan.capW = watts
		return nil
	})
}

// WithOnly restricts plans to the named devices ("cpu", "cuda:0"): to force a device. It
// applies to NewPlanner.
func WithOnly(devices ...string) Option {
	return option("WithOnly", forNewPlanner, func(o *options) error {
		for _, d := range devices {
			if d == "" {
				return fmt.Errorf("%w: empty device name", ErrOption)
			}
		}
		o.plan.only = slices.Clone(devices)
		return nil
	})
}

// WithLearningRate sets the weight of each new observation in the profile's corrections
// (default 0.25; 0 < a ≤ 1). It applies to NewPlanner.
func WithLearningRate(a float64) Option {
	return option("WithLearningRate", forNewPlanner, func(o *options) error {
		if !(a > 0 && a <= 1) {
			return fmt.Errorf("%w: learning rate %v: want (0, 1]", ErrOption, a)
		}
		o.plan.alpha = a
		return nil
	})
}

// WithoutLearning keeps the profile as it is: Observe reports and changes nothing (for
// benchmarks that compare predictions with measurements). It applies to NewPlanner.
func WithoutLearning() Option {
	return option("WithoutLearning", forNewPlanner, func(o *options) error { o.plan.frozen = true; return nil })
}

// Planner places jobs on devices by a Profile. It is safe for concurrent use.
type Planner struct {
	reg *Registry
	planning

	mu      sync.Mutex
	profile *Profile
	changes int // corrections Observe applied
	saved   int // changes that SaveProfile wrote
}

// NewPlanner returns a planner over profile (which it updates as it learns; Profile returns
// a copy to save).
func NewPlanner(profile *Profile, opts ...Option) (*Planner, error) {
	if profile == nil {
		return nil, fmt.Errorf("%w: the planner needs a profile", ErrNoProfile)
	}
	o, err := applyOptions(forNewPlanner, opts)
	if err != nil {
		return nil, err
	}
	return &Planner{reg: o.reg, planning: o.plan, profile: profile}, nil
}

// Profile returns a copy of the profile as learned so far.
func (pl *Planner) Profile() *Profile {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	return pl.profile.Clone()
}

// Request is a job to place.
type Request struct {
	Op string
	Workload
	// Devices are the devices present; nil means every device of the profile.
	Devices []string
	// Chunks are the elements of each chunk of the job, in order; the plan assigns whole
	// chunks. Nil plans fractions only.
	Chunks []int64
}

// Plan is where a job runs and what it is predicted to cost.
type Plan struct {
	Op        string  `json:"op"`
	DType     string  `json:"dtype"`
	Clients   int     `json:"clients"`
	Elements  int64   `json:"elements"`
	Policy    Policy  `json:"policy"`
	DeadlineS float64 `json:"deadline_s,omitempty"`
	PowerCapW float64 `json:"power_cap_w,omitempty"`

	Shares    []Share    `json:"shares"`
	Predicted Prediction `json:"predicted"`
	// Feasible is false when no plan meets the deadline and power cap; the plan is then the
	// one that comes closest.
	Feasible bool   `json:"feasible"`
	Why      string `json:"why"`
	// Alternatives are the single-device plans, for comparison.
	Alternatives []Alternative `json:"alternatives,omitempty"`
	// EnergySource is how the profile's joules were measured ("rapl", "estimate").
	EnergySource string   `json:"energy_source"`
	Notes        []string `json:"notes,omitempty"`
}

// Share is one device's part of a plan.
type Share struct {
	Device   string  `json:"device"`
	Fraction float64 `json:"fraction"` // of the elements
	Elements int64   `json:"elements"`
	// Chunks are the indices of Request.Chunks this device runs (contiguous).
	Chunks []int `json:"-"`
	// NumChunks is len(Chunks).
	NumChunks int `json:"chunks"`
	// Rate is the duty cycle in (0, 1]: below 1 the device is paced to stay under the power
	// cap.
	Rate    float64 `json:"rate"`
	Seconds float64 `json:"seconds"`        // predicted, from start to its last chunk
	Joules  float64 `json:"dynamic_joules"` // predicted above idle
	Watts   float64 `json:"dynamic_watts"`  // predicted above idle while it runs

	key     string  // the op profile used
	rawDyn  float64 // Joules before the energy correction
	rawBusy float64 // Seconds before the time correction
}

// Prediction is a plan's predicted cost: the whole machine's idle power over the round plus
// each device's dynamic energy.
type Prediction struct {
	Seconds       float64 `json:"seconds"`
	Joules        float64 `json:"joules"`
	IdleJoules    float64 `json:"idle_joules"`
	DynamicJoules float64 `json:"dynamic_joules"`
	PeakWatts     float64 `json:"peak_watts"`
}

// Alternative is a single-device plan's prediction.
type Alternative struct {
	Device    string  `json:"device"`
	Seconds   float64 `json:"seconds"`
	Joules    float64 `json:"joules"`
	PeakWatts float64 `json:"peak_watts"`
	Feasible  bool    `json:"feasible"`
}

// devModel is a device's cost for one request: it processes R elements per second at full
// rate after a fixed L seconds, spending e joules per element above idle. A device calibrated
// from pageable host memory (fromHost) reads it through staging the host copies, which occupies
// the host for staged seconds per element (see stagedHostPasses; set by hostModel).
type devModel struct {
	name       string
	kind       string
	R, e, L    float64
	fromHost   bool
	staged     float64
	idle       float64
	key        string
	eCorr, tCr float64
}

// stagedHostPasses is how often the bytes of a GPU's share pass the host's memory when the GPU
// reads pageable host memory (a profile measured so, IncludesTransfer): the host's cores read
// them and write them into page-locked staging, and the copy engine reads them again. The CPU's
// own share passes once. On an H200 machine with 16 Xeon cores the planner that left this out
// gave the GPU 12–15% of a FedAvg of 16 × 4.19M f32 and predicted 2.4 ms; the split took
// 2.9–3.0 ms, the CPU alone 2.1 ms (`wattagg bench energy`, 2026-12-04).
const stagedHostPasses = 3

// Plan places req.
func (pl *Planner) Plan(req Request) (*Plan, error) {
	op, err := pl.reg.Lookup(req.Op)
	if err != nil {
		return nil, err
	}
	if err := checkRequest(req); err != nil {
		return nil, err
	}
	pl.mu.Lock()
	defer pl.mu.Unlock()

	present := req.Devices
	if present == nil {
		for _, d := range pl.profile.Devices {
			present = append(present, d.Name)
		}
	}
	if err := pl.checkOnly(present); err != nil {
		return nil, err
	}
	plan := &Plan{Op: req.Op, DType: req.In.String(), Clients: req.Clients, Elements: req.Elements, Policy: pl.policy,
		DeadlineS: pl.deadline.Seconds(), PowerCapW: pl.capW}
	p := placing{pl: pl, req: req, cnt: op.Counts(req.Workload), plan: plan}
	ds := p.models(present)
	if len(ds) == 0 {
		return nil, fmt.Errorf("%w: no device of %s has a %s profile (run wattagg calibrate)", ErrUncalibrated, strings.Join(present, ", "), OpKey(req.Op, req.In))
	}
	s := &solver{ds: ds, idle: pl.idleWatts(present), W: float64(req.Elements), policy: pl.policy, deadline: pl.deadline.Seconds(), capW: pl.capW,
		host: hostModel(ds, pl.profile, req.In, p.cnt)}
	best := s.solve()
	x := s.realise(best.x, req.Chunks, plan)
	s.predict(plan, x)
	plan.Alternatives = s.alternatives()
	plan.Why = s.explain(plan)
	return plan, nil
}

// checkRequest checks that req is a workload of real dtypes with clients, and that its chunks
// hold its elements.
func checkRequest(req Request) error {
	if req.Clients < 1 || req.Elements < 0 || !req.In.Real() || !req.Out.Real() {
		return fmt.Errorf("%w: request %s of %d clients x %d %s -> %s", ErrOption, req.Op, req.Clients, req.Elements, req.In, req.Out)
	}
	var sum int64
	for _, c := range req.Chunks {
		if c < 0 {
			return fmt.Errorf("%w: a chunk of %d elements", ErrOption, c)
		}
		sum += c
	}
	if req.Chunks != nil && sum != req.Elements {
		return fmt.Errorf("%w: chunks hold %d elements, the job %d", ErrOption, sum, req.Elements)
	}
	return nil
}

// checkOnly checks that every device the planner is restricted to (WithOnly) is present.
func (pl *Planner) checkOnly(present []string) error {
	for _, o := range pl.only {
		if !slices.Contains(present, o) {
			return fmt.Errorf("%w: device %q is not present (present: %s)", ErrOption, o, strings.Join(present, ", "))
		}
	}
	return nil
}

// idleWatts is the machine's idle power: the other meters and every device present that the
// profile knows, used or not.
func (pl *Planner) idleWatts(present []string) float64 {
	idle := 0.0
	for _, o := range pl.profile.Others {
		idle += o.IdleWatts
	}
	for _, name := range present {
		if dp := pl.profile.Device(name); dp != nil {
			idle += dp.IdleWatts
		}
	}
	return idle
}

// placing is one request as Plan places it: the op's counts for the request's workload, and
// the plan whose notes it writes.
type placing struct {
	pl   *Planner
	req  Request
	cnt  Counts
	plan *Plan
}

// models are the models of the devices present that the plan may use, in the order present.
// It notes in the plan each device left out for want of a profile, and sets the plan's energy
// source to the sources of their energy figures.
func (p placing) models(present []string) []devModel {
	var ds []devModel
	var sources []string
	for _, name := range present {
		dp := p.pl.profile.Device(name)
		if dp == nil {
			p.plan.Notes = append(p.plan.Notes, fmt.Sprintf("%s is not in the profile: not used (run wattagg calibrate)", name))
			continue
		}
		if len(p.pl.only) > 0 && !slices.Contains(p.pl.only, name) {
			continue
		}
		o, ok := p.opProfile(dp)
		if !ok {
			continue
		}
		ds = append(ds, newDevModel(dp, o, p.cnt))
		if !slices.Contains(sources, string(dp.Meter.Source)) {
			sources = append(sources, string(dp.Meter.Source))
		}
	}
	p.plan.EnergySource = strings.Join(sources, "+")
	return ds
}

// opProfile is dp's profile of the request's op for its dtype. It notes in the plan a device
// without one, and one whose costs come from another dtype.
func (p placing) opProfile(dp *DeviceProfile) (*OpProfile, bool) {
	o, ok := dp.Op(p.req.Op, p.req.In)
	if !ok {
		p.plan.Notes = append(p.plan.Notes, fmt.Sprintf("%s has no %s profile: not used (run wattagg calibrate)", dp.Name, p.req.Op))
		return nil, false
	}
	if o.DType != p.req.In {
		p.plan.Notes = append(p.plan.Notes, fmt.Sprintf("%s: %s costs taken from %s inputs", dp.Name, OpKey(p.req.Op, p.req.In), o.DType))
	}
	return o, true
}

// hostModel finds the CPU among ds and sets the staged seconds per element of every device
// calibrated from host memory: stagedHostPasses passes over its transfer bytes at the rate the
// CPU's weighted sum (memory-bound) reads bytes. It returns the CPU's index, or -1 when no CPU is
// in the plan or its profile has no weighted sum to give the host's byte rate (the staging is
// then not charged).
func hostModel(ds []devModel, p *Profile, in tensor.DType, cnt Counts) int {
	host := slices.IndexFunc(ds, func(d devModel) bool { return d.kind == "cpu" })
	if host < 0 {
		return -1
	}
	dp := p.Device(ds[host].name)
	o, ok := dp.Op(WeightedSum, in)
	if !ok || o.BytesPerSec <= 0 {
		return -1
	}
	bytes := cnt.Transfer
	if bytes <= 0 {
		bytes = cnt.Bytes
	}
	for i := range ds {
		if ds[i].fromHost {
			ds[i].staged = stagedHostPasses * bytes / o.BytesPerSec
		}
	}
	return host
}

func newDevModel(dp *DeviceProfile, o *OpProfile, cnt Counts) devModel {
	tf, tb := 0.0, cnt.Bytes/o.BytesPerSec
	if cnt.FLOPs > 0 && o.FLOPsPerSec > 0 { // an op calibrated without FLOPs is memory-bound
		tf = cnt.FLOPs / o.FLOPsPerSec
	}
	t := math.Max(tf, tb)
	e := cnt.FLOPs * o.JoulesPerFLOP
	if tb >= tf { // memory-bound: the bytes cost the joules
		e = cnt.Bytes * o.JoulesPerByte
	}
	if dp.Link != nil && !o.IncludesTransfer && cnt.Transfer > 0 && dp.Link.BytesPerSec > 0 {
		// Inputs come from host memory: copies overlap compute (streams), and cost their own
		// joules on top.
		t = math.Max(t, cnt.Transfer/dp.Link.BytesPerSec)
		e += cnt.Transfer * dp.Link.JoulesPerByte
	}
	ec, tc := o.EnergyCorrection, o.TimeCorrection
	if ec <= 0 {
		ec = 1
	}
	if tc <= 0 {
		tc = 1
	}
	return devModel{name: dp.Name, kind: dp.Kind, R: 1 / (t * tc), e: e * ec, L: o.LatencySec * tc,
		fromHost: dp.Kind == "gpu" && o.IncludesTransfer, idle: dp.IdleWatts, key: OpKey(o.Op, o.DType), eCorr: ec, tCr: tc}
}

// solver searches the splits of W elements over devices.
type solver struct {
	ds       []devModel
	idle, W  float64
	policy   Policy
	deadline float64
	capW     float64
	host     int // the CPU's index in ds, which copies the staged devices' inputs; -1: none
}

// staging is the host's seconds of copying for the staged devices' shares of x, and their
// joules at the host's dynamic power.
func (s *solver) staging(x []float64) (secs, joules float64) {
	if s.host < 0 {
		return 0, 0
	}
	for i, d := range s.ds {
		if i != s.host && x[i] > 0 {
			secs += d.staged * x[i]
		}
	}
	h := s.ds[s.host]
	return secs, secs * h.e * h.R
}

type candidate struct {
	x, r     []float64
	T, dyn   float64
	E, peak  float64
	feasible bool
}

// power is the machine's draw when each device with work finishes its share at T, paced
// evenly; the host's work includes its staging for the staged devices.
func (s *solver) power(x []float64, T float64) float64 {
	p := s.idle
	for i, d := range s.ds {
		if x[i] > 0 {
			p += d.e * x[i] / math.Max(T-d.L, 1e-15)
		}
	}
	if st, sj := s.staging(x); st > 0 {
		p += sj / math.Max(T-s.ds[s.host].L, 1e-15)
	}
	return p
}

// eval predicts an allocation: every device runs flat out from the start, unless that draws
// more than the cap, in which case all are paced to finish together late enough to fit.
func (s *solver) eval(x []float64) candidate {
	n := len(s.ds)
	c := candidate{x: x, r: make([]float64, n)}
	full := s.idle
	for i, d := range s.ds {
		if x[i] > 0 {
			c.T = math.Max(c.T, d.L+x[i]/d.R)
			c.dyn += d.e * x[i]
			full += d.e * d.R
			c.r[i] = 1
		}
	}
	if st, sj := s.staging(x); st > 0 {
		// The host copies the staged shares as well as running its own: its time is both, and
		// it draws its full power while it copies, with or without a share of its own.
		h := s.ds[s.host]
		c.T = math.Max(c.T, h.L+x[s.host]/h.R+st)
		c.dyn += sj
		if x[s.host] == 0 {
			full += h.e * h.R
		}
	}
	c.peak = full
	if s.capW > 0 && full > s.capW && s.idle < s.capW {
		lo, hi := c.T, math.Max(c.T, 1e-9)*2
		for s.power(x, hi) > s.capW && hi < 1e12 {
			hi *= 2
		}
		if s.power(x, lo) > s.capW {
			for range 100 {
				mid := (lo + hi) / 2
				if s.power(x, mid) > s.capW {
					lo = mid
				} else {
					hi = mid
				}
			}
			lo = hi
		}
		c.T = lo
		c.peak = s.power(x, c.T)
		for i, d := range s.ds {
			if x[i] > 0 {
				c.r[i] = math.Min(1, x[i]/((c.T-d.L)*d.R))
			}
		}
	}
	c.E = s.idle*c.T + c.dyn
	c.feasible = (s.capW == 0 || c.peak <= s.capW*(1+1e-9)) && (s.deadline == 0 || c.T <= s.deadline*(1+1e-9))
	return c
}

// orderByCost sets order, one index per device, to the devices in order of joules per
// element, cheapest first (stable: equal costs keep model order).
func (s *solver) orderByCost(order []int) {
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int {
		switch {
		case s.ds[a].e < s.ds[b].e:
			return -1
		case s.ds[a].e > s.ds[b].e:
			return 1
		}
		return 0
	})
}

// greedy fills the devices cheapest joules-per-element first, each up to what it can do by T.
func (s *solver) greedy(T float64) []float64 {
	order := make([]int, len(s.ds))
	s.orderByCost(order)
	x := make([]float64, len(s.ds))
	left := s.W
	for _, i := range order {
		d := s.ds[i]
		take := math.Min(left, math.Max(0, T-d.L)*d.R)
		x[i] = take
		left -= take
	}
	if left > 1e-9*s.W {
		return nil
	}
	return x
}

// timeFor is the smallest T by which the devices ds[k] for k in set can do W together.
func (s *solver) timeFor(set []int) float64 {
	hi := 0.0
	for _, i := range set {
		hi = math.Max(hi, s.ds[i].L+s.W/s.ds[i].R)
	}
	lo := 0.0
	for range 100 {
		mid := (lo + hi) / 2
		var work float64
		for _, i := range set {
			work += math.Max(0, mid-s.ds[i].L) * s.ds[i].R
		}
		if work >= s.W {
			hi = mid
		} else {
			lo = mid
		}
	}
	return hi
}

func (s *solver) score(c candidate) float64 {
	switch s.policy {
	case MinTime:
		return c.T
	case MinEDP:
		return c.E * c.T
	}
	return c.E
}

func (s *solver) better(a, b candidate) bool {
	sa, sb := s.score(a), s.score(b)
	if sa != sb {
		return sa < sb
	}
	if a.E != b.E {
		return a.E < b.E
	}
	return a.T < b.T
}

// violation is how far a plan is from the constraints (0 when it meets them).
func (s *solver) violation(c candidate) float64 {
	v := 0.0
	if s.deadline > 0 {
		v = math.Max(v, c.T/s.deadline-1)
	}
	if s.capW > 0 {
		v = math.Max(v, c.peak/s.capW-1)
	}
	return v
}

// preferred says whether c is a better plan than best: one meeting the constraints beats one
// that does not; between two that do the policy decides, between two that do not the one
// closer to them wins.
func (s *solver) preferred(c, best candidate) bool {
	switch {
	case c.feasible != best.feasible:
		return c.feasible
	case c.feasible:
		return s.better(c, best)
	}
	return s.violation(c) < s.violation(best)
}

// solve evaluates the single-device plans and the cheapest-first fills at every time where
// the set of devices changes (each prefix of devices in order of cost finishing together), at
// the deadline, where the power cap starts to bind, and on a grid between; and returns the
// best by the policy among those meeting the constraints, else the one closest to them.
func (s *solver) solve() candidate {
	if s.W == 0 {
		return s.eval(make([]float64, len(s.ds)))
	}
	var cands []candidate
	for i := range s.ds {
		cands = append(cands, s.eval(s.alone(i)))
	}
	for _, T := range s.fillTimes() {
		if x := s.greedy(T * (1 + 1e-12)); x != nil {
			cands = append(cands, s.eval(x))
		}
	}
	return s.pick(cands)
}

// alone is the allocation of the whole job to device i.
func (s *solver) alone(i int) []float64 {
	x := make([]float64, len(s.ds))
	x[i] = s.W
	return x
}

// fillTimes are the times at which solve tries the cheapest-first fill: each device's time
// alone, each prefix of the devices in order of cost finishing together, the deadline, a grid
// from the fastest of those to the slowest, and where the power cap starts to bind.
func (s *solver) fillTimes() []float64 {
	const grid = 64
	times := make([]float64, 0, 2*len(s.ds)+grid+3) // per device two, the grid, the deadline and the cap
	for _, d := range s.ds {
		times = append(times, d.L+s.W/d.R)
	}
	order := make([]int, len(s.ds))
	s.orderByCost(order)
	for k := 1; k <= len(order); k++ {
		times = append(times, s.timeFor(order[:k]))
	}
	tmin, thi := s.timeFor(order), slices.Max(times)
	if s.deadline > 0 {
		times = append(times, s.deadline)
		thi = math.Max(thi, s.deadline)
	}
	for g := range grid + 1 {
		times = append(times, tmin*math.Pow(thi/tmin, float64(g)/grid))
	}
	if s.capW > 0 {
		if T, ok := s.capTime(tmin, thi); ok {
			times = append(times, T)
		}
	}
	return times
}

// capTime is the earliest time at which the cheapest-first fill fits under the cap, searched
// between tmin and thi (doubled until it fits); false when it fits at no time.
func (s *solver) capTime(tmin, thi float64) (float64, bool) {
	hi := thi
	for !s.fits(hi) && hi < 1e12 {
		hi *= 2
	}
	if !s.fits(hi) {
		return 0, false
	}
	lo := tmin
	for range 100 {
		mid := (lo + hi) / 2
		if s.fits(mid) {
			hi = mid
		} else {
			lo = mid
		}
	}
	return hi, true
}

// fits says whether the cheapest-first fill by T draws no more than the cap.
func (s *solver) fits(T float64) bool {
	x := s.greedy(T)
	return x != nil && s.power(x, T) <= s.capW
}

// pick returns the best of cands, the earliest of equals: by the policy among those meeting
// the constraints, else the one closest to them.
func (s *solver) pick(cands []candidate) candidate {
	best := cands[0]
	for _, c := range cands[1:] {
		if s.preferred(c, best) {
			best = c
		}
	}
	return best
}

// realise rounds an allocation to whole chunks. Devices take contiguous ranges in model
// order; each cut between two devices is rounded down or up, every combination is evaluated
// (for up to 9 devices), and so is each device alone, and the best by the policy is kept: a
// whole chunk more on a slow device can cost far more than the continuous plan said. It fills
// plan.Shares and returns the elements of each device.
func (s *solver) realise(x []float64, chunks []int64, plan *Plan) []float64 {
	r := rounding{s: s, units: unitsOf(chunks, s.W), cuts: make([]int64, len(s.ds))}
	r.tryRounded(cumulative(x))
	r.tryAlone()
	out := r.alloc(r.best)
	plan.Shares = r.shares(out)
	return out
}

// units are what realise cuts a job into: its chunks, or its elements without chunks.
type units struct {
	count int64   // how many
	sums  []int64 // sums[j] is the elements of the first j chunks; nil without chunks
}

// unitsOf are the units of a job of w elements in chunks (nil: none).
func unitsOf(chunks []int64, w float64) units {
	if chunks == nil {
		return units{count: int64(w)}
	}
	sums := make([]int64, len(chunks)+1)
	for i, c := range chunks {
		sums[i+1] = sums[i] + c
	}
	return units{count: int64(len(chunks)), sums: sums}
}

// prefix is the elements of the first j units (chunks, or elements without chunks).
func (u units) prefix(j int64) float64 {
	if u.sums == nil {
		return float64(j)
	}
	return float64(u.sums[j])
}

// floorCut is the largest j with prefix(j) <= v.
func (u units) floorCut(v float64) int64 {
	lo, hi := int64(0), u.count
	for lo < hi {
		mid := (lo + hi + 1) / 2
		if u.prefix(mid) <= v*(1+1e-12) {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return lo
}

// alloc is the elements of each device when device i takes the units up to cuts[i].
func (u units) alloc(cuts []int64) []float64 {
	out := make([]float64, len(cuts))
	prev := int64(0)
	for i, c := range cuts {
		out[i] = u.prefix(c) - u.prefix(prev)
		prev = c
	}
	return out
}

// cumulative is where each device's part of the allocation x ends, in elements from the start.
func cumulative(x []float64) []float64 {
	b := make([]float64, len(x))
	acc := 0.0
	for i := range x {
		acc += x[i]
		b[i] = acc
	}
	return b
}

// rounding is realise's search: the cuts it is trying, and the best cuts so far with their
// prediction.
type rounding struct {
	s *solver
	units
	cuts  []int64   // the cut after each device, in units
	best  []int64   // the best cuts tried; nil before the first
	bestC candidate // their prediction
}

// try evaluates the cuts, and keeps them if they are the best so far.
func (r *rounding) try() {
	c := r.s.eval(r.alloc(r.cuts))
	if r.best == nil || r.s.preferred(c, r.bestC) {
		r.best, r.bestC = slices.Clone(r.cuts), c
	}
}

// tryRounded tries the cuts at the bounds rounded down or up, in every combination for up to
// 9 devices, else each to the nearer cut.
func (r *rounding) tryRounded(bounds []float64) {
	n := len(r.cuts)
	combos := 1
	if n <= 9 {
		combos = 1 << (n - 1)
	}
	for m := range combos {
		prev := int64(0)
		for i := range n - 1 {
			c := r.floorCut(bounds[i])
			if m>>i&1 == 1 && c < r.count && r.prefix(c) < bounds[i] {
				c++
			}
			if combos == 1 && c < r.count && bounds[i]-r.prefix(c) > (r.prefix(c+1)-r.prefix(c))/2 {
				c++ // too many devices to enumerate: round to the nearer cut
			}
			r.cuts[i] = max(c, prev)
			prev = r.cuts[i]
		}
		r.cuts[n-1] = r.count
		r.try()
	}
}

// tryAlone tries each device alone.
func (r *rounding) tryAlone() {
	for k := range r.cuts {
		for i := range r.cuts {
			r.cuts[i] = 0
			if i >= k {
				r.cuts[i] = r.count
			}
		}
		r.try()
	}
}

// shares are the devices' parts of the best cuts, whose elements are out: in model order,
// each with its chunks when the job has chunks.
func (r *rounding) shares(out []float64) []Share {
	shares := make([]Share, len(r.s.ds))
	prev := int64(0)
	for i, d := range r.s.ds {
		sh := &shares[i]
		sh.Device = d.name
		sh.Elements = int64(out[i])
		if r.sums != nil {
			for j := prev; j < r.best[i]; j++ {
				sh.Chunks = append(sh.Chunks, int(j))
			}
		}
		sh.NumChunks = len(sh.Chunks)
		if r.s.W > 0 {
			sh.Fraction = out[i] / r.s.W
		}
		prev = r.best[i]
	}
	return shares
}

// predict fills plan's prediction for the elements x of each device, sets the costs of each
// share, and drops the shares of devices left without work.
func (s *solver) predict(plan *Plan, x []float64) {
	c := s.eval(x)
	plan.Feasible = c.feasible
	plan.Predicted = Prediction{Seconds: c.T, Joules: c.E, IdleJoules: s.idle * c.T, DynamicJoules: c.dyn, PeakWatts: c.peak}
	s.costShares(plan, c)
	plan.Shares = slices.DeleteFunc(plan.Shares, func(sh Share) bool { return sh.Elements == 0 && plan.Elements > 0 })
}

// costShares sets the rate, time and joules of each working device's share of plan as c
// predicts them.
func (s *solver) costShares(plan *Plan, c candidate) {
	x := c.x
	for i, d := range s.ds {
		if x[i] <= 0 && plan.Elements > 0 {
			continue
		}
		sh := &plan.Shares[i] // realise lists the devices in model order
		sh.Rate = c.r[i]
		sh.Seconds = d.L + x[i]/(d.R*math.Max(c.r[i], 1e-12))
		sh.Joules = d.e * x[i]
		sh.Watts = d.e * d.R * c.r[i]
		sh.key = d.key
		sh.rawDyn = sh.Joules / d.eCorr
		sh.rawBusy = (d.L + x[i]/d.R) / d.tCr
	}
}

// alternatives are the predictions of each device alone, in model order.
func (s *solver) alternatives() []Alternative {
	var alts []Alternative
	for i, d := range s.ds {
		a := s.eval(s.alone(i))
		alts = append(alts, Alternative{Device: d.name, Seconds: a.T, Joules: a.E, PeakWatts: a.peak, Feasible: a.feasible})
	}
	return alts
}

// explain says in one line why the plan was chosen.
func (s *solver) explain(p *Plan) string {
	var parts []string
	for _, sh := range p.Shares {
		part := sh.Device
		if len(p.Shares) > 1 {
			part = fmt.Sprintf("%s %.0f%%", sh.Device, 100*sh.Fraction)
		}
		if sh.Rate < 0.999 {
			part += fmt.Sprintf(" paced to %.0f%%", 100*sh.Rate)
		}
		parts = append(parts, part)
	}
	chosen := strings.Join(parts, " + ")
	if len(p.Shares) == 1 {
		chosen += " alone"
	}
	w := fmt.Sprintf("%s: %s, %s in %s", p.Policy, chosen, fmtJ(p.Predicted.Joules), fmtS(p.Predicted.Seconds))
	if !p.Feasible {
		var why []string
		if s.deadline > 0 && p.Predicted.Seconds > s.deadline*(1+1e-9) {
			why = append(why, fmt.Sprintf("the deadline of %s cannot be met", fmtS(s.deadline)))
		}
		if s.capW > 0 && p.Predicted.PeakWatts > s.capW*(1+1e-9) {
			why = append(why, fmt.Sprintf("the power cap of %.4g W cannot be met (idle alone draws %.4g W)", s.capW, s.idle))
		}
		w += "; " + strings.Join(why, " and ") + ": closest plan"
	}
	if len(s.ds) == 1 {
		return w + " (the only calibrated device)"
	}
	var alts []string
	for _, a := range p.Alternatives {
		if len(p.Shares) == 1 && p.Shares[0].Device == a.Device && p.Shares[0].Rate >= 0.999 {
			continue
		}
		alt := fmt.Sprintf("%s alone %s in %s", a.Device, fmtJ(a.Joules), fmtS(a.Seconds))
		if !a.Feasible {
			alt += " (infeasible)"
		}
		alts = append(alts, alt)
	}
	if len(alts) > 0 {
		w += "; vs " + strings.Join(alts, ", ")
	}
	return w
}

func fmtJ(j float64) string {
	switch {
	case j >= 1:
		return fmt.Sprintf("%.3g J", j)
	case j >= 1e-3:
		return fmt.Sprintf("%.3g mJ", j*1e3)
	}
	return fmt.Sprintf("%.3g µJ", j*1e6)
}

func fmtS(s float64) string {
	switch {
	case s >= 1:
		return fmt.Sprintf("%.3g s", s)
	case s >= 1e-3:
		return fmt.Sprintf("%.3g ms", s*1e3)
	}
	return fmt.Sprintf("%.3g µs", s*1e6)
}
