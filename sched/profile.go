package sched

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/wattagg/wattagg/energy"
	"github.com/wattagg/wattagg/tensor"
)

// ProfileVersion is the version of the profile format. A profile of another version is
// rejected (re-run calibration) rather than misread.
const ProfileVersion = 1

// EnvProfile overrides where the profile is kept.
const EnvProfile = "WATTAGG_PROFILE"

// Profile is what calibration measured on this machine, per device and op class, corrected
// since by what executions measured.
type Profile struct {
	Version int              `json:"version"`
	Created time.Time        `json:"created"`
	Updated time.Time        `json:"updated"`
	Quick   bool             `json:"quick"` // measured with short windows (calibrate --quick)
	Host    Host             `json:"host"`
	Devices []*DeviceProfile `json:"devices"`
	// Others are meters of this machine that no device uses (a GPU that NVML sees but no
	// device backend drives): their idle power is part of every round's energy.
	Others []MeterIdle `json:"others,omitempty"`
	// Read is how this machine reads cached update files fastest (`wattagg calibrate`); nil
	// where it was not measured.
	Read *ReadProfile `json:"read,omitempty"`
}

// ReadProfile is what calibration measured of the two ways the CPU reads cached .safetensors
// files (bench.MeasureReadModes): mapped in place, or copied with pread into reused buffers.
type ReadProfile struct {
	LargeFolios string  `json:"large_folios"` // "map" or "copy": the choice for files cached in large folios
	MapSec      float64 `json:"map_s"`        // the best time mapped
	CopySec     float64 `json:"copy_s"`       // the best time copied
	Files       int     `json:"files"`
	Bytes       int64   `json:"bytes"` // of all the files' tensors
}

// Chosen says how files in large folios are read: "mapped" or "copied".
func (r *ReadProfile) Chosen() string {
	if r.LargeFolios == "map" {
		return "mapped"
	}
	return "copied"
}

// Host identifies the machine a profile was measured on.
type Host struct {
	Hostname string `json:"hostname"`
	CPU      string `json:"cpu"`
	CPUs     int    `json:"logical_cpus"`
	Kernels  string `json:"kernels"`
}

// MeterIdle is a meter's idle power.
type MeterIdle struct {
	Meter     string  `json:"meter"`
	IdleWatts float64 `json:"idle_watts"`
}

// DeviceProfile is one device's costs.
type DeviceProfile struct {
	Name    string `json:"name"` // "cpu", "cuda:0"
	Kind    string `json:"kind"` // "cpu" or "gpu"
	Model   string `json:"model"`
	Workers int    `json:"workers,omitempty"`
	// Meter is the provenance of the energy figures: the meter that covers this device.
	Meter     energy.Provenance `json:"meter"`
	IdleWatts float64           `json:"idle_watts"`
	// Link is the host-to-device copy cost (GPUs), where the device could be asked to copy.
	Link *Link                 `json:"host_to_device,omitempty"`
	Ops  map[string]*OpProfile `json:"ops"` // by OpKey
}

// Link is a host-to-device link (PCIe).
type Link struct {
	BytesPerSec   float64 `json:"bytes_per_s"`
	JoulesPerByte float64 `json:"joules_per_byte"`
}

// OpProfile is what one op class costs on one device for one input dtype.
type OpProfile struct {
	Op       string       `json:"op"`
	DType    tensor.DType `json:"dtype"`
	Clients  int          `json:"clients"`  // of the calibration workload
	Elements int64        `json:"elements"` // of the calibration workload

	FLOPsPerSec float64 `json:"flops_per_s"`
	BytesPerSec float64 `json:"bytes_per_s"`
	// JoulesPerFLOP and JoulesPerByte are the same dynamic joules (measured minus idle)
	// divided by the op's FLOPs and by its bytes; the planner uses the one of the roofline
	// bound that limits the op.
	JoulesPerFLOP float64 `json:"joules_per_flop"`
	JoulesPerByte float64 `json:"joules_per_byte"`
	LatencySec    float64 `json:"latency_s"` // fixed cost of one call
	Watts         float64 `json:"watts"`     // all meters while running
	// IncludesTransfer says the figures were measured from host memory on a device with its
	// own memory, so they include the host-to-device copies.
	IncludesTransfer bool `json:"includes_transfer,omitempty"`

	// Corrections learned from executions: measured / predicted, exponentially weighted.
	EnergyCorrection float64  `json:"energy_correction"`
	TimeCorrection   float64  `json:"time_correction"`
	Observations     int      `json:"observations"`
	Notes            []string `json:"notes,omitempty"`
}

// OpKey is the key of an op profile: "weighted-sum/f32".
func OpKey(op string, dt tensor.DType) string { return op + "/" + dt.String() }

// Device returns the profile of device name, or nil.
func (p *Profile) Device(name string) *DeviceProfile {
	if p == nil {
		return nil
	}
	for _, d := range p.Devices {
		if d.Name == name {
			return d
		}
	}
	return nil
}

// Op returns the profile of op for inputs of dtype dt: measured for dt, else for a dtype of
// the same width, else for the op's first measured dtype (the bytes per element are still
// counted for dt).
func (d *DeviceProfile) Op(op string, dt tensor.DType) (*OpProfile, bool) {
	if d == nil {
		return nil, false
	}
	if o, ok := d.Ops[OpKey(op, dt)]; ok {
		return o, true
	}
	var keys []string
	for k, o := range d.Ops {
		if o.Op == op {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		if d.Ops[k].DType.Size() == dt.Size() {
			return d.Ops[k], true
		}
	}
	if len(keys) > 0 {
		return d.Ops[keys[0]], true
	}
	return nil, false
}

// IdleWatts is the idle power of the whole machine: every device and every other meter.
func (p *Profile) IdleWatts() float64 {
	var w float64
	for _, d := range p.Devices {
		w += d.IdleWatts
	}
	for _, o := range p.Others {
		w += o.IdleWatts
	}
	return w
}

// DefaultProfilePath is $WATTAGG_PROFILE, else wattagg/profile.json in the user cache
// directory.
func DefaultProfilePath() (string, error) {
	if p := os.Getenv(EnvProfile); p != "" {
		return p, nil
	}
	dir, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("%w: no user cache directory (set %s): %v", ErrProfile, EnvProfile, err)
	}
	return filepath.Join(dir, "wattagg", "profile.json"), nil
}

// LoadProfile reads a profile. A missing file is ErrNoProfile; a malformed one, or one of
// another version, is ErrProfile.
func LoadProfile(path string) (*Profile, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w at %s: run wattagg calibrate", ErrNoProfile, path)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrProfile, err)
	}
	var head struct {
		Version int `json:"version"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrProfile, path, err)
	}
	if head.Version != ProfileVersion {
		return nil, fmt.Errorf("%w: %s is version %d, this wattagg reads version %d: run wattagg calibrate", ErrProfile, path, head.Version, ProfileVersion)
	}
	var p Profile
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrProfile, path, err)
	}
	if err := p.validate(); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrProfile, path, err)
	}
	return &p, nil
}

func (p *Profile) validate() error {
	for _, d := range p.Devices {
		if d == nil || d.Name == "" {
			return errors.New("a device without a name")
		}
		if d.IdleWatts < 0 {
			return fmt.Errorf("device %s: negative idle power", d.Name)
		}
		for k, o := range d.Ops {
			if o == nil || !(o.BytesPerSec > 0) || !(o.FLOPsPerSec >= 0) || o.JoulesPerByte < 0 || o.JoulesPerFLOP < 0 || o.LatencySec < 0 {
				return fmt.Errorf("device %s: op %s: bytes/s must be positive, and FLOP/s and costs not negative", d.Name, k)
			}
			if o.EnergyCorrection <= 0 {
				o.EnergyCorrection = 1
			}
			if o.TimeCorrection <= 0 {
				o.TimeCorrection = 1
			}
		}
	}
	if r := p.Read; r != nil && (r.LargeFolios != "map" && r.LargeFolios != "copy" || !(r.MapSec > 0) || !(r.CopySec > 0)) {
		return fmt.Errorf("read: large_folios %q (want map or copy), map_s %v and copy_s %v (want positive)", r.LargeFolios, r.MapSec, r.CopySec)
	}
	return nil
}

// Clone returns a deep copy.
func (p *Profile) Clone() *Profile {
	b, _ := json.Marshal(p)
	var c Profile
	_ = json.Unmarshal(b, &c)
	return &c
}
